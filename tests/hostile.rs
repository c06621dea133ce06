//! Hostile and real-world-messy inputs through the real CLI: files that once crashed the linter,
//! imported features with bad values or labels, paths that are not files, and a real-format
//! source whose classes differ in size. Each must end in a clear error (which file, where, what
//! to do) or simply work.

use crate::cli::Test;

/// A NumPy 1.0 `.npy` file.
fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let shape = match shape {
        [n] => format!("({n},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn f32_npy(rows: usize, dim: usize, value: impl Fn(usize, usize) -> f32) -> Vec<u8> {
    let mut data = Vec::new();
    for r in 0..rows {
        for c in 0..dim {
            data.extend_from_slice(&value(r, c).to_le_bytes());
        }
    }
    npy("<f4", &[rows, dim], &data)
}

fn labels_npy(labels: &[i64]) -> Vec<u8> {
    let data: Vec<u8> = labels.iter().flat_map(|l| l.to_le_bytes()).collect();
    npy("<i8", &[labels.len()], &data)
}

pub(crate) const IMPORTED: &str = r#"lortflow 1
dataset "k" {
    source "features" train="x.npy" test="tx.npy" train-labels="y.npy" test-labels="ty.npy"
    long-tail "exp" imbalance-ratio=2
}
head "ce" { features "k"; init "random"; train epochs=1 }
evaluate "t" { heads "*" }
"#;

/// A test dir with imported features: 4 classes, 10 training rows each, 2 test rows each.
pub(crate) fn imported() -> Test {
    let train_labels: Vec<i64> = (0..40).map(|i| i % 4).collect();
    let test_labels: Vec<i64> = (0..8).map(|i| i % 4).collect();
    let t = Test::new().pipeline(IMPORTED);
    write(
        &t,
        "x.npy",
        &f32_npy(40, 3, |r, c| (r * 3 + c) as f32 * 0.01),
    );
    write(&t, "tx.npy", &f32_npy(8, 3, |r, c| (r + c) as f32 * 0.1));
    write(&t, "y.npy", &labels_npy(&train_labels));
    write(&t, "ty.npy", &labels_npy(&test_labels));
    t
}

fn write(t: &Test, name: &str, bytes: &[u8]) {
    std::fs::write(t.path(name), bytes).unwrap();
}

/// Runs the pipeline, expects it to fail, and returns stderr.
#[track_caller]
fn fails(t: &Test) -> String {
    let ran = t.args_run(["run", "pipeline.kdl"]).code(1);
    ran.stderr
}

#[test]
fn clean_imported_features_run() {
    let t = imported();
    let ran = t.args_run(["run", "pipeline.kdl"]).success();
    assert!(
        ran.stderr.contains("3 ran, 0 cached, 0 failed"),
        "{}",
        ran.stderr
    );
}

#[test]
fn a_non_finite_feature_is_reported_with_its_file_row_and_column() {
    let t = imported();
    write(
        &t,
        "x.npy",
        &f32_npy(40, 3, |r, c| if (r, c) == (17, 2) { f32::NAN } else { 0.5 }),
    );
    let stderr = fails(&t);
    assert!(
        stderr.contains("`x.npy` has a non-finite value (NaN) at row 17, column 2"),
        "{stderr}"
    );
    write(&t, "x.npy", &f32_npy(40, 3, |_, _| 0.5));
    write(
        &t,
        "tx.npy",
        &f32_npy(8, 3, |r, _| if r == 5 { f32::NEG_INFINITY } else { 0.5 }),
    );
    let stderr = fails(&t);
    assert!(
        stderr.contains("`tx.npy` has a non-finite value (-inf) at row 5, column 0"),
        "{stderr}"
    );
}

#[test]
fn an_absurd_label_fails_at_once_naming_its_row() {
    let t = imported();
    let mut labels: Vec<i64> = (0..40).map(|i| i % 4).collect();
    labels[23] = 1_000_000_000;
    write(&t, "y.npy", &labels_npy(&labels));
    let start = std::time::Instant::now();
    let stderr = fails(&t);
    assert!(
        stderr.contains("`y.npy` has label 1000000000 at row 23"),
        "{stderr}"
    );
    assert!(stderr.contains("at most 100000"), "{stderr}");
    // Not a correctness threshold: before, this built a billion-class dataset for ~53 s.
    assert!(start.elapsed().as_secs() < 30, "{:?}", start.elapsed());
    labels[23] = -3;
    write(&t, "y.npy", &labels_npy(&labels));
    let stderr = fails(&t);
    assert!(stderr.contains("label -3 is not a class index"), "{stderr}");
}

#[test]
fn labels_with_gaps_and_test_classes_missing_from_train_are_named() {
    let t = imported();
    // Classes 0, 1, 3 and 5: 2 and 4 have no training sample.
    let gaps: Vec<i64> = (0..40).map(|i| [0, 1, 3, 5][i % 4]).collect();
    write(&t, "y.npy", &labels_npy(&gaps));
    let stderr = fails(&t);
    assert!(
        stderr.contains("`y.npy` has no training sample of classes 2, 4"),
        "{stderr}"
    );
    assert!(stderr.contains("numpy.unique"), "{stderr}");
    let train: Vec<i64> = (0..40).map(|i| i % 4).collect();
    write(&t, "y.npy", &labels_npy(&train));
    write(&t, "ty.npy", &labels_npy(&[0, 1, 2, 3, 0, 1, 7, 3]));
    let stderr = fails(&t);
    assert!(
        stderr.contains(
            "`ty.npy` has label 7 at row 6, but the training split only has classes 0..3"
        ),
        "{stderr}"
    );
}

#[test]
fn empty_splits_and_directories_are_named() {
    let t = imported();
    write(&t, "x.npy", &f32_npy(0, 3, |_, _| 0.0));
    write(&t, "y.npy", &labels_npy(&[]));
    let stderr = fails(&t);
    assert!(
        stderr.contains("`x.npy` has no rows: a split needs at least one sample"),
        "{stderr}"
    );
    let t = imported();
    std::fs::remove_file(t.path("tx.npy")).unwrap();
    std::fs::create_dir(t.path("tx.npy")).unwrap();
    let stderr = fails(&t);
    assert!(stderr.contains("tx.npy"), "{stderr}");
    assert!(stderr.contains("it is a directory"), "{stderr}");
    assert!(!stderr.contains("os error 19"), "{stderr}");
}

/// IDX files as MNIST ships them (uncompressed), `h×w` images.
fn idx(labels: &[u8], h: u32, w: u32) -> (Vec<u8>, Vec<u8>) {
    let n = labels.len() as u32;
    let mut images = Vec::new();
    for v in [2051u32, n, h, w] {
        images.extend_from_slice(&v.to_be_bytes());
    }
    for (i, &l) in labels.iter().enumerate() {
        images.extend((0..h * w).map(|p| ((p as usize + i + l as usize * 7) % 251) as u8));
    }
    let mut lab = Vec::new();
    for v in [2049u32, n] {
        lab.extend_from_slice(&v.to_be_bytes());
    }
    lab.extend_from_slice(labels);
    (images, lab)
}

#[test]
fn a_real_format_source_whose_classes_differ_in_size_builds_its_long_tail() {
    // Like real MNIST: class 0 is not the largest class.
    let sizes = [59usize, 67, 59, 61, 58, 54, 59, 62, 58, 59];
    let train: Vec<u8> = sizes
        .iter()
        .enumerate()
        .flat_map(|(c, &n)| std::iter::repeat_n(c as u8, n))
        .collect();
    let test: Vec<u8> = (0..50).map(|i| (i % 10) as u8).collect();
    let t = Test::new().pipeline(
        r#"lortflow 1
dataset "d" { source "mnist" root="mnist"; long-tail "exp" imbalance-ratio=10; groups many=40 few=10 }
backbone "b" { data "d"; arch "small-cnn"; train epochs=1 }
features "f" { backbone "b" }
head "ce" { features "f" }
evaluate "t" { heads "*" }
"#,
    );
    std::fs::create_dir(t.path("mnist")).unwrap();
    let (images, labels) = idx(&train, 28, 28);
    write(&t, "mnist/train-images-idx3-ubyte", &images);
    write(&t, "mnist/train-labels-idx1-ubyte", &labels);
    let (images, labels) = idx(&test, 28, 28);
    write(&t, "mnist/t10k-images-idx3-ubyte", &images);
    write(&t, "mnist/t10k-labels-idx1-ubyte", &labels);
    let ran = t.args_run(["run", "pipeline.kdl", "--only", "d"]).success();
    assert!(ran.stderr.contains("1 ran"), "{}", ran.stderr);
    let inspect = t.args_run(["inspect", "pipeline.kdl", "d"]).success();
    // The head count is all of class 0 (59), the most rank 0 can have.
    let first = inspect
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("0 "))
        .unwrap_or_else(|| panic!("{}", inspect.stdout));
    assert!(first.contains(" 59 "), "{}", inspect.stdout);
    // An explicit head count no class can fill names the one that works.
    let edited = std::fs::read_to_string(t.path("pipeline.kdl"))
        .unwrap()
        .replace("imbalance-ratio=10", "imbalance-ratio=10 max-per-class=67");
    let t = t.file("pipeline.kdl", &edited);
    let ran = t.args_run(["run", "pipeline.kdl", "--only", "d"]).code(1);
    assert!(
        ran.stderr
            .contains("every class can fill n_max = 59 (`max-per-class`)"),
        "{}",
        ran.stderr
    );
}

#[test]
fn lint_survives_the_files_that_once_crashed_it() {
    let deep = format!(
        "lortflow 1\n{}{}",
        "head \"h\" {\n".repeat(2000),
        "}\n".repeat(2000)
    );
    let long = format!(
        "lortflow 1\ndataset \"{}\" {{ source \"no-such-source\" }}\n",
        "x".repeat(200_000)
    );
    for (text, code) in [
        (deep, "lortflow::too-deep"),
        (long, "lortflow::unknown-value"),
    ] {
        let t = Test::new().pipeline(&text);
        let ran = t.args_run(["lint", "pipeline.kdl"]).code(1);
        assert!(
            ran.stderr.contains(code),
            "{}",
            &ran.stderr[..ran.stderr.len().min(2000)]
        );
        let longest = ran
            .stderr
            .lines()
            .map(|l| l.chars().count())
            .max()
            .unwrap_or(0);
        assert!(longest < 400, "a {longest}-character line");
    }
}

/// A mistyped `LORTFLOW_CPU_LEVEL` stops every command before any work, naming the variable, the
/// levels and what this CPU has; a valid one caps the kernels (the heads' matrix products here)
/// and the `-v` log says so.
#[test]
fn an_unknown_cpu_level_is_a_clear_error_and_a_known_one_is_logged() {
    let t = Test::new()
        .pipeline(crate::cli::VECTORS)
        .env("LORTFLOW_CPU_LEVEL", "avx-512");
    let ran = t.args_run(["lint", "pipeline.kdl"]).code(2);
    assert!(
        ran.stderr.starts_with(
            "error: LORTFLOW_CPU_LEVEL=\"avx-512\" is not an instruction-set level: use `scalar`, \
             `avx2` or `avx512`, or unset it for the best this CPU has ("
        ),
        "{}",
        ran.stderr
    );
    let t = Test::new()
        .pipeline(crate::cli::VECTORS)
        .env("LORTFLOW_CPU_LEVEL", "scalar");
    let ran = t.args_run(["-v", "run", "pipeline.kdl"]).success();
    assert!(
        ran.stderr
            .contains("CPU kernels: scalar (LORTFLOW_CPU_LEVEL=scalar"),
        "{}",
        ran.stderr
    );
}
