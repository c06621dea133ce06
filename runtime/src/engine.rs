//! The engine: cache keys and staleness of a plan, and its execution. Independent stages run in
//! parallel on a pool of workers (one accelerator stage per device at a time); a failing stage
//! stops what depends on it while the rest goes on.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use lortflow_lang::LANGUAGE_VERSION;
use lortflow_lang::ir::{Backend, StageSpec};
use serde::Serialize;
use serde_json::Value as Json;

use crate::plan::{ConcreteStage, external_files, key_params};
use crate::stage::{CancelToken, Registry, Reporter, StageContext, StageError, StageInput};
use crate::{
    Artifact, CacheKey, ExternalFile, FileDigestCache, InputRef, KeyBuilder, Manifest, RunRecord,
    StageOutcome, StageRun, Store, StoreError, Timestamp,
};

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
    blocked_by_input: bool,
    /// Re-run on request (`--force`): the existing artifact of the same key is replaced.
    #[serde(skip)]
    forced: bool,
    #[serde(skip)]
    params: Json,
    #[serde(skip)]
    external: Vec<ExternalFile>,
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
    backend: Backend,
    force: &Force,
) -> Vec<StageStatus> {
    let backend_name = match backend {
        Backend::Cpu => "cpu",
        Backend::Cuda => "cuda",
    };
    let mut out: Vec<StageStatus> = Vec::with_capacity(plan.len());
    for stage in plan {
        let mut reasons = Vec::new();
        let params = key_params(stage, plan, backend_name);
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
        if !downloads(stage) {
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
    format!(
        "reads `{written}` ({}), which does not exist{hint}",
        resolved.display()
    )
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
        return vec![format!("never run under the name `{}`", stage.name)];
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
    let mut changes = Vec::new();
    diff_json("", &last.params, params, &mut changes);
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

/// Options of a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Parallel workers.
    pub jobs: usize,
    /// The backend.
    pub backend: Backend,
    /// The pipeline file, for the run record.
    pub pipeline: PathBuf,
}

/// The outcome of a run.
#[derive(Debug)]
pub struct RunReport {
    /// The run record (also written to the store).
    pub record: RunRecord,
    /// Artifacts of the stages that finished (ran or cached), by plan index.
    pub artifacts: BTreeMap<usize, Artifact>,
}

impl RunReport {
    /// Whether any stage failed or was cancelled.
    pub fn failed(&self) -> bool {
        self.record
            .stages
            .iter()
            .any(|s| matches!(s.outcome, StageOutcome::Failed | StageOutcome::Cancelled))
    }
}

/// Errors that stop a run before or outside any stage.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stage kind has no executor.
    #[error("no implementation is registered for `{0}` stages")]
    Unregistered(String),
}

enum Event {
    Done {
        index: usize,
        result: Result<(Artifact, f64), (StageError, f64)>,
    },
}

/// Executes the stale stages of a plan (`selected` limits the run to some stages; their inputs
/// must then be cached or selected too).
#[allow(clippy::too_many_arguments)]
pub fn execute(
    plan: &[ConcreteStage],
    statuses: &[StageStatus],
    selected: Option<&HashSet<usize>>,
    store: &Store,
    registry: &Registry,
    options: &RunOptions,
    cancel: &CancelToken,
    reporter: &dyn Reporter,
) -> Result<RunReport, EngineError> {
    let started = Timestamp::now();
    let clock = Instant::now();
    let mut record = RunRecord::new(options.pipeline.clone());
    record.started_at = started;
    record.id = RunRecord::make_id(started);
    for stage in plan {
        if registry.get(stage.kind()).is_none() {
            return Err(EngineError::Unregistered(stage.kind().to_string()));
        }
    }
    let n = plan.len();
    let in_run = |i: usize| selected.is_none_or(|s| s.contains(&i));
    let mut outcome: Vec<Option<(StageOutcome, f64, Option<String>)>> = vec![None; n];
    let mut artifacts: BTreeMap<usize, Artifact> = BTreeMap::new();
    let mut stale: Vec<bool> = statuses.iter().map(|s| s.state != State::Cached).collect();

    // Cached artifacts are verified before anything reads them; a corrupt one is reported,
    // evicted and rebuilt, and everything downstream runs again.
    for i in 0..n {
        if !in_run(i) {
            continue;
        }
        if stale[i] || plan[i].inputs.iter().any(|&(_, j)| stale[j]) {
            stale[i] = true;
            continue;
        }
        let Some(key) = &statuses[i].key else {
            continue;
        };
        match store.get(key) {
            Ok(Some(a)) => {
                artifacts.insert(i, a);
            }
            Ok(None) => stale[i] = true,
            Err(e) if e.is_corrupt() => {
                reporter.notice(&format!(
                    "the cached artifact of `{}` is corrupt ({e}); rebuilding it",
                    plan[i].name
                ));
                let _ = store.evict(key);
                stale[i] = true;
            }
            Err(e) => return Err(e.into()),
        }
    }

    let (tx, rx) = mpsc::channel::<Event>();
    std::thread::scope(|scope| -> Result<(), EngineError> {
        let mut running: HashSet<usize> = HashSet::new();
        let mut device_busy = false;
        loop {
            // Settle everything decidable without running.
            let mut progressed = true;
            while progressed {
                progressed = false;
                for i in 0..n {
                    if outcome[i].is_some() || running.contains(&i) {
                        continue;
                    }
                    if !in_run(i) {
                        outcome[i] = Some((StageOutcome::Skipped, 0.0, None));
                        progressed = true;
                        continue;
                    }
                    if statuses[i].state == State::Blocked {
                        // A stage that cannot run fails; what depends on it is skipped.
                        let why = statuses[i].reasons.join("; ");
                        let o = if statuses[i].blocked_by_input {
                            StageOutcome::Skipped
                        } else {
                            StageOutcome::Failed
                        };
                        reporter.finished(&plan[i].name, o, 0.0, Some(&why));
                        outcome[i] = Some((o, 0.0, Some(why)));
                        progressed = true;
                        continue;
                    }
                    // An input that has settled without an artifact failed, was skipped or was
                    // cancelled: this stage cannot run.
                    if let Some(&(_, j)) = plan[i]
                        .inputs
                        .iter()
                        .find(|&&(_, j)| outcome[j].is_some() && !artifacts.contains_key(&j))
                    {
                        let why = format!("upstream `{}` did not finish", plan[j].name);
                        reporter.finished(&plan[i].name, StageOutcome::Skipped, 0.0, Some(&why));
                        outcome[i] = Some((StageOutcome::Skipped, 0.0, Some(why)));
                        progressed = true;
                        continue;
                    }
                    if !stale[i] && artifacts.contains_key(&i) {
                        remember_name(store, &plan[i].name, &artifacts[&i]);
                        reporter.finished(&plan[i].name, StageOutcome::Cached, 0.0, None);
                        outcome[i] = Some((StageOutcome::Cached, 0.0, None));
                        progressed = true;
                    }
                }
            }
            // Start ready stages; ready stages of one batch group start as one task.
            let ready: Vec<usize> = (0..n)
                .filter(|&i| outcome[i].is_none() && !running.contains(&i))
                .filter(|&i| {
                    plan[i]
                        .inputs
                        .iter()
                        .all(|&(_, j)| artifacts.contains_key(&j) && outcome[j].is_some())
                })
                .collect();
            let mut taken: HashSet<usize> = HashSet::new();
            for &i in &ready {
                if taken.contains(&i)
                    || running.len() >= options.jobs.max(1)
                    || cancel.is_cancelled()
                {
                    continue;
                }
                let executor = registry.get(plan[i].kind()).expect("checked above").clone();
                let uses_device = executor.uses_device(&plan[i], options.backend);
                if uses_device && device_busy {
                    continue;
                }
                let members: Vec<usize> = match executor.batch_group(&plan[i]) {
                    Some(group) => ready
                        .iter()
                        .copied()
                        .filter(|&j| {
                            !taken.contains(&j)
                                && plan[j].kind() == plan[i].kind()
                                && executor.batch_group(&plan[j]).as_deref() == Some(group.as_str())
                        })
                        .collect(),
                    None => vec![i],
                };
                device_busy |= uses_device;
                let mut jobs = Vec::with_capacity(members.len());
                for &m in &members {
                    taken.insert(m);
                    running.insert(m);
                    reporter.started(&plan[m].name, plan[m].kind());
                    let inputs: Vec<StageInput<'_>> = plan[m]
                        .inputs
                        .iter()
                        .map(|&(role, j)| input_tree(plan, &artifacts, role, j))
                        .collect();
                    jobs.push(Job {
                        index: m,
                        stage: &plan[m],
                        status: &statuses[m],
                        inputs,
                    });
                }
                let tx = tx.clone();
                scope.spawn(move || {
                    let t = Instant::now();
                    let results = run_batch(
                        jobs,
                        store,
                        executor.as_ref(),
                        options.backend,
                        cancel,
                        reporter,
                    );
                    let secs = t.elapsed().as_secs_f64() / results.len().max(1) as f64;
                    for (index, result) in results {
                        let result = result.map(|a| (a, secs)).map_err(|e| (e, secs));
                        let _ = tx.send(Event::Done { index, result });
                    }
                });
            }
            if running.is_empty() {
                break;
            }
            let Ok(Event::Done { index, result }) = rx.recv() else {
                break;
            };
            running.remove(&index);
            if registry
                .get(plan[index].kind())
                .is_some_and(|e| e.uses_device(&plan[index], options.backend))
            {
                device_busy = false;
            }
            match result {
                Ok((artifact, secs)) => {
                    reporter.finished(&plan[index].name, StageOutcome::Ran, secs, None);
                    artifacts.insert(index, artifact);
                    outcome[index] = Some((StageOutcome::Ran, secs, None));
                }
                Err((StageError::Cancelled, secs)) => {
                    reporter.finished(&plan[index].name, StageOutcome::Cancelled, secs, None);
                    outcome[index] = Some((StageOutcome::Cancelled, secs, None));
                }
                Err((e, secs)) => {
                    let message = e.to_string();
                    reporter.finished(
                        &plan[index].name,
                        StageOutcome::Failed,
                        secs,
                        Some(&message),
                    );
                    outcome[index] = Some((StageOutcome::Failed, secs, Some(message)));
                }
            }
        }
        Ok(())
    })?;

    for (i, stage) in plan.iter().enumerate() {
        let (o, secs, error) = outcome[i]
            .clone()
            .unwrap_or((StageOutcome::Cancelled, 0.0, None));
        record.stages.push(StageRun {
            name: stage.name.clone(),
            kind: stage.kind().to_string(),
            key: statuses[i].key.clone(),
            outcome: o,
            duration_s: secs,
            error,
        });
    }
    record.duration_s = clock.elapsed().as_secs_f64();
    store.write_run_record(&record)?;
    Ok(RunReport { record, artifacts })
}

/// One stage of a task: what it needs before its context exists.
struct Job<'p> {
    index: usize,
    stage: &'p ConcreteStage,
    status: &'p StageStatus,
    inputs: Vec<StageInput<'p>>,
}

/// The input `j` with its whole upstream, artifacts included.
fn input_tree<'p>(
    plan: &'p [ConcreteStage],
    artifacts: &BTreeMap<usize, Artifact>,
    role: &'static str,
    j: usize,
) -> StageInput<'p> {
    StageInput {
        role,
        stage: &plan[j],
        artifact: artifacts[&j].clone(),
        upstream: plan[j]
            .inputs
            .iter()
            .map(|&(r, k)| input_tree(plan, artifacts, r, k))
            .collect(),
    }
}

/// Runs the stages of one task (one stage, or a batch group) and commits each artifact.
fn run_batch(
    jobs: Vec<Job<'_>>,
    store: &Store,
    executor: &dyn crate::stage::StageExecutor,
    backend: Backend,
    cancel: &CancelToken,
    reporter: &dyn Reporter,
) -> Vec<(usize, Result<Artifact, StageError>)> {
    let io = |e: StoreError| StageError::from_error(&e);
    let started_at = Timestamp::now();
    let clock = Instant::now();
    // Staging and work directories first; a job that cannot get them fails alone.
    let mut results: Vec<(usize, Result<Artifact, StageError>)> = Vec::new();
    let mut prepared = Vec::new();
    for job in jobs {
        let key = job.status.key.clone().expect("only unblocked stages run");
        let work_dir = store.root().join("work").join(key.as_str());
        let staging = match store.begin(&key) {
            Ok(s) => s,
            Err(e) => {
                results.push((job.index, Err(io(e))));
                continue;
            }
        };
        if let Err(e) = std::fs::create_dir_all(&work_dir) {
            results.push((
                job.index,
                Err(StageError::failed(format!(
                    "cannot create `{}`: {e}",
                    work_dir.display()
                ))),
            ));
            continue;
        }
        let input_refs: Vec<InputRef> = job
            .inputs
            .iter()
            .map(|i| InputRef {
                name: i.role.to_string(),
                stage: i.stage.name.clone(),
                key: i.artifact.key().clone(),
            })
            .collect();
        prepared.push((job, key, staging, work_dir, input_refs));
    }
    let contexts: Vec<StageContext<'_>> = prepared
        .iter_mut()
        .map(|(job, _, staging, work_dir, _)| {
            let inputs = std::mem::take(&mut job.inputs);
            StageContext::new(
                job.stage,
                inputs,
                staging.path(),
                work_dir,
                backend,
                cancel,
                reporter,
            )
        })
        .collect();
    // A panicking executor (a bug, or a plugin's) fails its stages like an error would: the
    // message is kept, the staging directories are discarded, the rest of the run goes on.
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if contexts.len() == 1 {
            vec![executor.run(&contexts[0])]
        } else {
            executor.run_batch(&contexts)
        }
    }));
    let outputs = run.unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        (0..contexts.len())
            .map(|_| Err(StageError::failed(format!("the stage panicked: {message}"))))
            .collect()
    });
    drop(contexts);
    let duration = clock.elapsed().as_secs_f64() / prepared.len().max(1) as f64;
    for ((job, key, staging, work_dir, input_refs), output) in prepared.into_iter().zip(outputs) {
        let result = output.and_then(|summary| {
            if cancel.is_cancelled() {
                return Err(StageError::Cancelled);
            }
            inputs_unchanged(job.stage, &job.status.external, store)?;
            let mut manifest = Manifest::new(
                &job.stage.name,
                job.stage.kind().as_str(),
                &key,
                executor.version(),
            );
            manifest.params = job.status.params.clone();
            manifest.inputs = input_refs;
            manifest.external_files = job.status.external.clone();
            manifest.started_at = started_at;
            manifest.duration_s = duration;
            manifest.summary = summary;
            // A forced re-run replaces the old artifact only once its successor is complete: an
            // interrupted `--force` costs nothing that was already good.
            let artifact = if job.status.forced {
                staging.commit_replacing(manifest)
            } else {
                staging.commit(manifest)
            }
            .map_err(io)?;
            store.record_stage(&job.stage.name, &key).map_err(io)?;
            let _ = std::fs::remove_dir_all(&work_dir);
            Ok(artifact)
        });
        results.push((job.index, result));
    }
    results
}

/// Fails when an external file the stage read is not what it was when the key was computed: the
/// artifact would be stored under a key that does not describe it. (A user saving a file while a
/// stage reads it, as in watch mode; the next run picks the new content up.)
fn inputs_unchanged(
    stage: &ConcreteStage,
    keyed: &[ExternalFile],
    store: &Store,
) -> Result<(), StageError> {
    // A downloading stage writes its own files (verified against published checksums).
    if keyed.is_empty() || downloads(stage) {
        return Ok(());
    }
    // Unchanged files cost a `stat` each: their digests are cached by size and mtime.
    let mut digests = FileDigestCache::load(store.file_digests_path());
    for (written, resolved) in external_files(stage) {
        let Some(before) = keyed.iter().find(|f| f.path == written) else {
            continue;
        };
        let now = digests.digest(&resolved).ok().map(|d| d.hex());
        if now.as_deref() != Some(before.digest.as_str()) {
            return Err(StageError::failed(format!(
                "`{written}` changed while the stage was reading it; nothing was stored. Run again \
                 to use the new content"
            )));
        }
    }
    Ok(())
}

/// Whether the stage downloads its files when they are missing (official datasets with
/// `download=#true`).
fn downloads(stage: &ConcreteStage) -> bool {
    matches!(&stage.stage.spec, StageSpec::Dataset(d) if d.source.value.downloadable())
}

/// Records a cached artifact under the stage name it has now, when it was made (or last
/// recorded) under another one: after a rename, `status` compares the stage with its own last
/// run instead of calling it new. A failure to record is only a worse hint later.
fn remember_name(store: &Store, name: &str, artifact: &Artifact) {
    let key = artifact.key();
    let known = matches!(store.last_manifest_for(name), Ok(Some(m)) if &m.key == key);
    if !known && let Err(e) = store.record_stage(name, key) {
        tracing::debug!(stage = name, error = %e, "cannot record the stage's name");
    }
}

/// The indices of `targets` and everything they depend on.
pub fn with_upstream(plan: &[ConcreteStage], targets: &[usize]) -> HashSet<usize> {
    let mut keep = HashSet::new();
    let mut stack: Vec<usize> = targets.to_vec();
    while let Some(i) = stack.pop() {
        if keep.insert(i) {
            stack.extend(plan[i].inputs.iter().map(|&(_, j)| j));
        }
    }
    keep
}
