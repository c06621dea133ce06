//! Rendering diagnostics for people (miette, with or without colour) and for tools (JSON).

use lortflow_lang::{Checked, Diagnostic, SourceMap};
use miette::{GraphicalReportHandler, GraphicalTheme};

/// Whether to colour output written to stderr: a terminal, and `NO_COLOR` unset.
pub(crate) fn stderr_color() -> bool {
    use std::io::IsTerminal;
    std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal()
}

/// Renders diagnostics as miette reports.
pub(crate) fn human(diagnostics: &[Diagnostic], sources: &SourceMap, color: bool) -> String {
    let theme = if color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let width = terminal_width();
    let handler = GraphicalReportHandler::new_themed(theme).with_width(width);
    let mut out = String::new();
    for d in diagnostics {
        // Rendering into a String cannot fail.
        let _ = handler.render_report(&mut out, &d.render(sources));
    }
    out
}

fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(100)
        .clamp(60, 200)
}

/// "2 errors, 1 warning".
pub(crate) fn counts(checked: &Checked) -> String {
    let (errors, warnings) = checked.counts();
    let plural = |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
    match (errors, warnings) {
        (0, 0) => "no problems".into(),
        (e, 0) => plural(e, "error"),
        (0, w) => plural(w, "warning"),
        (e, w) => format!("{}, {}", plural(e, "error"), plural(w, "warning")),
    }
}
