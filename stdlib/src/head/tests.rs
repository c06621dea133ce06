//! Tests of head re-training that span modules: loss values and gradients computed by hand, the
//! batched sweep against separate runs, errors, and the behaviour of the methods on a synthetic
//! long-tailed feature set.

use std::sync::atomic::AtomicBool;

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Int, Tensor, TensorData};
use lortflow_data::dataset::{GaussianClustersConfig, GroupConfig, LongTailConfig};
use lortflow_report::metric::Logits as MetricLogits;

use super::loss::{LossBatch, LossParams};
use super::plan::LossForm;
use super::train::{StepPath, train_heads_with};
use super::*;

type Ad = Autodiff<Flex>;

fn dev() -> burn_flex::FlexDevice {
    Default::default()
}

/// Logits of one head for two samples, `[B=2, H=1, K=3]`, labels 0 and 2.
const Z: [f32; 6] = [1.0, 2.0, 0.5, -1.0, 0.0, 3.0];
const Y: [u32; 2] = [0, 2];

fn softmax(row: &[f32]) -> Vec<f64> {
    let m = row.iter().copied().fold(f32::MIN, f32::max) as f64;
    let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

fn params(form: LossForm) -> LossParams<Ad> {
    LossParams {
        form,
        num_classes: 3,
        scale: None,
        scaled_margin: None,
        prior: None,
        delta: None,
        gamma: None,
        normalize_by_weight: None,
    }
}

fn head_scalar(v: f32) -> Tensor<Ad, 3> {
    Tensor::from_data(TensorData::new(vec![v], [1, 1, 1]), &dev())
}

fn head_row(v: &[f32]) -> Tensor<Ad, 3> {
    Tensor::from_data(TensorData::new(v.to_vec(), [1, 1, v.len()]), &dev())
}

fn batch(weights: Option<[f32; 2]>) -> LossBatch<Ad> {
    let labels = Tensor::<Ad, 3, Int>::from_data(
        TensorData::new(Y.map(i64::from).to_vec(), [2, 1, 1]),
        &dev(),
    );
    let mut one_hot = vec![0.0f32; 6];
    one_hot[0] = 1.0;
    one_hot[5] = 1.0;
    LossBatch {
        labels,
        one_hot: Some(Tensor::from_data(
            TensorData::new(one_hot, [2, 1, 3]),
            &dev(),
        )),
        weights: weights.map(|w| Tensor::from_data(TensorData::new(w.to_vec(), [2, 1, 1]), &dev())),
    }
}

/// Loss value and gradient w.r.t. the logits.
fn run(params: &LossParams<Ad>, z: &[f32; 6], weights: Option<[f32; 2]>) -> (f64, Vec<f64>) {
    let logits =
        Tensor::<Ad, 3>::from_data(TensorData::new(z.to_vec(), [2, 1, 3]), &dev()).require_grad();
    let loss = params.losses(logits.clone(), &batch(weights)).sum();
    let grads = loss.backward();
    let value = loss.into_data().to_vec::<f32>().unwrap()[0] as f64;
    let grad = logits
        .grad(&grads)
        .unwrap()
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    (value, grad.into_iter().map(f64::from).collect())
}

/// Smoothed CE by hand: value mean_b(−Σ ỹ log s) and gradient (s − ỹ)/B.
fn smoothed_ce(z: &[f32; 6], delta: f64) -> (f64, Vec<f64>) {
    let (mut loss, mut grad) = (0.0, Vec::new());
    for b in 0..2 {
        let s = softmax(&z[b * 3..b * 3 + 3]);
        for (k, sk) in s.iter().enumerate() {
            let t = if k as u32 == Y[b] {
                1.0 - delta + delta / 3.0
            } else {
                delta / 3.0
            };
            loss -= t * sk.ln() / 2.0;
            grad.push((sk - t) / 2.0);
        }
    }
    (loss, grad)
}

fn assert_close(got: &(f64, Vec<f64>), want: &(f64, Vec<f64>), tol: f64) {
    assert!((got.0 - want.0).abs() < tol, "loss {} vs {}", got.0, want.0);
    for (g, w) in got.1.iter().zip(&want.1) {
        assert!((g - w).abs() < tol, "grad {:?} vs {:?}", got.1, want.1);
    }
}

#[test]
fn smoothed_ce_value_and_gradient_match_the_hand_computation() {
    for delta in [0.2f32, 0.98] {
        let p = LossParams {
            delta: Some(head_scalar(delta)),
            ..params(LossForm::Softmax)
        };
        assert_close(&run(&p, &Z, None), &smoothed_ce(&Z, delta as f64), 1e-5);
    }
    // δ = 0 (and no δ tensor at all) is plain cross-entropy.
    let ce = smoothed_ce(&Z, 0.0);
    assert_close(&run(&params(LossForm::Softmax), &Z, None), &ce, 1e-5);
    let p = LossParams {
        delta: Some(head_scalar(0.0)),
        ..params(LossForm::Softmax)
    };
    assert_close(&run(&p, &Z, None), &ce, 1e-6);
}

#[test]
fn lort_targets_sum_to_one_with_the_label_on_top() {
    // The gradient of the smoothed loss is s − ỹ, so ỹ = s − B·grad; check ỹ directly.
    let delta = 0.98;
    let p = LossParams {
        delta: Some(head_scalar(delta as f32)),
        ..params(LossForm::Softmax)
    };
    let (_, grad) = run(&p, &Z, None);
    for b in 0..2 {
        let s = softmax(&Z[b * 3..b * 3 + 3]);
        let t: Vec<f64> = (0..3).map(|k| s[k] - 2.0 * grad[b * 3 + k]).collect();
        assert!((t.iter().sum::<f64>() - 1.0).abs() < 1e-5);
        assert!((t[Y[b] as usize] - (1.0 - delta + delta / 3.0)).abs() < 1e-5);
    }
}

#[test]
fn balanced_softmax_is_ce_on_logits_plus_log_counts() {
    let counts = [100.0f32, 10.0, 1.0];
    let log_n: Vec<f32> = counts.iter().map(|n| n.ln()).collect();
    let p = LossParams {
        prior: Some(head_row(&log_n)),
        ..params(LossForm::Softmax)
    };
    let shifted: [f32; 6] = std::array::from_fn(|i| Z[i] + log_n[i % 3]);
    assert_close(&run(&p, &Z, None), &smoothed_ce(&shifted, 0.0), 1e-5);
}

#[test]
fn ldam_subtracts_the_scaled_margin_from_the_true_logit_only() {
    let margins = super::components::ldam_margins(&[16, 81, 625], 0.5);
    let s = 2.0f32;
    let scaled: Vec<f32> = margins.iter().map(|m| *m as f32 * s).collect();
    let p = LossParams {
        scale: Some(head_row(&[s; 3])),
        scaled_margin: Some(head_row(&scaled)),
        ..params(LossForm::Softmax)
    };
    // By hand: s·(z − m_y e_y).
    let mut z = Z.map(|v| v * s);
    z[0] -= scaled[0];
    z[5] -= scaled[2];
    let (value, _) = run(&p, &Z, None);
    assert!((value - smoothed_ce(&z, 0.0).0).abs() < 1e-5);
}

#[test]
fn focal_with_gamma_zero_is_ce_and_gamma_two_matches_by_hand() {
    let p = LossParams {
        gamma: Some(head_scalar(0.0)),
        ..params(LossForm::Softmax)
    };
    assert_close(&run(&p, &Z, None), &smoothed_ce(&Z, 0.0), 1e-6);
    let p = LossParams {
        gamma: Some(head_scalar(2.0)),
        ..params(LossForm::Softmax)
    };
    let want: f64 = (0..2)
        .map(|b| {
            let sy = softmax(&Z[b * 3..b * 3 + 3])[Y[b] as usize];
            (1.0 - sy).powi(2) * -sy.ln() / 2.0
        })
        .sum();
    assert!((run(&p, &Z, None).0 - want).abs() < 1e-5);
}

#[test]
fn weighted_ce_divides_by_the_sum_of_weights_and_bce_by_b_times_k() {
    let w = [3.0f32, 0.5];
    let nll: Vec<f64> = (0..2)
        .map(|b| -softmax(&Z[b * 3..b * 3 + 3])[Y[b] as usize].ln())
        .collect();
    let want = (3.0 * nll[0] + 0.5 * nll[1]) / 3.5;
    assert!((run(&params(LossForm::Softmax), &Z, Some(w)).0 - want).abs() < 1e-5);
    // BCE on the softmax, weight w_y broadcast over the row, mean over B×K.
    let mut bce = 0.0;
    for b in 0..2 {
        let s = softmax(&Z[b * 3..b * 3 + 3]);
        for (k, sk) in s.iter().enumerate() {
            let t = if k as u32 == Y[b] { 1.0 } else { 0.0 };
            bce -= w[b] as f64 * (t * sk.ln() + (1.0 - t) * (1.0 - sk).ln());
        }
    }
    assert!((run(&params(LossForm::Bce), &Z, Some(w)).0 - bce / 6.0).abs() < 1e-5);
}

// ---------------------------------------------------------------------------------------------
// training

pub(crate) struct Data {
    train: Vec<f32>,
    labels: Vec<u32>,
    test: Vec<f32>,
    test_labels: Vec<u32>,
    counts: Vec<usize>,
    k: usize,
    d: usize,
}

impl Data {
    fn view(&self) -> FeatureView<'_> {
        FeatureView {
            dim: self.d,
            train: &self.train,
            train_labels: &self.labels,
            test: &self.test,
            test_labels: &self.test_labels,
            num_classes: self.k,
            class_counts: &self.counts,
            release: None,
        }
    }
}

/// A long-tailed Gaussian-cluster feature set (imbalance ratio `ir`) with a balanced test split of 100 per class
/// drawn from the same clusters (the generator interleaves classes, so the first `per_class·K`
/// samples hold `per_class` of each class and the rest is the test split).
pub(crate) fn long_tailed(k: usize, d: usize, per_class: usize, ir: f64, noise: f64) -> Data {
    let config = GaussianClustersConfig {
        num_classes: k,
        dim: d,
        per_class: per_class + 100,
        separation: 3.0,
        noise,
        seed: 3,
    };
    let all = config.generate().unwrap();
    let split = per_class * k;
    let labels = &all.labels()[..split];
    let index = LongTailConfig {
        imbalance_ratio: ir,
        ..Default::default()
    }
    .build(labels, k)
    .unwrap();
    let features: Vec<f32> = index
        .sample_ids
        .iter()
        .flat_map(|&i| all.row(i as usize).unwrap().to_vec())
        .collect();
    Data {
        train: features,
        labels: index.labels.clone(),
        test: all.features()[split * d..].to_vec(),
        test_labels: all.labels()[split..].to_vec(),
        counts: index.class_counts.clone(),
        k,
        d,
    }
}

pub(crate) fn train(
    data: &Data,
    init: Option<&Classifier>,
    jobs: &[HeadJob],
) -> Result<Vec<HeadResult>, HeadError> {
    train_heads::<Ad>(
        &dev(),
        &data.view(),
        init,
        jobs,
        &AtomicBool::new(false),
        &mut |_| {},
    )
}

pub(crate) fn job(name: &str, edit: impl FnOnce(&mut HeadConfig)) -> HeadJob {
    let mut config = HeadConfig::default();
    config.train.epochs = 4;
    config.train.batch_size = 32;
    config.train.lr = 0.05;
    edit(&mut config);
    HeadJob {
        name: name.into(),
        config,
        seed: 7,
    }
}

#[test]
fn a_batched_sweep_equals_separate_runs() {
    let data = long_tailed(5, 8, 60, 10.0, 1.0);
    let jobs = vec![
        job("a", |s| s.targets = Targets::Smoothed { delta: 0.5 }),
        job("b", |s| s.train.lr = 0.01),
        job("c", |s| {
            s.train.weight_decay = 0.01;
            s.margin = Margin::BalancedSoftmax;
        }),
        job("d", |s| {
            s.weighting = Weighting::Focal { gamma: 2.0 };
            s.constraint = Constraint::Maxnorm {
                thresh: 0.5,
                radius: None,
                every_step: true,
            };
        }),
    ];
    let together = train(&data, None, &jobs).unwrap();
    for (i, job) in jobs.iter().enumerate() {
        let alone = train(&data, None, std::slice::from_ref(job)).unwrap();
        let (a, b) = (&together[i].trials[0], &alone[0].trials[0]);
        for (x, y) in a
            .classifier
            .weight
            .iter()
            .zip(&b.classifier.weight)
            .chain(a.classifier.bias.iter().zip(&b.classifier.bias))
        {
            assert!((x - y).abs() < 1e-5, "job {}: {x} vs {y}", job.name);
        }
        assert_eq!(a.history.len(), 4);
    }
    // Different seeds (trials) also train together, each on its own batch stream.
    let trials = job("t", |s| s.trials = 3);
    let out = train(&data, None, std::slice::from_ref(&trials)).unwrap();
    let seed8 = train(
        &data,
        None,
        &[HeadJob {
            seed: 8,
            ..job("t", |_| {})
        }],
    )
    .unwrap();
    let (a, b) = (
        &out[0].trials[1].classifier.weight,
        &seed8[0].trials[0].classifier.weight,
    );
    assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5));
    assert_eq!(
        out[0].trials.iter().map(|t| t.seed).collect::<Vec<_>>(),
        [7, 8, 9]
    );
}

#[test]
fn zero_epochs_apply_only_the_inference_map_and_tau_zero_is_the_identity() {
    let data = long_tailed(4, 6, 30, 10.0, 1.0);
    let init = Classifier {
        weight: (0..24).map(|i| (i as f32 * 0.37).sin()).collect(),
        bias: vec![0.1, -0.2, 0.3, 0.0],
    };
    let raw = train(
        &data,
        Some(&init),
        &[job("raw", |s| {
            s.train.epochs = 0;
            s.init = Init::Backbone;
        })],
    )
    .unwrap();
    let head = &raw[0].trials[0];
    assert_eq!(head.classifier.weight, init.weight);
    assert!(head.history.is_empty());
    let host = head.classifier.predict(&Inference::None, &data.test);
    assert!(
        head.test_logits
            .iter()
            .zip(&host)
            .all(|(a, b)| (a - b).abs() < 1e-4)
    );
    for inference in [
        Inference::TauNorm {
            tau: 0.0,
            bias: true,
        },
        Inference::LogitAdjust { tau: 0.0 },
    ] {
        let out = train(
            &data,
            Some(&init),
            &[job("map", |s| {
                s.train.epochs = 0;
                s.init = Init::Backbone;
                s.inference = inference.clone();
            })],
        )
        .unwrap();
        assert!(
            out[0].trials[0]
                .test_logits
                .iter()
                .zip(&head.test_logits)
                .all(|(a, b)| (a - b).abs() < 1e-5)
        );
    }
    // Post-hoc logit adjustment subtracts τ log π.
    let la = train(
        &data,
        Some(&init),
        &[job("la", |s| {
            s.train.epochs = 0;
            s.init = Init::Backbone;
            s.inference = Inference::LogitAdjust { tau: 1.0 };
        })],
    )
    .unwrap();
    let n: usize = data.counts.iter().sum();
    for (j, (a, b)) in la[0].trials[0]
        .test_logits
        .iter()
        .zip(&head.test_logits)
        .take(4)
        .enumerate()
    {
        let log_pi = (data.counts[j] as f64 / n as f64 + 1e-12).ln() as f32;
        assert!((a - (b - log_pi)).abs() < 1e-4);
    }
}

#[test]
fn errors_name_the_problem() {
    let data = long_tailed(3, 4, 20, 10.0, 1.0);
    let err = train(&data, None, &[job("ft", |s| s.init = Init::Backbone)]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "head `ft` starts from the backbone's classifier, but no initial classifier was given"
    );
    let bad = Classifier {
        weight: vec![0.0; 5],
        bias: vec![0.0; 3],
    };
    let err = train(&data, Some(&bad), &[job("x", |_| {})]).unwrap_err();
    assert!(
        err.to_string()
            .contains("initial classifier weight (K×D = 3×4) has 5 values, expected 12"),
        "{err}"
    );
    // A huge learning rate diverges; the error names epoch, step and the last finite loss.
    let err = train(
        &data,
        None,
        &[job("big", |s| {
            s.train.lr = 1e30;
            s.train.schedule = HeadSchedule::Constant;
        })],
    )
    .unwrap_err();
    assert!(
        matches!(err, HeadError::NonFiniteLoss { ref job, .. } if job == "big"),
        "{err}"
    );
    assert!(err.to_string().contains("at epoch"), "{err}");
    let cancelled = train_heads::<Ad>(
        &dev(),
        &data.view(),
        None,
        &[job("c", |_| {})],
        &AtomicBool::new(true),
        &mut |_| {},
    );
    assert_eq!(cancelled.unwrap_err(), HeadError::Cancelled);
}

#[test]
fn rebalancing_methods_beat_ce_on_few_classes() {
    let data = long_tailed(10, 16, 200, 50.0, 1.6);
    let groups = GroupConfig {
        thresholds: lortflow_data::dataset::Thresholds::Relative {
            many: 0.2,
            few: 0.04 * 2.0,
        },
        ..Default::default()
    };
    let few = |head: &TrainedHead| {
        let logits = MetricLogits::new(&head.test_logits, &data.test_labels, data.k).unwrap();
        logits
            .evaluate(&data.counts, &groups)
            .unwrap()
            .groups
            .few
            .expect("the few group should not be empty")
    };
    let base = |s: &mut HeadConfig| {
        s.train.epochs = 10;
        s.train.lr = 0.1;
    };
    let jobs = vec![
        job("ce", base),
        job("bs", |s| {
            base(s);
            s.margin = Margin::BalancedSoftmax;
        }),
        job("la", |s| {
            base(s);
            s.margin = Margin::LogitAdjust { tau: 1.0 };
        }),
        job("crt", |s| {
            base(s);
            s.sampler = Sampler::ClassBalanced { per_class: 4 };
        }),
    ];
    let out = train(&data, None, &jobs).unwrap();
    let ce = few(&out[0].trials[0]);
    for result in &out[1..] {
        let value = few(&result.trials[0]);
        assert!(
            value > ce + 0.05,
            "{}: few {value:.3} vs CE {ce:.3}",
            result.name
        );
    }
}

// ---------------------------------------------------------------------------------------------
// closed-form gradient and epoch selection

fn weights_close(a: &TrainedHead, b: &TrainedHead, tol: f32) -> bool {
    let (x, y) = (&a.classifier, &b.classifier);
    x.weight
        .iter()
        .zip(&y.weight)
        .chain(x.bias.iter().zip(&y.bias))
        .all(|(p, q)| (p - q).abs() < tol)
}

/// The three step implementations (closed form in host memory, closed form on the device,
/// autodiff) train the same heads, and host and device inference give the same test logits.
#[test]
fn the_closed_form_gradient_matches_autodiff_on_host_and_device() {
    assert_step_paths_agree(&long_tailed(5, 8, 60, 10.0, 1.0), &three_path_jobs());
}

/// A head per closed-form component (margins, weighting, constraints, trials, selections,
/// inference maps) and one that only autodiff trains.
fn three_path_jobs() -> Vec<HeadJob> {
    vec![
        job("ce", |_| {}),
        job("lort", |s| s.targets = Targets::Smoothed { delta: 0.9 }),
        job("bs", |s| {
            s.margin = Margin::BalancedSoftmax;
            s.train.lr = 0.02;
        }),
        job("ldam-linear", |s| s.margin = Margin::Ldam { max_m: 0.5 }),
        job("drw", |s| {
            s.weighting = Weighting::ClassBalanced {
                beta: 0.999,
                loss: BaseLoss::Softmax,
                gamma: 0.0,
                from_epoch: 2,
            };
            s.train.weight_decay = 0.01;
            s.train.schedule = HeadSchedule::StepThirds;
        }),
        job("maxnorm", |s| {
            s.constraint = Constraint::Maxnorm {
                thresh: 0.5,
                radius: None,
                every_step: true,
            };
            s.train.momentum = 0.0;
        }),
        job("maxnorm-epoch", |s| {
            s.constraint = Constraint::Maxnorm {
                thresh: 0.3,
                radius: None,
                every_step: false,
            };
            s.train.weight_decay = 0.0;
        }),
        // Two trials: one batch stream per head (the `[H, B, ·]` layout).
        job("trials", |s| {
            s.trials = 2;
            s.margin = Margin::LogitAdjust { tau: 1.0 };
        }),
        // Selection on a held-out split and on the test split (evaluated every epoch), and
        // inference maps.
        job("val", |s| {
            s.select = Select::BestVal;
            s.inference = Inference::TauNorm {
                tau: 1.0,
                bias: false,
            };
        }),
        job("test", |s| {
            s.select = Select::BestTest;
            s.inference = Inference::LogitAdjust { tau: 1.0 };
        }),
        // Autodiff on every path; its test logits come from host or device inference.
        job("cosine", |s| {
            s.logits = Logits::Cosine {
                scale: 16.0,
                init_norm: None,
            }
        }),
    ]
}

/// Trains `jobs` through the closed form in host memory (the CPU path), the closed form on the
/// device and autodiff, and asserts the same weights, histories, selections and test logits.
pub(crate) fn assert_step_paths_agree(data: &Data, jobs: &[HeadJob]) {
    let autodiff = train_on::<Ad>(&dev(), data, jobs, StepPath::Autodiff);
    for path in [StepPath::Auto, StepPath::Device] {
        let closed = train_on::<Ad>(&dev(), data, jobs, path);
        assert_same_heads(&closed, &autodiff, &format!("{path:?}"));
    }
}

/// Trains `jobs` on `B` through one step implementation.
fn train_on<B: burn::tensor::backend::AutodiffBackend>(
    device: &B::Device,
    data: &Data,
    jobs: &[HeadJob],
    path: StepPath,
) -> Vec<HeadResult> {
    train_heads_with::<B>(
        device,
        &data.view(),
        None,
        jobs,
        &AtomicBool::new(false),
        &mut |_| {},
        path,
    )
    .unwrap()
}

/// The tolerance of the three-path test: weights and losses within 1e-5, the same accuracies
/// and selected epochs, test logits within 1e-4.
fn assert_same_heads(results: &[HeadResult], reference: &[HeadResult], label: &str) {
    assert_eq!(results.len(), reference.len(), "{label}");
    for (a, b) in results.iter().zip(reference) {
        assert_eq!(a.trials.len(), b.trials.len());
        for (x, y) in a.trials.iter().zip(&b.trials) {
            let name = format!("{} ({label})", a.name);
            assert!(weights_close(x, y, 1e-5), "{name}");
            assert_eq!(x.history.len(), y.history.len(), "{name}");
            for (p, q) in x.history.iter().zip(&y.history) {
                assert!((p.loss - q.loss).abs() < 1e-5, "{name}: {p:?} vs {q:?}");
                assert_eq!(p.train_accuracy, q.train_accuracy, "{name}");
                assert_eq!(p.val_accuracy, q.val_accuracy, "{name}");
                assert_eq!(p.test_accuracy, q.test_accuracy, "{name}");
            }
            assert_eq!(x.selected_epoch, y.selected_epoch, "{name}");
            assert_eq!(x.test_logits.len(), y.test_logits.len(), "{name}");
            let worst = max_difference(&x.test_logits, &y.test_logits);
            assert!(worst < 1e-4, "{name}: test logits differ by {worst}");
        }
    }
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0f32, f32::max)
}

/// A noisy head: a large constant learning rate makes the test accuracy jump between epochs.
fn noisy(name: &str, lr: f64, select: Select) -> HeadJob {
    job(name, |s| {
        s.train.epochs = 8;
        s.train.lr = lr;
        s.train.schedule = HeadSchedule::Constant;
        s.select = select;
    })
}

/// The index of the first maximum.
fn first_best(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

fn balanced_test_accuracy(data: &Data, head: &TrainedHead) -> f64 {
    let predictions: Vec<u32> = head
        .test_logits
        .chunks(data.k)
        .map(|row| (0..data.k).fold(0, |best, c| if row[c] > row[best] { c } else { best }) as u32)
        .collect();
    super::select::balanced_accuracy(&predictions, &data.test_labels, data.k)
}

#[test]
fn best_test_keeps_the_epoch_with_the_best_test_accuracy() {
    let data = long_tailed(5, 8, 60, 10.0, 2.0);
    let jobs = [
        noisy("a", 3.0, Select::BestTest),
        noisy("b", 1.0, Select::BestTest),
    ];
    let together = train(&data, None, &jobs).unwrap();
    for (job, result) in jobs.iter().zip(&together) {
        let head = &result.trials[0];
        let accuracy: Vec<f64> = head
            .history
            .iter()
            .map(|h| {
                h.test_accuracy
                    .expect("best-test records the test accuracy")
            })
            .collect();
        assert!(head.history.iter().all(|h| h.val_accuracy.is_none()));
        let selected = head.selected_epoch.expect("trained heads select an epoch") as usize;
        assert_eq!(
            selected,
            first_best(&accuracy),
            "{}: {accuracy:?}",
            job.name
        );
        // The returned classifier is that epoch's: its test logits score the recorded accuracy,
        // and it equals a run stopped after that epoch (a constant schedule has the same prefix).
        assert!((balanced_test_accuracy(&data, head) - accuracy[selected]).abs() < 1e-12);
        let mut stopped = job.clone();
        stopped.config.train.epochs = selected as u32 + 1;
        stopped.config.select = Select::Last;
        let stopped = train(&data, None, &[stopped]).unwrap();
        assert!(
            weights_close(head, &stopped[0].trials[0], 1e-5),
            "{}",
            job.name
        );
        // Batched: every head picks its own epoch, as when trained alone.
        let alone = train(&data, None, std::slice::from_ref(job)).unwrap();
        assert_eq!(alone[0].trials[0].selected_epoch, head.selected_epoch);
    }
    // The setting is one where selection matters: the last epoch of the noisy head is worse.
    let head = &together[0].trials[0];
    assert!(
        head.history.last().unwrap().test_accuracy
            < head.history[head.selected_epoch.unwrap() as usize].test_accuracy,
        "{:?}",
        head.history
    );
    // `last` keeps the last epoch and evaluates nothing.
    let last = train(&data, None, &[noisy("a", 3.0, Select::Last)]).unwrap();
    let last = &last[0].trials[0];
    assert_eq!(last.selected_epoch, Some(7));
    assert!(last.history.iter().all(|h| h.test_accuracy.is_none()));
}

#[test]
fn best_val_never_looks_at_the_test_set_and_trains_without_the_held_out_samples() {
    let data = long_tailed(5, 8, 60, 10.0, 2.0);
    let validation = Holdout {
        fraction: 0.2,
        seed: 5,
    };
    let best_val = |name: &str| {
        let mut job = noisy(name, 3.0, Select::BestVal);
        job.config.validation = Some(validation);
        job.config.margin = Margin::BalancedSoftmax;
        job
    };
    let out = train(&data, None, &[best_val("v")]).unwrap();
    let head = &out[0].trials[0];
    let accuracy: Vec<f64> = head
        .history
        .iter()
        .map(|h| {
            h.val_accuracy
                .expect("best-val records the validation accuracy")
        })
        .collect();
    assert!(head.history.iter().all(|h| h.test_accuracy.is_none()));
    assert_eq!(
        head.selected_epoch,
        Some(first_best(&accuracy) as u32),
        "{accuracy:?}"
    );

    // Permuted test labels and scrambled test features change nothing but the test logits.
    let mut shuffled = long_tailed(5, 8, 60, 10.0, 2.0);
    shuffled.test_labels.rotate_left(37);
    shuffled.test.iter_mut().for_each(|v| *v = -*v * 3.0);
    let again = train(&shuffled, None, &[best_val("v")]).unwrap();
    let other = &again[0].trials[0];
    assert_eq!(other.selected_epoch, head.selected_epoch);
    assert_eq!(other.history, head.history);
    assert_eq!(other.classifier, head.classifier);

    // Held-out samples are never trained on: poisoning them leaves training untouched (a NaN
    // in a training batch would diverge).
    let split = super::select::stratified_split(&data.labels, data.k, 0.2, 5);
    let mut poisoned = long_tailed(5, 8, 60, 10.0, 2.0);
    for &i in &split.val_ids {
        let row = i as usize * data.d;
        poisoned.train[row..row + data.d].fill(f32::NAN);
    }
    let out = train(&poisoned, None, &[best_val("v")]).unwrap();
    let losses = |h: &TrainedHead| h.history.iter().map(|e| e.loss).collect::<Vec<_>>();
    assert_eq!(losses(&out[0].trials[0]), losses(head));

    // It trains on exactly the rest: the same as `last` on the remaining samples.
    let rest = Data {
        train: split
            .train_ids
            .iter()
            .flat_map(|&i| data.train[i as usize * data.d..(i as usize + 1) * data.d].to_vec())
            .collect(),
        labels: split.train_labels.clone(),
        test: data.test.clone(),
        test_labels: data.test_labels.clone(),
        counts: split.counts.clone(),
        k: data.k,
        d: data.d,
    };
    let mut last = best_val("v");
    last.config.select = Select::Last;
    last.config.validation = None;
    let last = train(&rest, None, &[last]).unwrap();
    assert_eq!(losses(&last[0].trials[0]), losses(head));

    // Trials share the split and train together; each keeps its own best epoch.
    let mut trials = best_val("t");
    trials.config.trials = 3;
    let out = train(&data, None, &[trials]).unwrap();
    for trial in &out[0].trials {
        let alone = train(
            &data,
            None,
            &[HeadJob {
                seed: trial.seed,
                ..best_val("t")
            }],
        )
        .unwrap();
        assert_eq!(trial.selected_epoch, alone[0].trials[0].selected_epoch);
        assert!(weights_close(trial, &alone[0].trials[0], 1e-5));
    }
}

#[test]
fn best_val_without_a_validation_node_holds_out_a_tenth_and_autodiff_heads_select_too() {
    let data = long_tailed(4, 6, 60, 4.0, 1.5);
    // A cosine head (autodiff path) with the default split.
    let out = train(
        &data,
        None,
        &[job("cos", |s| {
            s.logits = Logits::Cosine {
                scale: 16.0,
                init_norm: None,
            };
            s.select = Select::BestVal;
        })],
    )
    .unwrap();
    let head = &out[0].trials[0];
    assert!(head.history.iter().all(|h| h.val_accuracy.is_some()));
    assert!(head.selected_epoch.is_some());
}

/// `init-norm` scales the random initial class vectors (LDAM's `NormedLinear` starts from unit
/// vectors) without turning them, and so changes the steps but not the starting logits.
#[test]
fn a_cosine_heads_init_norm_scales_the_initial_class_vectors_only() {
    let data = long_tailed(4, 6, 60, 4.0, 1.5);
    let cosine = |name: &str, init_norm: Option<f64>, epochs: u32| {
        job(name, move |s| {
            s.logits = Logits::Cosine {
                scale: 16.0,
                init_norm,
            };
            s.train.epochs = epochs;
        })
    };
    let start = train(
        &data,
        None,
        &[cosine("kept", None, 0), cosine("unit", Some(1.0), 0)],
    )
    .unwrap();
    let (kept, unit) = (&start[0].trials[0], &start[1].trials[0]);
    let d = kept.classifier.weight.len() / kept.classifier.bias.len();
    for (a, b) in kept
        .classifier
        .weight
        .chunks(d)
        .zip(unit.classifier.weight.chunks(d))
    {
        let norm = |r: &[f32]| r.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm(b) - 1.0).abs() < 1e-5, "unit rows, got {}", norm(b));
        // nn.Linear's uniform ±1/√D rows are much shorter than 1.
        assert!(norm(a) < 0.9, "kept rows, got {}", norm(a));
        for (x, y) in a.iter().zip(b) {
            assert!((x / norm(a) - y).abs() < 1e-5, "same direction");
        }
    }
    for (a, b) in kept.test_logits.iter().zip(&unit.test_logits) {
        assert!((a - b).abs() < 1e-4, "the same starting logits: {a} vs {b}");
    }
    // Trained, the two differ: the step on a direction scales as 1/‖W_i‖².
    let trained = train(
        &data,
        None,
        &[cosine("kept", None, 2), cosine("unit", Some(1.0), 2)],
    )
    .unwrap();
    assert!(!weights_close(
        &trained[0].trials[0],
        &trained[1].trials[0],
        1e-3
    ));
}

// ---------------------------------------------------------------------------------------------
// plugin losses

/// The per-sample loss of a plugin head that mirrors built-in heads: `−log softmax(z + offset)_y`,
/// the offset `log n` with `balanced = 1` (balanced softmax), else zero (CE).
struct OffsetCrossEntropy {
    offset: Vec<f32>,
}

impl SampleLoss for OffsetCrossEntropy {
    fn loss_and_grad(&self, logits: &[f32], label: usize, grad: &mut [f32]) -> f32 {
        let shifted: Vec<f64> = logits
            .iter()
            .zip(&self.offset)
            .map(|(&z, &o)| f64::from(z + o))
            .collect();
        let max = shifted.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = shifted.iter().map(|z| (z - max).exp()).sum();
        for (i, (g, z)) in grad.iter_mut().zip(&shifted).enumerate() {
            *g = ((z - max).exp() / sum - if i == label { 1.0 } else { 0.0 }) as f32;
        }
        (max + sum.ln() - shifted[label]) as f32
    }
}

fn build_offset_cross_entropy(
    params: &std::collections::BTreeMap<String, f64>,
    counts: &[usize],
) -> Result<std::sync::Arc<dyn SampleLoss>, String> {
    if counts.contains(&0) {
        return Err("every class needs a training sample".into());
    }
    let balanced = params["balanced"] != 0.0;
    Ok(std::sync::Arc::new(OffsetCrossEntropy {
        offset: counts
            .iter()
            .map(|&n| if balanced { (n as f32).ln() } else { 0.0 })
            .collect(),
    }))
}

fn plugin_job(name: &str, balanced: bool, edit: impl FnOnce(&mut HeadConfig)) -> HeadJob {
    job(name, |s| {
        s.plugin_loss = Some(PluginLoss {
            name: "test-cross-entropy".into(),
            params: [("balanced".to_string(), f64::from(u8::from(balanced)))].into(),
            build: std::sync::Arc::new(build_offset_cross_entropy),
        });
        edit(s);
    })
}

#[test]
fn a_plugin_loss_trains_like_the_built_in_loss_it_mirrors() {
    let data = long_tailed(5, 8, 60, 10.0, 1.0);
    let weights = |s: &mut HeadConfig| {
        s.weighting = Weighting::ClassBalanced {
            beta: 0.99,
            loss: BaseLoss::Softmax,
            gamma: 0.0,
            from_epoch: 1,
        };
    };
    let built_in = train(
        &data,
        None,
        &[
            job("ce", |_| {}),
            job("bs", |s| s.margin = Margin::BalancedSoftmax),
            job("cb", weights),
            job("trials", |s| s.trials = 2),
        ],
    )
    .unwrap();
    let plugin = train(
        &data,
        None,
        &[
            plugin_job("ce", false, |_| {}),
            plugin_job("bs", true, |_| {}),
            plugin_job("cb", false, weights),
            plugin_job("trials", false, |s| s.trials = 2),
        ],
    )
    .unwrap();
    for (a, b) in built_in.iter().zip(&plugin) {
        assert_eq!(a.trials.len(), b.trials.len());
        for (x, y) in a.trials.iter().zip(&b.trials) {
            assert!(weights_close(x, y, 1e-4), "{}", a.name);
            for (p, q) in x.history.iter().zip(&y.history) {
                assert!((p.loss - q.loss).abs() < 1e-4, "{}: {p:?} vs {q:?}", a.name);
            }
        }
    }
    // The plugin's own check of the settings reaches the user as an error naming the head.
    let mut sparse = long_tailed(5, 8, 60, 10.0, 1.0);
    sparse.counts[4] = 0;
    sparse.labels.retain(|&y| y != 4);
    let kept: Vec<usize> = (0..data.labels.len())
        .filter(|&i| data.labels[i] != 4)
        .collect();
    sparse.train = kept
        .iter()
        .flat_map(|&i| data.train[i * data.d..(i + 1) * data.d].iter().copied())
        .collect();
    let err = train(&sparse, None, &[plugin_job("ce", false, |_| {})]).unwrap_err();
    assert!(
        err.to_string()
            .contains("every class needs a training sample"),
        "{err}"
    );
}

#[test]
fn check_gradient_catches_a_wrong_gradient() {
    struct Wrong;
    impl SampleLoss for Wrong {
        fn loss_and_grad(&self, logits: &[f32], _: usize, grad: &mut [f32]) -> f32 {
            grad.fill(1.0);
            logits.iter().map(|z| z * z).sum()
        }
    }
    let right = OffsetCrossEntropy {
        offset: vec![0.0; 3],
    };
    assert!(check_gradient(&right, &[0.3, -1.0, 2.0], 1, 1e-2) < 1e-3);
    assert!(check_gradient(&Wrong, &[0.3, -1.0, 2.0], 1, 1e-2) > 0.5);
}

/// The trainer hands back the rows it is done with: the train split after each host group, the
/// test split chunk by chunk after the test logits (and after each selection pass on it).
#[test]
fn the_trainer_releases_the_feature_rows_it_is_done_with() {
    use std::sync::Mutex;
    let data = long_tailed(5, 8, 60, 10.0, 1.0);
    let calls: Mutex<Vec<(FeatureSplit, std::ops::Range<usize>)>> = Mutex::new(Vec::new());
    let record = |split: FeatureSplit, rows: std::ops::Range<usize>| {
        calls.lock().unwrap().push((split, rows));
    };
    let mut view = data.view();
    view.release = Some(&record);
    let jobs = [job("ce", |_| {}), noisy("sel", 1.0, Select::BestTest)];
    train_heads::<Ad>(
        &dev(),
        &view,
        None,
        &jobs,
        &AtomicBool::new(false),
        &mut |_| {},
    )
    .unwrap();
    let calls = calls.into_inner().unwrap();
    let (n, n_test) = (data.labels.len(), data.test_labels.len());
    // Two host groups (different epochs): each releases all train rows once.
    let train: Vec<_> = calls
        .iter()
        .filter(|(s, _)| *s == FeatureSplit::Train)
        .collect();
    assert_eq!(train.len(), 2, "{calls:?}");
    assert!(train.iter().all(|(_, r)| *r == (0..n)));
    // The selecting head's 8 epochs release the whole test split; the test logits of both
    // groups release it chunk by chunk, covering every row.
    let test: Vec<_> = calls
        .iter()
        .filter(|(s, _)| *s == FeatureSplit::Test)
        .collect();
    let whole = test.iter().filter(|(_, r)| *r == (0..n_test)).count();
    assert!(whole >= 8, "{calls:?}");
    let mut covered = vec![0usize; n_test];
    for (_, rows) in &test {
        rows.clone().for_each(|i| covered[i] += 1);
    }
    assert!(covered.iter().all(|&c| c >= 2 + 8), "{covered:?}");
}

/// A 5 × 5 sweep of learning rate and weight decay: 25 heads that train as one batched group.
fn sweep_jobs() -> Vec<HeadJob> {
    [0.01, 0.03, 0.1, 0.3, 1.0]
        .iter()
        .flat_map(|&lr| {
            [0.0, 1e-4, 5e-4, 1e-3, 5e-3].map(|wd| {
                job(&format!("lr{lr}-wd{wd}"), |s| {
                    s.train.epochs = 2;
                    s.train.batch_size = 128;
                    s.train.lr = lr;
                    s.train.weight_decay = wd;
                    s.targets = Targets::Smoothed { delta: 0.5 };
                })
            })
        })
        .collect()
}

/// Shapes large enough for the host path's parallel passes (per-sample loss over `B·H·K`, the
/// SGD update over `D·H·K`) and for chunked test logits (more than one chunk), against the
/// device path; the test split is released chunk by chunk.
#[test]
fn a_large_sweep_on_the_host_matches_the_device_and_releases_chunks() {
    use std::sync::Mutex;
    let data = long_tailed(40, 80, 60, 10.0, 1.0);
    let n_test = data.test_labels.len();
    assert!(n_test > 2048, "two chunks of test logits: {n_test}");
    let jobs = sweep_jobs();
    let calls: Mutex<Vec<(FeatureSplit, std::ops::Range<usize>)>> = Mutex::new(Vec::new());
    let record = |split: FeatureSplit, rows: std::ops::Range<usize>| {
        calls.lock().unwrap().push((split, rows));
    };
    let run = |path, release: bool| {
        let mut view = data.view();
        if release {
            view.release = Some(&record);
        }
        train_heads_with::<Ad>(
            &dev(),
            &view,
            None,
            &jobs,
            &AtomicBool::new(false),
            &mut |_| {},
            path,
        )
        .unwrap()
    };
    let (host, device) = (run(StepPath::Auto, true), run(StepPath::Device, false));
    for (a, b) in host.iter().zip(&device) {
        let (x, y) = (&a.trials[0], &b.trials[0]);
        assert!(weights_close(x, y, 1e-4), "{}", a.name);
        let worst = max_difference(&x.test_logits, &y.test_logits);
        assert!(worst < 1e-3, "{}: test logits differ by {worst}", a.name);
        assert_eq!(x.test_logits.len(), n_test * data.k);
    }
    let tests: Vec<_> = calls
        .into_inner()
        .unwrap()
        .into_iter()
        .filter(|(s, _)| *s == FeatureSplit::Test)
        .map(|(_, r)| r)
        .collect();
    assert_eq!(tests, vec![0..2048, 2048..n_test]);
}

/// The device path on a real non-CPU backend (wgpu; on CI, Mesa's software Vulkan): every head
/// the CPU trains in host memory, trained by the closed form on the device and by autodiff there.
#[cfg(feature = "wgpu")]
mod wgpu {
    use super::*;
    use crate::backend::{WgpuAutodiff, test_wgpu_device};

    /// The three-path test's heads and tolerance, across backends: the host path on the CPU is
    /// the reference for the device step and for autodiff on wgpu.
    #[test]
    fn the_device_step_and_autodiff_on_wgpu_match_the_host_path() {
        let Some(device) = test_wgpu_device() else {
            return;
        };
        let data = long_tailed(5, 8, 60, 10.0, 1.0);
        let jobs = three_path_jobs();
        let host = train_on::<Ad>(&dev(), &data, &jobs, StepPath::Auto);
        for path in [StepPath::Auto, StepPath::Autodiff] {
            let on_device = train_on::<WgpuAutodiff>(&device, &data, &jobs, path);
            assert_same_heads(&on_device, &host, &format!("wgpu, {path:?}"));
        }
    }

    /// A sweep's 25 heads train as one batched computation on the device, with test logits in
    /// more than one chunk, and match the CPU's host path head by head.
    #[test]
    fn a_batched_sweep_on_wgpu_matches_the_host_path() {
        let Some(device) = test_wgpu_device() else {
            return;
        };
        let data = long_tailed(40, 80, 60, 10.0, 1.0);
        let n_test = data.test_labels.len();
        assert!(n_test > 2048, "two chunks of test logits: {n_test}");
        let jobs = sweep_jobs();
        let host = train_on::<Ad>(&dev(), &data, &jobs, StepPath::Auto);
        let on_device = train_on::<WgpuAutodiff>(&device, &data, &jobs, StepPath::Auto);
        assert_eq!((on_device.len(), host.len()), (jobs.len(), jobs.len()));
        for (a, b) in on_device.iter().zip(&host) {
            let (x, y) = (&a.trials[0], &b.trials[0]);
            assert!(weights_close(x, y, 1e-4), "{}", a.name);
            let worst = max_difference(&x.test_logits, &y.test_logits);
            assert!(worst < 1e-3, "{}: test logits differ by {worst}", a.name);
            assert_eq!(x.test_logits.len(), n_test * data.k);
        }
    }
}
