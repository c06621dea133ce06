//! `lortflow report` end to end: the smoke pipeline's results in each format with valid plot
//! files, `--compare previous` after a `--set` change, the `metrics` list and `plots false`, and
//! the errors (no run yet, unknown run id).

use serde_json::Value as Json;

use crate::cli::{Test, repo};

/// Fast: heads on synthetic feature vectors (no backbone), one two-parameter sweep.
const VECTORS: &str = r#"lortflow 1
dataset "d" {
    source "synthetic" kind="vectors" classes=5 per-class=80 test-per-class=20 dim=16 noise=1.0
    long-tail "exp" imbalance-ratio=10
    groups many=40 few=15
}
head "ce" { features "d"; method "ce"; train epochs=5 }
head "lort" { features "d"; method "lort" delta=0.9; init "head" head="ce"; train epochs=5 }
sweep "grid" {
    base "ce"
    vary "lr" 0.01 0.1
    vary "weight-decay" 0 5e-4
}
evaluate "table" { heads "*"; metrics "top1" "logits-magnitude" "rsd" "weight-norm" "per-class" "confusion" }
"#;

fn json(text: &str) -> Json {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

/// Every plot file of a `report --format json` evaluation exists and is a valid PNG or SVG.
fn check_plots(evaluation: &Json) -> Vec<String> {
    let dir = std::path::Path::new(evaluation["dir"].as_str().unwrap());
    let plots: Vec<String> = evaluation["metrics"]["plots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    for p in &plots {
        let bytes = std::fs::read(dir.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        if p.ends_with(".png") {
            assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{p} is not a PNG");
            assert!(bytes.len() > 5_000, "{p} is suspiciously small");
        } else {
            let text = String::from_utf8(bytes).unwrap();
            assert!(text.starts_with("<svg"), "{p} is not an SVG");
            assert!(text.trim_end().ends_with("</svg>"), "{p} is truncated");
            assert!(text.contains("<text"), "{p} has no text");
        }
    }
    plots
}

#[test]
fn report_shows_the_smoke_results_in_every_format_with_plots() {
    let smoke = std::fs::read_to_string(repo().join("pipelines/smoke.kdl")).unwrap();
    let t = Test::new().pipeline(&smoke);
    let none = t.args_run(["report", "pipeline.kdl"]).code(1);
    assert!(
        none.stderr
            .contains("no results yet; run `lortflow run pipeline.kdl` first"),
        "{}",
        none.stderr
    );
    let ran = t.args_run(["run", "pipeline.kdl"]).success();

    let human = t.args_run(["report", "pipeline.kdl"]).success();
    assert!(
        human.stdout.contains("results of `table` (run "),
        "{}",
        human.stdout
    );
    // The same accuracy table as `run` printed.
    let table = ran.stdout.split("\n\n").nth(1).unwrap();
    assert!(
        human.stdout.contains(table),
        "{}\n---\n{table}",
        human.stdout
    );
    for title in [
        "Logits Magnitude, normalised (L̂_i = L_i / mean_k |L_k|), mean by group",
        "Regularized Standard Deviation r_i = σ_i / L_i (σ over positive samples)",
        "Classifier weight norm",
        "plots:",
    ] {
        assert!(
            human.stdout.contains(title),
            "no {title}:\n{}",
            human.stdout
        );
    }
    assert!(human.stderr.is_empty(), "{}", human.stderr);

    let md = t
        .args_run(["report", "pipeline.kdl", "--format", "markdown"])
        .success();
    assert!(md.stdout.contains("# Results of `table`"), "{}", md.stdout);
    assert!(
        md.stdout
            .contains("| head | method | init | epochs | lr | All | Many | Medium | Few |"),
        "{}",
        md.stdout
    );
    assert!(
        md.stdout.contains("| `lort-delta[delta=0.98]` | lort |"),
        "{}",
        md.stdout
    );
    assert!(
        md.stdout.contains("/plots/per-class-accuracy.svg)"),
        "{}",
        md.stdout
    );

    let out = json(
        &t.args_run(["report", "pipeline.kdl", "--format", "json"])
            .success()
            .stdout,
    );
    let evaluation = &out["evaluations"][0];
    assert_eq!(evaluation["name"], "table");
    let m = &evaluation["metrics"];
    assert_eq!(m["schema"], "lortflow.metrics.v1");
    assert_eq!(m["rsd_over"], "positive");
    assert_eq!(m["std"], "population");
    assert_eq!(m["per_class_trial"], 0);
    let heads = m["heads"].as_array().unwrap();
    // The backbone classifier's row, then the 15 heads.
    assert_eq!(heads.len(), 16);
    assert_eq!(heads[0]["kind"], "stage-1");
    let ce = &heads[1];
    assert_eq!(ce["kind"], "head");
    assert_eq!(ce["name"], "ce");
    assert!(ce["sweep"].is_null());
    let k = ce["class_counts"].as_array().unwrap().len();
    assert_eq!(k, 6);
    for field in ["per_class", "normalised"] {
        assert_eq!(ce["logits_magnitude"][field].as_array().unwrap().len(), k);
    }
    assert!(ce["logits_magnitude"]["normaliser"].as_f64().unwrap() > 0.0);
    assert!(ce["rsd"]["by_group"]["few"].is_number() || ce["rsd"]["by_group"]["few"].is_null());
    assert_eq!(ce["weight_norms"]["per_class"].as_array().unwrap().len(), k);
    // Not requested by smoke.kdl: absent.
    assert!(ce.get("confusion").is_none() && ce.get("per_class_accuracy").is_none());
    let member = heads
        .iter()
        .find(|h| h["name"] == "lort-delta[delta=0.9]")
        .unwrap();
    assert_eq!(member["sweep"]["name"], "lort-delta");
    assert_eq!(member["sweep"]["params"][0]["param"], "delta");
    assert_eq!(member["sweep"]["params"][0]["value"], 0.9);

    let plots = check_plots(evaluation);
    for stem in [
        "class-counts",
        "per-class-accuracy",
        "logits-magnitude-rsd",
        "sweep-lort-delta",
    ] {
        for ext in ["svg", "png"] {
            let want = format!("plots/{stem}.{ext}");
            assert!(plots.contains(&want), "no {want} in {plots:?}");
        }
    }
    // The stage's own report links the plots relatively.
    let dir = std::path::Path::new(evaluation["dir"].as_str().unwrap());
    let report_md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(
        report_md.contains("](plots/sweep-lort-delta.svg)"),
        "{report_md}"
    );
}

#[test]
fn compare_previous_shows_what_a_set_change_moved() {
    let t = Test::new().pipeline(VECTORS);
    t.args_run(["run", "pipeline.kdl"]).success();
    let only = t
        .args_run(["report", "pipeline.kdl", "--compare", "previous"])
        .code(2);
    assert!(
        only.stderr.contains("only one run with results"),
        "{}",
        only.stderr
    );
    t.args_run(["run", "pipeline.kdl", "--set", "lort.delta=0.5"])
        .success();

    // The pipeline file still says 0.9: the report says the run is not what the file describes.
    let human = t
        .args_run(["report", "pipeline.kdl", "--compare", "previous"])
        .success();
    assert!(
        human.stdout.starts_with("changes from run "),
        "{}",
        human.stdout
    );
    assert!(human.stdout.contains("head  metric"), "{}", human.stdout);
    assert!(
        human
            .stderr
            .contains("note: `table` as the pipeline now stands differs"),
        "{}",
        human.stderr
    );
    let rows: Vec<&str> = human.stdout.lines().skip(3).collect();
    assert!(!rows.is_empty(), "{}", human.stdout);
    assert!(
        rows.iter().all(|r| r.starts_with("lort ")),
        "only `lort` changed:\n{}",
        human.stdout
    );

    let md = t
        .args_run([
            "report",
            "pipeline.kdl",
            "--compare",
            "previous",
            "--format",
            "markdown",
            "--set",
            "lort.delta=0.5",
        ])
        .success();
    assert!(
        md.stdout.contains("| head | metric | old | new | change |"),
        "{}",
        md.stdout
    );
    assert!(
        md.stderr.is_empty(),
        "with the same --set the run is current: {}",
        md.stderr
    );

    let out = json(
        &t.args_run([
            "report",
            "pipeline.kdl",
            "--compare",
            "previous",
            "--format",
            "json",
        ])
        .success()
        .stdout,
    );
    let changes = out["changes"].as_array().unwrap();
    assert!(!changes.is_empty());
    for c in changes {
        assert_eq!(c["evaluate"], "table");
        assert_eq!(c["head"], "lort");
        if let (Some(old), Some(new)) = (c["old"].as_f64(), c["new"].as_f64()) {
            assert!((c["change"].as_f64().unwrap() - (new - old)).abs() < 1e-12);
        }
    }
    assert_ne!(out["run"]["id"], out["compare"]["id"]);

    // By id: comparing the latest run with itself changes nothing.
    let id = out["run"]["id"].as_str().unwrap().to_string();
    let same = t
        .args_run(["report", "pipeline.kdl", "--compare", &id])
        .success();
    assert!(same.stdout.contains("no metric changed"), "{}", same.stdout);

    let unknown = t
        .args_run([
            "report",
            "pipeline.kdl",
            "--compare",
            "20200101T000000.000Z-1",
        ])
        .code(2);
    assert!(
        unknown.stderr.contains("no run `20200101T000000.000Z-1`"),
        "{}",
        unknown.stderr
    );
    assert!(
        unknown.stderr.contains(&id),
        "lists the runs: {}",
        unknown.stderr
    );

    // The two-parameter sweep has its heatmap; every selected metric is there.
    let report = json(
        &t.args_run(["report", "pipeline.kdl", "--format", "json"])
            .success()
            .stdout,
    );
    let evaluation = &report["evaluations"][0];
    let plots = check_plots(evaluation);
    assert!(
        plots.contains(&"plots/sweep-grid-heatmap.png".to_string()),
        "{plots:?}"
    );
    let head = &evaluation["metrics"]["heads"][0];
    let k = head["class_counts"].as_array().unwrap().len();
    assert_eq!(head["per_class_accuracy"].as_array().unwrap().len(), k);
    let confusion = head["confusion"].as_array().unwrap();
    assert_eq!(confusion.len(), k);
    // Rows by true class sum to its 20 test samples.
    for row in confusion {
        let total: u64 = row
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(total, 20);
    }
}

#[test]
fn the_metrics_list_and_plots_flag_are_respected() {
    let text = VECTORS.replace(
        r#"metrics "top1" "logits-magnitude" "rsd" "weight-norm" "per-class" "confusion" }"#,
        "metrics \"top1\"; plots #false }",
    );
    let t = Test::new().pipeline(&text);
    t.args_run(["run", "pipeline.kdl"]).success();
    let out = json(
        &t.args_run(["report", "pipeline.kdl", "--format", "json"])
            .success()
            .stdout,
    );
    let m = &out["evaluations"][0]["metrics"];
    assert_eq!(m["metrics"], serde_json::json!(["top1"]));
    assert_eq!(m["plots"], serde_json::json!([]));
    let dir = std::path::Path::new(out["evaluations"][0]["dir"].as_str().unwrap());
    assert!(!dir.join("plots").exists());
    for h in m["heads"].as_array().unwrap() {
        for absent in [
            "logits_magnitude",
            "rsd",
            "weight_norms",
            "confusion",
            "per_class_accuracy",
        ] {
            assert!(h.get(absent).is_none(), "{absent} in {h}");
        }
        assert!(h["top1"]["best"].is_number());
        // Imported features have no backbone classifier, so no stage-1 row.
        assert_eq!(h["kind"], "head", "{h}");
    }
}

#[test]
fn stage_1_false_leaves_the_backbone_row_out() {
    let smoke = std::fs::read_to_string(repo().join("pipelines/smoke.kdl")).unwrap();
    let text = smoke.replace(
        r#"metrics "top1" "logits-magnitude" "rsd" "weight-norm""#,
        "metrics \"top1\"; stage-1 #false",
    );
    assert_ne!(text, smoke);
    let t = Test::new().pipeline(&text);
    let ran = t.args_run(["run", "pipeline.kdl"]).success();
    assert!(!ran.stdout.contains("stage-1"), "{}", ran.stdout);
    let out = json(
        &t.args_run(["report", "pipeline.kdl", "--format", "json"])
            .success()
            .stdout,
    );
    let heads = out["evaluations"][0]["metrics"]["heads"]
        .as_array()
        .unwrap();
    assert!(heads.iter().all(|h| h["kind"] == "head"), "{heads:?}");
}

/// The elements of `html` that must nest: every opening tag has its closing tag, in order.
fn assert_well_nested(html: &str) {
    const CONTAINERS: &[&str] = &[
        "html",
        "head",
        "body",
        "table",
        "thead",
        "tbody",
        "tr",
        "th",
        "td",
        "figure",
        "figcaption",
        "dl",
        "dt",
        "dd",
        "nav",
        "h1",
        "h2",
        "h3",
        "p",
        "code",
        "div",
        "script",
        "style",
        "title",
        "svg",
    ];
    let mut stack: Vec<String> = Vec::new();
    let mut rest = html;
    while let Some(at) = rest.find('<') {
        rest = &rest[at + 1..];
        let end = rest.find('>').expect("a tag is closed");
        let tag = &rest[..end];
        rest = &rest[end + 1..];
        let closing = tag.starts_with('/');
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        if tag.ends_with('/') || !CONTAINERS.contains(&name.as_str()) {
            continue;
        }
        if closing {
            assert_eq!(stack.pop().as_deref(), Some(name.as_str()), "at </{name}>");
        } else {
            stack.push(name.clone());
            // Raw text: skip to the end of the element.
            if name == "script" || name == "style" {
                let close = format!("</{name}>");
                let end = rest.find(&close).expect("raw text element is closed");
                rest = &rest[end..];
            }
        }
    }
    assert!(stack.is_empty(), "unclosed: {stack:?}");
}

#[test]
fn the_html_report_is_one_self_contained_page_with_every_section() {
    let smoke = std::fs::read_to_string(repo().join("pipelines/smoke.kdl")).unwrap();
    let t = Test::new().pipeline(&smoke);
    t.args_run(["run", "pipeline.kdl"]).success();
    // Beside the pipeline by default, or where asked.
    let out = t.args_run(["report", "pipeline.kdl", "--html"]).success();
    assert_eq!(out.stdout.trim(), "pipeline.report.html");
    let html = std::fs::read_to_string(t.path("pipeline.report.html")).unwrap();
    t.args_run(["report", "pipeline.kdl", "--html", "elsewhere.html"])
        .success();
    assert!(t.path("elsewhere.html").is_file());
    assert!(html.starts_with("<!DOCTYPE html>"), "{}", &html[..100]);
    assert_well_nested(&html);

    // Nothing outside the file: no external scripts, styles, fonts, images or links.
    for needle in [
        "src=",
        "<link",
        "url(",
        "@import",
        "@font-face",
        "http://",
        "https://",
    ] {
        let hits: Vec<&str> = html
            .match_indices(needle)
            .map(|(i, _)| &html[i..(i + 60).min(html.len())])
            .collect();
        // SVG documents name their namespace with an http URI, which is not a reference.
        let references: Vec<&&str> = hits
            .iter()
            .filter(|h| !h.starts_with("http://www.w3.org/"))
            .collect();
        assert!(references.is_empty(), "`{needle}`: {references:?}");
    }
    assert!(!html.contains("href=\"http"), "external link");

    // The sections: results with the stage-1 row and recipes, group tables, every plot the
    // evaluation made (inline SVG), the backbone's training curve, provenance.
    for section in [
        "<h2 id=\"eval-table\">",
        "<tr class=\"stage1\"><td class=\"left\">stage-1</td>",
        "<th>weight decay</th>",
        "Logits Magnitude, normalised",
        "Regularized Standard Deviation",
        "<h2 id=\"backbones\">",
        "Training of backbone `tiny`",
        "<h2 id=\"provenance\">",
        "pipeline digest",
        "<h3>Stages of the run</h3>",
    ] {
        assert!(html.contains(section), "no `{section}`");
    }
    let report = json(
        &t.args_run(["report", "pipeline.kdl", "--format", "json"])
            .success()
            .stdout,
    );
    let run_id = report["run"]["id"].as_str().unwrap();
    assert!(html.contains(run_id), "the run id");
    let digest = blake3_hex(&std::fs::read(t.path("pipeline.kdl")).unwrap());
    assert!(html.contains(&digest), "the pipeline's digest");
    let svgs: Vec<&str> = report["evaluations"][0]["metrics"]["plots"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_str())
        .filter(|p| p.ends_with(".svg"))
        .collect();
    assert!(svgs.len() >= 4, "{svgs:?}");
    for svg in &svgs {
        let name = svg.trim_start_matches("plots/");
        assert!(
            html.contains(&format!("<code>{name}</code></figcaption>")),
            "{name}"
        );
    }
    // Each plot and the training curve, inline.
    assert_eq!(html.matches("<svg class=\"plot\"").count(), svgs.len() + 1);
    assert!(!html.contains("could not be drawn"));

    // With `--compare`, the changes come first.
    t.args_run(["run", "pipeline.kdl", "--set", "lort.delta=0.5"])
        .success();
    t.args_run([
        "report",
        "pipeline.kdl",
        "--html",
        "diff.html",
        "--compare",
        "previous",
    ])
    .success();
    let diff = std::fs::read_to_string(t.path("diff.html")).unwrap();
    assert_well_nested(&diff);
    assert!(
        diff.contains("<h2 id=\"changes\">Changes since run"),
        "no changes section"
    );
    assert!(
        diff.contains("<td class=\"left\">lort</td>"),
        "the changed head"
    );
}

fn blake3_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}
