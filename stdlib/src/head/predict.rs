//! Trained heads to predictions: each head's inference map applied to its selected parameters
//! (τ-norm, LWS folding, logit adjustment, cosine normalisation) as one set of host matrices
//! ([`inference_weights`]), from which both the test logits and the per-epoch predictions of
//! selecting heads are computed, on the device or in host memory.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::base::EpochStats;
use super::base::{FeatureSplit, FeatureView, HeadJob, TrainedClassifier, TrainedHead};
use super::device_data::DeviceData;
use super::error::HeadError;
use super::host::InferenceWeights;
use super::inference::NORM_EPS;
use super::loss::mul_rows;
use super::plan::{LogitKind, Member};
use super::step::{HeadParams, per_head_rows, project, read, stack_transposed};

/// The classifiers of a group's heads from their host parameters.
pub(crate) fn classifiers(
    members: &[&Member],
    params: &[HeadParams],
    k: usize,
    d: usize,
    log_prior: &[f32],
) -> Vec<TrainedClassifier> {
    members
        .iter()
        .zip(params)
        .map(|(member, p)| TrainedClassifier {
            num_classes: k,
            dim: d,
            logits: member.logits.clone(),
            weight: p.weight.clone(),
            bias: p.bias.clone(),
            lws_scale: p.scale.clone(),
            log_prior: log_prior.to_vec(),
        })
        .collect()
}

/// Logits after each head's inference map for features `x` (`[N, D]`, row-normalised for cosine
/// heads), `[N, H, K]`: the host matrices of [`inference_weights`], then one batched matmul.
pub(crate) fn inference_logits<B: Backend>(
    device: &B::Device,
    weights: &InferenceWeights,
    x: Tensor<B, 2>,
) -> Tensor<B, 3> {
    let [n, d] = x.dims();
    let (h, k) = (weights.scale.len(), weights.k);
    let w = Tensor::<B, 3>::from_data(TensorData::new(weights.weight.clone(), [d, h, k]), device);
    let b = Tensor::<B, 3>::from_data(TensorData::new(weights.bias.clone(), [1, h, k]), device);
    let mut z = project(x.reshape([1, n, d]), w);
    if weights.cosine {
        z = mul_rows(z, per_head_rows::<B>(&weights.scale, k, device));
    }
    z + b
}

/// The inference maps of a group's heads as host matrices (`[D, H, K]` weights with each class
/// vector unit-normalised for cosine heads, biases with the inference offsets added, per-head
/// cosine scales): what both the device and the host compute logits from.
pub(crate) fn inference_weights(
    members: &[&Member],
    classifiers: &[TrainedClassifier],
    cosine: bool,
) -> InferenceWeights {
    let k = classifiers[0].num_classes;
    let d = classifiers[0].dim;
    let h = members.len();
    let mut w_inf = Vec::with_capacity(h);
    let mut bias = Vec::with_capacity(h * k);
    for (member, classifier) in members.iter().zip(classifiers) {
        let mapped = classifier.for_inference(&member.inference);
        w_inf.push(mapped.weight);
        let offset = classifier.inference_offset(&member.inference);
        bias.extend(mapped.bias.iter().zip(&offset).map(|(b, o)| b + o));
    }
    if cosine {
        for w in &mut w_inf {
            for row in w.chunks_mut(d) {
                let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(NORM_EPS);
                row.iter_mut().for_each(|v| *v /= norm);
            }
        }
    }
    let w_inf: Vec<&[f32]> = w_inf.iter().map(Vec::as_slice).collect();
    InferenceWeights {
        weight: stack_transposed(&w_inf, k, d),
        bias,
        scale: members
            .iter()
            .map(|m| if cosine { m.scale } else { 1.0 })
            .collect(),
        cosine,
        k,
    }
}

/// [`predict`] on host rows `x` (`[N, D]`, as stored).
pub(crate) fn predict_host(
    members: &[&Member],
    classifiers: &[TrainedClassifier],
    x: &[f32],
    d: usize,
    cosine: bool,
) -> Vec<u32> {
    let weights = inference_weights(members, classifiers, cosine);
    let k = weights.k;
    let mut out = Vec::with_capacity(x.len() / d.max(1) * members.len());
    weights.logits(x, d, |_, logits| {
        out.extend(
            logits
                .chunks(k)
                .map(|z| (0..k).fold(0, |best, c| if z[c] > z[best] { c } else { best }) as u32),
        );
    });
    out
}

/// Where [`finish_group`] computes the test logits.
pub(crate) enum Logits<'d, 'f, B: Backend> {
    Device(&'d DeviceData<'f, B>),
    Host,
}

/// Argmax predictions of every head after its inference map, `[N, H]` row-major.
pub(crate) fn predict<B: Backend>(
    device: &B::Device,
    members: &[&Member],
    classifiers: &[TrainedClassifier],
    x: Tensor<B, 2>,
    cosine: bool,
) -> Vec<u32> {
    if x.dims()[0] == 0 {
        return Vec::new();
    }
    let weights = inference_weights(members, classifiers, cosine);
    inference_logits(device, &weights, x)
        .argmax(2)
        .into_data()
        .iter::<i64>()
        .map(|c| c as u32)
        .collect()
}

/// Applies each head's inference map to its selected parameters and computes the test logits of
/// all heads in one batched matmul.
#[allow(clippy::too_many_arguments)]
pub(crate) fn finish_group<B: Backend>(
    device: &B::Device,
    logits_on: Logits<'_, '_, B>,
    features: &FeatureView<'_>,
    jobs: &[HeadJob],
    log_prior: &[f32],
    members: &[&Member],
    params: Vec<HeadParams>,
    history: Vec<Vec<EpochStats>>,
    selected: Vec<Option<u32>>,
) -> Result<Vec<TrainedHead>, HeadError> {
    let (h, k, d) = (members.len(), features.num_classes, features.dim);
    let classifiers = classifiers(members, &params, k, d, log_prior);
    let cosine = members[0].kind == LogitKind::Cosine;
    let n_test = features.num_test();
    // Per head: `N_test×K`.
    let mut test_logits: Vec<Vec<f32>> = vec![Vec::with_capacity(n_test * k); h];
    if n_test > 0 {
        match logits_on {
            Logits::Device(data) => {
                let weights = inference_weights(members, &classifiers, cosine);
                let all = read(inference_logits(device, &weights, data.test(cosine)));
                // `[N_test, H, K]` → per head.
                for row in all.chunks(h * k) {
                    for (out, z) in test_logits.iter_mut().zip(row.chunks(k)) {
                        out.extend_from_slice(z);
                    }
                }
            }
            Logits::Host => {
                inference_weights(members, &classifiers, cosine).logits(
                    features.test,
                    d,
                    |start, chunk| {
                        for row in chunk.chunks(h * k) {
                            for (out, z) in test_logits.iter_mut().zip(row.chunks(k)) {
                                out.extend_from_slice(z);
                            }
                        }
                        let rows = chunk.len() / (h * k).max(1);
                        features.release(FeatureSplit::Test, start..start + rows);
                    },
                );
            }
        }
    }

    let mut history = history.into_iter();
    Ok(members
        .iter()
        .zip(classifiers)
        .zip(selected)
        .zip(test_logits)
        .map(
            |(((member, classifier), selected_epoch), test_logits)| TrainedHead {
                name: jobs[member.job].name.clone(),
                trial: member.trial,
                seed: member.seed,
                classifier,
                inference: member.inference.clone(),
                history: history.next().unwrap_or_default(),
                selected_epoch,
                test_logits,
            },
        )
        .collect())
}
