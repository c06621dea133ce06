//! Keys and staleness: the cache key of every stage of a plan, whether its artifact is in the
//! store, and why not (parameter diffs against the last run of the same stage name, changed
//! inputs and files).

use std::collections::BTreeMap;
use std::path::Path;

use lortflow_lang::LANGUAGE_VERSION;
use serde::Serialize;
use serde_json::Value as Json;

use crate::file_digest::FileDigestCache;
use crate::key::{CacheKey, KeyBuilder};
use crate::manifest::ExternalFile;
use crate::plan::{Compute, ConcreteStage, external_files, key_params};
use crate::stage::Registry;
use crate::store::Store;

/// Whether a stage's artifact can be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// The artifact for the current key is in the store.
    Cached,
    /// The stage must run.
    Stale,
    /// The stage cannot run: an external file is missing or an input is blocked.
    Blocked,
}

/// The key and state of one concrete stage, and why.
#[derive(Debug, Clone, Serialize)]
pub struct StageStatus {
    /// The stage name.
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// The state.
    pub state: State,
    /// The cache key (absent when blocked).
    pub key: Option<CacheKey>,
    /// Why the stage is stale or blocked, one sentence each.
    pub reasons: Vec<String>,
    /// Blocked only because an input cannot run (the stage itself is fine).
    #[serde(skip)]
    pub(super) blocked_by_input: bool,
    /// Re-run on request (`--force`): the existing artifact of the same key is replaced.
    #[serde(skip)]
    pub forced: bool,
    #[serde(skip)]
    pub(super) params: Json,
    #[serde(skip)]
    pub(super) external: Vec<ExternalFile>,
}

/// What `--force` applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Force {
    /// Nothing.
    #[default]
    None,
    /// Every stage.
    All,
    /// The named stages (concrete or declared names).
    Stages(Vec<String>),
}

/// Computes keys and states of a plan (no artifact is read beyond its manifest).
pub fn status(
    plan: &[ConcreteStage],
    store: &Store,
    registry: &Registry,
    digests: &mut FileDigestCache,
    compute: Compute,
    force: &Force,
) -> Vec<StageStatus> {
    let mut out: Vec<StageStatus> = Vec::with_capacity(plan.len());
    for stage in plan {
        let mut reasons = Vec::new();
        let params = key_params(stage, plan, compute);
        let version = registry
            .get(stage.kind())
            .map_or("unregistered", |e| e.version());
        let mut builder = KeyBuilder::new(LANGUAGE_VERSION, stage.kind().as_str(), version);
        builder.params(&params);
        let mut blocked = false;
        let mut own_problem = false;
        for &(role, i) in &stage.inputs {
            match &out[i].key {
                // By role, not by name: a renamed upstream stage is the same input.
                Some(k) => {
                    builder.input(role, k);
                }
                None => {
                    blocked = true;
                    reasons.push(format!("input `{}` cannot run", plan[i].name));
                }
            }
        }
        let mut external = Vec::new();
        // A source with `download=#true` reads the official files, verified against their
        // published checksums when they are fetched: its parameters alone make its key, so the
        // key is the same before the download and after it.
        if !stage.stage.downloads() {
            for (written, resolved) in external_files(stage) {
                match digests.digest(&resolved) {
                    Ok(d) => {
                        builder.external_file(&written, &d);
                        external.push(ExternalFile::new(&written, &d));
                    }
                    Err(_) => {
                        blocked = true;
                        own_problem = true;
                        reasons.push(missing_file_reason(stage, &written, &resolved));
                    }
                }
            }
        }
        if blocked {
            out.push(StageStatus {
                name: stage.name.clone(),
                kind: stage.kind().to_string(),
                state: State::Blocked,
                key: None,
                reasons,
                blocked_by_input: !own_problem,
                forced: false,
                params,
                external,
            });
            continue;
        }
        let key = builder.finish();
        let forced = match force {
            Force::None => false,
            Force::All => true,
            Force::Stages(names) => names
                .iter()
                .any(|n| *n == stage.name || *n == stage.declared),
        };
        let upstream_stale: Vec<&str> = stage
            .inputs
            .iter()
            .filter(|&&(_, i)| out[i].state != State::Cached)
            .map(|&(_, i)| plan[i].name.as_str())
            .collect();
        let present = matches!(store.get_unverified(&key), Ok(Some(_)));
        let state = if present && !forced && upstream_stale.is_empty() {
            State::Cached
        } else {
            State::Stale
        };
        if state == State::Stale {
            if forced {
                reasons.push("forced with --force".into());
            }
            for u in &upstream_stale {
                reasons.push(format!("upstream `{u}` will run"));
            }
            if !present {
                reasons.extend(why_changed(
                    store, stage, &key, version, &params, &external, plan, &out,
                ));
            }
        }
        out.push(StageStatus {
            name: stage.name.clone(),
            kind: stage.kind().to_string(),
            state,
            key: Some(key),
            reasons,
            blocked_by_input: false,
            forced,
            params,
            external,
        });
    }
    out
}

fn missing_file_reason(stage: &ConcreteStage, written: &str, resolved: &Path) -> String {
    let hint = stage
        .stage
        .spec
        .missing_file_hint()
        .map(|h| format!("; {h}"))
        .unwrap_or_default();
    // The resolved path only when it says more than the written one.
    let resolved = resolved.display().to_string();
    let at = if resolved == written {
        String::new()
    } else {
        format!(" ({resolved})")
    };
    format!("reads `{written}`{at}, which does not exist{hint}")
}

/// Compares a stage with the last manifest recorded under its name.
#[allow(clippy::too_many_arguments)]
fn why_changed(
    store: &Store,
    stage: &ConcreteStage,
    key: &CacheKey,
    version: &str,
    params: &Json,
    external: &[ExternalFile],
    plan: &[ConcreteStage],
    statuses: &[StageStatus],
) -> Vec<String> {
    let Ok(Some(last)) = store.last_manifest_for(&stage.name) else {
        return vec!["never run".into()];
    };
    if &last.key == key {
        return vec!["its artifact is no longer in the store (removed by `cache gc`?)".into()];
    }
    let mut reasons = Vec::new();
    let same_format = last.key_format == crate::key::KEY_FORMAT;
    if !same_format {
        reasons.push(format!(
            "its last run was keyed by an older lortflow (cache-key format `{}`)",
            if last.key_format.is_empty() {
                "lortflow.cache-key.v1"
            } else {
                &last.key_format
            }
        ));
    }
    if last.impl_version != version {
        reasons.push(format!(
            "the {} implementation changed ({} → {version})",
            stage.kind(),
            last.impl_version
        ));
    }
    // Parameters of an older format may be spelled differently (v1 had no `heads` names):
    // a diff against them would report changes nobody made.
    let mut changes = Vec::new();
    if same_format {
        diff_json("", &last.params, params, &mut changes);
    }
    for (path, old, new) in changes {
        reasons.push(format!("`{path}` changed from {old} to {new}"));
    }
    // Inputs are compared by role and position (the n-th `heads` input with the n-th), as the
    // key hashes them; an older format's input keys say nothing about this one's.
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for &(role, i) in stage.inputs.iter().filter(|_| same_format) {
        let nth = seen.entry(role).or_default();
        let old = last
            .inputs
            .iter()
            .filter(|r| r.name == role)
            .nth(*nth)
            .map(|r| &r.key);
        *nth += 1;
        if old != statuses[i].key.as_ref() && statuses[i].state == State::Cached {
            reasons.push(format!("input `{}` changed", plan[i].name));
        }
    }
    for f in external {
        match last.external_files.iter().find(|o| o.path == f.path) {
            Some(o) if o.digest != f.digest => reasons.push(format!("file `{}` changed", f.path)),
            None => reasons.push(format!("reads a new file `{}`", f.path)),
            _ => {}
        }
    }
    if reasons.is_empty() {
        reasons.push("its inputs changed".into());
    }
    reasons
}

/// Differences between two JSON values as (path, old, new), paths like `train.lr`.
pub fn diff_json(prefix: &str, old: &Json, new: &Json, out: &mut Vec<(String, String, String)>) {
    match (old, new) {
        (Json::Object(a), Json::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let path = if prefix.is_empty() {
                    k.replace('_', "-")
                } else {
                    format!("{prefix}.{}", k.replace('_', "-"))
                };
                diff_json(
                    &path,
                    a.get(k).unwrap_or(&Json::Null),
                    b.get(k).unwrap_or(&Json::Null),
                    out,
                );
            }
        }
        (a, b) if a != b => out.push((prefix.to_string(), compact(a), compact(b))),
        _ => {}
    }
}

fn compact(v: &Json) -> String {
    match v {
        Json::Null => "unset".into(),
        Json::String(s) => format!("\"{s}\""),
        other => other.to_string(),
    }
}
