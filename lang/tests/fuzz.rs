//! The linter never panics: arbitrary bytes, and random mutations of the shipped pipelines,
//! always come back as diagnostics.

use std::path::Path;

use lortflow_lang::{MemoryLoader, check_text};
use proptest::prelude::*;

fn pipelines() -> Vec<String> {
    let mut texts: Vec<String> = std::fs::read_dir("../pipelines")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "kdl"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    texts.sort();
    texts
}

fn lint(text: String) -> Vec<lortflow_lang::Diagnostic> {
    let loader = MemoryLoader::default().with("inc.kdl", "dataset \"x\" { source \"synthetic\" }");
    let checked = check_text(Path::new("p.kdl"), text, &loader);
    // Rendering must not panic either: spans must lie inside the text, and no line of the report
    // may be unreadably long, whatever the input's lines (the CLI renders 60 to 200 wide).
    for d in &checked.diagnostics {
        let _ = d.to_json(&checked.pipeline.sources);
        for width in [80, 200] {
            let handler = miette::GraphicalReportHandler::new_themed(
                miette::GraphicalTheme::unicode_nocolor(),
            )
            .with_width(width);
            let mut out = String::new();
            handler
                .render_report(&mut out, &d.render(&checked.pipeline.sources))
                .unwrap();
            let longest = out.lines().map(|l| l.chars().count()).max().unwrap_or(0);
            assert!(longest <= 400, "a {longest}-character line in:\n{out}");
        }
    }
    checked.diagnostics
}

/// A reference matcher for `glob_match`: slow, obviously right.
fn glob_reference(p: &[char], n: &[char]) -> bool {
    match p.split_first() {
        None => n.is_empty(),
        Some(('*', rest)) => (0..=n.len()).any(|i| glob_reference(rest, &n[i..])),
        Some(('?', rest)) => !n.is_empty() && glob_reference(rest, &n[1..]),
        Some((c, rest)) => n.first() == Some(c) && glob_reference(rest, &n[1..]),
    }
}

/// Inputs that once crashed or hung the linter (`tests/corpus/`): each must come back as
/// diagnostics, and the stated code must be among them.
#[test]
fn corpus_of_past_failures() {
    let expected = [
        ("deep-nesting.kdl", "lortflow::too-deep"),
        ("deep-unclosed.kdl", "lortflow::syntax"),
        ("long-line.kdl", "lortflow::unknown-value"),
        ("huge-numbers.kdl", "lortflow::out-of-range"),
        ("many-stars.kdl", "lortflow::no-match"),
        ("stray-braces.kdl", "lortflow::syntax"),
        ("braces-in-strings.kdl", "lortflow::too-large"),
        ("cr-comment-nesting.kdl", "lortflow::too-deep"),
        ("raw-string-nesting.kdl", "lortflow::too-deep"),
        ("multiline-raw-nesting.kdl", "lortflow::too-deep"),
        ("adjacent-strings.kdl", "lortflow::syntax"),
    ];
    let mut seen = 0;
    for entry in std::fs::read_dir("tests/corpus").unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        // On a thread with a test runner's small stack: a deep file must not need a big one.
        let diags = std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(move || lint(text))
            .unwrap()
            .join()
            .unwrap_or_else(|_| panic!("{name} panicked"));
        let code = expected
            .iter()
            .find(|(file, _)| *file == name)
            .unwrap_or_else(|| panic!("{name}: add its expected code to this test"))
            .1;
        assert!(
            diags.iter().any(|d| d.code.as_str() == code),
            "{name}: no {code} in {diags:?}"
        );
        seen += 1;
    }
    assert_eq!(seen, expected.len());
}

#[test]
fn a_file_the_parser_cannot_finish_is_a_diagnostic_not_a_hang() {
    // An unterminated raw string at every position: quadratic recovery in the KDL parser
    // (measured: more than 20 minutes for 300 KB before the deadline).
    let start = std::time::Instant::now();
    let diags = lint(format!("lortflow 1\n{}\n", " #\"".repeat(100_000)));
    assert!(start.elapsed().as_secs() < 60, "{:?}", start.elapsed());
    assert!(
        diags
            .iter()
            .any(|d| d.message.contains("gave up on this file")),
        "{diags:?}"
    );
}

#[test]
fn a_file_over_the_size_limit_is_refused_before_it_is_parsed() {
    let text = format!("lortflow 1\n{}", "// padding\n".repeat(100_000));
    let diags = lint(text);
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert_eq!(diags[0].code.as_str(), "lortflow::too-large");
    assert!(
        diags[0].message.contains("larger than 1 MiB"),
        "{}",
        diags[0].message
    );
}

fn undefined_stage(checked: &lortflow_lang::Checked) -> &lortflow_lang::Diagnostic {
    checked
        .diagnostics
        .iter()
        .find(|d| d.code.as_str() == "lortflow::undefined-stage")
        .expect("undefined stage")
}

/// `d` as the CLI prints it without colour, at miette's default width.
fn render_plain(d: &lortflow_lang::Diagnostic, checked: &lortflow_lang::Checked) -> String {
    let handler =
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor());
    let mut out = String::new();
    handler
        .render_report(&mut out, &d.render(&checked.pipeline.sources))
        .unwrap();
    out
}

#[test]
fn long_lines_render_a_window_with_the_right_position() {
    let name = "n".repeat(100_000);
    let text = format!(
        "lortflow 1\ndataset \"d\" {{ source \"synthetic\" }}\nhead \"{name}\" {{ features \"nope\" }}\n"
    );
    let checked = check_text(Path::new("p.kdl"), text, &MemoryLoader::default());
    let d = undefined_stage(&checked);
    let out = render_plain(d, &checked);
    // The column is the real one, the line is cut around the label, and the label still points
    // at `"nope"`.
    let json = d.to_json(&checked.pipeline.sources);
    let column = json["column"].as_u64().unwrap() as usize;
    assert!(column > name.len(), "{json}");
    assert!(out.contains(&format!("[p.kdl:3:{column}]")), "{out}");
    assert!(out.contains("…nnnn"), "{out}");
    assert!(out.contains("\"nope\""), "{out}");
    let label = out.lines().find(|l| l.contains("─┬─")).expect("label line");
    let text_line = out.lines().find(|l| l.contains("\"nope\"")).unwrap();
    // Character columns: the label's underline starts under the name it labels.
    let at = |line: &str, needle: &str| line.find(needle).map(|b| line[..b].chars().count());
    assert_eq!(at(label, "─"), at(text_line, "\"nope\""), "{out}");
}

#[test]
fn long_names_are_shortened_in_rendered_messages_only() {
    let name = "q".repeat(5_000);
    let text = format!(
        "lortflow 1\ndataset \"d\" {{ source \"synthetic\" }}\nhead \"h\" {{ features \"{name}\" }}\n"
    );
    let checked = check_text(Path::new("p.kdl"), text, &MemoryLoader::default());
    let d = undefined_stage(&checked);
    assert!(d.message.contains(&name));
    let out = render_plain(d, &checked);
    assert!(out.contains("(5000 characters)"), "{out}");
    assert!(out.len() < 3_000, "{out}");
}

proptest! {
    // More cases in release (CI) than in a debug run.
    #![proptest_config(ProptestConfig { cases: if cfg!(debug_assertions) { 300 } else { 1000 }, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        lint(text);
    }

    #[test]
    fn kdl_like_text_never_panics(text in "(lortflow 1\n)?((dataset|head|backbone|features|sweep|evaluate|include|defaults|method|train|vary|base|heads) \"[a-z*]{0,4}\" ?(\\{ ?)?([a-z-]{1,8}=(\"[a-z]{0,5}\"|-?[0-9]{1,3}(\\.[0-9])?|#true|#null) ?){0,3}(\\} ?)?;?\n){0,12}") {
        lint(text);
    }

}

proptest! {
    // Each case is tens of kilobytes of broken text: fewer cases.
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    // Up to 9 KB: the parser's recovery is quadratic on some fillers (` #"`).
    fn many_errors_are_capped(n in 100usize..3_000, filler in "[a-z\"{}=; #]{1,3}") {
        let diags = lint(format!("lortflow 1\n{}\n", filler.repeat(n)));
        prop_assert!(diags.len() <= 100);
    }

    #[test]
    fn deep_nesting_never_overflows(levels in 1usize..3000, closed in any::<bool>(), node in "[a-z]{1,8}( \"[a-z]{0,3}\")?") {
        let mut text = String::from("lortflow 1\n");
        text.push_str(&format!("{node} {{\n").repeat(levels));
        if closed {
            text.push_str(&"}\n".repeat(levels));
        }
        let diags = lint(text);
        if levels > 32 && closed {
            prop_assert!(diags.iter().any(|d| d.code.as_str() == "lortflow::too-deep"));
        }
    }

    #[test]
    fn very_long_lines_never_panic(len in 1usize..120_000, at in 0usize..3, filler in "[a-z\"{}=; ]{1,3}") {
        let long = filler.repeat(len / filler.len() + 1);
        let parts = [
            format!("dataset \"{long}\" {{ source \"nope\" }}"),
            format!("head \"h\" {{ features \"d\"; method \"{long}\" }}"),
            long.clone(),
        ];
        lint(format!("lortflow 1\n{}\nevaluate \"t\" {{ heads \"*\" }}\n", parts[at]));
    }

    #[test]
    fn huge_numbers_never_panic(prop in "(epochs|lr|batch-size|seed|delta|momentum|weight-decay)", number in "-?[0-9]{15,40}(\\.[0-9]{0,5})?(e-?[0-9]{1,4})?") {
        lint(format!(
            "lortflow 1\ndataset \"d\" {{ source \"synthetic\" kind=\"vectors\" classes={number}; long-tail \"exp\" imbalance-ratio={number} max-per-class={number} }}\nhead \"h\" {{ features \"d\"; method \"lort\" delta={number}; train {prop}={number} }}\nevaluate \"t\" {{ heads \"*\" }}\n"
        ));
    }

    #[test]
    fn glob_matches_the_reference(pattern in "[ab*?]{0,10}", name in "[ab]{0,10}") {
        let p: Vec<char> = pattern.chars().collect();
        let n: Vec<char> = name.chars().collect();
        prop_assert_eq!(lortflow_lang::glob_match(&pattern, &name), glob_reference(&p, &n));
    }

    #[test]
    fn mutated_pipelines_never_panic(index in 0usize..8, cuts in proptest::collection::vec((0usize..4000, 0usize..40, "[a-z0-9\"{}=;#. \n-]{0,6}"), 1..6)) {
        let texts = pipelines();
        let mut text = texts[index % texts.len()].clone();
        for (at, len, insert) in cuts {
            let mut start = at.min(text.len());
            while !text.is_char_boundary(start) { start -= 1; }
            let mut end = (start + len).min(text.len());
            while !text.is_char_boundary(end) { end -= 1; }
            text.replace_range(start..end, &insert);
        }
        lint(text);
    }
}
