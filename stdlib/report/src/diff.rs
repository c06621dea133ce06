//! Differences between the `metrics.json` of two runs, per head and metric (as `dvc metrics
//! diff`): the scalar metrics of a head are named by their JSON path inside the head's entry, e.g.
//! `top1.best` or `rsd.by_group.few`.

use serde::Serialize;
use serde_json::Value as Json;

/// One metric of one head that differs between two runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// The evaluate stage.
    pub evaluate: String,
    /// The head.
    pub head: String,
    /// The metric's path in the head's entry of `metrics.json`.
    pub metric: String,
    /// The value in the earlier run (`None`: absent or undefined there).
    pub old: Option<f64>,
    /// The value in the later run.
    pub new: Option<f64>,
    /// `new − old` when both are defined.
    pub change: Option<f64>,
}

/// Whether a metric path is an accuracy (a fraction, shown in %).
pub fn is_accuracy(metric: &str) -> bool {
    ["top1.", "many.", "medium.", "few."]
        .iter()
        .any(|p| metric.starts_with(p))
}

/// The scalar metrics of a head entry, in a fixed order. `with_means` adds the trial means of
/// the accuracies (only worth showing when there are several trials).
pub fn scalars(head: &Json, with_means: bool) -> Vec<(String, Option<f64>)> {
    let mut out = Vec::new();
    for acc in ["top1", "many", "medium", "few"] {
        out.push((format!("{acc}.best"), head[acc]["best"].as_f64()));
        if with_means {
            out.push((format!("{acc}.mean"), head[acc]["mean"].as_f64()));
        }
    }
    for (metric, field) in [
        ("logits_magnitude", "normalised_by_group"),
        ("rsd", "by_group"),
        ("weight_norms", "by_group"),
    ] {
        if head.get(metric).is_some() {
            for g in ["many", "medium", "few"] {
                out.push((
                    format!("{metric}.{field}.{g}"),
                    head[metric][field][g].as_f64(),
                ));
            }
        }
    }
    out
}

fn trials(head: Option<&Json>) -> u64 {
    head.and_then(|h| h["trials"].as_u64()).unwrap_or(0)
}

/// The changed metrics of every head of one evaluate stage between two runs' `metrics.json`
/// (`None`: the stage did not exist or did not finish in that run). Heads are matched by name;
/// a head present in only one run lists all its metrics with the other side `None`.
pub fn diff(evaluate: &str, old: Option<&Json>, new: Option<&Json>) -> Vec<Change> {
    let heads = |m: Option<&Json>| -> Vec<Json> {
        m.and_then(|m| m["heads"].as_array().cloned())
            .unwrap_or_default()
    };
    let (old_heads, new_heads) = (heads(old), heads(new));
    let find = |list: &[Json], name: &str| list.iter().find(|h| h["name"] == name).cloned();
    // Later run's order first, then heads that disappeared.
    let mut names: Vec<String> = new_heads
        .iter()
        .chain(&old_heads)
        .filter_map(|h| h["name"].as_str().map(str::to_string))
        .collect();
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    let mut changes = Vec::new();
    for name in names {
        let (o, n) = (find(&old_heads, &name), find(&new_heads, &name));
        let with_means = trials(o.as_ref()).max(trials(n.as_ref())) > 1;
        let old_values = o.map(|h| scalars(&h, with_means)).unwrap_or_default();
        let new_values = n.map(|h| scalars(&h, with_means)).unwrap_or_default();
        let mut metrics: Vec<&String> = new_values.iter().map(|(m, _)| m).collect();
        for (m, _) in &old_values {
            if !metrics.contains(&m) {
                metrics.push(m);
            }
        }
        let get = |list: &[(String, Option<f64>)], m: &str| {
            list.iter().find(|(k, _)| k == m).and_then(|(_, v)| *v)
        };
        for metric in metrics {
            let (old, new) = (get(&old_values, metric), get(&new_values, metric));
            if old == new {
                continue;
            }
            changes.push(Change {
                evaluate: evaluate.to_string(),
                head: name.clone(),
                metric: metric.clone(),
                old,
                new,
                change: old.zip(new).map(|(o, n)| n - o),
            });
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn acc(v: f64) -> Json {
        json!({"best": v, "mean": v, "std": 0.0, "values": [v]})
    }

    #[test]
    fn only_changed_metrics_added_and_removed_heads() {
        let old = json!({"heads": [
            {"name": "ce", "trials": 1, "top1": acc(0.5), "many": acc(0.75), "medium": null, "few": acc(0.25)},
            {"name": "gone", "trials": 1, "top1": acc(0.1), "many": null, "medium": null, "few": null},
        ]});
        let new = json!({"heads": [
            {"name": "ce", "trials": 1, "top1": acc(0.625), "many": acc(0.75), "medium": null, "few": acc(0.5),
             "rsd": {"by_group": {"many": 0.5, "medium": null, "few": null}}},
        ]});
        let changes = diff("table", Some(&old), Some(&new));
        type Row<'a> = (&'a str, &'a str, Option<f64>, Option<f64>, Option<f64>);
        let rows: Vec<Row<'_>> = changes
            .iter()
            .map(|c| (c.head.as_str(), c.metric.as_str(), c.old, c.new, c.change))
            .collect();
        assert_eq!(
            rows,
            [
                ("ce", "top1.best", Some(0.5), Some(0.625), Some(0.125)),
                ("ce", "few.best", Some(0.25), Some(0.5), Some(0.25)),
                ("ce", "rsd.by_group.many", None, Some(0.5), None),
                ("gone", "top1.best", Some(0.1), None, None),
            ]
        );
        assert!(diff("table", Some(&new), Some(&new)).is_empty());
        assert!(is_accuracy("few.best") && !is_accuracy("rsd.by_group.few"));
    }

    #[test]
    fn trial_means_only_with_several_trials() {
        let h = json!({"trials": 3, "top1": {"best": 0.5, "mean": 0.4}});
        assert_eq!(scalars(&h, false).len(), 4);
        let with = scalars(&h, true);
        assert_eq!(with[1], ("top1.mean".to_string(), Some(0.4)));
    }
}
