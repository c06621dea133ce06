//! Loading a pipeline: read and parse the root file and its includes, check every node against
//! the schema, lower to the IR and analyse the whole. All problems are collected; nothing stops
//! at the first one.

use std::collections::HashMap;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::analyze::analyze;
use crate::ast::Node;
use crate::check::Checker;
use crate::diagnostic::{Code, Diagnostic};
use crate::ir::Pipeline;
use crate::lower::{lower_defaults, lower_stage};
use crate::source::{FileId, SourceMap, Span};

/// Reads pipeline files. The CLI reads the file system; tests and editors can serve text from
/// memory.
pub trait FileLoader {
    /// The text of the file at `path`.
    fn read(&self, path: &Path) -> io::Result<String>;
}

/// Reads files from disk.
#[derive(Debug, Default, Clone, Copy)]
pub struct FsLoader;

impl FileLoader for FsLoader {
    fn read(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }
}

/// Serves files from memory.
#[derive(Debug, Default, Clone)]
pub struct MemoryLoader {
    files: HashMap<PathBuf, String>,
}

impl MemoryLoader {
    /// Adds a file.
    pub fn with(mut self, path: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        self.files.insert(normalize(&path.into()), text.into());
        self
    }
}

impl FileLoader for MemoryLoader {
    fn read(&self, path: &Path) -> io::Result<String> {
        self.files
            .get(&normalize(path))
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "No such file or directory"))
    }
}

/// A loaded pipeline and everything found wrong with it.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The pipeline; stages with errors may be missing from it.
    pub pipeline: Pipeline,
    /// Errors and warnings, in file order.
    pub diagnostics: Vec<Diagnostic>,
}

impl Checked {
    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    /// Number of errors and warnings.
    pub fn counts(&self) -> (usize, usize) {
        let errors = self.diagnostics.iter().filter(|d| d.is_error()).count();
        (errors, self.diagnostics.len() - errors)
    }
}

/// Loads and checks the pipeline at `path`. Fails only when the root file cannot be read;
/// everything else is a diagnostic.
pub fn load(path: &Path, loader: &dyn FileLoader) -> io::Result<Checked> {
    let text = loader.read(path)?;
    Ok(check_text(path, text, loader))
}

/// Checks pipeline text as if it were the file `path` (includes are read through `loader`).
pub fn check_text(path: &Path, text: String, loader: &dyn FileLoader) -> Checked {
    let mut loading = Loading {
        loader,
        sources: SourceMap::default(),
        diags: Vec::new(),
        nodes: Vec::new(),
        stack: Vec::new(),
        defaults: None,
    };
    loading.file(path.to_path_buf(), text, None);
    let Loading {
        sources,
        mut diags,
        nodes,
        defaults,
        ..
    } = loading;

    let defaults = lower_defaults(defaults.as_ref());
    let mut stages = Vec::new();
    for (node, file) in &nodes {
        let dir = sources
            .get(*file)
            .map(|f| f.dir().to_path_buf())
            .unwrap_or_default();
        if let Some(stage) = lower_stage(node, &dir, &defaults, &mut diags) {
            stages.push(stage);
        }
    }
    let raw = RawStages::collect(&nodes);
    let mut pipeline = Pipeline {
        sources,
        defaults,
        stages,
    };
    analyze(&mut pipeline, &raw, &mut diags);
    // Stable order: by file, then position; errors before warnings at the same place.
    diags.sort_by_key(|d| (d.primary.span.file, d.primary.span.offset, d.severity));
    Checked {
        pipeline,
        diagnostics: diags,
    }
}

/// What the written stages declare and reference, including stages that failed to lower, so
/// that one error does not cascade into "undefined" and "unused" reports about its neighbours.
#[derive(Debug, Default)]
pub(crate) struct RawStages {
    /// Every declared stage name, with its kind.
    pub(crate) declared: HashMap<String, crate::schema::StageKind>,
    /// Every stage name some node refers to.
    pub(crate) referenced: std::collections::HashSet<String>,
}

impl RawStages {
    fn collect(nodes: &[(Node, FileId)]) -> RawStages {
        let mut raw = RawStages::default();
        for (node, _) in nodes {
            if let (Some(name), Some(kind)) = (
                node.args.first().and_then(|a| a.value.as_str()),
                node.spec.stage,
            ) {
                raw.declared.insert(name.to_string(), kind);
            }
            for child in &node.children {
                for (i, arg) in child.args.iter().enumerate() {
                    // Variadic arguments share the last argument's spec.
                    let spec = child.spec.args.get(i).or(child.spec.args.last());
                    if spec.is_some_and(|s| matches!(s.ty, crate::schema::ValueType::StageRef(_))) {
                        if let Some(name) = arg.value.as_str() {
                            raw.referenced.insert(name.to_string());
                        }
                    }
                }
                if let Some(p) = child.prop("head") {
                    if let Some(name) = p.value.value.as_str() {
                        raw.referenced.insert(name.to_string());
                    }
                }
            }
        }
        raw
    }
}

struct Loading<'l> {
    loader: &'l dyn FileLoader,
    sources: SourceMap,
    diags: Vec<Diagnostic>,
    nodes: Vec<(Node, FileId)>,
    /// Files being loaded, outermost first, for include cycles.
    stack: Vec<PathBuf>,
    defaults: Option<Node>,
}

impl Loading<'_> {
    fn file(&mut self, path: PathBuf, text: String, included_at: Option<Span>) {
        let id = self.sources.add(path.clone(), text.as_str());
        self.stack.push(normalize(&path));
        // KDL v2 is the language; v1 files are accepted, but errors are reported as v2 errors
        // (the crate's own fallback guesses the version and may report v1 errors instead).
        let parsed = kdl::KdlDocument::parse_v2(&text)
            .or_else(|v2| kdl::KdlDocument::parse_v1(&text).map_err(|_| v2));
        let doc = match parsed {
            Ok(doc) => doc,
            Err(err) => {
                for d in err.diagnostics {
                    let mut diag = Diagnostic::new(
                        Code::Syntax,
                        d.message
                            .unwrap_or_else(|| "invalid KDL".into())
                            .to_lowercase_first(),
                        Span::from_kdl(id, d.span),
                        d.label.unwrap_or_else(|| "here".into()),
                    );
                    let found = text
                        .get(d.span.offset()..d.span.offset() + d.span.len())
                        .unwrap_or("");
                    if let Some(help) = d.help {
                        diag = diag.with_help(help);
                    } else if matches!(found, "true" | "false" | "null" | "inf" | "nan") {
                        // The most common KDL v2 surprise.
                        diag =
                            diag.with_help(format!("in KDL v2 this keyword is written `#{found}`"));
                    }
                    self.diags.push(diag);
                }
                self.stack.pop();
                return;
            }
        };
        let nodes = Checker::new(id, &mut self.diags).check_document(&doc);
        if included_at.is_none() && !nodes.iter().any(|n| n.spec.name == "lortflow") {
            let first = nodes.first().map_or(Span::new(id, 0, 0), |n| n.name_span);
            self.diags.push(
                Diagnostic::new(
                    Code::MissingVersion,
                    "the pipeline does not say which language version it is written in",
                    first,
                    "expected `lortflow 1` before this",
                )
                .with_help("add `lortflow 1` as the first line of the file"),
            );
        }
        for node in nodes {
            match node.spec.name {
                "lortflow" => {}
                "include" => self.include(&path, &node),
                "defaults" => match &self.defaults {
                    Some(first) if first.span.file == id => self.diags.push(
                        Diagnostic::new(
                            Code::DuplicateNode,
                            "`defaults` is given twice",
                            node.name_span,
                            "given again here",
                        )
                        .with_label(first.name_span, "first given here")
                        .with_help("merge the two `defaults` blocks into one"),
                    ),
                    // The root file's defaults win over an included file's: it is loaded first.
                    Some(_) => {}
                    None => self.defaults = Some(node),
                },
                _ => self.nodes.push((node, id)),
            }
        }
        self.stack.pop();
    }

    fn include(&mut self, from: &Path, node: &Node) {
        let Some(arg) = node.args.first() else { return };
        let Some(written) = arg.value.as_str() else {
            return;
        };
        let dir = from.parent().unwrap_or(Path::new(""));
        let path = dir.join(written);
        let key = normalize(&path);
        if let Some(pos) = self.stack.iter().position(|p| *p == key) {
            let chain: Vec<String> = self.stack[pos..]
                .iter()
                .chain(std::iter::once(&key))
                .map(|p| format!("`{}`", p.display()))
                .collect();
            self.diags.push(
                Diagnostic::new(
                    Code::IncludeCycle,
                    format!("`{written}` is already being included: {}", chain.join(" → ")),
                    arg.span,
                    "includes a file that includes this one",
                )
                .with_help("remove this `include`; a file cannot include itself, directly or through others"),
            );
            return;
        }
        if self.sources.files().any(|(_, f)| normalize(&f.path) == key) {
            // Already included elsewhere: its stages are in the pipeline once.
            return;
        }
        match self.loader.read(&path) {
            Ok(text) => self.file(path, text, Some(arg.span)),
            Err(e) => self.diags.push(
                Diagnostic::new(
                    Code::IncludeMissing,
                    format!(
                        "cannot read included file `{}`: {}",
                        path.display(),
                        e.to_string().to_lowercase_first()
                    ),
                    arg.span,
                    "included here",
                )
                .with_help(format!(
                    "the path is relative to `{}`; check the name or create the file",
                    if dir.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        dir
                    }
                    .display()
                )),
            ),
        }
    }
}

/// Lexically normalised path (`a/./b/../c` → `a/c`), for include cycle detection without
/// touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

trait LowercaseFirst {
    fn to_lowercase_first(&self) -> String;
}

impl LowercaseFirst for str {
    /// Messages start lowercase (style guide); KDL and io messages start uppercase.
    fn to_lowercase_first(&self) -> String {
        let mut chars = self.chars();
        match chars.next() {
            Some(c) => c
                .to_lowercase()
                .chain(chars)
                .collect::<String>()
                .trim_end_matches('.')
                .to_string(),
            None => String::new(),
        }
    }
}
