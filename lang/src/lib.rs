//! The lortflow pipeline language: one schema, a KDL parser that checks documents against it,
//! a typed IR whose values keep their source spans, and diagnostics as good as a compiler's.
//!
//! Text in, IR and diagnostics out: this crate reads pipeline files (through a [`FileLoader`])
//! and does no other I/O, logs nothing, and knows nothing of Burn or the runtime.
//!
//! ```
//! use lortflow_lang::{MemoryLoader, load};
//! use std::path::Path;
//!
//! let loader = MemoryLoader::default().with(
//!     "p.kdl",
//!     r#"lortflow 1
//!     dataset "d" { source "synthetic" kind="vectors"; long-tail "exp" imbalance-ratio=10 }
//!     head "lort" { features "d"; method "lort" delta=0.9; init "random" }
//!     evaluate "table" { heads "*" }"#,
//! );
//! let checked = load(Path::new("p.kdl"), &loader).unwrap();
//! assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
//! assert_eq!(checked.pipeline.stages.len(), 3);
//! ```

#![warn(missing_docs)]

mod analyze;
pub mod ast;
mod check;
mod choice;
pub mod diagnostic;
pub mod docs;
pub mod expand;
pub mod ir;
mod load;
mod lower;
pub mod params;
pub mod schema;
pub mod source;
mod suggest;
mod vocab;

pub use analyze::check_stage_settings;
pub use diagnostic::{Code, Diagnostic, Severity};
pub use expand::{ConcreteStage, Override, expand};
pub use ir::{evaluated_stages, glob_match};
pub use load::{Checked, FileLoader, FsLoader, MemoryLoader, check_text, load};
pub use lower::{lower_defaults, lower_stage};
pub use schema::{LANGUAGE_VERSION, StageKind};
pub use source::{FileId, SourceMap, Span, Spanned};
