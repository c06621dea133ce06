//! The manifest stored as `manifest.json` in every artifact directory.
//!
//! The manifest is the artifact's self-description: what produced it (stage, kind, implementation
//! version, parameters, inputs, external files), when and how long it took, a stage-specific
//! summary (metrics), and the size and blake3 digest of every file, which is what lets the store
//! detect a corrupt artifact before a downstream stage trusts it. It is read by `status`,
//! `report`, `cache ls` and by people, so the format is stable: fields are only ever added (with
//! serde defaults, so older manifests still load), and a breaking change bumps
//! [`MANIFEST_FORMAT`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::file_digest::FileDigest;
use crate::key::CacheKey;
use crate::time::Timestamp;

/// Name of the manifest file inside an artifact directory; stages must not write a file by
/// this name at the top of their directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Version of the manifest format, written as the `format` field.
pub const MANIFEST_FORMAT: u32 = 1;

/// Description of one artifact, serialised as `manifest.json`.
///
/// Example (abridged):
///
/// ```json
/// {
///   "format": 1,
///   "stage": "lort",
///   "kind": "head",
///   "key": "3f9a…",
///   "impl_version": "1",
///   "params": {"delta": 0.98, "lr": 0.0005},
///   "key_format": "lortflow.cache-key.v2",
///   "inputs": [{"name": "features", "stage": "cnn-feats", "key": "77c1…"}],
///   "external_files": [],
///   "files": {"head.mpk": {"size": 41024, "blake3": "d2e0…"}},
///   "started_at": 1795722003.25,
///   "duration_s": 12.5,
///   "summary": {"accuracy": 0.52},
///   "lortflow_version": "0.1.0"
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version, [`MANIFEST_FORMAT`] when written by this version.
    #[serde(default = "default_format")]
    pub format: u32,
    /// Name of the stage in the pipeline that produced the artifact.
    pub stage: String,
    /// Stage kind (the implementation), e.g. `head`.
    pub kind: String,
    /// The artifact's cache key; set by [`Staging::commit`](crate::Staging::commit).
    pub key: CacheKey,
    /// Version tag of the stage implementation.
    pub impl_version: String,
    /// The cache-key format the key was made with ([`KEY_FORMAT`](crate::key::KEY_FORMAT));
    /// empty in manifests written before it was recorded.
    #[serde(default)]
    pub key_format: String,
    /// Resolved parameters, as hashed into the key.
    #[serde(default)]
    pub params: Value,
    /// Upstream artifacts, in the order they were hashed into the key.
    #[serde(default)]
    pub inputs: Vec<InputRef>,
    /// External files read by the stage, in the order they were hashed into the key.
    #[serde(default)]
    pub external_files: Vec<ExternalFile>,
    /// Every file of the artifact, by path relative to the artifact directory with `/`
    /// separators; filled in by [`Staging::commit`](crate::Staging::commit).
    #[serde(default)]
    pub files: BTreeMap<String, FileEntry>,
    /// When the stage started.
    pub started_at: Timestamp,
    /// How long the stage ran, in seconds.
    pub duration_s: f64,
    /// Stage-specific results (metrics, shapes), for reports.
    #[serde(default)]
    pub summary: Value,
    /// Version of lortflow that wrote the artifact.
    pub lortflow_version: String,
}

fn default_format() -> u32 {
    MANIFEST_FORMAT
}

impl Manifest {
    /// A manifest for stage `stage` of kind `kind`, started now, with empty parameters, inputs,
    /// files and summary; fill in the rest before committing.
    pub fn new(stage: &str, kind: &str, key: &CacheKey, impl_version: &str) -> Self {
        Self {
            format: MANIFEST_FORMAT,
            stage: stage.to_owned(),
            kind: kind.to_owned(),
            key: key.clone(),
            impl_version: impl_version.to_owned(),
            key_format: crate::key::KEY_FORMAT.to_owned(),
            params: Value::Null,
            inputs: Vec::new(),
            external_files: Vec::new(),
            files: BTreeMap::new(),
            started_at: Timestamp::now(),
            duration_s: 0.0,
            summary: Value::Null,
            lortflow_version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }

    /// Total size in bytes of the artifact's files, as recorded.
    pub fn total_size(&self) -> u64 {
        self.files.values().map(|file| file.size).sum()
    }
}

/// An upstream artifact consumed by a stage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRef {
    /// The input's role in the consuming stage (`features`, `init`, `heads`), as hashed into
    /// the key. (Manifests from before key format v2 hold `role:stage` here.)
    pub name: String,
    /// The upstream stage's name at the time of the run, for people; not part of the key.
    #[serde(default)]
    pub stage: String,
    /// The upstream artifact's key.
    pub key: CacheKey,
}

/// An external file read by a stage, with the digest that went into the key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalFile {
    /// The path as the user wrote it.
    pub path: String,
    /// blake3 digest, 64 lowercase hex digits.
    pub digest: String,
    /// Size in bytes (total over its files for a directory).
    pub size: u64,
}

impl ExternalFile {
    /// Records `path` with its computed digest.
    pub fn new(path: &str, digest: &FileDigest) -> Self {
        Self {
            path: path.to_owned(),
            digest: digest.hex(),
            size: digest.size(),
        }
    }
}

/// Size and digest of one file of an artifact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Size in bytes.
    pub size: u64,
    /// blake3 digest, 64 lowercase hex digits.
    pub blake3: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyBuilder;

    #[test]
    fn round_trip() {
        let key = KeyBuilder::new(1, "head", "1").finish();
        let mut manifest = Manifest::new("lort", "head", &key, "1");
        manifest.params = serde_json::json!({"delta": 0.98});
        manifest.files.insert(
            "head.mpk".into(),
            FileEntry {
                size: 3,
                blake3: blake3::hash(b"abc").to_hex().to_string(),
            },
        );
        let json = serde_json::to_string_pretty(&manifest).unwrap();
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), manifest);
        assert_eq!(manifest.total_size(), 3);
    }

    #[test]
    fn floats_round_trip_exactly() {
        // Without serde_json's `float_roundtrip` some of these come back one ulp off, and
        // `status` would report a parameter change that never happened.
        let key = KeyBuilder::new(1, "head", "1").finish();
        for i in 0..2000u32 {
            let x = f64::from(i) * 0.000_731 + 1.795_722_432e9 * f64::from(i % 2);
            let mut manifest = Manifest::new("s", "k", &key, "1");
            manifest.params = serde_json::json!({ "x": x });
            manifest.started_at = crate::time::Timestamp::from_unix_seconds(x);
            let json = serde_json::to_string(&manifest).unwrap();
            assert_eq!(
                serde_json::from_str::<Manifest>(&json).unwrap(),
                manifest,
                "{x}"
            );
        }
    }

    #[test]
    fn optional_fields_default() {
        let key = KeyBuilder::new(1, "head", "1").finish();
        let json = format!(
            r#"{{"stage": "s", "kind": "k", "key": "{key}", "impl_version": "1",
                "started_at": 0, "duration_s": 1.5, "lortflow_version": "0.1.0",
                "added_later": true}}"#
        );
        let manifest: Manifest = serde_json::from_str(&json).unwrap();
        assert_eq!(manifest.format, MANIFEST_FORMAT);
        assert!(manifest.files.is_empty());
        assert_eq!(manifest.summary, Value::Null);
    }
}
