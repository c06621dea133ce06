//! Cache keys: the content address of a stage's artifact.
//!
//! A stage's key is a blake3 hash over everything that can change its output: the language
//! version, the stage kind, the implementation's version tag, the canonical form of its resolved
//! parameters, the keys of its upstream artifacts and the digests of the external files it reads.
//! Two runs that agree on all of these may share one artifact; a change to any of them must give
//! a different key. [`KeyBuilder`] documents the exact byte encoding, which is part of the
//! store's on-disk format: changing it invalidates every cached artifact, so bump
//! [`KEY_FORMAT`] when you do.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::file_digest::FileDigest;

/// The domain-separation prefix hashed first into every key. Its suffix is the version of the
/// encoding below; change it whenever the encoding changes.
///
/// v2: upstream inputs are hashed by role (`features`), no longer by `role:stage name`, so that
/// renaming a stage keeps everything below it cached.
pub const KEY_FORMAT: &str = "lortflow.cache-key.v2";

/// The content address of an artifact: 64 lowercase hex digits of a blake3 digest.
///
/// `Display` shows the full key (it names the artifact directory); [`CacheKey::short`] gives the
/// first 12 digits for tables and messages, like a short git hash.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CacheKey(String);

impl CacheKey {
    /// Number of hex digits in a key.
    pub const LEN: usize = 64;

    /// Number of hex digits shown by [`CacheKey::short`].
    pub const SHORT_LEN: usize = 12;

    /// The key as 64 lowercase hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, for display.
    pub fn short(&self) -> &str {
        &self.0[..Self::SHORT_LEN]
    }

    fn from_hash(hash: blake3::Hash) -> Self {
        Self(hash.to_hex().to_string())
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A string that is not a valid [`CacheKey`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a cache key (expected 64 lowercase hex digits)")]
pub struct ParseKeyError(String);

impl FromStr for CacheKey {
    type Err = ParseKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Lowercase only, so that one artifact has exactly one directory name.
        let valid =
            s.len() == Self::LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if valid {
            Ok(Self(s.to_owned()))
        } else {
            Err(ParseKeyError(s.to_owned()))
        }
    }
}

impl TryFrom<String> for CacheKey {
    type Error = ParseKeyError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<CacheKey> for String {
    fn from(key: CacheKey) -> Self {
        key.0
    }
}

/// Computes a [`CacheKey`] from a stage's inputs.
///
/// # Encoding
///
/// Every variable-length value is framed, so no two different inputs can produce the same byte
/// stream (for example kind `ab` + version `c` versus kind `a` + version `bc`):
///
/// - `str(s)` is the length of `s` in bytes as a little-endian `u64`, then its UTF-8 bytes;
/// - `u32(n)` and `u64(n)` are little-endian.
///
/// The hashed stream is, in order:
///
/// 1. `str(KEY_FORMAT)`;
/// 2. `u32(language version)`;
/// 3. `str(stage kind)`;
/// 4. `str(implementation version tag)`;
/// 5. `str(canonical parameters)`, see [`canonical_json`];
/// 6. `u64(number of upstream inputs)`, then for each, in the order given:
///    `str(input role)`, `str(upstream key as 64 hex digits)`;
/// 7. `u64(number of external files)`, then for each, in the order given:
///    `str(path as written by the user)`, `str(blake3 digest as 64 hex digits)`, `u64(size)`.
///
/// Upstream inputs and external files are hashed in the order they are added: the caller
/// supplies them in a deterministic order (declaration order). Their roles are hashed too, so
/// swapping two upstream artifacts between inputs changes the key; the names of the upstream
/// stages are not (a rename is not a change).
#[derive(Clone, Debug)]
pub struct KeyBuilder {
    language_version: u32,
    kind: String,
    impl_version: String,
    params: Value,
    inputs: Vec<(String, CacheKey)>,
    external_files: Vec<(String, FileDigest)>,
}

impl KeyBuilder {
    /// Starts a key for a stage of `kind`, implemented at version `impl_version`, under language
    /// version `language_version`. Parameters default to JSON `null`.
    pub fn new(language_version: u32, kind: &str, impl_version: &str) -> Self {
        Self {
            language_version,
            kind: kind.to_owned(),
            impl_version: impl_version.to_owned(),
            params: Value::Null,
            inputs: Vec::new(),
            external_files: Vec::new(),
        }
    }

    /// Sets the stage's resolved parameters; they are hashed in canonical form.
    pub fn params(&mut self, params: &Value) -> &mut Self {
        self.params = params.clone();
        self
    }

    /// Adds an upstream artifact consumed in the role `role` (`features`, `init`).
    pub fn input(&mut self, role: &str, key: &CacheKey) -> &mut Self {
        self.inputs.push((role.to_owned(), key.clone()));
        self
    }

    /// Adds an external file (dataset, checkpoint) read by the stage, named by the path as the
    /// user wrote it, so that moving the pipeline directory does not change keys.
    pub fn external_file(&mut self, path: &str, digest: &FileDigest) -> &mut Self {
        self.external_files.push((path.to_owned(), digest.clone()));
        self
    }

    /// Hashes everything added so far into a key.
    pub fn finish(&self) -> CacheKey {
        let mut hasher = blake3::Hasher::new();
        put_str(&mut hasher, KEY_FORMAT);
        hasher.update(&self.language_version.to_le_bytes());
        put_str(&mut hasher, &self.kind);
        put_str(&mut hasher, &self.impl_version);
        put_str(&mut hasher, &canonical_json(&self.params));
        put_u64(&mut hasher, self.inputs.len() as u64);
        for (name, key) in &self.inputs {
            put_str(&mut hasher, name);
            put_str(&mut hasher, key.as_str());
        }
        put_u64(&mut hasher, self.external_files.len() as u64);
        for (path, digest) in &self.external_files {
            put_str(&mut hasher, path);
            put_str(&mut hasher, &digest.hex());
            put_u64(&mut hasher, digest.size());
        }
        CacheKey::from_hash(hasher.finalize())
    }
}

fn put_u64(hasher: &mut blake3::Hasher, n: u64) {
    hasher.update(&n.to_le_bytes());
}

fn put_str(hasher: &mut blake3::Hasher, s: &str) {
    put_u64(hasher, s.len() as u64);
    hasher.update(s.as_bytes());
}

/// Serialises JSON canonically: no whitespace, object keys sorted by their UTF-8 bytes at every
/// level, strings and numbers exactly as `serde_json` prints them.
///
/// This does not depend on `serde_json`'s `preserve_order` feature, which another crate in the
/// build could switch on. Numbers are not normalised: `1` and `1.0` stay different, so the
/// parameter types must be resolved (by the schema) before keys are computed.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push_str(&serde_json::to_string(s).expect("serialising a string to JSON should not fail"));
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn digest(byte: u8, size: u64) -> FileDigest {
        FileDigest::from_parts(blake3::hash(&[byte]), size)
    }

    fn upstream() -> CacheKey {
        KeyBuilder::new(1, "dataset", "1").finish()
    }

    /// A fully populated builder; each mutation below changes exactly one input.
    fn base() -> KeyBuilder {
        let mut builder = KeyBuilder::new(1, "head", "2");
        builder
            .params(&json!({"lr": 0.001, "method": {"name": "lort", "delta": 0.98}}))
            .input("features", &upstream())
            .external_file("data/train.idx", &digest(1, 10));
        builder
    }

    #[test]
    fn same_inputs_same_key() {
        assert_eq!(base().finish(), base().finish());
    }

    #[test]
    fn key_is_64_lowercase_hex() {
        let key = base().finish();
        assert_eq!(key.as_str().len(), 64);
        assert_eq!(key.to_string(), key.as_str());
        assert_eq!(key.short(), &key.as_str()[..12]);
        assert_eq!(key.as_str().parse::<CacheKey>().unwrap(), key);
    }

    #[test]
    fn every_single_change_changes_the_key() {
        let reference = base().finish();
        let changes: Vec<(&str, KeyBuilder)> = vec![
            ("language version", {
                let mut b = base();
                b.language_version = 2;
                b
            }),
            ("kind", {
                let mut b = base();
                b.kind = "heads".into();
                b
            }),
            ("impl version", {
                let mut b = base();
                b.impl_version = "3".into();
                b
            }),
            ("param value", {
                let mut b = base();
                b.params(&json!({"lr": 0.002, "method": {"name": "lort", "delta": 0.98}}));
                b
            }),
            ("nested param", {
                let mut b = base();
                b.params(&json!({"lr": 0.001, "method": {"name": "lort", "delta": 0.99}}));
                b
            }),
            ("param type", {
                let mut b = base();
                b.params(&json!({"lr": "0.001", "method": {"name": "lort", "delta": 0.98}}));
                b
            }),
            ("input name", {
                let mut b = base();
                b.inputs[0].0 = "feats".into();
                b
            }),
            ("input key", {
                let mut b = base();
                b.inputs[0].1 = KeyBuilder::new(1, "dataset", "2").finish();
                b
            }),
            ("extra input", {
                let mut b = base();
                b.input("init", &upstream());
                b
            }),
            ("file path", {
                let mut b = base();
                b.external_files[0].0 = "data/test.idx".into();
                b
            }),
            ("file digest", {
                let mut b = base();
                b.external_files[0].1 = digest(2, 10);
                b
            }),
            ("file size", {
                let mut b = base();
                b.external_files[0].1 = digest(1, 11);
                b
            }),
            ("no files", {
                let mut b = base();
                b.external_files.clear();
                b
            }),
        ];
        for (what, builder) in changes {
            assert_ne!(
                builder.finish(),
                reference,
                "changing the {what} kept the key"
            );
        }
    }

    #[test]
    fn framing_is_unambiguous() {
        // Without length prefixes these two would hash the same concatenated bytes.
        let a = KeyBuilder::new(1, "ab", "c").finish();
        let b = KeyBuilder::new(1, "a", "bc").finish();
        assert_ne!(a, b);
    }

    #[test]
    fn object_key_order_does_not_matter() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": {"y": [1, 2], "x": null}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a": {"x": null, "y": [1, 2]}, "b": 1}"#).unwrap();
        assert_eq!(canonical_json(&a), r#"{"a":{"x":null,"y":[1,2]},"b":1}"#);
        let key = |params: &Value| KeyBuilder::new(1, "k", "1").params(params).finish();
        assert_eq!(key(&a), key(&b));
    }

    #[test]
    fn array_order_matters() {
        let key = |params: Value| KeyBuilder::new(1, "k", "1").params(&params).finish();
        assert_ne!(key(json!([1, 2])), key(json!([2, 1])));
    }

    #[test]
    fn canonical_strings_and_floats() {
        assert_eq!(
            canonical_json(&json!({"s": "a\"b\n", "f": 0.1, "i": -3})),
            r#"{"f":0.1,"i":-3,"s":"a\"b\n"}"#
        );
    }

    #[test]
    fn parse_rejects_bad_keys() {
        assert!("abc".parse::<CacheKey>().is_err());
        assert!("A".repeat(64).parse::<CacheKey>().is_err());
        assert!("g".repeat(64).parse::<CacheKey>().is_err());
        assert!(serde_json::from_str::<CacheKey>("\"zz\"").is_err());
    }

    #[test]
    fn serde_round_trip() {
        let key = base().finish();
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(json, format!("\"{key}\""));
        assert_eq!(serde_json::from_str::<CacheKey>(&json).unwrap(), key);
    }
}
