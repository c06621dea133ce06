//! First-stage training: an explicit loop (no burn-train `Learner`, which installs its own logger
//! and panic hook) with SGD + momentum + weight decay, a per-epoch learning-rate schedule, a
//! checkpoint after every epoch and resumption from the last one.
//!
//! Repeatability: the initial weights are drawn from per-parameter streams of our own RNG
//! (`init.rs`; Flex keeps its RNG in a process-wide global that any concurrent work would
//! disturb); the order and augmentation of every epoch depend only on `(seed, epoch)`
//! (`data` module). A run resumed from the checkpoint of epoch `e` therefore continues exactly as
//! the uninterrupted run would have, on the CPU bit for bit.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{Optimizer, SgdConfig};
use burn::tensor::ElementConversion;
use burn::tensor::backend::{AutodiffBackend, Backend};
use lortflow_data::input::{BatchConfig, DataError, ImageInput, SamplerKind};
use tracing::{debug, info};

use super::base::{Backbone, BackboneConfig};
use super::checkpoint::{CheckpointDir, EpochStats, TrainState};
use super::error::BackboneError;
use super::loss::{BoundLoss, Stage1Loss};
use super::schedule::BackboneSchedule;

/// Batches prepared ahead of the model by the data worker.
pub const DEFAULT_PREFETCH: usize = 4;

/// First-stage training hyper-parameters, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// Epochs.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Initial learning rate.
    pub lr: f64,
    /// SGD momentum (PyTorch semantics: no dampening, no Nesterov).
    pub momentum: f64,
    /// L2 weight decay on every parameter (PyTorch's `SGD(weight_decay=…)`, BatchNorm included).
    pub weight_decay: f64,
    /// Learning-rate schedule.
    pub schedule: BackboneSchedule,
    /// Linear warm-up epochs.
    pub warmup_epochs: usize,
    /// The loss.
    pub loss: Stage1Loss,
    /// The sampler.
    pub sampler: SamplerKind,
    /// Seed of initialisation, order and augmentation.
    pub seed: u64,
    /// Batches prepared ahead.
    pub prefetch: usize,
}

impl TrainConfig {
    /// Checks ranges.
    pub fn validate(&self) -> Result<(), BackboneError> {
        let bad = |m: String| Err(BackboneError::InvalidTraining(m));
        if self.epochs == 0 || self.batch_size == 0 {
            return bad(format!(
                "epochs and batch size must be at least 1, got {} and {}",
                self.epochs, self.batch_size
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!(
                "the learning rate must be positive, got {}",
                self.lr
            ));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad(format!("momentum must be in [0, 1), got {}", self.momentum));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!(
                "weight decay must be non-negative, got {}",
                self.weight_decay
            ));
        }
        Ok(())
    }

    /// A string that changes whenever a setting that shapes the trajectory changes; stored in
    /// checkpoints so that a resume never continues someone else's run.
    pub(crate) fn fingerprint(&self, backbone: &BackboneConfig, num_samples: usize) -> String {
        format!("{self:?}|{backbone:?}|samples={num_samples}")
    }
}

/// What the training set is.
#[derive(Clone, Copy, Debug)]
pub struct TrainData<'a> {
    /// The split with its training view (augmentation and normalisation).
    pub images: ImageInput<'a>,
    /// The ids of the long-tailed subset (`LongTailIndex::sample_ids`).
    pub sample_ids: &'a [u32],
}

/// The training curve of the run checkpointed in `work_dir` (by [`train_backbone`]), one entry per
/// completed epoch; empty when there is none.
pub fn training_history(work_dir: &Path) -> Vec<EpochStats> {
    CheckpointDir::new(work_dir.join("checkpoint"))
        .history()
        .unwrap_or_default()
}

/// Reported after every step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrainProgress {
    /// 0-based epoch.
    pub epoch: usize,
    /// Epochs in total.
    pub epochs: usize,
    /// 0-based step within the epoch.
    pub step: usize,
    /// Steps per epoch.
    pub steps: usize,
    /// Loss of this step.
    pub loss: f32,
    /// Training accuracy of the epoch so far (inference-time logits on augmented images).
    pub train_acc: f32,
    /// Images per second over the epoch so far.
    pub images_per_sec: f32,
    /// Learning rate of the epoch.
    pub lr: f64,
}

/// Trains `backbone` on `data`, checkpointing into `work_dir/checkpoint/` after every epoch and
/// resuming from the last checkpoint found there.
///
/// With more than one device the training is data-parallel, one replica per device (see
/// [`parallel`](super::parallel)): the epoch order is padded to a multiple of the replicas and
/// every global batch of `config.batch_size` is split among them, as PyTorch's
/// `DistributedSampler` and DDP do. `devices[0]` holds the model that is returned.
///
/// Stops with [`BackboneError::Cancelled`] when `cancel` is set (checked before every step; the
/// checkpoints of completed epochs are kept) and with [`BackboneError::NonFiniteLoss`] when the
/// loss is NaN or infinite. `progress` is called after every step.
#[tracing::instrument(skip_all, fields(arch = backbone.arch.name(), replicas = devices.len()))]
pub fn train_backbone<B: AutodiffBackend>(
    backbone: &BackboneConfig,
    config: &TrainConfig,
    data: TrainData<'_>,
    work_dir: &Path,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(&TrainProgress),
    devices: &[B::Device],
) -> Result<Backbone<B>, BackboneError> {
    config.validate()?;
    backbone.validate()?;
    let Some(device) = devices.first() else {
        return Err(BackboneError::InvalidTraining(
            "data-parallel training needs at least one device".into(),
        ));
    };
    super::parallel::check_split(config.batch_size, devices.len())?;
    let _keep = crate::heap::KeepFreedMemory::new();
    if data.sample_ids.is_empty() {
        return Err(DataError::EmptySubset.into());
    }
    let [c, h, w] = data.images.output_shape();
    if c != backbone.in_channels || h != backbone.input_size || w != backbone.input_size {
        return Err(BackboneError::InvalidConfig(format!(
            "the data pipeline produces {c}x{h}x{w} images but the backbone expects {}x{}x{}",
            backbone.in_channels, backbone.input_size, backbone.input_size
        )));
    }
    if data.images.num_classes() != backbone.num_classes {
        return Err(BackboneError::InvalidConfig(format!(
            "the dataset has {} classes but the backbone's classifier {}",
            data.images.num_classes(),
            backbone.num_classes
        )));
    }
    let mut class_counts = vec![0usize; backbone.num_classes];
    for &id in data.sample_ids {
        let label = data
            .images
            .labels()
            .get(id as usize)
            .ok_or(DataError::SampleOutOfRange {
                id,
                len: data.images.len(),
            })?;
        class_counts[*label as usize] += 1;
    }

    // Seeding the backend still matters for any random op during training (none in our
    // architectures today); the weights themselves come from our own per-parameter streams.
    B::seed(device, config.seed);
    let model = backbone.init_seeded::<B>(config.seed, device)?;
    let mut optim = SgdConfig::new()
        .with_momentum(Some(MomentumConfig {
            momentum: config.momentum,
            // PyTorch's SGD has no dampening by default; Burn's default is 0.1.
            dampening: 0.0,
            nesterov: false,
        }))
        .with_weight_decay(
            (config.weight_decay > 0.0).then(|| WeightDecayConfig::new(config.weight_decay as f32)),
        )
        .init::<B, Backbone<B>>();

    let checkpoints = CheckpointDir::new(work_dir.join("checkpoint"));
    let mut fingerprint = config.fingerprint(backbone, data.sample_ids.len());
    if devices.len() > 1 {
        // Another split of the batches is another trajectory.
        fingerprint.push_str(&format!("|replicas={}", devices.len()));
    }
    let (mut model, start_epoch, mut last_finite, mut history) = match checkpoints
        .latest(&fingerprint)?
    {
        Some(state) => {
            info!(epoch = state.completed_epochs, "resuming from checkpoint");
            let model = checkpoints.load_model(model, state.completed_epochs, device)?;
            optim = checkpoints.load_optimizer::<B, _>(optim, state.completed_epochs, device)?;
            (
                model,
                state.completed_epochs,
                state.last_loss,
                state.history,
            )
        }
        None => (model, 0, f32::NAN, Vec::new()),
    };

    let loss_fn = BoundLoss::<B>::new(config.loss, &class_counts, device);
    let batch_config = BatchConfig {
        batch_size: config.batch_size,
        prefetch: config.prefetch,
        seed: config.seed,
        train: true,
        output: crate::input::batch_output::<B>(device),
    };
    let padded_len = data.sample_ids.len().div_ceil(devices.len()) * devices.len();
    let steps = padded_len.div_ceil(config.batch_size);

    std::thread::scope(|scope| {
        let mut replicas =
            super::parallel::Replicas::<B>::start(scope, devices, config.loss, &class_counts)?;
        let trained = (|| -> Result<Backbone<B>, BackboneError> {
            for epoch in start_epoch..config.epochs {
                let lr =
                    config
                        .schedule
                        .lr_at(config.lr, epoch, config.epochs, config.warmup_epochs);
                let mut order = config.sampler.epoch_order(
                    data.images.labels(),
                    data.images.num_classes(),
                    data.sample_ids,
                    config.seed,
                    epoch,
                );
                lortflow_data::input::pad_for_replicas(&mut order, devices.len());
                let started = Instant::now();
                let (mut seen, mut correct, mut loss_sum) = (0usize, 0i64, 0f64);
                let mut slot = Some(model);
                let epoch_result = data.images.for_each_batch::<BackboneError>(
                    &order,
                    &batch_config,
                    epoch,
                    |batch| {
                        if cancel.load(Ordering::Relaxed) {
                            return Err(BackboneError::Cancelled {
                                epoch,
                                step: batch.index,
                                completed_epochs: epoch,
                            });
                        }
                        let model = slot
                            .take()
                            .expect("the model should be back after each step");
                        let step = batch.index;
                        let result = replicas.step(&model, &loss_fn, batch, epoch, device)?;
                        if !result.loss.is_finite() {
                            return Err(BackboneError::NonFiniteLoss {
                                epoch,
                                step,
                                loss: result.loss,
                                last_finite,
                            });
                        }
                        last_finite = result.loss;
                        slot = Some(optim.step(lr, model, result.grads));
                        seen += result.rows;
                        correct += result.hits;
                        loss_sum += f64::from(result.loss) * result.rows as f64;
                        progress(&TrainProgress {
                            epoch,
                            epochs: config.epochs,
                            step,
                            steps,
                            loss: result.loss,
                            train_acc: correct as f32 / seen as f32,
                            images_per_sec: seen as f32 / started.elapsed().as_secs_f32().max(1e-9),
                            lr,
                        });
                        Ok(ControlFlow::Continue(()))
                    },
                );
                epoch_result?;
                model = slot.expect("the model should be back after the epoch");
                let elapsed = started.elapsed().as_secs_f32();
                let (reduce_time, gradient_bytes) = replicas.take_reduce_stats();
                debug!(
                    epoch,
                    loss = last_finite,
                    acc = correct as f32 / seen.max(1) as f32,
                    images_per_sec = seen as f32 / elapsed.max(1e-9),
                    gradient_bytes,
                    reduce_ms_per_step = 1e3 * reduce_time.as_secs_f64() / steps.max(1) as f64,
                    "epoch done"
                );
                history.push(EpochStats {
                    epoch: epoch + 1,
                    loss: (loss_sum / seen.max(1) as f64) as f32,
                    train_acc: correct as f32 / seen.max(1) as f32,
                    lr,
                    seconds: elapsed,
                });
                checkpoints.save(
                    &model,
                    &optim,
                    &TrainState {
                        completed_epochs: epoch + 1,
                        fingerprint: fingerprint.clone(),
                        last_loss: last_finite,
                        history: history.clone(),
                    },
                )?;
            }
            Ok(model)
        })();
        // Always joined, so that a worker's panic becomes an error rather than the scope's panic.
        let finished = replicas.finish();
        match (trained, finished) {
            (Ok(model), Ok(())) => Ok(model),
            // A worker that panicked is why the loop saw it stop: its message is the better one.
            (Ok(_) | Err(BackboneError::Replica { .. }), Err(worker)) => Err(worker),
            (Err(err), _) => Err(err),
        }
    })
}

/// Accuracy of `model`'s own classifier on `ids` of `images` (evaluation view, BatchNorm in
/// inference mode): a quick check of a trained or imported backbone.
pub fn evaluate_accuracy<B: Backend>(
    model: &Backbone<B>,
    images: ImageInput<'_>,
    ids: &[u32],
    batch_size: usize,
    device: &B::Device,
) -> Result<f32, BackboneError> {
    let config = BatchConfig {
        batch_size,
        prefetch: 2,
        seed: 0,
        train: false,
        output: crate::input::batch_output::<B>(device),
    };
    let mut correct = 0i64;
    images.for_each_batch::<BackboneError>(ids, &config, 0, |batch| {
        let n = batch.shape[0];
        let (x, y) = crate::input::batch_tensors::<B>(batch, device);
        let hits: i64 = model
            .forward(x)
            .argmax(1)
            .reshape([n])
            .equal(y)
            .int()
            .sum()
            .into_scalar()
            .elem();
        correct += hits;
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(correct as f32 / ids.len().max(1) as f32)
}

/// The inference copy of a trained backbone (no autodiff; BatchNorm uses its running statistics).
pub fn inference_model<B: AutodiffBackend>(model: &Backbone<B>) -> Backbone<B::InnerBackend> {
    model.valid()
}
