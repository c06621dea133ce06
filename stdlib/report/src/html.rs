//! The report of a run as one self-contained HTML page (`lortflow report --html`): the results
//! tables, every plot inlined as SVG, each head's recipe, the backbones' training curves, the
//! run's provenance and, when asked, the changes since an earlier run. Nothing outside the file
//! is referenced: no scripts, styles, fonts or images from elsewhere, so it can be mailed,
//! archived or opened offline; it prints on white with its tables unbroken.

use std::fmt::Write as _;

use serde_json::Value as Json;

use super::diff::{Change, is_accuracy};
use super::plot::{CurvePoint, training_curve_svg};
use super::tables::{accuracy_cell, number};

/// Everything a page shows.
pub struct HtmlReport<'a> {
    /// The pipeline file, as the user named it.
    pub pipeline: &'a str,
    /// blake3 of the pipeline file's bytes, as it is now.
    pub pipeline_digest: String,
    /// lortflow's version.
    pub version: &'a str,
    /// The backend the pipeline runs on.
    pub backend: String,
    /// The run reported.
    pub run: RunInfo,
    /// Its evaluations, in pipeline order.
    pub evaluations: Vec<HtmlEvaluation>,
    /// Its backbones, with their summaries.
    pub backbones: Vec<HtmlBackbone>,
    /// The changes since an earlier run (`--compare`): its id and the changes.
    pub compare: Option<(String, Vec<Change>)>,
}

/// Provenance of a run.
pub struct RunInfo {
    /// The run id (`.lortflow/runs/`).
    pub id: String,
    /// When it started.
    pub started_at: String,
    /// Its wall time.
    pub duration_s: f64,
    /// `(stage, kind, outcome, seconds)` per stage, in plan order.
    pub stages: Vec<(String, String, String, f64)>,
}

/// One evaluation: its `metrics.json` and its plots' SVG documents.
pub struct HtmlEvaluation {
    /// The evaluate stage.
    pub name: String,
    /// Its `metrics.json`.
    pub metrics: Json,
    /// `(file name, SVG document)` of each plot.
    pub plots: Vec<(String, String)>,
}

/// One backbone stage and its artifact's summary (`history` is its training curve).
pub struct HtmlBackbone {
    /// The stage.
    pub name: String,
    /// Its summary (`arch`, `test_top1`, `history`, `checkpoint`, …).
    pub summary: Json,
}

/// Text made safe for HTML.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An SVG document as an inline element: no XML prolog, and width scaling with the page.
fn inline_svg(svg: &str) -> String {
    match svg.find("<svg") {
        Some(start) => svg[start..].replacen("<svg", "<svg class=\"plot\" role=\"img\"", 1),
        None => "<p class=\"note\">(not an SVG document)</p>".into(),
    }
}

const STYLE: &str = r#"
:root { --ink: #1b1b1b; --muted: #5a5a5a; --rule: #d0d0d0; --band: #f4f5f7; --accent: #0b5cad; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
       margin: 0 auto; padding: 1.5rem 2rem 3rem; max-width: 1400px; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; }
h2 { font-size: 1.2rem; margin: 2rem 0 .5rem; border-bottom: 1px solid var(--rule); padding-bottom: .2rem; }
h3 { font-size: 1rem; margin: 1.25rem 0 .4rem; }
p.note, .muted { color: var(--muted); font-size: .9rem; }
code { font: .9em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
nav { font-size: .9rem; margin: .5rem 0 1rem; }
nav a { color: var(--accent); margin-right: 1rem; text-decoration: none; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-variant-numeric: tabular-nums; }
th, td { padding: .3rem .6rem; border-bottom: 1px solid var(--rule); text-align: right; white-space: nowrap; }
th { background: var(--band); position: sticky; top: 0; }
th.sortable { cursor: pointer; }
th.sortable::after { content: " \2195"; color: var(--muted); font-size: .8em; }
td.left, th.left { text-align: left; }
tbody tr:nth-child(even) { background: #fafafa; }
tr.stage1 td { font-style: italic; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; margin: .5rem 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; }
svg.plot { width: 100%; max-width: 1100px; height: auto; display: block; margin: .5rem 0 1.5rem; }
figure { margin: 0; break-inside: avoid; }
figcaption { color: var(--muted); font-size: .85rem; }
@media print {
  body { padding: 0; max-width: none; font-size: 11pt; }
  nav { display: none; }
  th { position: static; }
  h2 { break-after: avoid; }
  table, figure { break-inside: avoid; }
  .scroll { overflow: visible; }
}
"#;

/// Click a header to sort its table by that column (numbers by value, `—` last); the page works
/// without it.
const SORT_SCRIPT: &str = r#"
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.classList.add("sortable");
    th.addEventListener("click", function () {
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var down = th.dataset.dir !== "down";
      th.dataset.dir = down ? "down" : "up";
      var key = function (row) {
        var text = row.cells[col].textContent.trim();
        var num = parseFloat(text);
        return isNaN(num) ? text : num;
      };
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (typeof x !== typeof y) return typeof x === "number" ? -1 : 1;
        return (x < y ? -1 : x > y ? 1 : 0) * (down ? -1 : 1);
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"#;

/// A table: headers, rows of cells, the first `left` columns left-aligned.
fn table(out: &mut String, headers: &[&str], rows: &[Vec<String>], left: usize, sortable: bool) {
    let _ = write!(
        out,
        "<div class=\"scroll\"><table{}><thead><tr>",
        if sortable { " class=\"sortable\"" } else { "" }
    );
    for (i, h) in headers.iter().enumerate() {
        let class = if i < left { " class=\"left\"" } else { "" };
        let _ = write!(out, "<th{class}>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        let stage1 = row.first().is_some_and(|c| c.starts_with("stage-1"));
        out.push_str(if stage1 {
            "<tr class=\"stage1\">"
        } else {
            "<tr>"
        });
        for (i, cell) in row.iter().enumerate() {
            let class = if i < left { " class=\"left\"" } else { "" };
            let _ = write!(out, "<td{class}>{}</td>", esc(cell));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>\n");
}

fn heads(metrics: &Json) -> &[Json] {
    metrics["heads"].as_array().map_or(&[], Vec::as_slice)
}

fn opt_number(v: &Json) -> String {
    v.as_f64().map_or("—".into(), |v| number(v, 4))
}

/// The results table: accuracies with each head's recipe.
fn results_table(out: &mut String, metrics: &Json) {
    let rows: Vec<Vec<String>> = heads(metrics)
        .iter()
        .map(|h| {
            let recipe = &h["recipe"];
            let epochs = recipe["epochs"].as_u64();
            let text = |v: &Json| v.as_str().map_or("—".to_string(), str::to_string);
            let mut row = vec![
                h["name"].as_str().unwrap_or("").to_string(),
                h["method"].as_str().unwrap_or("").to_string(),
                text(&recipe["init"]),
                epochs.map_or("—".into(), |e| e.to_string()),
                recipe["lr"]
                    .as_f64()
                    .filter(|_| epochs != Some(0))
                    .map_or("—".into(), |v| number(v, 4)),
                recipe["weight_decay"]
                    .as_f64()
                    .filter(|_| epochs != Some(0))
                    .map_or("—".into(), |v| number(v, 4)),
            ];
            row.extend(["top1", "many", "medium", "few"].map(|k| accuracy_cell(&h[k])));
            row
        })
        .collect();
    table(
        out,
        &[
            "head",
            "method",
            "init",
            "epochs",
            "lr",
            "weight decay",
            "All",
            "Many",
            "Medium",
            "Few",
        ],
        &rows,
        3,
        true,
    );
}

/// The by-group tables of the per-class metrics that were computed.
fn group_tables(out: &mut String, metrics: &Json) {
    let specs = [
        (
            "logits_magnitude",
            "normalised_by_group",
            "Logits Magnitude, normalised (L̂ = L / mean |L|)",
        ),
        (
            "logits_magnitude",
            "by_group",
            "Logits Magnitude (raw logits)",
        ),
        (
            "rsd",
            "by_group",
            "Regularized Standard Deviation r = σ / L",
        ),
        ("weight_norms", "by_group", "Classifier weight norm ‖W‖₂"),
    ];
    for (metric, field, title) in specs {
        let rows: Vec<Vec<String>> = heads(metrics)
            .iter()
            .filter(|h| h.get(metric).is_some())
            .map(|h| {
                let g = &h[metric][field];
                vec![
                    h["name"].as_str().unwrap_or("").to_string(),
                    opt_number(&g["many"]),
                    opt_number(&g["medium"]),
                    opt_number(&g["few"]),
                ]
            })
            .collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(out, "<h3>{}, mean by group</h3>", esc(title));
        table(out, &["head", "Many", "Medium", "Few"], &rows, 1, true);
    }
}

fn caption(file: &str) -> &'static str {
    let stem = file.trim_end_matches(".svg");
    if stem.starts_with("class-counts") {
        "Training images per class, head to tail, coloured by group."
    } else if stem == "per-class-accuracy" {
        "Test accuracy of each class (trial 0), classes sorted by training count."
    } else if stem == "logits-magnitude-rsd" {
        "Normalised Logits Magnitude and RSD by class group (the paper's Fig. 3)."
    } else if stem.ends_with("-heatmap") {
        "Top-1 accuracy over the grid of a two-parameter sweep (the paper's Fig. 5)."
    } else if stem.starts_with("sweep-") {
        "Accuracy against the swept value (the paper's Fig. 4)."
    } else {
        ""
    }
}

fn changes_table(out: &mut String, old: &str, changes: &[Change]) {
    let _ = writeln!(
        out,
        "<h2 id=\"changes\">Changes since run <code>{}</code></h2>",
        esc(old)
    );
    if changes.is_empty() {
        out.push_str("<p>No metric changed.</p>\n");
        return;
    }
    let cell = |metric: &str, v: Option<f64>, signed: bool| match v {
        None => "—".to_string(),
        Some(v) if is_accuracy(metric) && signed => format!("{:+.2}", 100.0 * v),
        Some(v) if is_accuracy(metric) => format!("{:.2}", 100.0 * v),
        Some(v) if signed && v >= 0.0 => format!("+{}", number(v, 4)),
        Some(v) => number(v, 4),
    };
    let rows: Vec<Vec<String>> = changes
        .iter()
        .map(|c| {
            vec![
                c.evaluate.clone(),
                c.head.clone(),
                c.metric.clone(),
                cell(&c.metric, c.old, false),
                cell(&c.metric, c.new, false),
                cell(&c.metric, c.change, true),
            ]
        })
        .collect();
    out.push_str("<p class=\"note\">Accuracies in %.</p>\n");
    table(
        out,
        &["evaluate", "head", "metric", "old", "new", "change"],
        &rows,
        3,
        true,
    );
}

fn backbone_section(out: &mut String, b: &HtmlBackbone) {
    let s = &b.summary;
    let _ = writeln!(out, "<h3>Backbone <code>{}</code></h3>", esc(&b.name));
    out.push_str("<dl class=\"facts\">");
    let mut fact = |label: &str, value: String| {
        let _ = write!(out, "<dt>{}</dt><dd>{}</dd>", esc(label), esc(&value));
    };
    fact(
        "architecture",
        s["arch"].as_str().unwrap_or("?").to_string(),
    );
    if let Some(acc) = s["test_top1"].as_f64() {
        fact(
            "test accuracy (own classifier)",
            format!("{:.2} %", 100.0 * acc),
        );
    }
    if let Some(p) = s["parameters"].as_u64() {
        fact("parameters", p.to_string());
    }
    if let Some(t) = s["train_seconds"].as_f64() {
        fact("training time", format!("{t:.1} s"));
    }
    if let Some(ck) = s.get("checkpoint") {
        fact(
            "imported from",
            format!(
                "{} (trunk `{}`, classifier `{}`, {})",
                ck["file"].as_str().unwrap_or("a checkpoint"),
                ck["trunk"].as_str().unwrap_or(""),
                ck["classifier"].as_str().unwrap_or(""),
                ck["classifier_kind"].as_str().unwrap_or("linear")
            ),
        );
    }
    out.push_str("</dl>\n");
    let points: Vec<CurvePoint> = s["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter_map(|e| {
                    Some((
                        e["epoch"].as_u64()? as usize,
                        e["loss"].as_f64()?,
                        e["train_acc"].as_f64()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    if points.is_empty() {
        if s.get("checkpoint").is_none() {
            out.push_str(
                "<p class=\"note\">No training curve: this backbone was trained by a lortflow \
                 that did not record one (re-train it with <code>--force</code> to get it).</p>\n",
            );
        }
        return;
    }
    match training_curve_svg(&b.name, &points) {
        Ok(svg) => {
            let _ = writeln!(
                out,
                "<figure>{}<figcaption>Mean loss and train accuracy per epoch (augmented \
                 training images).</figcaption></figure>",
                inline_svg(&svg)
            );
        }
        Err(e) => {
            let _ = writeln!(
                out,
                "<p class=\"note\">The training curve could not be drawn: {}</p>",
                esc(&e.to_string())
            );
        }
    }
}

/// The page.
pub fn html(report: &HtmlReport<'_>) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>lortflow report: {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        esc(report.pipeline)
    );
    let _ = writeln!(
        out,
        "<h1>Results of <code>{}</code></h1>\n<p class=\"muted\">run <code>{}</code>, started {}, \
         {:.1} s</p>",
        esc(report.pipeline),
        esc(&report.run.id),
        esc(&report.run.started_at),
        report.run.duration_s
    );
    out.push_str("<nav>");
    for e in &report.evaluations {
        let _ = write!(out, "<a href=\"#eval-{0}\">{0}</a>", esc(&e.name));
    }
    if !report.backbones.is_empty() {
        out.push_str("<a href=\"#backbones\">backbones</a>");
    }
    if report.compare.is_some() {
        out.push_str("<a href=\"#changes\">changes</a>");
    }
    out.push_str("<a href=\"#provenance\">provenance</a></nav>\n");

    if let Some((old, changes)) = &report.compare {
        changes_table(&mut out, old, changes);
    }
    for e in &report.evaluations {
        let _ = writeln!(
            out,
            "<h2 id=\"eval-{0}\">Evaluation <code>{0}</code></h2>",
            esc(&e.name)
        );
        results_table(&mut out, &e.metrics);
        out.push_str(
            "<p class=\"note\">Top-1 accuracy (%) on the balanced test split; Many / Medium / Few \
             are means of per-class accuracies over each group's classes (groups from training \
             counts). With several trials a cell reads mean±std over the trials (population std). \
             The <em>stage-1</em> row is the backbone's own classifier. Click a column to sort.</p>\n",
        );
        group_tables(&mut out, &e.metrics);
        for (file, svg) in &e.plots {
            let _ = writeln!(
                out,
                "<figure>{}<figcaption>{} <code>{}</code></figcaption></figure>",
                inline_svg(svg),
                esc(caption(file)),
                esc(file)
            );
        }
    }
    if !report.backbones.is_empty() {
        out.push_str("<h2 id=\"backbones\">Backbones</h2>\n");
        for b in &report.backbones {
            backbone_section(&mut out, b);
        }
    }
    out.push_str("<h2 id=\"provenance\">Provenance</h2>\n<dl class=\"facts\">");
    for (label, value) in [
        ("pipeline", report.pipeline.to_string()),
        (
            "pipeline digest (blake3, as the file is now)",
            report.pipeline_digest.clone(),
        ),
        ("lortflow", report.version.to_string()),
        ("backend", report.backend.clone()),
        ("run", report.run.id.clone()),
        ("started", report.run.started_at.clone()),
        ("wall time", format!("{:.1} s", report.run.duration_s)),
    ] {
        let _ = write!(
            out,
            "<dt>{}</dt><dd><code>{}</code></dd>",
            esc(label),
            esc(&value)
        );
    }
    out.push_str("</dl>\n<h3>Stages of the run</h3>\n");
    let rows: Vec<Vec<String>> = report
        .run
        .stages
        .iter()
        .map(|(name, kind, outcome, seconds)| {
            vec![
                name.clone(),
                kind.clone(),
                outcome.clone(),
                format!("{seconds:.2}"),
            ]
        })
        .collect();
    table(
        &mut out,
        &["stage", "kind", "outcome", "seconds"],
        &rows,
        3,
        true,
    );
    let _ = write!(out, "<script>{SORT_SCRIPT}</script>\n</body>\n</html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_svg_inlined_without_its_prolog() {
        assert_eq!(esc("<a & 'b'>"), "&lt;a &amp; &#39;b&#39;&gt;");
        let svg = inline_svg("<?xml version=\"1.0\"?>\n<svg width=\"10\"></svg>");
        assert!(svg.starts_with("<svg class=\"plot\""), "{svg}");
    }
}
