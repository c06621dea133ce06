//! Data-parallel training in one process: one replica of the model per device, as PyTorch's
//! DistributedDataParallel does on one node.
//!
//! Replica 0 is the training loop itself; replicas `1..` run on threads of their own, one per
//! further device. Every step, the loop splits the global batch among the replicas
//! (`Batch::split_among`: `DistributedSampler`'s assignment), sends each worker the current
//! parameters and its part, computes its own part meanwhile, then averages the gradients on its
//! device, in replica order (so the result does not depend on which worker finishes first), and
//! takes the one optimiser step. The next step sends the updated parameters, so every replica
//! computes with the same parameters, bit for bit, and the optimiser state exists once.
//!
//! Per step the wire carries one copy of the parameters to each worker and one gradient back:
//! the traffic of a centralised all-reduce. On the CPU backend the replicas share the device and
//! both transfers are reference copies. BatchNorm normalises each replica's part with its own
//! statistics (DDP's default); the running statistics kept are replica 0's, which DDP's
//! `broadcast_buffers` also gives every replica at the next step.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use lortflow_data::input::Batch;

use super::base::Backbone;
use super::error::BackboneError;
use super::loss::{BoundLoss, Stage1Loss};

/// The outcome of one replica's forward and backward pass on its part of a batch.
pub(super) struct ReplicaStep {
    /// The mean loss of its part.
    pub loss: f32,
    /// Correct predictions of its part.
    pub hits: i64,
    /// Its rows.
    pub rows: usize,
    /// The gradients of the mean loss, on its device.
    pub grads: GradientsParams,
}

/// Forward and backward on one part of a batch.
pub(super) fn replica_step<B: AutodiffBackend>(
    model: &Backbone<B>,
    loss_fn: &BoundLoss<B>,
    batch: Batch,
    epoch: usize,
    device: &B::Device,
) -> ReplicaStep {
    let rows = batch.shape[0];
    let (x, y) = crate::input::batch_tensors::<B>(batch, device);
    let features = model.forward_features(x);
    let (loss, logits) = loss_fn.forward(features, model.fc(), y.clone(), epoch);
    let value: f32 = loss.clone().into_scalar().elem();
    let hits: i64 = logits
        .argmax(1)
        .reshape([rows])
        .equal(y)
        .int()
        .sum()
        .into_scalar()
        .elem();
    let grads = GradientsParams::from_grads(loss.backward(), model);
    ReplicaStep {
        loss: value,
        hits,
        rows,
        grads,
    }
}

/// What a worker is sent each step.
struct Job<B: AutodiffBackend> {
    /// The current parameters, on replica 0's device.
    model: Backbone<B::InnerBackend>,
    /// Its part of the batch.
    batch: Batch,
    epoch: usize,
}

/// One worker thread: replica `rank` on `device`.
struct Worker<'scope, B: AutodiffBackend> {
    rank: usize,
    jobs: Sender<Job<B>>,
    results: Receiver<ReplicaStep>,
    handle: ScopedJoinHandle<'scope, ()>,
}

/// The replicas beyond the first, each on a thread of its own, for the lifetime of a scope.
pub(super) struct Replicas<'scope, B: AutodiffBackend> {
    workers: Vec<Worker<'scope, B>>,
    /// Time spent averaging gradients (waiting for the workers included) this epoch.
    reduce_time: Duration,
    /// Bytes of gradient averaged per step.
    gradient_bytes: usize,
}

impl<'scope, B: AutodiffBackend> Replicas<'scope, B> {
    /// Starts one worker per device of `devices[1..]` (replica 0 is the caller, on
    /// `devices[0]`); each builds its own copy of the loss (the per-class constants) on its
    /// device.
    pub(super) fn start<'env>(
        scope: &'scope Scope<'scope, 'env>,
        devices: &[B::Device],
        loss: Stage1Loss,
        class_counts: &'env [usize],
    ) -> Result<Self, BackboneError> {
        let mut workers = Vec::new();
        for (rank, device) in devices.iter().enumerate().skip(1) {
            let (jobs, job_rx) = channel::<Job<B>>();
            let (result_tx, results) = channel::<ReplicaStep>();
            let worker_device = device.clone();
            let handle = std::thread::Builder::new()
                .name(format!("lortflow-replica-{rank}"))
                .spawn_scoped(scope, move || {
                    let loss_fn = BoundLoss::<B>::new(loss, class_counts, &worker_device);
                    // Ends when the loop drops its sender (done, cancelled or failed).
                    for job in job_rx {
                        // `fork` moves the parameters over as fresh leaves that require
                        // gradients (moving the inner module would drop that flag).
                        let model = Backbone::<B>::from_inner(job.model).fork(&worker_device);
                        let step =
                            replica_step(&model, &loss_fn, job.batch, job.epoch, &worker_device);
                        if result_tx.send(step).is_err() {
                            break;
                        }
                    }
                })
                .map_err(|e| BackboneError::Replica {
                    rank,
                    message: format!("cannot start its thread: {e}"),
                })?;
            workers.push(Worker {
                rank,
                jobs,
                results,
                handle,
            });
        }
        Ok(Self {
            workers,
            reduce_time: Duration::ZERO,
            gradient_bytes: 0,
        })
    }

    /// Replicas in all, the caller's included.
    pub(super) fn count(&self) -> usize {
        self.workers.len() + 1
    }

    /// One data-parallel step: sends each worker the parameters of `model` and its part of
    /// `batch`, runs part 0 on `model` meanwhile, and returns the mean of the replicas' losses,
    /// their hits and rows, and the mean of their gradients on `device` (replica 0's).
    pub(super) fn step(
        &mut self,
        model: &Backbone<B>,
        loss_fn: &BoundLoss<B>,
        batch: Batch,
        epoch: usize,
        device: &B::Device,
    ) -> Result<ReplicaStep, BackboneError> {
        if self.workers.is_empty() {
            return Ok(replica_step(model, loss_fn, batch, epoch, device));
        }
        let mut parts = batch.split_among(self.count()).into_iter();
        let own = parts.next().expect("one part per replica");
        for (worker, part) in self.workers.iter().zip(parts) {
            let job = Job {
                // One `valid()` per worker: cloning an inner module would lose the parameters'
                // `require_grad` (Burn 0.21's `Param::clone` reads it from the inner tensor).
                // On one device this copies references, not values.
                model: model.valid(),
                batch: part,
                epoch,
            };
            if worker.jobs.send(job).is_err() {
                return Err(worker.failure());
            }
        }
        let mut total = replica_step(model, loss_fn, own, epoch, device);
        let started = Instant::now();
        let mut others = Vec::with_capacity(self.workers.len());
        for worker in &self.workers {
            let step = worker.results.recv().map_err(|_| worker.failure())?;
            total.loss += step.loss;
            total.hits += step.hits;
            total.rows += step.rows;
            others.push(step.grads);
        }
        let replicas = self.count();
        total.loss /= replicas as f32;
        let mut mean = MeanGradients::<B> {
            sum: total.grads,
            others: &mut others,
            scale: 1.0 / replicas as f32,
            device,
            bytes: 0,
            missing: None,
        };
        model.visit(&mut mean);
        if let Some(rank) = mean.missing {
            return Err(BackboneError::Replica {
                rank,
                message: format!(
                    "it returned no gradient for a parameter replica 0 has one for ({} of its gradients left unmatched)",
                    others[rank - 1].len()
                ),
            });
        }
        self.gradient_bytes = mean.bytes;
        total.grads = mean.sum;
        self.reduce_time += started.elapsed();
        Ok(total)
    }

    /// Time spent averaging gradients since the last call, and the bytes averaged per step.
    pub(super) fn take_reduce_stats(&mut self) -> (Duration, usize) {
        (std::mem::take(&mut self.reduce_time), self.gradient_bytes)
    }

    /// Stops the workers and reports the first that panicked.
    pub(super) fn finish(self) -> Result<(), BackboneError> {
        let mut first_error = None;
        for worker in self.workers {
            drop(worker.jobs);
            if let Err(payload) = worker.handle.join() {
                first_error.get_or_insert(BackboneError::Replica {
                    rank: worker.rank,
                    message: crate::backend::panic_message(payload.as_ref()),
                });
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl<B: AutodiffBackend> Worker<'_, B> {
    /// Why a worker stopped answering: its thread ended, which it does only by panicking while
    /// the loop still sends.
    fn failure(&self) -> BackboneError {
        BackboneError::Replica {
            rank: self.rank,
            message: "its thread ended during the step".into(),
        }
    }
}

/// Averages gradients parameter by parameter, in module order (parameter ids are the same in
/// every replica, all copies of one model): `(g_0 + g_1 + … + g_{n-1}) / n` on replica 0's device.
struct MeanGradients<'a, B: AutodiffBackend> {
    sum: GradientsParams,
    others: &'a mut [GradientsParams],
    scale: f32,
    device: &'a B::Device,
    bytes: usize,
    /// A replica that lacked a gradient replica 0 has.
    missing: Option<usize>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for MeanGradients<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        // BatchNorm's running statistics are visited too; they have no gradient.
        let Some(mut sum) = self.sum.remove::<B::InnerBackend, D>(param.id) else {
            return;
        };
        for (i, other) in self.others.iter_mut().enumerate() {
            match other.remove::<B::InnerBackend, D>(param.id) {
                Some(grad) => sum = sum + grad.to_device(self.device),
                None => {
                    self.missing.get_or_insert(i + 1);
                }
            }
        }
        self.bytes += sum.shape().num_elements() * std::mem::size_of::<f32>();
        self.sum.register(param.id, sum.mul_scalar(self.scale));
    }
}

/// Every replica's device: `first` and the devices after it (the CUDA ordinals that follow; on
/// the CPU, the one device again, each replica a thread of its own).
pub trait ReplicaDevices: Sized {
    /// `count` devices starting with `self`, each checked to be usable.
    fn replicas(&self, count: usize) -> Result<Vec<Self>, crate::backend::BackendError>;
}

impl ReplicaDevices for crate::backend::CpuDevice {
    fn replicas(&self, count: usize) -> Result<Vec<Self>, crate::backend::BackendError> {
        Ok(vec![*self; count.max(1)])
    }
}

#[cfg(feature = "cuda")]
impl ReplicaDevices for crate::backend::CudaDevice {
    fn replicas(&self, count: usize) -> Result<Vec<Self>, crate::backend::BackendError> {
        (0..count.max(1))
            .map(|offset| {
                let index = self.index + offset;
                if offset > 0 {
                    crate::backend::probe_cuda(index).map_err(|err| match err {
                        crate::backend::BackendError::CudaUnavailable { index, reason } => {
                            crate::backend::BackendError::CudaUnavailable {
                                index,
                                reason: format!(
                                    "{reason} ({count} devices were asked for: CUDA devices {} to {})",
                                    self.index,
                                    self.index + count - 1
                                ),
                            }
                        }
                        other => other,
                    })?;
                }
                Ok(crate::backend::CudaDevice::new(index))
            })
            .collect()
    }
}

#[cfg(feature = "wgpu")]
impl ReplicaDevices for crate::backend::WgpuDevice {
    fn replicas(&self, count: usize) -> Result<Vec<Self>, crate::backend::BackendError> {
        if count > 1 {
            return Err(crate::backend::BackendError::OneDeviceOnly {
                backend: "wgpu",
                devices: count,
            });
        }
        Ok(vec![self.clone()])
    }
}

/// The configuration check of a data-parallel run: the global batch must split evenly.
pub(super) fn check_split(batch_size: usize, replicas: usize) -> Result<(), BackboneError> {
    if replicas > 1 && batch_size % replicas != 0 {
        return Err(BackboneError::InvalidTraining(format!(
            "the batch of {batch_size} images does not split evenly among {replicas} devices; use a batch size that is a multiple of {replicas}"
        )));
    }
    Ok(())
}
