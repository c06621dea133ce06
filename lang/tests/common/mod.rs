//! Helpers shared by the lang test binaries.

use lortflow_lang::Checked;
use miette::{GraphicalReportHandler, GraphicalTheme};

/// Every diagnostic as people see it: miette, no colour, 100 columns.
pub(crate) fn render(checked: &Checked) -> String {
    let handler =
        GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor()).with_width(100);
    let mut out = String::new();
    for d in &checked.diagnostics {
        handler
            .render_report(&mut out, &d.render(&checked.pipeline.sources))
            .expect("rendering into a string");
    }
    out
}
