//! The cache keys of every shipped pipeline, as a snapshot: a refactor that changes a key by
//! accident (a renamed enum variant, a field serialised differently) re-trains every user's
//! backbones, so a key may only change on purpose, with the snapshot updated in the same commit
//! and the change said in its notes. Keys are computed by `status` against an empty store;
//! stages whose files are not on this machine are blocked and have none.

use crate::cli::{Test, repo};

#[test]
fn shipped_pipelines_keep_their_cache_keys() {
    let t = Test::new();
    let mut pipelines: Vec<_> = std::fs::read_dir(repo().join("pipelines"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "kdl"))
        .collect();
    pipelines.sort();
    let mut out = String::new();
    for pipeline in pipelines {
        let store = t.path("store");
        let ran = t
            .args_run([
                "status",
                "--format",
                "json",
                "--store",
                store.to_str().unwrap(),
                pipeline.to_str().unwrap(),
            ])
            .success();
        let v: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
        out.push_str(&format!(
            "{}\n",
            pipeline.file_name().unwrap().to_string_lossy()
        ));
        for s in v["stages"].as_array().unwrap() {
            out.push_str(&format!(
                "  {} {}\n",
                s["key"].as_str().unwrap_or("(blocked)"),
                s["name"].as_str().unwrap()
            ));
        }
    }
    insta::assert_snapshot!(out);
}
