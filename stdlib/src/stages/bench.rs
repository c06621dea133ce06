//! `lortflow bench input`: a backbone's input stream without the model. The dataset stage's
//! artifact (packed, or loaded in memory for the built-in sources) is streamed through the
//! backbone's own training view and sampler, or with `eval` through the extraction view, exactly
//! as training and extraction read it.

use std::ops::ControlFlow;
use std::time::Instant;

use lortflow_data::dataset::Split;
use lortflow_data::images::default_workers;
use lortflow_data::input::{BatchConfig, BatchOutput, DataError};
use lortflow_lang::ConcreteStage;
use lortflow_lang::ir::{Backend, StageSpec, Weights};
use lortflow_runtime::{Artifact, StageError};

use super::backbone::Splits;
use super::common::{DatasetIndex, INDEX_FILE, read_json};
use super::convert::backbone as convert;
use super::dataset::PACKED;

/// One streamed epoch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpochRate {
    /// 0-based epoch.
    pub epoch: usize,
    /// Images delivered.
    pub images: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// The largest resident memory of the process's own (anonymous) pages after a batch, in
    /// MB; 0 where `/proc` does not tell.
    pub own_memory_mb: f64,
}

/// `RssAnon` of `/proc/self/status` in MB (Linux; 0 elsewhere): the process's own memory,
/// without the page cache of memory-mapped files.
fn own_memory_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("RssAnon:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// What was streamed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputSetup {
    /// `packed` (streamed from the dataset's packs) or `memory`.
    pub storage: &'static str,
    /// Decode threads (packed data).
    pub workers: usize,
    /// Images per batch.
    pub batch_size: usize,
    /// `[C, H, W]` of a produced image.
    pub shape: [usize; 3],
    /// What the batches hold: `u8` pixels where the backend is a GPU (normalised there),
    /// normalised values for the CPU, as training and extraction would get them.
    pub output: BatchOutput,
}

/// Streams `epochs` epochs of `backbone`'s input from the artifact of its dataset stage `data`,
/// in the form batches take for `backend`, calling `report` after each.
pub fn bench_input(
    data: &ConcreteStage,
    data_artifact: &Artifact,
    backbone: &ConcreteStage,
    backend: Backend,
    epochs: usize,
    eval: bool,
    report: &mut dyn FnMut(&InputSetup, &EpochRate),
) -> Result<InputSetup, StageError> {
    let (StageSpec::Dataset(dataset), StageSpec::Backbone(spec)) =
        (&data.stage.spec, &backbone.stage.spec)
    else {
        return Err(StageError::failed(format!(
            "`{}` is not a backbone reading the dataset `{}`",
            backbone.name, data.name
        )));
    };
    let index: DatasetIndex = read_json(&data_artifact.file(INDEX_FILE))?;
    let splits = Splits::open(dataset, &index, data_artifact)?;
    let normalization = splits.normalization(spec.normalize, &index.train_ids)?;
    let views = splits.views(&convert::transforms(&spec.augment), &normalization)?;
    let train = match &spec.weights {
        Weights::Train(t) => Some(convert::train_config(t).map_err(super::common::fail)?),
        Weights::Checkpoint { .. } => None,
    };
    let batch_size = train.as_ref().map_or(128, |t| t.batch_size);
    let input = if eval {
        splits.eval_input(&views, Split::Train)
    } else {
        splits.train_input(&views)
    };
    let setup = InputSetup {
        storage: if index.kind == PACKED {
            "packed"
        } else {
            "memory"
        },
        workers: default_workers(),
        batch_size,
        shape: input.output_shape(),
        output: crate::input::output_on(backend == Backend::Cpu),
    };
    for epoch in 0..epochs {
        let (order, seed) = match (&train, eval) {
            (Some(t), false) => (
                t.sampler.epoch_order(
                    input.labels(),
                    input.num_classes(),
                    &index.train_ids,
                    t.seed,
                    epoch,
                ),
                t.seed,
            ),
            _ => (index.train_ids.clone(), 0),
        };
        let config = BatchConfig {
            batch_size,
            prefetch: crate::backbone::DEFAULT_PREFETCH,
            seed,
            train: !eval,
            output: setup.output,
        };
        let started = Instant::now();
        let (mut images, mut own) = (0usize, 0f64);
        input
            .for_each_batch::<DataError>(&order, &config, epoch, |batch| {
                images += batch.labels.len();
                // Measured while the batch is held, as a trainer would hold it.
                own = own.max(own_memory_mb());
                Ok(ControlFlow::Continue(()))
            })
            .map_err(super::common::fail)?;
        report(
            &setup,
            &EpochRate {
                epoch,
                images,
                seconds: started.elapsed().as_secs_f64(),
                own_memory_mb: own,
            },
        );
    }
    Ok(setup)
}
