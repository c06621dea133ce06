//! Running a frozen backbone over a split and streaming its features to `features.safetensors`.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::backend::Backend;

use lortflow_data::features::FeatureWriter;
use lortflow_data::input::{BatchConfig, ImageInput};

use super::error::ExtractError;
use crate::backbone::Backbone;

/// Test-time augmentation of features.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tta {
    /// The image as is.
    #[default]
    None,
    /// The mean of the features of the image and of its mirror image (LTWB/LORT's flip TTA).
    Hflip,
}

impl Tta {
    /// The schema name.
    pub fn name(&self) -> &'static str {
        match self {
            Tta::None => "none",
            Tta::Hflip => "hflip",
        }
    }
}

/// Extracts the features of the images `ids` of `images` (in that order) with `model` and
/// streams them into the safetensors file `out`.
///
/// `model` must be an inference model (`model.valid()` of a trained backbone, or one built on a
/// backend without autodiff): BatchNorm then normalises with its running statistics, so a sample's
/// features do not depend on its batch. The reference codebases (LTWB, LORT, Decoupling) instead
/// keep the backbone in training mode during stage 2, so their BatchNorm statistics keep drifting
/// while the "frozen" features are computed on the fly; cached features cannot reproduce that,
/// and it is pitfall 3 of ltr-reference §9.
///
/// Memory: the source images when they are in memory (packed ones are streamed), plus the
/// prepared and prefetched batches; features go to disk as they are computed.
#[allow(clippy::too_many_arguments)]
pub fn extract_features<B: Backend>(
    model: &Backbone<B>,
    images: ImageInput<'_>,
    ids: &[u32],
    tta: Tta,
    batch_size: usize,
    out: &Path,
    metadata: &BTreeMap<String, String>,
    cancel: &AtomicBool,
    device: &B::Device,
) -> Result<(), ExtractError> {
    extract_features_on(
        &[(model, device)],
        images,
        ids,
        tta,
        batch_size,
        out,
        metadata,
        cancel,
    )
}

/// [`extract_features`] over several devices: `replicas` holds the same model on each. Every
/// batch is split into runs of consecutive rows, one per device, computed at the same time
/// (replica 0's on this thread) and written in order, so the file is the one a single device
/// writes, up to the rounding of smaller batches.
#[allow(clippy::too_many_arguments)]
pub fn extract_features_on<B: Backend>(
    replicas: &[(&Backbone<B>, &B::Device)],
    images: ImageInput<'_>,
    ids: &[u32],
    tta: Tta,
    batch_size: usize,
    out: &Path,
    metadata: &BTreeMap<String, String>,
    cancel: &AtomicBool,
) -> Result<(), ExtractError> {
    let Some(&(model, device)) = replicas.first() else {
        return Err(ExtractError::NoDevice);
    };
    if B::ad_enabled(device) {
        return Err(ExtractError::AutodiffModel);
    }
    let _keep = crate::heap::KeepFreedMemory::new();
    let dim = model.fc().weight.dims()[0];
    let labels = ids
        .iter()
        .map(|&id| {
            images.labels().get(id as usize).copied().ok_or(
                lortflow_data::input::DataError::SampleOutOfRange {
                    id,
                    len: images.len(),
                },
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut metadata = metadata.clone();
    metadata.insert("tta".into(), tta.name().into());
    let mut writer = FeatureWriter::create(out, dim, labels, &metadata)?;
    let config = BatchConfig {
        batch_size: batch_size.max(1),
        prefetch: 2,
        seed: 0,
        train: false,
        output: crate::input::batch_output::<B>(device),
    };
    let mut rows = 0usize;
    images.for_each_batch::<ExtractError>(ids, &config, 0, |batch| {
        if cancel.load(Ordering::Relaxed) {
            return Err(ExtractError::Cancelled {
                rows,
                total: ids.len(),
            });
        }
        let n = batch.shape[0];
        let values = if replicas.len() == 1 {
            features_of(model, batch, tta, device)?
        } else {
            let parts = batch.split_rows(replicas.len());
            std::thread::scope(|scope| {
                let mut parts = parts.into_iter().zip(replicas);
                let (own, _) = parts.next().expect("a batch has at least one row");
                let others: Vec<_> = parts
                    .map(|(part, &(model, device))| {
                        scope.spawn(move || features_of(model, part, tta, device))
                    })
                    .collect();
                let mut values = features_of(model, own, tta, device);
                // Every thread joined before any error returns: a panic becomes an error.
                // The first error is kept.
                for (i, handle) in others.into_iter().enumerate() {
                    let part = handle.join().unwrap_or_else(|payload| {
                        Err(ExtractError::Replica {
                            rank: i + 1,
                            message: crate::backend::panic_message(payload.as_ref()),
                        })
                    });
                    match (&mut values, part) {
                        (Ok(all), Ok(part)) => all.extend(part),
                        (Ok(_), Err(err)) => values = Err(err),
                        (Err(_), _) => {}
                    }
                }
                values
            })?
        };
        writer.write_rows(&values)?;
        rows += n;
        Ok(ControlFlow::Continue(()))
    })?;
    writer.finish()?;
    Ok(())
}

/// The features of one batch on `device`, read back to the host.
fn features_of<B: Backend>(
    model: &Backbone<B>,
    batch: lortflow_data::input::Batch,
    tta: Tta,
    device: &B::Device,
) -> Result<Vec<f32>, ExtractError> {
    let x = crate::input::images_tensor::<B>(batch.images, batch.shape, device);
    let features = match tta {
        Tta::None => model.forward_features(x),
        Tta::Hflip => {
            let flipped = x.clone().flip([3]);
            (model.forward_features(x) + model.forward_features(flipped)).div_scalar(2.0)
        }
    };
    features
        .into_data()
        .convert::<f32>()
        .into_vec()
        .map_err(|e| ExtractError::Readback(format!("{e:?}")))
}
