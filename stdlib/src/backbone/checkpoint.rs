//! Burn records of backbones: the per-epoch training checkpoints (model + optimizer + epoch) and
//! the trained backbone saved as a stage artifact.
//!
//! Records are written with `NamedMpkFileRecorder<FullPrecisionSettings>`, not `CompactRecorder`
//! (half precision), so that a resumed run continues from exactly the weights it stopped at. A
//! Burn record does not contain the module's shape, so every model file has its
//! [`BackboneConfig`] next to it as JSON.

use std::fs;
use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, Module};
use burn::optim::Optimizer;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::{Deserialize, Serialize};

use super::base::{Backbone, BackboneConfig};
use super::error::BackboneError;

type FileRecorder = NamedMpkFileRecorder<FullPrecisionSettings>;

/// File name (without the `.mpk` Burn adds) of a saved backbone inside its directory.
pub const BACKBONE_RECORD: &str = "backbone";
/// The configuration saved next to it.
pub const BACKBONE_CONFIG: &str = "backbone.json";
const STATE_FILE: &str = "state.json";

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BackboneError {
    let path = path.to_path_buf();
    move |source| BackboneError::Io {
        action,
        path,
        source,
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a reader never sees half a
/// file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), BackboneError> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).map_err(io("write", &tmp))?;
    fs::rename(&tmp, path).map_err(io("rename into", path))
}

/// Saves a trained backbone into `dir` (`backbone.mpk` + `backbone.json`).
pub fn save_backbone<B: Backend>(
    model: &Backbone<B>,
    config: &BackboneConfig,
    dir: &Path,
) -> Result<(), BackboneError> {
    fs::create_dir_all(dir).map_err(io("create", dir))?;
    let record = dir.join(BACKBONE_RECORD);
    model
        .clone()
        .save_file(&record, &FileRecorder::new())
        .map_err(|e| BackboneError::Record {
            action: "save",
            path: record.clone(),
            message: e.to_string(),
        })?;
    let json = serde_json::to_vec_pretty(config).expect("a backbone config should serialize");
    write_atomic(&dir.join(BACKBONE_CONFIG), &json)
}

/// Reads the configuration of a backbone saved by [`save_backbone`].
pub fn load_backbone_config(dir: &Path) -> Result<BackboneConfig, BackboneError> {
    let path = dir.join(BACKBONE_CONFIG);
    let bytes = fs::read(&path).map_err(io("read", &path))?;
    serde_json::from_slice(&bytes).map_err(|e| BackboneError::Checkpoint {
        path,
        message: e.to_string(),
    })
}

/// Loads a backbone saved by [`save_backbone`].
pub fn load_backbone<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(Backbone<B>, BackboneConfig), BackboneError> {
    let config = load_backbone_config(dir)?;
    let model = load_record_into(
        config.init::<B>(device)?,
        &dir.join(BACKBONE_RECORD),
        device,
    )?;
    Ok((model, config))
}

/// Loads the record at `path` (without `.mpk`) into `model`.
pub(crate) fn load_record_into<B: Backend>(
    model: Backbone<B>,
    path: &Path,
    device: &B::Device,
) -> Result<Backbone<B>, BackboneError> {
    model
        .load_file(path, &FileRecorder::new(), device)
        .map_err(|e| BackboneError::Record {
            action: "load",
            path: path.with_extension("mpk"),
            message: e.to_string(),
        })
}

/// Progress of a training run, written last in each checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct TrainState {
    /// Epochs whose weights the checkpoint holds.
    pub(crate) completed_epochs: usize,
    /// The training configuration's fingerprint (`TrainConfig::fingerprint`).
    pub(crate) fingerprint: String,
    /// Loss of the last step.
    pub(crate) last_loss: f32,
    /// Every completed epoch (absent in checkpoints of older versions).
    #[serde(default)]
    pub(crate) history: Vec<EpochStats>,
}

/// One epoch of first-stage training, as the training curve records it (kept in the checkpoint, so
/// a resumed run's curve starts at epoch 1 too).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochStats {
    /// 1-based.
    pub epoch: usize,
    /// Mean loss over the epoch's images.
    pub loss: f32,
    /// Training accuracy over the epoch (augmented images, the logits the loss saw).
    pub train_acc: f32,
    /// Learning rate of the epoch.
    pub lr: f64,
    /// Wall time of the epoch.
    pub seconds: f32,
}

/// The `checkpoint/` directory of a training run: `model-E.mpk`, `optim-E.mpk` and
/// `state.json`, which is written last and names the epoch `E` whose files are complete.
pub(crate) struct CheckpointDir {
    dir: PathBuf,
}

impl CheckpointDir {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn model_path(&self, epoch: usize) -> PathBuf {
        self.dir.join(format!("model-{epoch}"))
    }

    fn optim_path(&self, epoch: usize) -> PathBuf {
        self.dir.join(format!("optim-{epoch}"))
    }

    /// The state of the last complete checkpoint, if any; an error when it belongs to another
    /// configuration.
    pub(crate) fn latest(&self, fingerprint: &str) -> Result<Option<TrainState>, BackboneError> {
        let path = self.dir.join(STATE_FILE);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("read", &path)(e)),
        };
        let state: TrainState =
            serde_json::from_slice(&bytes).map_err(|e| BackboneError::Checkpoint {
                path: path.clone(),
                message: e.to_string(),
            })?;
        if state.fingerprint != fingerprint {
            return Err(BackboneError::Checkpoint {
                path,
                message: format!(
                    "it was written by a different training configuration ({}); remove the directory to start over",
                    state.fingerprint
                ),
            });
        }
        Ok(Some(state))
    }

    /// The training curve of the last complete checkpoint, whatever its configuration.
    pub(crate) fn history(&self) -> Option<Vec<EpochStats>> {
        let bytes = fs::read(self.dir.join(STATE_FILE)).ok()?;
        serde_json::from_slice::<TrainState>(&bytes)
            .ok()
            .map(|s| s.history)
    }

    pub(crate) fn load_model<B: Backend>(
        &self,
        model: Backbone<B>,
        epoch: usize,
        device: &B::Device,
    ) -> Result<Backbone<B>, BackboneError> {
        load_record_into(model, &self.model_path(epoch), device)
    }

    pub(crate) fn load_optimizer<B: AutodiffBackend, O: Optimizer<Backbone<B>, B>>(
        &self,
        optim: O,
        epoch: usize,
        device: &B::Device,
    ) -> Result<O, BackboneError> {
        let path = self.optim_path(epoch);
        let record =
            Recorder::<B>::load(&FileRecorder::new(), path.clone(), device).map_err(|e| {
                BackboneError::Record {
                    action: "load",
                    path: path.with_extension("mpk"),
                    message: e.to_string(),
                }
            })?;
        Ok(optim.load_record(record))
    }

    /// Writes the checkpoint of `state.completed_epochs` and removes the previous one.
    pub(crate) fn save<B: AutodiffBackend, O: Optimizer<Backbone<B>, B>>(
        &self,
        model: &Backbone<B>,
        optim: &O,
        state: &TrainState,
    ) -> Result<(), BackboneError>
    where
        Backbone<B>: AutodiffModule<B>,
    {
        fs::create_dir_all(&self.dir).map_err(io("create", &self.dir))?;
        let epoch = state.completed_epochs;
        let record_err = |path: PathBuf| {
            move |e: burn::record::RecorderError| BackboneError::Record {
                action: "save",
                path: path.with_extension("mpk"),
                message: e.to_string(),
            }
        };
        let model_path = self.model_path(epoch);
        model
            .clone()
            .save_file(&model_path, &FileRecorder::new())
            .map_err(record_err(model_path.clone()))?;
        let optim_path = self.optim_path(epoch);
        Recorder::<B>::record(&FileRecorder::new(), optim.to_record(), optim_path.clone())
            .map_err(record_err(optim_path))?;
        let json = serde_json::to_vec_pretty(state).expect("a train state should serialize");
        write_atomic(&self.dir.join(STATE_FILE), &json)?;
        if epoch > 0 {
            // The previous checkpoint is superseded; a failure to delete it only costs disk.
            for old in [self.model_path(epoch - 1), self.optim_path(epoch - 1)] {
                let _ = fs::remove_file(old.with_extension("mpk"));
            }
        }
        Ok(())
    }
}
