//! The invariants of ARCHITECTURE.md, checked: which crate may depend on what (through the
//! resolved dependency graph, so a transitive dependency counts too), that the runtime never
//! names Burn, that only the stage executors read the language's IR, that the modules of a
//! directory import each other one way, and that every source file says what it is for in its
//! first line.

use std::collections::{BTreeMap, BTreeSet};
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
    // Every crate has some dependency: an empty set means the output was not parsed.
    assert!(
        !deps.is_empty(),
        "{package}: no dependencies read from `cargo tree`"
    );
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

/// The data layer and the reports build and test without Burn (`cargo test -p lortflow-data`)
/// and never see the language.
#[test]
fn the_data_and_report_crates_depend_on_neither_burn_nor_the_language() {
    let others = [
        "burn*",
        "cubecl*",
        "lortflow-lang",
        "lortflow-runtime",
        "lortflow-stdlib",
    ];
    assert_free_of(
        "lortflow-data",
        &[&others[..], &["lortflow-report"]].concat(),
    );
    assert_free_of("lortflow-report", &others);
}

/// The processes of a data-parallel run talk through plain sockets: the collective crate builds
/// and tests in seconds, without Burn, the data layer or the language.
#[test]
fn the_collective_crate_depends_on_no_other_part_of_lortflow() {
    assert_free_of(
        "lortflow-collective",
        &[
            "burn*",
            "cubecl*",
            "lortflow-lang",
            "lortflow-runtime",
            "lortflow-stdlib",
            "lortflow-data",
            "lortflow-report",
        ],
    );
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

/// In the Burn crate, only the stage executors (`stdlib/src/stages/`) turn the IR into the
/// libraries' configurations; the libraries, their examples and tests never name it.
#[test]
fn only_the_stage_executors_name_the_language() {
    let stdlib = repo().join("stdlib");
    let mut files = Vec::new();
    for dir in ["src", "examples", "tests", "data", "report"] {
        rust_files(&stdlib.join(dir), &mut files);
    }
    let stages = stdlib.join("src/stages");
    let naming: Vec<String> = files
        .iter()
        .filter(|f| !f.starts_with(&stages))
        .filter(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .contains("lortflow_lang")
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(files.len() > 40, "found only {} files", files.len());
    assert!(
        naming.is_empty(),
        "these files name `lortflow_lang`; convert in `stdlib/src/stages/convert/` instead: {naming:?}"
    );
}

/// The sibling modules a module's code (not its comments or its `#[cfg(test)]` part) imports:
/// `super::x` and `crate::<parent path>::x` where `x` is a module of the same directory.
fn sibling_imports(text: &str, parent: &str, siblings: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let crate_prefix = if parent.is_empty() {
        "crate::".to_string()
    } else {
        format!("crate::{parent}::")
    };
    let mut test_only = false;
    for line in text.lines() {
        let code = line.trim_start();
        if code.is_empty() || code.starts_with("//") {
            continue;
        }
        if code.starts_with("#[cfg(test)]") {
            test_only = true;
            continue;
        }
        if std::mem::take(&mut test_only) {
            // A `#[cfg(test)]` module ends what the module's code imports; a test-only item
            // (an import, a helper) is skipped.
            if code.starts_with("mod ") || code.starts_with("pub(crate) mod ") {
                break;
            }
            continue;
        }
        for prefix in ["super::", crate_prefix.as_str()] {
            let mut rest = code;
            while let Some(at) = rest.find(prefix) {
                let after = &rest[at + prefix.len()..];
                let name: String = after
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                // `super::{a, b}`: every name in the braces.
                if after.starts_with('{') {
                    let group = &after[1..after.find('}').unwrap_or(after.len())];
                    for item in group.split(',') {
                        let item = item.trim().split("::").next().unwrap_or("");
                        if siblings.contains(item) {
                            found.insert(item.to_string());
                        }
                    }
                } else if siblings.contains(&name) {
                    found.insert(name);
                }
                rest = after;
            }
        }
    }
    found
}

/// A cycle in `edges`, as the list of its nodes, if there is one.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|node| visit(node, edges, &mut Vec::new(), &mut done))
}

/// The module directories under `src` with their module path (`head`, `backbone/torch_file`…).
fn module_dirs(src: &Path, parent: &str, out: &mut Vec<(std::path::PathBuf, String)>) {
    out.push((src.to_path_buf(), parent.to_string()));
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() && path.join("mod.rs").is_file() {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let child = if parent.is_empty() {
                name
            } else {
                format!("{parent}::{name}")
            };
            module_dirs(&path, &child, out);
        }
    }
}

/// Within each directory of every crate, the modules import each other one way: a newcomer can
/// read them bottom up, and a change to one never has to go round a circle.
#[test]
fn the_modules_of_a_directory_import_each_other_one_way() {
    let crates = [
        "lang/src",
        "runtime/src",
        "stdlib/src",
        "stdlib/data/src",
        "stdlib/report/src",
        "src",
    ];
    let mut checked = 0;
    let mut cycles = Vec::new();
    for krate in crates {
        let mut dirs = Vec::new();
        module_dirs(&repo().join(krate), "", &mut dirs);
        for (dir, parent) in dirs {
            let mut modules = BTreeMap::new();
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_stem().unwrap().to_string_lossy().to_string();
                let file = if path.is_dir() {
                    path.join("mod.rs")
                } else if path.extension().is_some_and(|e| e == "rs") {
                    path.clone()
                } else {
                    continue;
                };
                // The parent (`mod.rs`, `lib.rs`) re-exports its children; `tests` modules read
                // everything.
                if ["mod", "lib", "main", "tests"].contains(&name.as_str()) || !file.is_file() {
                    continue;
                }
                modules.insert(name, file);
            }
            let siblings: BTreeSet<String> = modules.keys().cloned().collect();
            let edges: BTreeMap<String, BTreeSet<String>> = modules
                .iter()
                .map(|(name, file)| {
                    let text = std::fs::read_to_string(file).unwrap();
                    let mut uses = sibling_imports(&text, &parent, &siblings);
                    uses.remove(name);
                    (name.clone(), uses)
                })
                .collect();
            checked += edges.len();
            if let Some(cycle) = find_cycle(&edges) {
                cycles.push(format!("{krate}/{parent}: {}", cycle.join(" -> ")));
            }
        }
    }
    assert!(checked > 100, "checked only {checked} modules");
    assert!(
        cycles.is_empty(),
        "modules that import each other: {cycles:#?}"
    );
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
