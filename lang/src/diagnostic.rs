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
    pub fn render(&self, sources: &SourceMap) -> RenderedDiagnostic {
        let file = sources.get(self.primary.span.file).cloned();
        RenderedDiagnostic {
            diagnostic: self.clone(),
            file,
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
    file: Option<Arc<SourceFile>>,
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
        self.file.as_ref().map(|f| &**f as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        self.file.as_ref()?;
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
        let inner =
            self.text
                .as_ref()
                .read_span(span, context_lines_before, context_lines_after)?;
        Ok(Box::new(miette::MietteSpanContents::new_named(
            self.path.display().to_string(),
            inner.data(),
            *inner.span(),
            inner.line(),
            inner.column(),
            inner.line_count(),
        )))
    }
}
