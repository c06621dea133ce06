//! lortflow's reports, without a tensor library: the evaluation [`metric`]s computed from test
//! logits (accuracy by class group, Logits Magnitude, RSD), metrics derived by class group, the
//! text and Markdown tables of a `metrics.json` (schema `lortflow.metrics.v1`, documented in
//! `docs/metrics.md`), the differences between two runs, the plots and the HTML page.

mod derived;
mod diff;
mod html;
pub mod metric;
mod plot;
mod tables;

pub use derived::{Normalised, defined, group_means, head_to_tail, normalise_mean_abs};
pub use diff::{Change, diff, is_accuracy, scalars};
pub use html::{HtmlBackbone, HtmlEvaluation, HtmlReport, RunInfo, html};
pub use plot::{CurvePoint, HeadPlot, PlotError, SweepPoint, training_curve_svg, write_plots};
pub use tables::{Style, accuracy_cell, accuracy_table, markdown, number, text};
