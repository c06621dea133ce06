//! What the runtime adds to a concrete stage (expanded by `lortflow_lang::expand`): the
//! parameters that go into its cache key, and the external files whose digests do.

use std::path::PathBuf;

use lortflow_lang::ir::Backend;
use serde_json::Value as Json;

pub use lortflow_lang::expand::{ConcreteStage, Override, expand};

/// Where the numeric stages of a run compute: the backend, and the devices a data-parallel stage
/// (first-stage training) splits its batches over. Both are in the keys of the stages whose
/// numbers they change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compute {
    /// The backend.
    pub backend: Backend,
    /// Devices (replicas) of data-parallel stages; at least 1.
    pub devices: usize,
}

impl Compute {
    /// One device of `backend`.
    pub fn on(backend: Backend) -> Self {
        Self {
            backend,
            devices: 1,
        }
    }
}

/// The canonical parameters of a concrete stage for its cache key: the lowered spec without
/// stage names (inputs enter the key through their roles and keys, so renaming a stage or
/// sweeping a copy of it keeps the cache), plus the backend for stages whose numbers depend on
/// it, and the device count for data-parallel stages trained on more than one (their BatchNorm
/// statistics are per replica; one device keeps the keys it always had). An evaluation is the exception: its tables are labelled with the names of the heads it
/// reads and its report with its own, so those names are its parameters (renaming a head
/// re-runs only the evaluation).
pub fn key_params(stage: &ConcreteStage, plan: &[ConcreteStage], compute: Compute) -> Json {
    let mut params = stage.stage.params_without_references();
    if let Json::Object(map) = &mut params {
        if stage.kind().shows_input_names() {
            let names = stage
                .inputs
                .iter()
                .map(|&(_, i)| Json::String(plan[i].name.clone()))
                .collect();
            map.insert("heads".into(), Json::Array(names));
            map.insert("name".into(), Json::String(stage.name.clone()));
        }
        if stage.kind().depends_on_backend() {
            map.insert(
                "backend".into(),
                Json::String(compute.backend.name().into()),
            );
        }
        if compute.devices > 1 && stage.stage.is_data_parallel() {
            map.insert("devices".into(), Json::from(compute.devices));
        }
    }
    params
}

/// The external files a stage reads: (path as written, resolved path).
pub fn external_files(stage: &ConcreteStage) -> Vec<(String, PathBuf)> {
    stage
        .stage
        .external_files()
        .into_iter()
        .map(|p| (p.written.clone(), p.resolved.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use lortflow_lang::{MemoryLoader, check_text};

    use super::*;

    #[test]
    fn key_params_leave_out_names_and_add_the_backend() {
        let text = r#"lortflow 1
            dataset "d" { source "synthetic"; long-tail "exp" imbalance-ratio=10 }
            backbone "b" { data "d"; arch "small-cnn"; train epochs=1 }
            features "f" { backbone "b" }
            head "ce" { features "f" }
            evaluate "t" { heads "*" }
        "#;
        let checked = check_text(Path::new("p.kdl"), text.into(), &MemoryLoader::default());
        let plan = expand(&checked.pipeline, &[]).unwrap();
        let cpu = Compute::on(lortflow_lang::ir::Backend::Cpu);
        let head = key_params(&plan[3], &plan, cpu);
        assert!(head.get("features").is_none());
        assert_eq!(head["backend"], "cpu");
        let eval = key_params(&plan[4], &plan, cpu);
        assert_eq!(eval["heads"], serde_json::json!(["ce"]));
        assert!(eval.get("backend").is_none());
    }

    /// The device count keys only a backbone that trains, and only above one device: one
    /// device keeps every key it had.
    #[test]
    fn devices_key_only_data_parallel_training() {
        let text = r#"lortflow 1
            dataset "d" { source "synthetic"; long-tail "exp" imbalance-ratio=10 }
            backbone "b" { data "d"; arch "small-cnn"; train epochs=1 }
            backbone "c" { data "d"; arch "small-cnn"; checkpoint "w.pt" }
            features "f" { backbone "b" }
        "#;
        let checked = check_text(Path::new("p.kdl"), text.into(), &MemoryLoader::default());
        let plan = expand(&checked.pipeline, &[]).unwrap();
        let on = |devices| Compute {
            backend: lortflow_lang::ir::Backend::Cuda,
            devices,
        };
        let index = |name: &str| plan.iter().position(|s| s.name == name).unwrap();
        let (b, c, f) = (index("b"), index("c"), index("f"));
        assert_eq!(key_params(&plan[b], &plan, on(4))["devices"], 4);
        assert_eq!(
            key_params(&plan[b], &plan, on(1)),
            key_params(
                &plan[b],
                &plan,
                Compute::on(lortflow_lang::ir::Backend::Cuda)
            )
        );
        assert!(key_params(&plan[b], &plan, on(1)).get("devices").is_none());
        assert!(key_params(&plan[c], &plan, on(4)).get("devices").is_none());
        assert!(key_params(&plan[f], &plan, on(4)).get("devices").is_none());
    }
}
