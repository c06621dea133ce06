//! The training loop: SGD with momentum on cached features, many heads at once, and epoch
//! selection.
//!
//! On a GPU the train matrix is uploaded to the device once per [`train_heads`] call (and the
//! test matrix once, for the test logits); batches are gathered from it on the device, so per step
//! only the batch's sample ids, labels and per-sample constants (a few KB) cross to the device,
//! and one `[2H]` vector (losses and correct counts) comes back for the divergence check and the
//! history. On the CPU backend, whose "device" is host memory, closed-form heads train on the
//! (memory-mapped) feature slices directly ([`host`](super::host)), and evaluation and test
//! logits are computed from them in chunks, without a copy of the features (autodiff heads still
//! read an uploaded train matrix).
//!
//! Heads of one group (see [`plan`](super::plan) for the rule) are stacked. When the heads share a
//! batch stream a step is one `[B, D] × [D, H·K]` matmul — large enough for gemm to use every
//! core — and logits are `[B, H, K]`; with one stream per head it is a batched
//! `[H, B, D] × [H, D, K]`. Heads do not interact, so each head's gradient is the gradient of its
//! own loss. Three step implementations share the loop:
//!
//! - linear softmax-family heads without focal modulation (most of the paper's methods, and
//!   every δ / lr / weight-decay sweep of them) take the closed-form gradient: in host memory on
//!   the CPU backend ([`host`](super::host), which also runs plugin losses, on any backend), on
//!   the device otherwise ([`analytic`](super::analytic), the bias folded into the matmul);
//! - cosine and LWS logits, focal and BCE losses differentiate [`loss`](super::loss) with
//!   autodiff: weights `[D, H, K]` (each head's `Wᵀ`, side by side), bias and LWS scales
//!   `[1, H, K]`; the sum of the per-head losses is differentiated once.
//!
//! The optimiser is written out rather than taken from `burn::optim` because its settings differ
//! per head (lr, momentum, weight decay) and must act as per-head factors. It is PyTorch's SGD:
//! `g ← ∇ + wd·θ` (L2 added to the gradient, on weight and bias alike), `v ← μ·v + g` (the first
//! step gives `v = g`, as PyTorch's buffer initialisation does), `θ ← θ − lr·v`.
//!
//! **Epoch selection.** Heads with `select "best-val"` or `"best-test"` are evaluated after every
//! epoch — balanced accuracy of the logits after the inference map, on the held-out split or on
//! the test split — and keep the weights of their best epoch (the earliest on ties). `best-val`
//! heads train without their held-out samples (see [`select`](super::select)); `last` heads are
//! never evaluated during training.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use lortflow_data::dataset::Rng;

use super::analytic::{AnalyticHeads, Layout};
use super::autodiff::AutodiffHeads;
use super::base::{
    EpochStats, FeatureSplit, FeatureView, HeadJob, HeadProgress, HeadResult, TrainedHead,
};
use super::components::log_prior;
use super::config::{Holdout, Select};
use super::device_data::DeviceData;
use super::error::HeadError;
use super::heads::Heads;
use super::host::HostHeads;
use super::plan::{self, LogitKind, Member, SAMPLER_STREAM};
use super::predict::{Logits, classifiers, finish_group, predict, predict_host};
use super::sampler::EpochSampler;
use super::select::{Split, balanced_accuracy, stratified_split};
use super::step::{Factor, FactorLayout, HeadParams, SgdState, StepInput};
use crate::head::Classifier;

/// Trains every trial of every job and returns them per job, in job order.
///
/// Jobs are split into groups that train as one batched computation (rule in
/// [`plan`](super::plan)). `init` is the classifier that `init "backbone"` and `init "head"` start
/// from; jobs that start from different classifiers need separate calls. `cancel` is checked before
/// every step; `progress` is called after every epoch of every group.
///
/// On CPU the result is deterministic for a given input and seeds.
pub fn train_heads<B: AutodiffBackend>(
    device: &B::Device,
    features: &FeatureView<'_>,
    init: Option<&Classifier>,
    jobs: &[HeadJob],
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(HeadProgress),
) -> Result<Vec<HeadResult>, HeadError> {
    train_heads_with::<B>(
        device,
        features,
        init,
        jobs,
        cancel,
        progress,
        StepPath::Auto,
    )
}

/// Which step implementation trains the analytic heads (tests compare the three).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StepPath {
    /// Host memory ([`host`](super::host)) on the CPU backend, the device otherwise; autodiff for
    /// heads without a closed-form gradient.
    Auto,
    /// The closed form on the device ([`analytic`](super::analytic)), whatever the backend.
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "only tests run the device path on the CPU backend"
        )
    )]
    Device,
    /// Autodiff for every head.
    Autodiff,
}

/// [`train_heads`] through a chosen step implementation.
pub(crate) fn train_heads_with<B: AutodiffBackend>(
    device: &B::Device,
    features: &FeatureView<'_>,
    init: Option<&Classifier>,
    jobs: &[HeadJob],
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(HeadProgress),
    path: StepPath,
) -> Result<Vec<HeadResult>, HeadError> {
    features.validate()?;
    if let Some(init) = init {
        init.check(features.num_classes, features.dim)?;
    }
    // Held-out splits first: `best-val` jobs resolve priors, margins and weights from the class
    // counts of what they train on. One split per distinct `validation` setting.
    let mut splits: Vec<(Holdout, Split)> = Vec::new();
    let mut job_split: Vec<Option<usize>> = Vec::with_capacity(jobs.len());
    for job in jobs {
        let (_, holdout) = plan::selection(job)?;
        job_split.push(holdout.map(|holdout| {
            splits
                .iter()
                .position(|(h, _)| *h == holdout)
                .unwrap_or_else(|| {
                    let split = stratified_split(
                        features.train_labels,
                        features.num_classes,
                        holdout.fraction,
                        holdout.seed,
                    );
                    splits.push((holdout, split));
                    splits.len() - 1
                })
        }));
    }
    for (job, split) in jobs.iter().zip(&job_split) {
        if let Some(split) = split
            && splits[*split].1.val_ids.is_empty()
        {
            return Err(HeadError::InvalidSpec {
                job: job.name.clone(),
                message: "the validation split is empty (every class has fewer than 2 samples, \
                          or the fraction rounds to 0); raise `validation fraction`"
                    .into(),
            });
        }
    }
    let counts: Vec<&[usize]> = job_split
        .iter()
        .map(|s| s.map_or(features.class_counts, |s| splits[s].1.counts.as_slice()))
        .collect();
    let members = plan::resolve(features, init, jobs, &counts)?;
    let groups = plan::group(&members);
    let data = DeviceData::<B::InnerBackend>::new(device, features);
    let log_prior: Vec<f32> = log_prior(features.class_counts)
        .into_iter()
        .map(|p| p as f32)
        .collect();

    let mut trained: Vec<Option<TrainedHead>> = vec![None; members.len()];
    for (index, group) in groups.iter().enumerate() {
        let group_members: Vec<&Member> = group.iter().map(|&i| &members[i]).collect();
        let split = job_split[group_members[0].job].map(|s| &splits[s].1);
        let mut context = GroupContext {
            device,
            features,
            data: &data,
            jobs,
            log_prior: &log_prior,
            split,
            cancel,
            progress: &mut *progress,
            index,
            groups: groups.len(),
            path,
            host: path == StepPath::Auto && is_cpu::<B::InnerBackend>(),
        };
        let heads = train_group::<B>(&mut context, &group_members)?;
        for (&member, head) in group.iter().zip(heads) {
            trained[member] = Some(head);
        }
    }

    let mut results: Vec<HeadResult> = jobs
        .iter()
        .map(|job| HeadResult {
            name: job.name.clone(),
            trials: Vec::new(),
        })
        .collect();
    for (member, head) in members.iter().zip(trained) {
        results[member.job]
            .trials
            .push(head.expect("every member should belong to a group"));
    }
    Ok(results)
}

struct GroupContext<'a, 'f, B: AutodiffBackend> {
    device: &'a B::Device,
    features: &'a FeatureView<'f>,
    data: &'a DeviceData<'f, B::InnerBackend>,
    jobs: &'a [HeadJob],
    log_prior: &'a [f32],
    /// The held-out split of the group's `best-val` heads.
    split: Option<&'a Split>,
    cancel: &'a AtomicBool,
    progress: &'a mut dyn FnMut(HeadProgress),
    index: usize,
    groups: usize,
    path: StepPath,
    /// Whether the backend computes in host memory (the CPU backend): then the closed-form heads
    /// train on the host, and every group's evaluation and test logits are computed there, from
    /// the (memory-mapped) features rather than from an uploaded copy.
    host: bool,
}

/// Whether `B` is the CPU backend, whose tensors are host memory.
fn is_cpu<B: Backend>() -> bool {
    std::any::TypeId::of::<B>() == std::any::TypeId::of::<crate::backend::CpuBackend>()
}

/// What selecting heads are evaluated on after every epoch.
struct EvalSet<'f, B: Backend> {
    features: EvalFeatures<'f, B>,
    labels: Vec<u32>,
}

/// `[N, D]` evaluation features.
enum EvalFeatures<'f, B: Backend> {
    /// On the device, row-normalised for cosine heads.
    Device(Tensor<B, 2>),
    /// In host memory, as stored (the test split is borrowed, held-out rows gathered).
    Host(Cow<'f, [f32]>),
}

fn train_group<B: AutodiffBackend>(
    ctx: &mut GroupContext<'_, '_, B>,
    members: &[&Member],
) -> Result<Vec<TrainedHead>, HeadError> {
    type Inner<B> = <B as AutodiffBackend>::InnerBackend;
    let device = ctx.device;
    let first = members[0];
    let (h, k, d) = (members.len(), ctx.features.num_classes, ctx.features.dim);
    let (epochs, batch_size) = (first.epochs, first.batch_size);
    let cosine = first.kind == LogitKind::Cosine;
    // One batch stream when all heads share a seed, else one per head.
    let shared = members.iter().all(|m| m.seed == first.seed);
    let analytic = first.analytic() && ctx.path != StepPath::Autodiff;
    let layout = if shared {
        Layout::Shared
    } else {
        Layout::PerHead
    };
    // Plugin losses are written for host slices: their groups train on the host on any backend.
    let plugin = first.plugin_loss.is_some();
    debug_assert!(
        !plugin || first.analytic(),
        "plan::resolve admits plugin losses on linear softmax-family heads only"
    );
    let mut heads: Heads<B> = if plugin || (analytic && ctx.host) {
        Heads::Host(Box::new(HostHeads::new(members, layout, k, d)))
    } else if analytic {
        Heads::Analytic(Box::new(AnalyticHeads::new(members, layout, k, d, device)))
    } else {
        Heads::Autodiff(Box::new(AutodiffHeads::new(members, k, d, device)))
    };
    let mut history: Vec<Vec<EpochStats>> = vec![Vec::with_capacity(epochs as usize); h];
    // Per selecting head: best balanced accuracy, its epoch and the weights then.
    let mut best: Vec<Option<(f64, u32, HeadParams)>> = vec![None; h];

    if epochs > 0 {
        let eval =
            members
                .iter()
                .any(|m| m.select != Select::Last)
                .then(|| match (ctx.split, ctx.host) {
                    (Some(split), false) => EvalSet::<Inner<B>> {
                        features: EvalFeatures::Device(ctx.data.train_rows(&split.val_ids, cosine)),
                        labels: split.val_labels.clone(),
                    },
                    (Some(split), true) => EvalSet {
                        features: EvalFeatures::Host(Cow::Owned(
                            split
                                .val_ids
                                .iter()
                                .flat_map(|&i| ctx.features.train_row(i as usize).iter().copied())
                                .collect(),
                        )),
                        labels: split.val_labels.clone(),
                    },
                    (None, false) => EvalSet {
                        features: EvalFeatures::Device(ctx.data.test(cosine)),
                        labels: ctx.features.test_labels.to_vec(),
                    },
                    (None, true) => EvalSet {
                        features: EvalFeatures::Host(Cow::Borrowed(ctx.features.test)),
                        labels: ctx.features.test_labels.to_vec(),
                    },
                });
        // The samples the heads train on: all of the train split, or what the hold-out leaves.
        let (train_ids, train_labels) = match ctx.split {
            Some(split) => (Some(&split.train_ids), split.train_labels.as_slice()),
            None => (None, ctx.features.train_labels),
        };
        let labels = ctx.features.train_labels;
        let weighted = members
            .iter()
            .any(|m| m.class_weight.iter().any(|&w| w != 1.0));
        // (The analytic heads build their own factors, in their layout.)
        let factor_layout = FactorLayout::Rows;
        let factor = |f: &dyn Fn(&Member) -> f64| {
            let values: Vec<f32> = members.iter().map(|m| f(m) as f32).collect();
            Some(Factor::<Inner<B>>::new(&values, k, factor_layout, device))
                .filter(|f| !f.is_zero())
        };
        let momentum = factor(&|m| m.momentum);
        let weight_decay = factor(&|m| m.weight_decay);
        let streams: Vec<u64> = if shared {
            vec![first.seed]
        } else {
            members.iter().map(|m| m.seed).collect()
        };
        let mut samplers: Vec<EpochSampler> = streams
            .iter()
            .map(|&seed| {
                EpochSampler::new(
                    &first.sampler,
                    train_labels,
                    k,
                    Rng::stream(seed, SAMPLER_STREAM),
                )
            })
            .collect();
        let x_all = match &heads {
            Heads::Analytic(_) => Some(ctx.data.train_augmented()),
            Heads::Autodiff(_) => Some(ctx.data.train(cosine)),
            Heads::Host(_) => None,
        };
        let mut last_finite: Vec<Option<f64>> = vec![None; h];

        for epoch in 0..epochs {
            let lrs: Vec<f64> = members
                .iter()
                .map(|m| plan::lr_at(m.schedule, m.lr, epoch, epochs))
                .collect();
            heads.begin_epoch(&lrs);
            let sgd = SgdState::<Inner<B>> {
                lr: Factor::new(
                    &lrs.iter().map(|&l| l as f32).collect::<Vec<_>>(),
                    k,
                    factor_layout,
                    device,
                ),
                momentum: momentum.clone(),
                weight_decay: weight_decay.clone(),
            };
            // Class weights per head for this epoch (DRW: ones before `weight_from`).
            let class_weights: Vec<&[f32]> = members
                .iter()
                .map(|m| {
                    if epoch >= m.weight_from {
                        m.class_weight.as_slice()
                    } else {
                        &[]
                    }
                })
                .collect();
            let epoch_weighted = weighted
                && class_weights
                    .iter()
                    .any(|w| !w.is_empty() && w.iter().any(|&v| v != 1.0));
            // Sampler positions index the training samples; map them to rows of the features.
            let orders: Vec<Vec<u32>> = samplers
                .iter_mut()
                .map(|sampler| {
                    let order = sampler.next_epoch();
                    match train_ids {
                        Some(ids) => order.into_iter().map(|p| ids[p as usize]).collect(),
                        None => order,
                    }
                })
                .collect();
            let len = orders[0].len();
            let steps = len.div_ceil(batch_size);
            let mut loss_sums = vec![0.0f64; h];
            let mut correct = vec![0.0f64; h];

            for step in 0..steps {
                if ctx.cancel.load(Ordering::Relaxed) {
                    return Err(HeadError::Cancelled);
                }
                let (start, end) = (step * batch_size, ((step + 1) * batch_size).min(len));
                let b = end - start;
                let stream_of = |head: usize| if shared { 0 } else { head };
                let label =
                    |i: usize, head: usize| labels[orders[stream_of(head)][start + i] as usize];
                let input = StepInput {
                    b,
                    h,
                    ids: orders
                        .iter()
                        .flat_map(|o| o[start..end].iter().map(|&i| i64::from(i)))
                        .collect(),
                    labels: (0..b)
                        .flat_map(|i| (0..h).map(move |j| label(i, j)))
                        .collect(),
                    weights: epoch_weighted.then(|| {
                        (0..b)
                            .flat_map(|i| {
                                let class_weights = &class_weights;
                                (0..h).map(move |j| {
                                    let cw = class_weights[j];
                                    if cw.is_empty() {
                                        1.0
                                    } else {
                                        cw[label(i, j) as usize]
                                    }
                                })
                            })
                            .collect()
                    }),
                };
                let stats = heads.step(x_all.as_ref(), ctx.features.train, &input, &sgd);
                for head in 0..h {
                    let value = f64::from(stats[head]);
                    if !value.is_finite() {
                        return Err(HeadError::NonFiniteLoss {
                            job: ctx.jobs[members[head].job].name.clone(),
                            epoch,
                            step,
                            loss: value,
                            last_finite: last_finite[head],
                        });
                    }
                    last_finite[head] = Some(value);
                    loss_sums[head] += value;
                    correct[head] += f64::from(stats[h + head]);
                }
            }
            heads.end_epoch();

            // Selection: evaluate every head (one batched matmul), keep the improving ones.
            let accuracy: Vec<Option<f64>> = match &eval {
                Some(eval) => {
                    let params = heads.download();
                    let classifiers = classifiers(members, &params, k, d, ctx.log_prior);
                    let predictions = match &eval.features {
                        EvalFeatures::Device(x) => {
                            predict::<Inner<B>>(device, members, &classifiers, x.clone(), cosine)
                        }
                        EvalFeatures::Host(x) => {
                            let predictions = predict_host(members, &classifiers, x, d, cosine);
                            if ctx.split.is_none() {
                                // The test split, read once per epoch: give its pages back.
                                ctx.features
                                    .release(FeatureSplit::Test, 0..ctx.features.num_test());
                            }
                            predictions
                        }
                    };
                    let n = eval.labels.len();
                    let mut out = vec![None; h];
                    for (j, params) in params.into_iter().enumerate() {
                        if members[j].select == Select::Last {
                            continue;
                        }
                        let mine: Vec<u32> = (0..n).map(|i| predictions[i * h + j]).collect();
                        let value = balanced_accuracy(&mine, &eval.labels, k);
                        out[j] = Some(value);
                        // Strictly better: ties keep the earliest epoch.
                        if best[j].as_ref().is_none_or(|(b, _, _)| value > *b) {
                            best[j] = Some((value, epoch, params));
                        }
                    }
                    out
                }
                None => vec![None; h],
            };

            let mut mean_loss = 0.0;
            for head in 0..h {
                let loss = loss_sums[head] / steps as f64;
                mean_loss += loss / h as f64;
                let select = members[head].select;
                history[head].push(EpochStats {
                    epoch,
                    lr: lrs[head],
                    loss,
                    train_accuracy: correct[head] / len as f64,
                    val_accuracy: accuracy[head].filter(|_| select == Select::BestVal),
                    test_accuracy: accuracy[head].filter(|_| select == Select::BestTest),
                });
            }
            (ctx.progress)(HeadProgress {
                group: ctx.index,
                groups: ctx.groups,
                heads: h,
                epoch: epoch + 1,
                epochs,
                loss: mean_loss,
            });
        }
    }
    if ctx.cancel.load(Ordering::Relaxed) {
        return Err(HeadError::Cancelled);
    }
    if matches!(heads, Heads::Host(_)) {
        // Host heads read the train rows straight from the features; the next group (if any)
        // faults them back in from the page cache.
        ctx.features
            .release(FeatureSplit::Train, 0..ctx.features.num_train());
    }
    let mut params = heads.download();
    let mut selected = vec![epochs.checked_sub(1); h];
    for (j, best) in best.into_iter().enumerate() {
        if let Some((_, epoch, kept)) = best {
            params[j] = kept;
            selected[j] = Some(epoch);
        }
    }
    finish_group::<Inner<B>>(
        ctx.device,
        if ctx.host {
            Logits::Host
        } else {
            Logits::Device(ctx.data)
        },
        ctx.features,
        ctx.jobs,
        ctx.log_prior,
        members,
        params,
        history,
        selected,
    )
}
