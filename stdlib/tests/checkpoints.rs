//! PyTorch checkpoints as users have them, written by real PyTorch (`fixtures/checkpoints/make.py`):
//! each layout loads and gives PyTorch's features and logits, or fails with a message that says
//! what is wrong in the file's own names. Broken files are made here from the real ones.

use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, TensorData};
use lortflow_stdlib::backbone::{
    Arch, Backbone, BackboneConfig, BackboneError, CheckpointFormat, CheckpointMapping,
    ClassifierKind, ImportReport, export_torch, import_backbone,
};
use lortflow_stdlib::backend::{CpuBackend, CpuDevice};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/checkpoints")
        .join(name)
}

fn small_cnn() -> BackboneConfig {
    BackboneConfig {
        arch: Arch::SmallCnn,
        num_classes: 10,
        in_channels: 1,
        input_size: 28,
    }
}

fn resnet32() -> BackboneConfig {
    BackboneConfig {
        arch: Arch::Resnet32,
        num_classes: 10,
        in_channels: 3,
        input_size: 32,
    }
}

/// The reference tensor `name` of `reference.safetensors`: (shape, values).
fn reference(name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(fixture("reference.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = file.tensor(name).unwrap_or_else(|_| panic!("no `{name}`"));
    let values = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (t.shape().to_vec(), values)
}

fn import(
    config: &BackboneConfig,
    path: &Path,
    mapping: &CheckpointMapping,
) -> Result<(Backbone<CpuBackend>, ImportReport), BackboneError> {
    import_backbone::<CpuBackend>(
        config,
        path,
        CheckpointFormat::Auto,
        mapping,
        &CpuDevice::default(),
    )
}

/// Features and logits of `model` on the reference input `input`.
fn outputs(model: &Backbone<CpuBackend>, input: &str) -> (Vec<f32>, Vec<f32>) {
    let (shape, values) = reference(input);
    let x =
        Tensor::<CpuBackend, 4>::from_data(TensorData::new(values, shape), &CpuDevice::default());
    let features = model
        .forward_features(x.clone())
        .into_data()
        .to_vec()
        .unwrap();
    let logits = model.forward(x).into_data().to_vec().unwrap();
    (features, logits)
}

/// Max |a - b| relative to max |b|.
fn relative_error(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn assert_matches_pytorch(
    name: &str,
    config: &BackboneConfig,
    mapping: &CheckpointMapping,
) -> ImportReport {
    let (model, report) = import(config, &fixture(name), mapping)
        .unwrap_or_else(|e| panic!("`{name}` should load: {e}"));
    let input = match config.arch {
        Arch::Resnet32 => "resnet32.input",
        _ => "small_cnn.input",
    };
    let (features, logits) = outputs(&model, input);
    let features_error = relative_error(&features, &reference(&format!("{name}.features")).1);
    eprintln!("{name}: features relative error {features_error:.1e}");
    assert!(
        features_error < 1e-4,
        "`{name}`: features differ by {features_error:e}"
    );
    if report.classifier_kind == ClassifierKind::Linear {
        let logits_error = relative_error(&logits, &reference(&format!("{name}.logits")).1);
        assert!(
            logits_error < 1e-4,
            "`{name}`: logits differ by {logits_error:e}"
        );
    }
    report
}

#[test]
fn every_layout_loads_and_gives_pytorchs_features() {
    let auto = CheckpointMapping::default();
    for (name, file, trunk) in [
        ("small_cnn.pth", "a PyTorch archive", ""),
        ("small_cnn_legacy.pth", "a legacy PyTorch pickle", ""),
        ("small_cnn.safetensors", "a safetensors file", ""),
        (
            "small_cnn_model_epoch_optim.pth",
            "a PyTorch archive",
            "model.",
        ),
        (
            "small_cnn_lightning.ckpt",
            "a PyTorch archive",
            "state_dict.model.",
        ),
        (
            "small_cnn_classifier_balancing.pth",
            "a PyTorch archive",
            "state_dict.feat_model.module.",
        ),
    ] {
        let report = assert_matches_pytorch(name, &small_cnn(), &auto);
        assert_eq!(report.file, file, "{name}");
        assert_eq!(report.trunk, trunk, "{name}");
        assert!(report.converted_from.is_empty(), "{name}");
    }
}

#[test]
fn classifier_balancing_keeps_its_classifier_in_another_dict() {
    let report = assert_matches_pytorch(
        "small_cnn_classifier_balancing.pth",
        &small_cnn(),
        &CheckpointMapping::default(),
    );
    assert_eq!(report.classifier, "state_dict.classifier.module.fc.");
    // Stating both prefixes gives the same model.
    assert_matches_pytorch(
        "small_cnn_classifier_balancing.pth",
        &small_cnn(),
        &CheckpointMapping {
            trunk: Some("state_dict.feat_model.module".into()),
            classifier: Some("state_dict.classifier.module.fc.".into()),
            classifier_kind: ClassifierKind::Linear,
        },
    );
}

#[test]
fn half_and_double_precision_convert_to_float32() {
    for (name, dtype) in [
        ("small_cnn_f16.pth", "float16"),
        ("small_cnn_bf16.safetensors", "bfloat16"),
        ("small_cnn_f64.pth", "float64"),
    ] {
        let report = assert_matches_pytorch(name, &small_cnn(), &CheckpointMapping::default());
        assert_eq!(report.converted_from, vec![dtype], "{name}");
    }
}

#[test]
fn ldam_drws_normed_linear_becomes_unit_norm_class_vectors() {
    let report = assert_matches_pytorch(
        "resnet32_ldam_drw.pth.tar",
        &resnet32(),
        &CheckpointMapping::default(),
    );
    assert_eq!(report.trunk, "state_dict.module.");
    assert_eq!(report.classifier, "state_dict.module.linear.");
    assert_eq!(report.classifier_kind, ClassifierKind::NormedLinear);
    // Its logits are LDAM's cosines times the feature norm: the same prediction per image.
    let (model, _) = import(
        &resnet32(),
        &fixture("resnet32_ldam_drw.pth.tar"),
        &CheckpointMapping::default(),
    )
    .unwrap();
    let (features, logits) = outputs(&model, "resnet32.input");
    let cosines = reference("resnet32_ldam_drw.pth.tar.logits").1;
    for (i, row) in logits.chunks(10).enumerate() {
        let norm = features[i * 64..(i + 1) * 64]
            .iter()
            .map(|v| v * v)
            .sum::<f32>()
            .sqrt();
        for (ours, cosine) in row.iter().zip(&cosines[i * 10..(i + 1) * 10]) {
            assert!(
                (ours / norm - cosine).abs() < 1e-4,
                "{ours} / {norm} vs {cosine}"
            );
        }
    }
}

fn error(config: &BackboneConfig, path: &Path, mapping: &CheckpointMapping) -> String {
    match import(config, path, mapping) {
        Ok(_) => panic!("`{}` should not load", path.display()),
        Err(e) => e.to_string(),
    }
}

/// A copy of fixture `name` cut to `fraction` of its size.
fn truncated(dir: &Path, name: &str, fraction: f64) -> PathBuf {
    let bytes = std::fs::read(fixture(name)).unwrap();
    let keep = (bytes.len() as f64 * fraction) as usize;
    let path = dir.join(format!("{}-{keep}", name));
    std::fs::write(&path, &bytes[..keep]).unwrap();
    path
}

#[test]
fn a_truncated_file_is_an_error_naming_the_tensor_and_the_byte() {
    let dir = tempfile::tempdir().unwrap();
    let auto = CheckpointMapping::default();
    for fraction in [0.99, 0.5, 0.1, 0.02] {
        let path = truncated(dir.path(), "small_cnn_legacy.pth", fraction);
        let size = std::fs::metadata(&path).unwrap().len();
        let msg = error(&small_cnn(), &path, &auto);
        assert!(
            msg.contains(&format!("truncated at byte {size}")) && msg.contains("tensor `"),
            "{fraction}: {msg}"
        );
        assert!(msg.contains(&path.display().to_string()), "{msg}");
    }
    // The zip archive's directory is at its end: any cut loses it.
    for name in ["small_cnn.pth", "small_cnn.safetensors"] {
        let path = truncated(dir.path(), name, 0.5);
        let size = std::fs::metadata(&path).unwrap().len();
        let msg = error(&small_cnn(), &path, &auto);
        assert!(
            msg.contains(&format!("truncated at byte {size}")),
            "{name}: {msg}"
        );
    }
}

#[test]
fn keys_that_do_not_fit_are_named_as_the_file_names_them_with_a_guess() {
    let auto = CheckpointMapping::default();
    // A wrong prefix: nothing is found, and the right one is suggested.
    let msg = error(
        &small_cnn(),
        &fixture("small_cnn_classifier_balancing.pth"),
        &CheckpointMapping {
            trunk: Some("state_dict.feat_model.".into()),
            ..CheckpointMapping::default()
        },
    );
    assert!(
        msg.contains("missing in the file: `state_dict.feat_model.conv1.weight`"),
        "{msg}"
    );
    assert!(
        msg.contains("try `trunk=\"state_dict.feat_model.module.\"`"),
        "{msg}"
    );
    assert!(msg.lines().count() < 12, "a short message: {msg}");
    // The wrong architecture: PyTorch's names (`bn1.weight`, not Burn's `gamma`), a few at a time.
    let msg = error(&resnet32(), &fixture("small_cnn.pth"), &auto);
    assert!(msg.contains("resnet32"), "{msg}");
    assert!(!msg.contains("gamma") && !msg.contains("beta"), "{msg}");
    assert!(msg.lines().count() < 12, "a short message: {msg}");
    // Another number of classes: the classifier's shape, in PyTorch's layout.
    let msg = error(
        &BackboneConfig {
            num_classes: 100,
            ..small_cnn()
        },
        &fixture("small_cnn.pth"),
        &auto,
    );
    assert!(
        msg.contains("`fc.weight` is [10, 128] in the file") && msg.contains("[100, 128]"),
        "{msg}"
    );
    // LDAM's classifier is `linear`, and it is missing: said in its name.
    let dir = tempfile::tempdir().unwrap();
    let msg = error(&resnet32(), &fixture("small_cnn.safetensors"), &auto);
    assert!(!msg.contains("gamma"), "{msg}");
    let _ = dir;
}

#[test]
fn a_missing_file_and_a_pickled_model_say_so_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.pth");
    let msg = error(&small_cnn(), &missing, &CheckpointMapping::default());
    assert_eq!(
        msg.matches(&missing.display().to_string()).count(),
        1,
        "the path once: {msg}"
    );
    assert!(msg.contains("does not exist"), "{msg}");
    let text = dir.path().join("notes.pth");
    std::fs::write(&text, "not a checkpoint").unwrap();
    let msg = error(&small_cnn(), &text, &CheckpointMapping::default());
    assert!(msg.contains("neither a PyTorch checkpoint"), "{msg}");
}

#[test]
fn an_exported_backbone_reads_back_bit_for_bit() {
    let device = CpuDevice::default();
    let dir = tempfile::tempdir().unwrap();
    let conv_fc = BackboneConfig {
        arch: Arch::ConvFc,
        ..small_cnn()
    };
    for config in [small_cnn(), resnet32(), conv_fc] {
        let model = config.init_seeded::<CpuBackend>(7, &device).unwrap();
        let path = dir.path().join(format!("{:?}.safetensors", config.arch));
        export_torch(&model, &config, &path).unwrap();
        let (back, report) = import(&config, &path, &CheckpointMapping::default()).unwrap();
        let expected = if config.arch == Arch::Resnet32 {
            "linear."
        } else {
            "fc."
        };
        assert_eq!(report.classifier, expected);
        let input = match config.arch {
            Arch::Resnet32 => "resnet32.input",
            _ => "small_cnn.input",
        };
        let a = outputs(&model, input);
        let b = outputs(&back, input);
        assert_eq!(a, b, "{:?}", config.arch);
    }
}

/// A Python that has PyTorch and safetensors: `LORTFLOW_TORCH_PYTHON`, else `python3`.
fn python_with_torch() -> Option<std::ffi::OsString> {
    let python = std::env::var_os("LORTFLOW_TORCH_PYTHON").unwrap_or_else(|| "python3".into());
    let works = std::process::Command::new(&python)
        .args(["-c", "import torch, safetensors"])
        .output()
        .is_ok_and(|o| o.status.success());
    works.then_some(python)
}

#[test]
fn exported_weights_load_in_pytorch_with_strict_names() {
    let Some(python) = python_with_torch() else {
        // CI has no PyTorch; `LORTFLOW_TORCH_PYTHON=… cargo test` runs this where it is.
        eprintln!("skipped: no Python with torch and safetensors (set LORTFLOW_TORCH_PYTHON)");
        return;
    };
    let device = CpuDevice::default();
    let dir = tempfile::tempdir().unwrap();
    for (net, config, input) in [
        ("small_cnn", small_cnn(), "small_cnn.input"),
        ("resnet32", resnet32(), "resnet32.input"),
    ] {
        let model = config.init_seeded::<CpuBackend>(11, &device).unwrap();
        export_torch(
            &model,
            &config,
            &dir.path().join(format!("{net}.safetensors")),
        )
        .unwrap();
        let (features, _) = outputs(&model, input);
        let bytes: Vec<u8> = features.iter().flat_map(|v| v.to_le_bytes()).collect();
        let d = config.feature_dim();
        let view = safetensors::tensor::TensorView::new(
            safetensors::Dtype::F32,
            vec![features.len() / d, d],
            &bytes,
        )
        .unwrap();
        safetensors::serialize_to_file(
            [("features", view)],
            None,
            &dir.path().join(format!("{net}.features.safetensors")),
        )
        .unwrap();
    }
    let status = std::process::Command::new(python)
        .arg(fixture("load_export.py"))
        .arg(dir.path())
        .current_dir(fixture(""))
        .status()
        .unwrap();
    assert!(
        status.success(),
        "PyTorch could not load the export the same way"
    );
}

#[test]
fn damaged_files_are_errors_never_panics() {
    // Every cut, and bytes flipped all over, of each kind of file: an `Err`, or (for damage
    // that only hits bytes no tensor uses, or a value inside a tensor) a model.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("damaged");
    let auto = CheckpointMapping::default();
    for name in [
        "small_cnn_legacy.pth",
        "small_cnn.pth",
        "small_cnn.safetensors",
    ] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        for cut in (0..bytes.len()).step_by(bytes.len() / 97 + 1) {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            assert!(
                import(&small_cnn(), &path, &auto).is_err(),
                "{name} cut at {cut}"
            );
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..60 {
            let mut damaged = bytes.clone();
            for _ in 0..8 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // Half the flips in the first 2 KiB (headers, pickles), half anywhere (counts, data).
                let span = if state & 1 == 0 {
                    2048.min(bytes.len())
                } else {
                    bytes.len()
                };
                let at = (state % span as u64) as usize;
                damaged[at] ^= (state >> 32) as u8 | 1;
            }
            std::fs::write(&path, &damaged).unwrap();
            let _ = import(&small_cnn(), &path, &auto);
        }
    }
}
