//! The `features` stage: runs the frozen backbone (inference mode, BatchNorm statistics frozen)
//! over the long-tailed train split and the test split, and stores the feature matrices, the
//! class metadata and the backbone's classifier for the heads.

use std::collections::BTreeMap;

use lortflow_data::dataset::Split;
use lortflow_data::features::FeatureFile;
use lortflow_lang::ir::StageSpec;
use lortflow_runtime::{StageContext, StageError, StageExecutor};
use serde_json::{Value as Json, json};

use super::backbone::{Splits, read_normalization};
use super::common::{
    CLASSIFIER_FILE, DatasetIndex, INDEX_FILE, META_FILE, TEST_FEATURES, TRAIN_FEATURES,
    dataset_spec, ensure_source_files, fail, official_downloads, read_json, save_classifier,
    write_json,
};
use super::convert::features as convert;
use crate::backbone::{ReplicaDevices, load_backbone};
use crate::features::extract_features_on;

pub(crate) struct FeaturesStage;

impl StageExecutor for FeaturesStage {
    fn version(&self) -> &'static str {
        "1"
    }

    fn run(&self, cx: &StageContext<'_>) -> Result<Json, StageError> {
        let StageSpec::Features(spec) = &cx.stage.stage.spec else {
            return Err(StageError::failed("not a features stage"));
        };
        let backbone = cx.input("backbone")?;
        let data = backbone.find("data").ok_or_else(|| {
            StageError::failed(format!(
                "backbone `{}` has no dataset input",
                backbone.stage.name
            ))
        })?;
        let dataset = dataset_spec(data)?;
        let index: DatasetIndex = read_json(&data.artifact.file(INDEX_FILE))?;
        ensure_source_files(cx, dataset, &official_downloads())?;
        let tta = convert::tta(spec.tta);
        let normalization = read_normalization(&backbone.artifact)?;
        let splits = Splits::open(dataset, &index, &data.artifact)?;
        let views = splits.views(&[], &normalization)?;
        let batch = spec.batch_size as usize;
        let mut metadata = BTreeMap::new();
        // The backbone's artifact, not its name: a rename keeps this artifact's key.
        metadata.insert(
            "backbone-artifact".to_string(),
            backbone.artifact.key().to_string(),
        );
        let out = cx.out_dir;
        let (dim, classifier) =
            crate::with_backend!(super::convert::backend(cx.backend), |B, device| {
                type Inner = <B as burn::tensor::backend::AutodiffBackend>::InnerBackend;
                // One copy per device: each loaded there (BatchNorm's running statistics live
                // in a shared cell that moving a copy would move for all).
                let devices = device.replicas(cx.devices).map_err(fail)?;
                let models = devices
                    .iter()
                    .map(|d| load_backbone::<Inner>(backbone.artifact.dir(), d).map(|(m, _)| m))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(fail)?;
                let replicas: Vec<_> = models.iter().zip(&devices).collect();
                let model = &models[0];
                for (split, ids_of, file, step) in [
                    (Split::Train, true, TRAIN_FEATURES, 0u64),
                    (Split::Test, false, TEST_FEATURES, 1),
                ] {
                    cx.check_cancelled()?;
                    cx.progress(
                        step,
                        2,
                        "split",
                        format!(
                            "extracting {} features",
                            if ids_of { "train" } else { "test" }
                        ),
                    );
                    let ids: Vec<u32> = if ids_of {
                        index.train_ids.clone()
                    } else {
                        (0..splits.test_len() as u32).collect()
                    };
                    extract_features_on(
                        &replicas,
                        splits.eval_input(&views, split),
                        &ids,
                        tta,
                        batch,
                        &out.join(file),
                        &metadata,
                        cx.cancel.flag(),
                    )
                    .map_err(|e| match e {
                        crate::features::ExtractError::Cancelled { .. } => StageError::Cancelled,
                        other => fail(other),
                    })?;
                }
                // Burn's Linear stores its weight as [D, K]; heads use the [K, D] of PyTorch.
                let fc = model.fc();
                let [dim, k] = fc.weight.dims();
                let w: Vec<f32> = fc
                    .weight
                    .val()
                    .into_data()
                    .convert::<f32>()
                    .to_vec()
                    .map_err(|e| StageError::failed(format!("{e:?}")))?;
                let mut weight = vec![0.0f32; dim * k];
                for i in 0..dim {
                    for j in 0..k {
                        weight[j * dim + i] = w[i * k + j];
                    }
                }
                let bias: Vec<f32> = match &fc.bias {
                    Some(b) => b
                        .val()
                        .into_data()
                        .convert::<f32>()
                        .to_vec()
                        .map_err(|e| StageError::failed(format!("{e:?}")))?,
                    None => vec![0.0; k],
                };
                Ok::<_, StageError>((dim, (weight, bias, k)))
            })
            .map_err(fail)??;
        save_classifier(
            &out.join(CLASSIFIER_FILE),
            &classifier.0,
            &classifier.1,
            classifier.2,
        )?;
        write_json(&out.join(META_FILE), &index.meta)?;
        let train_rows = FeatureFile::open(&out.join(TRAIN_FEATURES))
            .map_err(fail)?
            .rows();
        let test_rows = FeatureFile::open(&out.join(TEST_FEATURES))
            .map_err(fail)?
            .rows();
        cx.progress(2, 2, "split", "done");
        Ok(json!({
            "dim": dim,
            "train_rows": train_rows,
            "test_rows": test_rows,
            "tta": tta.name(),
            "num_classes": index.meta.num_classes,
            "bytes": (train_rows + test_rows) * dim * 4,
        }))
    }
}
