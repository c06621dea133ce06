//! The cluster profile: what `sbatch` is told for each kind of stage. A small KDL file
//! (documented in `docs/slurm.md`):
//!
//! ```kdl
//! partition "gpu"
//! account "mylab"
//! qos "normal"
//! time "04:00:00"
//! poll-interval 15        // seconds between two batched squeue calls
//! retries 1               // re-submissions after NODE_FAIL / PREEMPTED / BOOT_FAIL
//! sbatch "--mail-type=FAIL"
//! stage "backbone" { gpus 1; cpus 8; mem "32G"; time "24:00:00"; sbatch "--constraint=a100" }
//! stage "head" { cpus 2; mem "8G" }
//! ```
//!
//! Every setting is optional; what is not given is left to the cluster's defaults.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kdl::{KdlDocument, KdlNode, KdlValue};

/// The stage kinds a profile can give resources to.
pub const STAGE_KINDS: &[&str] = &["dataset", "backbone", "features", "head", "evaluate"];

/// Resources and options of one kind of stage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StageResources {
    /// `--gres=gpu:N`.
    pub gpus: Option<u32>,
    /// `--cpus-per-task`.
    pub cpus: Option<u32>,
    /// `--mem` (`"32G"`).
    pub mem: Option<String>,
    /// `--time`, replacing the profile's.
    pub time: Option<String>,
    /// Further `sbatch` arguments, after the profile's.
    pub sbatch: Vec<String>,
}

/// A cluster profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmProfile {
    /// The file it was read from (`None`: built in code, or no file found).
    pub path: Option<PathBuf>,
    /// `--partition`.
    pub partition: Option<String>,
    /// `--account`.
    pub account: Option<String>,
    /// `--qos`.
    pub qos: Option<String>,
    /// `--time` of every job unless its stage kind says otherwise.
    pub time: Option<String>,
    /// Seconds between two polls of the scheduler.
    pub poll_interval_s: u64,
    /// How many times a job that ended with NODE_FAIL, PREEMPTED or BOOT_FAIL is submitted again.
    pub retries: u32,
    /// `sbatch` arguments for every job.
    pub sbatch: Vec<String>,
    /// Per stage kind.
    pub stages: BTreeMap<String, StageResources>,
}

impl Default for SlurmProfile {
    fn default() -> Self {
        SlurmProfile {
            path: None,
            partition: None,
            account: None,
            qos: None,
            time: None,
            poll_interval_s: 10,
            retries: 1,
            sbatch: Vec::new(),
            stages: BTreeMap::new(),
        }
    }
}

/// A profile that cannot be used, with the place to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {message}", path.display())]
pub struct ProfileError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line (1 for problems of the whole file).
    pub line: usize,
    /// What is wrong and what to write instead.
    pub message: String,
}

impl SlurmProfile {
    /// The profile file lortflow uses for `pipeline` when none is named: `lortflow-slurm.kdl`
    /// beside the pipeline, else `$XDG_CONFIG_HOME/lortflow/slurm.kdl` (`~/.config/…`).
    pub fn find(pipeline: &Path) -> Option<PathBuf> {
        let beside = pipeline
            .parent()
            .unwrap_or(Path::new("."))
            .join("lortflow-slurm.kdl");
        if beside.is_file() {
            return Some(beside);
        }
        let config = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
        let user = config.join("lortflow").join("slurm.kdl");
        user.is_file().then_some(user)
    }

    /// Reads the profile at `path`.
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|e| ProfileError {
            path: path.to_path_buf(),
            line: 1,
            message: format!("cannot read the Slurm profile: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// Parses profile `text` (named `path` in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ProfileError> {
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let error = |offset: usize, message: String| ProfileError {
            path: path.to_path_buf(),
            line: line_of(offset),
            message,
        };
        let doc = KdlDocument::parse_v2(text)
            .or_else(|v2| KdlDocument::parse_v1(text).map_err(|_| v2))
            .map_err(|e| {
                let first = e.diagnostics.first();
                error(
                    first.map_or(0, |d| d.span.offset()),
                    format!(
                        "not a KDL document: {}",
                        first
                            .and_then(|d| d.message.clone())
                            .unwrap_or_else(|| "syntax error".into())
                    ),
                )
            })?;
        let mut profile = SlurmProfile {
            path: Some(path.to_path_buf()),
            ..SlurmProfile::default()
        };
        for node in doc.nodes() {
            let at = node.span().offset();
            let name = node.name().value();
            match name {
                "partition" => profile.partition = Some(string_arg(node, &error)?),
                "account" => profile.account = Some(string_arg(node, &error)?),
                "qos" => profile.qos = Some(string_arg(node, &error)?),
                "time" => profile.time = Some(string_arg(node, &error)?),
                "poll-interval" => {
                    profile.poll_interval_s = u64::from(int_arg(node, 1, &error)?);
                }
                "retries" => profile.retries = int_arg(node, 0, &error)?,
                "sbatch" => profile.sbatch.extend(string_args(node, &error)?),
                "stage" => {
                    let kind = string_arg(node, &error)?;
                    if !STAGE_KINDS.contains(&kind.as_str()) {
                        return Err(error(
                            at,
                            format!(
                                "`stage \"{kind}\"`: the stage kinds are {}",
                                quoted(STAGE_KINDS)
                            ),
                        ));
                    }
                    let resources = stage_resources(node, &error)?;
                    if profile.stages.insert(kind.clone(), resources).is_some() {
                        return Err(error(
                            at,
                            format!("`stage \"{kind}\"` is given twice; merge the two"),
                        ));
                    }
                }
                other => {
                    return Err(error(
                        at,
                        format!(
                            "unknown setting `{other}`; a Slurm profile has {}",
                            quoted(&[
                                "partition",
                                "account",
                                "qos",
                                "time",
                                "poll-interval",
                                "retries",
                                "sbatch",
                                "stage"
                            ])
                        ),
                    ));
                }
            }
        }
        Ok(profile)
    }

    /// Asks for at least `gpus` GPUs in the jobs of stages of `kind` (a data-parallel run's
    /// devices); a profile that asks for more keeps its number.
    pub fn with_min_gpus(mut self, kind: &str, gpus: u32) -> Self {
        let stage = self.stages.entry(kind.to_string()).or_default();
        stage.gpus = Some(stage.gpus.unwrap_or(0).max(gpus));
        self
    }

    /// The `sbatch` options of a job for a stage of `kind` (partition, account, qos, time,
    /// resources, then the profile's and the kind's extra arguments).
    pub fn options(&self, kind: &str) -> Vec<String> {
        let stage = self.stages.get(kind).cloned().unwrap_or_default();
        let mut options = Vec::new();
        let mut push = |flag: &str, value: Option<String>| {
            if let Some(v) = value {
                options.push(format!("--{flag}={v}"));
            }
        };
        push("partition", self.partition.clone());
        push("account", self.account.clone());
        push("qos", self.qos.clone());
        push("time", stage.time.clone().or_else(|| self.time.clone()));
        push("cpus-per-task", stage.cpus.map(|c| c.to_string()));
        push("mem", stage.mem.clone());
        push("gres", stage.gpus.map(|g| format!("gpu:{g}")));
        options.extend(self.sbatch.iter().cloned());
        options.extend(stage.sbatch);
        options
    }
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

type Error<'a> = dyn Fn(usize, String) -> ProfileError + 'a;

fn stage_resources(node: &KdlNode, error: &Error<'_>) -> Result<StageResources, ProfileError> {
    let mut resources = StageResources::default();
    let Some(children) = node.children() else {
        return Ok(resources);
    };
    for child in children.nodes() {
        match child.name().value() {
            "gpus" => resources.gpus = Some(int_arg(child, 0, error)?),
            "cpus" => resources.cpus = Some(int_arg(child, 1, error)?),
            "mem" => resources.mem = Some(string_arg(child, error)?),
            "time" => resources.time = Some(string_arg(child, error)?),
            "sbatch" => resources.sbatch.extend(string_args(child, error)?),
            other => {
                return Err(error(
                    child.span().offset(),
                    format!(
                        "unknown stage setting `{other}`; a `stage` has {}",
                        quoted(&["gpus", "cpus", "mem", "time", "sbatch"])
                    ),
                ));
            }
        }
    }
    Ok(resources)
}

fn string_args(node: &KdlNode, error: &Error<'_>) -> Result<Vec<String>, ProfileError> {
    let name = node.name().value();
    let values: Vec<String> = node
        .entries()
        .iter()
        .map(|e| match (e.name(), e.value()) {
            (None, KdlValue::String(s)) => Ok(s.clone()),
            _ => Err(error(
                e.span().offset(),
                format!("`{name}` takes strings, e.g. `{name} \"--exclusive\"`"),
            )),
        })
        .collect::<Result<_, _>>()?;
    if values.is_empty() {
        return Err(error(
            node.span().offset(),
            format!("`{name}` needs a value"),
        ));
    }
    Ok(values)
}

fn string_arg(node: &KdlNode, error: &Error<'_>) -> Result<String, ProfileError> {
    let mut values = string_args(node, error)?;
    if values.len() > 1 {
        return Err(error(
            node.span().offset(),
            format!("`{}` takes one value", node.name().value()),
        ));
    }
    Ok(values.remove(0))
}

fn int_arg(node: &KdlNode, min: u32, error: &Error<'_>) -> Result<u32, ProfileError> {
    let name = node.name().value();
    match node.entries() {
        [entry] if entry.name().is_none() => entry
            .value()
            .as_integer()
            .and_then(|v| u32::try_from(v).ok())
            .filter(|&v| v >= min)
            .ok_or_else(|| {
                error(
                    entry.span().offset(),
                    format!("`{name}` takes a whole number of at least {min}"),
                )
            }),
        _ => Err(error(
            node.span().offset(),
            format!("`{name}` takes one number"),
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn data_parallel_stages_get_at_least_their_devices() {
        let profile = super::SlurmProfile::default()
            .with_min_gpus("backbone", 4)
            .with_min_gpus("features", 4);
        assert!(
            profile
                .options("backbone")
                .contains(&"--gres=gpu:4".to_string())
        );
        assert!(
            !profile
                .options("head")
                .iter()
                .any(|o| o.starts_with("--gres"))
        );
        let mut more = super::SlurmProfile::default();
        more.stages.entry("backbone".into()).or_default().gpus = Some(8);
        let more = more.with_min_gpus("backbone", 4);
        assert!(
            more.options("backbone")
                .contains(&"--gres=gpu:8".to_string())
        );
    }

    use super::*;

    const PROFILE: &str = r#"
partition "gpu"
account "lab"
time "04:00:00"
poll-interval 30
retries 2
sbatch "--mail-type=FAIL"
stage "backbone" { gpus 1; cpus 8; mem "32G"; time "24:00:00"; sbatch "--constraint=a100" }
stage "head" { cpus 2 }
"#;

    #[test]
    fn a_profile_becomes_sbatch_options_per_stage_kind() {
        let p = SlurmProfile::parse(Path::new("slurm.kdl"), PROFILE).unwrap();
        assert_eq!((p.poll_interval_s, p.retries), (30, 2));
        assert_eq!(
            p.options("backbone"),
            [
                "--partition=gpu",
                "--account=lab",
                "--time=24:00:00",
                "--cpus-per-task=8",
                "--mem=32G",
                "--gres=gpu:1",
                "--mail-type=FAIL",
                "--constraint=a100"
            ]
        );
        assert_eq!(
            p.options("evaluate"),
            [
                "--partition=gpu",
                "--account=lab",
                "--time=04:00:00",
                "--mail-type=FAIL"
            ]
        );
        let empty = SlurmProfile::parse(Path::new("e.kdl"), "").unwrap();
        assert!(empty.options("head").is_empty());
    }

    #[test]
    fn mistakes_name_the_line_and_the_choices() {
        for (text, line, says) in [
            (
                "partition \"a\"\npartiton \"b\"",
                2,
                "unknown setting `partiton`",
            ),
            ("stage \"backbon\" { gpus 1 }", 1, "the stage kinds are"),
            (
                "stage \"head\" {\n  gpu 1\n}",
                2,
                "unknown stage setting `gpu`",
            ),
            ("poll-interval 0", 1, "at least 1"),
            ("retries \"two\"", 1, "takes a whole number"),
            ("time 4", 1, "takes strings"),
            ("stage \"head\"\nstage \"head\"", 2, "given twice"),
            ("partition \"a", 1, "not a KDL document"),
        ] {
            let e = SlurmProfile::parse(Path::new("p.kdl"), text).unwrap_err();
            assert_eq!(e.line, line, "{text}: {e}");
            assert!(e.to_string().contains(says), "{text}: {e}");
            assert!(e.to_string().starts_with("p.kdl:"), "{e}");
        }
    }
}
