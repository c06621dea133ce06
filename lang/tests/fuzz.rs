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

fn lint(text: String) {
    let loader = MemoryLoader::default().with("inc.kdl", "dataset \"x\" { source \"synthetic\" }");
    let checked = check_text(Path::new("p.kdl"), text, &loader);
    // Rendering must not panic either: spans must lie inside the text.
    for d in &checked.diagnostics {
        let _ = d.to_json(&checked.pipeline.sources);
        let handler =
            miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor());
        let mut out = String::new();
        handler
            .render_report(&mut out, &d.render(&checked.pipeline.sources))
            .unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        lint(text);
    }

    #[test]
    fn kdl_like_text_never_panics(text in "(lortflow 1\n)?((dataset|head|backbone|features|sweep|evaluate|include|defaults|method|train|vary|base|heads) \"[a-z*]{0,4}\" ?(\\{ ?)?([a-z-]{1,8}=(\"[a-z]{0,5}\"|-?[0-9]{1,3}(\\.[0-9])?|#true|#null) ?){0,3}(\\} ?)?;?\n){0,12}") {
        lint(text);
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
