//! Diagnostics: every problem the checker finds, with a stable code, spans, labels and help.

use std::fmt;
use std::sync::Arc;

use crate::source::{SourceFile, SourceMap, Span};

macro_rules! codes {
    ($($variant:ident = $name:literal, $severity:ident, $doc:literal;)*) => {
        /// The stable code of a diagnostic. Codes never change meaning; editors and CI match on them.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Code { $(#[doc = $doc] $variant,)* }

        impl Code {
            /// Every code, in documentation order.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            /// The code as printed: `lortflow::unknown-method`.
            pub fn as_str(&self) -> &'static str {
                match self { $(Code::$variant => concat!("lortflow::", $name),)* }
            }

            /// The default severity.
            pub fn severity(&self) -> Severity {
                match self { $(Code::$variant => Severity::$severity,)* }
            }

            /// What the diagnostic means.
            pub fn doc(&self) -> &'static str {
                match self { $(Code::$variant => $doc,)* }
            }
        }
    };
}

codes! {
    Syntax = "syntax", Error, "The file is not valid KDL.";
    TooManyProblems = "too-many-problems", Error, "More than 100 problems: the rest are not shown (a warning when all the rest are warnings).";
    TooLarge = "too-large", Error, "A pipeline file larger than 1 MiB, or with more than 32,768 `{`.";
    TooDeep = "too-deep", Error, "`{ ... }` blocks nested deeper than any pipeline can be (32 levels).";
    Io = "io", Error, "A file could not be read.";
    MissingVersion = "missing-version", Error, "The file does not start with `lortflow 1`.";
    UnknownNode = "unknown-node", Error, "A node name the language does not have at this place.";
    UnknownProperty = "unknown-property", Error, "A property the node does not have.";
    UnexpectedArgument = "unexpected-argument", Error, "More positional arguments than the node takes.";
    UnexpectedChildren = "unexpected-children", Error, "A `{ ... }` block on a node that has no children.";
    UnknownMethod = "unknown-method", Error, "A head method that does not exist.";
    UnknownValue = "unknown-value", Error, "A name outside the node's fixed set of choices.";
    WrongType = "wrong-type", Error, "A value of the wrong type (a string where a number is expected...).";
    OutOfRange = "out-of-range", Error, "A number outside its valid range.";
    MissingRequired = "missing-required", Error, "A required node, argument or property is missing.";
    DuplicateStage = "duplicate-stage", Error, "Two stages have the same name.";
    DuplicateNode = "duplicate-node", Error, "A node that may appear once appears twice.";
    DuplicateProperty = "duplicate-property", Error, "A property is given twice on one node.";
    UndefinedStage = "undefined-stage", Error, "A reference to a stage that does not exist.";
    WrongStageKind = "wrong-stage-kind", Error, "A reference to a stage of the wrong kind.";
    Cycle = "cycle", Error, "Stages that depend on each other in a cycle.";
    ParamNotForMethod = "param-not-for-method", Error, "A property that belongs to another method or variant.";
    ConflictingOptions = "conflicting-options", Error, "Options that cannot be used together.";
    InvalidCombination = "invalid-combination", Error, "Head components that make no sense together.";
    IncludeMissing = "include-missing", Error, "An `include` of a file that cannot be read.";
    IncludeCycle = "include-cycle", Error, "Files that include each other.";
    InvalidSweep = "invalid-sweep", Error, "A sweep target that is not a parameter of its base, or a bad value.";
    NoMatch = "no-match", Error, "A heads pattern of `evaluate` that matches no head.";
    UnusedStage = "unused-stage", Warning, "A stage whose result nothing uses.";
    SmallDelta = "small-delta", Warning, "LORT with δ below 0.5: ordinary label smoothing, not LORT.";
    TestSelection = "test-selection", Warning, "Model selection on the test split inflates results.";
    DoubleBalancing = "double-balancing", Warning, "Two components that both correct the class prior.";
    UnusedSetting = "unused-setting", Warning, "A setting that has no effect in this configuration.";
    CheckpointNormalize = "checkpoint-normalize", Warning, "A backbone checkpoint without the input normalisation it was trained with.";
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How serious a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Blocks running the pipeline.
    Error,
    /// Worth reading; the pipeline still runs.
    Warning,
}

/// A labelled span.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    /// Where.
    pub span: Span,
    /// A short noun phrase.
    pub text: String,
}

/// One problem found in a pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    /// Stable code.
    pub code: Code,
    /// Severity.
    pub severity: Severity,
    /// What is wrong: lowercase, no final period, names in backticks.
    pub message: String,
    /// The primary label; its file is the diagnostic's file.
    pub primary: Label,
    /// Further labels in the same file.
    pub secondary: Vec<Label>,
    /// How to fix it, as a full sentence.
    pub help: Option<String>,
}

impl Diagnostic {
    /// A diagnostic with the code's default severity.
    pub fn new(
        code: Code,
        message: impl Into<String>,
        span: Span,
        label: impl Into<String>,
    ) -> Self {
        Diagnostic {
            code,
            severity: code.severity(),
            message: message.into(),
            primary: Label {
                span,
                text: label.into(),
            },
            secondary: Vec::new(),
            help: None,
        }
    }

    /// Adds help.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Adds a secondary label (ignored when it is in another file than the primary one).
    pub fn with_label(mut self, span: Span, text: impl Into<String>) -> Self {
        if span.file == self.primary.span.file && !span.is_synthetic() {
            self.secondary.push(Label {
                span,
                text: text.into(),
            });
        }
        self
    }

    /// Whether this is an error.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Binds the diagnostic to its source text so it can be rendered by miette.
    ///
    /// Lines longer than [`MAX_SHOWN_LINE`] bytes are shown as a window around their labels
    /// (miette pads a label out to its column, and cannot pad past column 65,535), and long names
    /// in the message are shortened; [`to_json`](Self::to_json) keeps exact positions.
    pub fn render(&self, sources: &SourceMap) -> RenderedDiagnostic {
        let mut diagnostic = self.clone();
        diagnostic.message = shorten_quoted(&diagnostic.message);
        diagnostic.help = diagnostic.help.as_deref().map(shorten_quoted);
        let Some(file) = sources.get(self.primary.span.file) else {
            return RenderedDiagnostic {
                diagnostic,
                source: None,
            };
        };
        let points: Vec<usize> = std::iter::once(&self.primary)
            .chain(&self.secondary)
            .map(|l| l.span.offset)
            .collect();
        let source = match ClippedText::new(&file.text, &points) {
            None => Shown::Whole(file.clone()),
            Some(clipped) => {
                for label in
                    std::iter::once(&mut diagnostic.primary).chain(&mut diagnostic.secondary)
                {
                    let start = clipped.map(label.span.offset);
                    let end = clipped.map(label.span.offset + label.span.len).max(start);
                    label.span.offset = start;
                    label.span.len = end - start;
                }
                Shown::Clipped {
                    path: file.path.display().to_string(),
                    clipped,
                }
            }
        };
        RenderedDiagnostic {
            diagnostic,
            source: Some(source),
        }
    }

    /// The stable JSON form (see `docs/language.md`, "Diagnostics").
    pub fn to_json(&self, sources: &SourceMap) -> serde_json::Value {
        let file = sources.get(self.primary.span.file);
        let locate = |span: &Span| {
            let (line, column) = file.map_or((0, 0), |f| f.line_col(span.offset));
            (line, column)
        };
        let (line, column) = locate(&self.primary.span);
        let labels: Vec<serde_json::Value> = std::iter::once(&self.primary)
            .chain(&self.secondary)
            .map(|l| {
                let (line, column) = locate(&l.span);
                serde_json::json!({
                    "message": l.text,
                    "line": line,
                    "column": column,
                    "offset": l.span.offset,
                    "length": l.span.len,
                })
            })
            .collect();
        serde_json::json!({
            "code": self.code.as_str(),
            "severity": self.severity,
            "message": self.message,
            "file": file.map(|f| f.path.display().to_string()),
            "line": line,
            "column": column,
            "offset": self.primary.span.offset,
            "length": self.primary.span.len,
            "labels": labels,
            "help": self.help,
        })
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A diagnostic together with its source text: a `miette::Diagnostic` ready to print.
#[derive(Debug)]
pub struct RenderedDiagnostic {
    diagnostic: Diagnostic,
    source: Option<Shown>,
}

/// The source text a rendered diagnostic shows.
#[derive(Debug)]
enum Shown {
    Whole(Arc<SourceFile>),
    /// The file with its over-long lines cut down; the diagnostic's spans point into this text.
    Clipped {
        path: String,
        clipped: ClippedText,
    },
}

/// Source lines longer than this many bytes are shown as a window around their labels.
pub const MAX_SHOWN_LINE: usize = 160;
/// How much of a clipped line is kept before the first label on it.
const SHOWN_BEFORE_LABEL: usize = 40;
/// Names in backticks longer than this many characters are shortened in rendered messages.
const MAX_SHOWN_NAME: usize = 60;
const ELLIPSIS: &str = "…";

/// A text whose long lines are cut to a window, and how offsets move.
#[derive(Debug)]
struct ClippedText {
    text: String,
    /// One per line of the original text, in order.
    lines: Vec<ClippedLine>,
}

#[derive(Debug)]
struct ClippedLine {
    /// Where the line starts in the original text and in the clipped one.
    original_start: usize,
    start: usize,
    /// The kept window `[from, to)` of the original line, when it was clipped, and the length of
    /// the marker written before it.
    window: Option<(usize, usize, usize)>,
    /// Bytes dropped before the window minus the marker's bytes (for columns).
    column_shift: usize,
}

impl ClippedText {
    /// `None` when no line is too long. `points` are the labels' offsets, the primary first: a
    /// clipped line keeps the text around the primary label if it is on the line, else around
    /// the first other label on it.
    fn new(text: &str, points: &[usize]) -> Option<ClippedText> {
        if !lines_of(text).any(|(_, body, _)| body.len() > MAX_SHOWN_LINE) {
            return None;
        }
        let mut out = String::new();
        let mut lines = Vec::new();
        for (line_start, body, ending) in lines_of(text) {
            let line_end = line_start + body.len();
            if body.len() <= MAX_SHOWN_LINE {
                lines.push(ClippedLine {
                    original_start: line_start,
                    start: out.len(),
                    window: None,
                    column_shift: 0,
                });
                out.push_str(body);
                out.push_str(ending);
                continue;
            }
            let on_line = |p: &usize| (line_start..=line_end).contains(p);
            let anchor = points
                .first()
                .filter(|p| on_line(p))
                .or_else(|| points.iter().filter(|p| on_line(p)).min())
                .copied();
            let mut from = anchor.map_or(line_start, |p| {
                floor_boundary(text, p.saturating_sub(SHOWN_BEFORE_LABEL).max(line_start))
            });
            // Dropping a few bytes saves nothing and would need a marker longer than them.
            if from - line_start < 8 {
                from = line_start;
            }
            let to = ceil_boundary(text, (from + MAX_SHOWN_LINE).min(line_end));
            let marker = if from > line_start { ELLIPSIS } else { "" };
            // miette counts columns in bytes.
            let dropped = from - line_start;
            lines.push(ClippedLine {
                original_start: line_start,
                start: out.len(),
                window: Some((from, to, marker.len())),
                column_shift: dropped - marker.len(),
            });
            out.push_str(marker);
            out.push_str(&text[from..to]);
            if to < line_end {
                out.push(' ');
                out.push_str(ELLIPSIS);
            }
            out.push_str(ending);
        }
        Some(ClippedText { text: out, lines })
    }

    /// Where an original offset is in the clipped text (clamped into the kept window).
    fn map(&self, offset: usize) -> usize {
        let i = self
            .lines
            .partition_point(|l| l.original_start <= offset)
            .saturating_sub(1);
        let Some(line) = self.lines.get(i) else {
            return 0;
        };
        match line.window {
            None => line.start + (offset - line.original_start),
            Some((from, to, marker)) => line.start + marker + (offset.clamp(from, to) - from),
        }
    }

    /// How many bytes were dropped before `offset` (clipped coordinates) on its line.
    fn column_shift(&self, offset: usize) -> usize {
        let i = self
            .lines
            .partition_point(|l| l.start <= offset)
            .saturating_sub(1);
        self.lines.get(i).map_or(0, |l| match l.window {
            Some((_, _, marker)) if offset >= l.start + marker => l.column_shift,
            _ => 0,
        })
    }
}

/// The lines of `text` as miette counts them (ended by `\n`, `\r\n` or a lone `\r`): start
/// offset, body and line ending.
fn lines_of(text: &str) -> impl Iterator<Item = (usize, &str, &str)> {
    let bytes = text.as_bytes();
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= bytes.len() {
            return None;
        }
        let end = bytes[start..]
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .map_or(bytes.len(), |p| start + p);
        let ending_len = match &bytes[end..] {
            [b'\r', b'\n', ..] => 2,
            [] => 0,
            _ => 1,
        };
        let line = (start, &text[start..end], &text[end..end + ending_len]);
        start = end + ending_len;
        Some(line)
    })
}

fn floor_boundary(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_boundary(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// Shortens every backticked name longer than [`MAX_SHOWN_NAME`] characters to its start and end.
fn shorten_quoted(text: &str) -> String {
    let parts: Vec<&str> = text.split('`').collect();
    // Odd-indexed parts are inside backticks when the backticks pair up.
    let paired = parts.len() % 2 == 1;
    parts
        .iter()
        .enumerate()
        .map(|(i, part)| {
            let chars = part.chars().count();
            if paired && i % 2 == 1 && chars > MAX_SHOWN_NAME {
                let head: String = part.chars().take(MAX_SHOWN_NAME - 20).collect();
                let tail: String = part.chars().skip(chars - 12).collect();
                format!("{head}{ELLIPSIS}{tail} ({chars} characters)")
            } else {
                (*part).to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("`")
}

impl fmt::Display for RenderedDiagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.diagnostic.message)
    }
}

impl std::error::Error for RenderedDiagnostic {}

impl miette::Diagnostic for RenderedDiagnostic {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.diagnostic.code.as_str()))
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.diagnostic.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.diagnostic
            .help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.source.as_ref().map(|s| s as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        self.source.as_ref()?;
        let d = &self.diagnostic;
        let primary = std::iter::once(miette::LabeledSpan::new_primary_with_span(
            Some(d.primary.text.clone()),
            d.primary.span.source_span(),
        ));
        let secondary = d.secondary.iter().map(|l| {
            miette::LabeledSpan::new_with_span(Some(l.text.clone()), l.span.source_span())
        });
        Some(Box::new(primary.chain(secondary)))
    }
}

impl miette::SourceCode for SourceFile {
    fn read_span<'a>(
        &'a self,
        span: &miette::SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn miette::SpanContents<'a> + 'a>, miette::MietteError> {
        named_span(
            &self.text,
            self.path.display().to_string(),
            span,
            (context_lines_before, context_lines_after),
            0,
        )
    }
}

impl miette::SourceCode for Shown {
    fn read_span<'a>(
        &'a self,
        span: &miette::SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn miette::SpanContents<'a> + 'a>, miette::MietteError> {
        let context = (context_lines_before, context_lines_after);
        match self {
            Shown::Whole(file) => file.read_span(span, context_lines_before, context_lines_after),
            Shown::Clipped { path, clipped } => {
                // miette reads a label alone (no context lines) for the `[file:line:column]`
                // header: that column is the original one.
                let shift = if context == (0, 0) {
                    clipped.column_shift(span.offset())
                } else {
                    0
                };
                named_span(&clipped.text, path.clone(), span, context, shift)
            }
        }
    }
}

fn named_span<'a>(
    text: &'a str,
    name: String,
    span: &miette::SourceSpan,
    (before, after): (usize, usize),
    column_shift: usize,
) -> Result<Box<dyn miette::SpanContents<'a> + 'a>, miette::MietteError> {
    let inner = miette::SourceCode::read_span(text, span, before, after)?;
    Ok(Box::new(miette::MietteSpanContents::new_named(
        name,
        inner.data(),
        *inner.span(),
        inner.line(),
        inner.column() + column_shift,
        inner.line_count(),
    )))
}
