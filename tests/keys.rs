//! The cache keys of every shipped pipeline, as a snapshot: a refactor that changes a key by
//! accident (a renamed enum variant, a field serialised differently) re-trains every user's
//! backbones, so a key may only change on purpose, with the snapshot updated in the same commit
//! and the change said in its notes. Keys are computed by `status` against an empty store.
//! Pipelines whose data is not in the repository run on a copy with empty placeholder files,
//! so that every stage has a key.

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
    // The pipelines whose data no machine here has, on placeholders (empty files digest the
    // same everywhere).
    let placeholders: [(&str, &[&str], &[&str]); 2] = [
        (
            "imagenet-lt.kdl",
            &["data/imagenet"],
            &[
                "data/ImageNet_LT/ImageNet_LT_train.txt",
                "data/ImageNet_LT/ImageNet_LT_test.txt",
            ],
        ),
        (
            "inat.kdl",
            &[],
            &["data/inat2018/train2018.json", "data/inat2018/val2018.json"],
        ),
    ];
    for (pipeline, dirs, files) in placeholders {
        let copy = Test::new();
        for dir in dirs {
            std::fs::create_dir_all(copy.path(dir)).unwrap();
        }
        for file in files {
            std::fs::create_dir_all(copy.path(file).parent().unwrap()).unwrap();
            std::fs::write(copy.path(file), b"").unwrap();
        }
        let text = std::fs::read_to_string(repo().join("pipelines").join(pipeline)).unwrap();
        let copy = copy.file(&format!("pipelines/{pipeline}"), &text);
        let ran = copy
            .args_run([
                "status",
                "--format",
                "json",
                &format!("pipelines/{pipeline}"),
            ])
            .success();
        let v: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
        out.push_str(&format!("{pipeline} (placeholder data)\n"));
        for s in v["stages"].as_array().unwrap() {
            out.push_str(&format!(
                "  {} {}\n",
                s["key"]
                    .as_str()
                    .expect("every stage has a key on placeholders"),
                s["name"].as_str().unwrap()
            ));
        }
    }
    insta::assert_snapshot!(out);
}
