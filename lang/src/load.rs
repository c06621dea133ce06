//! Loading a pipeline: read and parse the root file and its includes, check every node against
//! the schema, lower to the IR and analyse the whole. All problems are collected; nothing stops
//! at the first one.

use std::collections::HashMap;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::analyze::{RawStages, analyze};
use crate::ast::Node;
use crate::check::Checker;
use crate::diagnostic::{Code, Diagnostic, Severity};
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
    /// Reads at most one byte past [`MAX_FILE_BYTES`], so that a huge file (or `/dev/zero`) is
    /// refused without being read whole.
    fn read(&self, path: &Path) -> io::Result<String> {
        use std::io::Read;
        let mut text = String::new();
        std::fs::File::open(path)?
            .take(MAX_FILE_BYTES as u64 + 1)
            .read_to_string(&mut text)?;
        Ok(text)
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
    if diags.len() > MAX_DIAGNOSTICS {
        let hidden = diags.split_off(MAX_DIAGNOSTICS - 1);
        let mut summary = Diagnostic::new(
            Code::TooManyProblems,
            format!("{} more problems are not shown", hidden.len()),
            hidden[0].primary.span,
            "the first of them",
        )
        .with_help("fix the problems above and run `lortflow lint` again; a file this broken may not be a pipeline at all");
        // As serious as the worst one hidden: a hundred warnings are still only warnings.
        summary.severity = hidden
            .iter()
            .map(|d| d.severity)
            .min()
            .unwrap_or(Severity::Error);
        diags.push(summary);
    }
    Checked {
        pipeline,
        diagnostics: diags,
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
        if text.len() > MAX_FILE_BYTES {
            self.diags.push(
                Diagnostic::new(
                    Code::TooLarge,
                    format!(
                        "the file is larger than {} MiB, the most a pipeline file may be",
                        MAX_FILE_BYTES >> 20
                    ),
                    Span::new(id, 0, 0),
                    "this file",
                )
                .with_help("is this the right file? Generated pipelines that large are better split with `include` or written as sweeps"),
            );
            self.stack.pop();
            return;
        }
        let braces = text.bytes().filter(|&b| b == b'{').count();
        if braces > MAX_BRACES {
            self.diags.push(
                Diagnostic::new(
                    Code::TooLarge,
                    format!("the file has {braces} `{{`; pipeline files have at most {MAX_BRACES}"),
                    Span::new(id, 0, 0),
                    "this file",
                )
                .with_help("is this the right file? Generated pipelines that large are better split with `include` or written as sweeps"),
            );
            self.stack.pop();
            return;
        }
        let parsed = match parse_kdl(&text, braces) {
            Ok(parsed) => parsed,
            Err(problem) => {
                let whole = Span::new(id, 0, 0);
                let diag = match problem {
                    ParseProblem::TooDeep(at) => Diagnostic::new(
                        Code::TooDeep,
                        format!("blocks are nested more than {MAX_NESTING} levels deep"),
                        Span::new(id, at, 1),
                        "this node is one level too deep",
                    )
                    .with_help(
                        "no pipeline nests this deep: a stage's block holds its settings, and \
                         only a few settings have a block of their own; look for a `{` without \
                         its `}`",
                    ),
                    ParseProblem::NoThread(e) => Diagnostic::new(
                        Code::Io,
                        format!("cannot start the parser: {e}"),
                        whole,
                        "this file",
                    )
                    .with_help(
                        "the parser's stack grows with the file; free some memory, or raise the \
                         process's address-space limit (`ulimit -v`)",
                    ),
                    ParseProblem::TimedOut => Diagnostic::new(
                        Code::Syntax,
                        format!(
                            "the KDL parser gave up on this file after {} s",
                            PARSE_TIMEOUT.as_secs()
                        ),
                        whole,
                        "this file",
                    )
                    .with_help(
                        "pipelines parse in milliseconds; this file is likely not a pipeline, or \
                         has an unterminated string (`\"`, `#\"`) that makes every position \
                         an error",
                    ),
                    ParseProblem::Panicked => Diagnostic::new(
                        Code::Syntax,
                        "the KDL parser failed on this file",
                        whole,
                        "this file",
                    )
                    .with_help("this is a bug in lortflow or its KDL parser; please report it with the file"),
                };
                self.diags.push(diag);
                self.stack.pop();
                return;
            }
        };
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

/// At most this many diagnostics are reported (the last says how many more there were): a binary
/// file or a generated file gone wrong can have one per byte.
const MAX_DIAGNOSTICS: usize = 100;

/// Pipeline files larger than this are refused: no pipeline is (a thousand stages take about
/// 100 KiB), and the parser's stack grows with the file.
const MAX_FILE_BYTES: usize = 1 << 20;

/// The deepest `{ }` nesting accepted: far above what the language uses (a stage's block, and
/// a block in a few of its settings), far below what recursive code can take on a small stack.
const MAX_NESTING: usize = 32;

/// Files with more `{` than this are refused: each may become a level of the parser's recursion
/// (below), and a thousand-stage pipeline has about a thousand.
const MAX_BRACES: usize = 32_768;

/// Why a file was not parsed into a document.
enum ParseProblem {
    /// Nested deeper than [`MAX_NESTING`]; the byte offset of the first node too deep.
    TooDeep(usize),
    /// The parser's thread could not be started.
    NoThread(io::Error),
    /// The parser panicked.
    Panicked,
    /// The parser did not finish within [`PARSE_TIMEOUT`].
    TimedOut,
}

/// Parses KDL v2, else v1, on a thread whose stack grows with the text, and checks the depth
/// of the document there.
///
/// KDL v2 is the language; v1 files are accepted, but errors are reported as v2 errors (the
/// crate's own fallback guesses the version and may report v1 errors instead). The parser
/// recurses once per error it recovers from (a line of 20,000 stray `}` overflows a main
/// thread's 8 MiB) and once per nesting level, and on a parse error inside a string it may read
/// the string's `{` as blocks, so no scan of the text can tell how deep it will go; but every
/// level needs a `{`. The stack, reserved but only touched as deep as the parser goes, is 1 KiB
/// per byte of text plus 16 KiB per `{` (measured: under 8 KiB per level). A document deeper than
/// [`MAX_NESTING`] is dropped on that thread too (dropping recurses as well), so the caller
/// only ever sees shallow documents.
fn parse_kdl(
    text: &str,
    braces: usize,
) -> Result<Result<kdl::KdlDocument, kdl::KdlError>, ParseProblem> {
    const BASE_STACK: usize = 16 << 20;
    const STACK_PER_BYTE: usize = 1 << 10;
    const STACK_PER_BRACE: usize = 16 << 10;
    let parse = |text: &str| {
        let doc = kdl::KdlDocument::parse_v2(text)
            .or_else(|v2| kdl::KdlDocument::parse_v1(text).map_err(|_| v2));
        match doc {
            Ok(doc) => match too_deep(&doc) {
                Some(at) => Err(ParseProblem::TooDeep(at)),
                None => Ok(Ok(doc)),
            },
            Err(e) => Ok(Err(e)),
        }
    };
    // Not a scoped thread: a parse that does not finish in time is left behind (the parser's
    // recovery is quadratic on some broken files, such as ` #"` repeated: an unterminated raw
    // string retried at every position), and the caller gets a diagnostic instead of a hang.
    let stack = BASE_STACK + text.len() * STACK_PER_BYTE + braces * STACK_PER_BRACE;
    let (done, result) = std::sync::mpsc::channel();
    let owned = text.to_string();
    std::thread::Builder::new()
        .name("kdl-parser".into())
        .stack_size(stack)
        .spawn(move || {
            let _ = done.send(parse(&owned));
        })
        .map_err(ParseProblem::NoThread)?;
    match result.recv_timeout(PARSE_TIMEOUT) {
        Ok(parsed) => parsed,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(ParseProblem::TimedOut),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(ParseProblem::Panicked),
    }
}

/// How long the KDL parser may take on one file: real pipelines parse in milliseconds.
const PARSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The offset of the first node nested deeper than [`MAX_NESTING`] blocks, found without
/// recursion.
fn too_deep(doc: &kdl::KdlDocument) -> Option<usize> {
    let mut stack: Vec<(&kdl::KdlNode, usize)> = doc.nodes().iter().map(|n| (n, 0)).collect();
    while let Some((node, depth)) = stack.pop() {
        if depth > MAX_NESTING {
            return Some(node.span().offset());
        }
        if let Some(children) = node.children() {
            stack.extend(children.nodes().iter().map(|n| (n, depth + 1)));
        }
    }
    None
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
