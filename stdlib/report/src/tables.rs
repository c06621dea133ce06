//! Text and Markdown renderings of a `metrics.json` (schema in `docs/metrics.md`): the Tab. 1-style
//! accuracy table and, where computed, Logits Magnitude, RSD and weight norms by class group.
//!
//! Rendering reads the JSON rather than in-memory results so that the evaluate stage (its table
//! and `report.md`) and `lortflow report` (on stored artifacts) show the same thing.

use std::fmt::Write;

use serde_json::Value as Json;

/// Plain text or Markdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Aligned columns for a terminal.
    Text,
    /// GitHub-flavoured Markdown tables.
    Markdown,
}

/// A table whose first `left` columns are left-aligned and the others right-aligned.
struct Table {
    headers: Vec<String>,
    left: usize,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn render(&self, style: Style) -> String {
        let mut out = String::new();
        match style {
            Style::Text => {
                let widths: Vec<usize> = (0..self.headers.len())
                    .map(|c| {
                        self.rows
                            .iter()
                            .map(|r| r[c].chars().count())
                            .chain([self.headers[c].chars().count()])
                            .max()
                            .unwrap_or(0)
                    })
                    .collect();
                let line = |cells: &[String]| {
                    let mut s = String::new();
                    for (c, (cell, w)) in cells.iter().zip(&widths).enumerate() {
                        if c > 0 {
                            s.push_str("  ");
                        }
                        if c < self.left {
                            let _ = write!(s, "{cell:<w$}");
                        } else {
                            let _ = write!(s, "{cell:>w$}");
                        }
                    }
                    s.trim_end().to_string()
                };
                let _ = writeln!(out, "{}", line(&self.headers));
                for r in &self.rows {
                    let _ = writeln!(out, "{}", line(r));
                }
            }
            Style::Markdown => {
                let _ = writeln!(out, "| {} |", self.headers.join(" | "));
                let rule: Vec<&str> = (0..self.headers.len())
                    .map(|c| if c < self.left { "---" } else { "---:" })
                    .collect();
                let _ = writeln!(out, "| {} |", rule.join(" | "));
                for r in &self.rows {
                    let _ = writeln!(out, "| {} |", r.join(" | "));
                }
            }
        }
        out
    }
}

fn heads(metrics: &Json) -> &[Json] {
    metrics["heads"].as_array().map_or(&[], Vec::as_slice)
}

fn name_cell(name: &str, style: Style) -> String {
    match style {
        Style::Text => name.to_string(),
        Style::Markdown => format!("`{name}`"),
    }
}

/// An accuracy summary (`{best, mean, std, values}`) as `value` for one trial or `mean ± std`
/// over several, in %: differences smaller than the spread of trials are not results.
pub fn accuracy_cell(summary: &Json) -> String {
    let Some(best) = summary["best"].as_f64() else {
        return "n/a".into();
    };
    let trials = summary["values"].as_array().map_or(0, Vec::len);
    if trials > 1 {
        format!(
            "{:.2}±{:.2}",
            100.0 * summary["mean"].as_f64().unwrap_or(f64::NAN),
            100.0 * summary["std"].as_f64().unwrap_or(f64::NAN)
        )
    } else {
        format!("{:.2}", 100.0 * best)
    }
}

/// `v` as written in a pipeline: `0.2`, `5e-4`.
fn short_number(v: f64) -> String {
    if v != 0.0 && v.abs() < 0.01 {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

fn number_cell(value: &Json) -> String {
    value
        .as_f64()
        .map_or_else(|| "n/a".into(), |v| number(v, 3))
}

/// `decimals` places, or scientific notation for small values (RSDs can be ~1e-3) so that they
/// keep their significant digits.
pub fn number(v: f64, decimals: usize) -> String {
    if v != 0.0 && v.abs() < 0.01 {
        format!("{v:.2e}")
    } else {
        format!("{v:.decimals$}")
    }
}

/// The accuracy table: head, method, its recipe (init, epochs, lr), All / Many / Medium / Few
/// (%). Rows without a recipe (stage-1, or results written before recipes were recorded) show
/// `—`.
pub fn accuracy_table(metrics: &Json, style: Style) -> String {
    let table = Table {
        headers: [
            "head", "method", "init", "epochs", "lr", "All", "Many", "Medium", "Few",
        ]
        .map(String::from)
        .to_vec(),
        left: 3,
        rows: heads(metrics)
            .iter()
            .map(|h| {
                let recipe = &h["recipe"];
                let or_dash = |cell: Option<String>| cell.unwrap_or_else(|| "—".into());
                let epochs = recipe["epochs"].as_u64();
                // A head with no epochs has no learning rate to speak of.
                let lr = recipe["lr"].as_f64().filter(|_| epochs != Some(0));
                let mut row = vec![
                    name_cell(h["name"].as_str().unwrap_or(""), style),
                    h["method"].as_str().unwrap_or("").to_string(),
                    or_dash(recipe["init"].as_str().map(str::to_string)),
                    or_dash(epochs.map(|e| e.to_string())),
                    or_dash(lr.map(short_number)),
                ];
                row.extend(["top1", "many", "medium", "few"].map(|k| accuracy_cell(&h[k])));
                row
            })
            .collect(),
    };
    let mut out = table.render(style);
    let most_trials = heads(metrics)
        .iter()
        .filter_map(|h| h["top1"]["values"].as_array().map(Vec::len))
        .max()
        .unwrap_or(1);
    if style == Style::Text && most_trials > 1 {
        let _ = writeln!(
            out,
            "(mean±std over trials, population std; the best trial is in metrics.json)"
        );
    }
    out
}

/// The by-group tables of the per-class metrics that were computed: `(title, table)` pairs.
fn group_tables(metrics: &Json, style: Style) -> Vec<(String, String)> {
    let normaliser = "L̂_i = L_i / mean_k |L_k|";
    let specs: [(&str, &str, String); 4] = [
        (
            "logits_magnitude",
            "normalised_by_group",
            format!("Logits Magnitude, normalised ({normaliser}), mean by group"),
        ),
        (
            "logits_magnitude",
            "by_group",
            "Logits Magnitude L_i (raw logits), mean by group".into(),
        ),
        (
            "rsd",
            "by_group",
            format!(
                "Regularized Standard Deviation r_i = σ_i / L_i (σ over {} samples), mean by group",
                metrics["rsd_over"].as_str().unwrap_or("positive")
            ),
        ),
        (
            "weight_norms",
            "by_group",
            "Classifier weight norm ‖W_i‖₂, mean by group".into(),
        ),
    ];
    let mut out = Vec::new();
    for (metric, field, title) in specs {
        if !heads(metrics).iter().any(|h| h.get(metric).is_some()) {
            continue;
        }
        let table = Table {
            headers: ["head", "Many", "Medium", "Few"].map(String::from).to_vec(),
            left: 1,
            rows: heads(metrics)
                .iter()
                .filter(|h| h.get(metric).is_some())
                .map(|h| {
                    let g = &h[metric][field];
                    vec![
                        name_cell(h["name"].as_str().unwrap_or(""), style),
                        number_cell(&g["many"]),
                        number_cell(&g["medium"]),
                        number_cell(&g["few"]),
                    ]
                })
                .collect(),
        };
        out.push((title, table.render(style)));
    }
    out
}

const ACCURACY_NOTE: &str = "Top-1 accuracy (%) on the balanced test split. Many / medium / few are \
     means of per-class accuracies over the classes of each group (groups from training counts); \
     `n/a` marks an empty group. With several trials a cell reads `mean±std` over the trials \
     (population std; the best trial is in `metrics.json`).";

/// Everything, for a terminal: the accuracy table, then the group tables.
pub fn text(metrics: &Json) -> String {
    let mut out = accuracy_table(metrics, Style::Text);
    for (title, table) in group_tables(metrics, Style::Text) {
        let _ = write!(out, "\n{title}\n{table}");
    }
    out
}

/// The Markdown report (`report.md`): tables, notes and links to the plots, each link being
/// `plot_prefix` followed by the plot's path in the artifact (`plots/…`).
pub fn markdown(metrics: &Json, plot_prefix: &str) -> String {
    let mut out = format!(
        "# Results of `{}`\n\n",
        metrics["evaluate"].as_str().unwrap_or("")
    );
    out.push_str(&accuracy_table(metrics, Style::Markdown));
    let _ = writeln!(out, "\n{ACCURACY_NOTE}");
    let tables = group_tables(metrics, Style::Markdown);
    if !tables.is_empty() {
        let _ = writeln!(
            out,
            "\nPer-class metrics below are of trial 0, on the test split; group values are means \
             over the group's classes where the metric is defined."
        );
    }
    for (title, table) in tables {
        let _ = write!(out, "\n## {title}\n\n{table}");
    }
    let plots: Vec<&str> = metrics["plots"]
        .as_array()
        .map_or_else(Vec::new, |p| p.iter().filter_map(Json::as_str).collect());
    let svgs: Vec<&&str> = plots.iter().filter(|p| p.ends_with(".svg")).collect();
    if !svgs.is_empty() {
        let _ = writeln!(out, "\n## Plots\n");
        for p in svgs {
            let _ = writeln!(out, "![{p}]({plot_prefix}{p})\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn metrics() -> Json {
        json!({
            "evaluate": "table",
            "rsd_over": "positive",
            "heads": [
                {
                    "name": "ce", "method": "ce",
                    "recipe": {"init": "random", "epochs": 10, "batch_size": 512, "lr": 0.2, "weight_decay": 5e-4},
                    "top1": {"best": 0.5, "mean": 0.5, "std": 0.0, "values": [0.5]},
                    "many": {"best": 0.75, "mean": 0.75, "std": 0.0, "values": [0.75]},
                    "medium": null,
                    "few": {"best": 0.125, "mean": 0.125, "std": 0.0, "values": [0.125]},
                    "rsd": {"by_group": {"many": 0.25, "medium": null, "few": 1.5}},
                },
                {
                    "name": "lort", "method": "lort",
                    "top1": {"best": 0.6, "mean": 0.55, "std": 0.05, "values": [0.5, 0.6]},
                    "many": null, "medium": null, "few": null,
                },
            ],
            "plots": ["plots/a.svg", "plots/a.png"],
        })
    }

    #[test]
    fn text_and_markdown_tables() {
        let m = metrics();
        let text = text(&m);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "head  method  init    epochs   lr         All   Many  Medium    Few"
        );
        assert_eq!(
            lines[1],
            "ce    ce      random      10  0.2       50.00  75.00     n/a  12.50"
        );
        assert_eq!(
            lines[2],
            "lort  lort    —            —    —  55.00±5.00    n/a     n/a    n/a"
        );
        assert!(lines[3].starts_with("(mean±std over trials"), "{text}");
        assert_eq!(short_number(5e-4), "5e-4");
        assert_eq!(short_number(0.2), "0.2");
        // Only heads with an RSD appear in its table.
        assert!(text.contains("σ over positive samples"), "{text}");
        assert!(text.contains("ce    0.250     n/a  1.500"), "{text}");
        assert_eq!(number(0.00123, 3), "1.23e-3");
        assert_eq!(number(-0.5, 4), "-0.5000");
        let md = markdown(&m, "");
        assert!(
            md.starts_with("# Results of `table`\n\n| head | method | init | epochs | lr | All |")
        );
        assert!(
            md.contains("| `ce` | ce | random | 10 | 0.2 | 50.00 | 75.00 | n/a | 12.50 |"),
            "{md}"
        );
        assert!(md.contains("![plots/a.svg](plots/a.svg)"), "{md}");
        assert!(!md.contains("a.png"), "{md}");
        assert!(markdown(&m, "/store/x/").contains("![plots/a.svg](/store/x/plots/a.svg)"));
    }
}
