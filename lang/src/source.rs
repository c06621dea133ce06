//! Source files and spans: every value of the IR points back into the text it came from.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Index of a file in a [`SourceMap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct FileId(pub u32);

/// A byte range in one source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Span {
    /// The file.
    pub file: FileId,
    /// Byte offset of the first byte.
    pub offset: usize,
    /// Length in bytes.
    pub len: usize,
}

impl Span {
    /// A span of `len` bytes at `offset` in `file`.
    pub fn new(file: FileId, offset: usize, len: usize) -> Span {
        Span { file, offset, len }
    }

    /// Converts a KDL span.
    pub fn from_kdl(file: FileId, span: miette::SourceSpan) -> Span {
        Span {
            file,
            offset: span.offset(),
            len: span.len(),
        }
    }

    /// The span as miette wants it.
    pub fn source_span(&self) -> miette::SourceSpan {
        (self.offset, self.len).into()
    }

    /// A zero-length span used for values that come from the command line or defaults.
    pub fn synthetic() -> Span {
        Span {
            file: FileId(u32::MAX),
            offset: 0,
            len: 0,
        }
    }

    /// Whether the span points into a real file.
    pub fn is_synthetic(&self) -> bool {
        self.file.0 == u32::MAX
    }
}

/// A value and where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Spanned<T> {
    /// The value.
    pub value: T,
    /// Where it was written.
    pub span: Span,
}

impl<T> Spanned<T> {
    /// Wraps a value.
    pub fn new(value: T, span: Span) -> Self {
        Spanned { value, span }
    }
}

impl<T: serde::Serialize> serde::Serialize for Spanned<T> {
    /// Spans are not part of a value's identity: the canonical form (and so the cache key) of a
    /// pipeline must not change when a line moves.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

impl<T> std::ops::Deref for Spanned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// A loaded source file.
#[derive(Debug)]
pub struct SourceFile {
    /// The path as given (for messages).
    pub path: PathBuf,
    /// The text.
    pub text: Arc<str>,
}

impl SourceFile {
    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let mut start = offset;
        while !self.text.is_char_boundary(start) {
            start -= 1;
        }
        let before = &self.text[..start];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    /// The directory that relative paths in this file are resolved against.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new(""))
    }
}

/// All files of a pipeline: the root file and its includes.
#[derive(Debug, Default, Clone)]
pub struct SourceMap {
    files: Vec<Arc<SourceFile>>,
}

impl SourceMap {
    /// Adds a file and returns its id.
    pub fn add(&mut self, path: PathBuf, text: impl Into<Arc<str>>) -> FileId {
        self.files.push(Arc::new(SourceFile {
            path,
            text: text.into(),
        }));
        FileId((self.files.len() - 1) as u32)
    }

    /// The file with the given id.
    pub fn get(&self, id: FileId) -> Option<&Arc<SourceFile>> {
        self.files.get(id.0 as usize)
    }

    /// All files, root first.
    pub fn files(&self) -> impl Iterator<Item = (FileId, &Arc<SourceFile>)> {
        self.files
            .iter()
            .enumerate()
            .map(|(i, f)| (FileId(i as u32), f))
    }
}
