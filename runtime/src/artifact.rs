//! A committed artifact: its key, its directory in the store and its manifest.

use std::path::{Path, PathBuf};

use crate::key::CacheKey;
use crate::manifest::Manifest;

/// An artifact in the store, as returned by [`Store::get`](crate::Store::get) and
/// [`Staging::commit`](crate::Staging::commit).
///
/// Its directory is read-only by convention: stages read their inputs from here and never write
/// into another stage's artifact, or its digests would no longer match.
#[derive(Clone, Debug, PartialEq)]
pub struct Artifact {
    key: CacheKey,
    dir: PathBuf,
    manifest: Manifest,
}

impl Artifact {
    pub(crate) fn new(key: CacheKey, dir: PathBuf, manifest: Manifest) -> Self {
        Self { key, dir, manifest }
    }

    /// The artifact's key.
    pub fn key(&self) -> &CacheKey {
        &self.key
    }

    /// The artifact directory, `objects/<key>/`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of one of the artifact's files, given relative to its directory.
    pub fn file(&self, relative: &str) -> PathBuf {
        self.dir.join(relative)
    }

    /// The artifact's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Consumes the artifact, returning its manifest.
    pub fn into_manifest(self) -> Manifest {
        self.manifest
    }
}
