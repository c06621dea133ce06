//! "Did you mean" suggestions for misspelt names.

/// The candidate closest to `name`, if it is close enough to be a likely typo.
pub(crate) fn suggest<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let name_norm = normalize(name);
    candidates
        .into_iter()
        .filter_map(|c| {
            let distance = strsim::damerau_levenshtein(&name_norm, &normalize(c));
            let limit = (c.chars().count().max(name.chars().count()) / 3).max(1);
            (distance <= limit).then_some((distance, c))
        })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| c)
}

/// Users write `weight_decay`, `weightDecay` or `Weight-Decay` for `weight-decay`.
fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    for (i, ch) in name.chars().enumerate() {
        if ch.is_uppercase() && i > 0 {
            out.push('-');
        }
        match ch {
            '_' | ' ' => out.push('-'),
            c => out.extend(c.to_lowercase()),
        }
    }
    out
}

/// "`a`, `b` or `c`".
pub(crate) fn or_list(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => format!("`{one}`"),
        [init @ .., last] => format!(
            "{} or `{last}`",
            init.iter()
                .map(|i| format!("`{i}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names() {
        let methods = ["ce", "lort", "balanced-softmax", "ldam-drw"];
        assert_eq!(suggest("lrot", methods), Some("lort"));
        assert_eq!(
            suggest("balanced_softmax", methods),
            Some("balanced-softmax")
        );
        assert_eq!(suggest("ldamdrw", methods), Some("ldam-drw"));
        assert_eq!(suggest("xyzzy", methods), None);
        assert_eq!(
            suggest("weightDecay", ["weight-decay", "lr"]),
            Some("weight-decay")
        );
    }
}
