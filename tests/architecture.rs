//! The invariants of ARCHITECTURE.md, checked: which crate may depend on what (through the
//! resolved dependency graph, so a transitive dependency counts too), that the runtime never
//! names Burn, and that every source file says what it is for in its first line.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use crate::cli::repo;

/// The normal and build dependencies of `package` on this platform, transitively, by crate
/// name (`cargo tree`, which reads `Cargo.lock` and needs no network).
fn dependencies_of(package: &str) -> BTreeSet<String> {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "--locked",
            "-p",
            package,
            "-e",
            "normal,build",
            "--prefix",
            "none",
            "-f",
            "{p}",
        ])
        .current_dir(repo())
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deps: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert!(deps.contains("serde"), "{package}: {deps:?}");
    deps
}

#[track_caller]
fn assert_free_of(package: &str, forbidden: &[&str]) {
    let deps = dependencies_of(package);
    let found: Vec<&String> = deps
        .iter()
        .filter(|d| {
            forbidden
                .iter()
                .any(|f| d.as_str() == *f || (f.ends_with('*') && d.starts_with(&f[..f.len() - 1])))
        })
        .collect();
    assert!(found.is_empty(), "{package} depends on {found:?}");
}

#[test]
fn lang_depends_on_neither_burn_nor_notify_nor_the_runtime() {
    assert_free_of(
        "lortflow-lang",
        &[
            "burn*",
            "cubecl*",
            "notify",
            "lortflow-runtime",
            "lortflow-stdlib",
        ],
    );
}

#[test]
fn the_runtime_does_not_depend_on_burn() {
    assert_free_of("lortflow-runtime", &["burn*", "cubecl*", "lortflow-stdlib"]);
}

/// The `.rs` files under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_runtime_never_names_burn() {
    let mut files = Vec::new();
    rust_files(&repo().join("runtime"), &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            !text.contains("burn::") && !text.contains("use burn"),
            "{} names Burn",
            file.display()
        );
    }
}

#[test]
fn every_source_file_opens_with_a_module_doc() {
    let mut files = Vec::new();
    for dir in ["src", "lang", "runtime", "stdlib", "tests", "examples"] {
        rust_files(&repo().join(dir), &mut files);
    }
    assert!(files.len() > 50, "found only {} files", files.len());
    let undocumented: Vec<String> = files
        .iter()
        .filter(|f| !f.components().any(|c| c.as_os_str() == "target"))
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            !text.starts_with("//!")
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        undocumented.is_empty(),
        "files without a `//!` first line saying what they are for: {undocumented:?}"
    );
}
