//! Sharded runs through the binary: `reproduce --shard K/N` by hand, then `merge`, publish the
//! bytes of the unsharded run; a merge with a missing or mismatched shard publishes nothing.

use std::path::Path;

use crate::common::{castream_in, quick_project, repository, BRIEF_STREAM};

/// A project root with the shipped quick backbones and table2's spec, its stream trained briefly.
fn project() -> tempfile::TempDir {
    let root = quick_project();
    let experiments = root.path().join("experiments");
    for spec in ["table2.toml", "paper-values.toml", "figure1.toml"] {
        std::fs::copy(repository().join("experiments").join(spec), experiments.join(spec)).unwrap();
    }
    let spec = std::fs::read_to_string(experiments.join("table2.toml")).unwrap();
    std::fs::write(experiments.join("table2.toml"), spec + "\n" + BRIEF_STREAM).unwrap();
    root
}

/// Every file of a results folder but run.json, with its bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap() != "run.json")
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    out.sort();
    out
}

const FLAGS: [&str; 6] = ["--images", "24", "--batch-size", "8", "--shard-dir", "shards"];

fn run(root: &Path, args: &[&str]) -> String {
    let (ok, text) = castream_in(root, &[args, &FLAGS[..]].concat());
    assert!(ok, "{args:?}: {text}");
    text
}

#[test]
fn three_shards_by_hand_merge_into_the_unsharded_bytes_and_bad_shards_publish_nothing() {
    let project = project();
    let root = project.path();
    run(root, &["reproduce", "table2", "--results", "whole"]);
    let whole = files(&root.join("whole/quick/table2@images=24,batch_size=8"));
    assert!(whole.iter().any(|(f, _)| f == "table2.csv") && whole.iter().any(|(f, _)| f == "table2_sanity.csv"));

    // 24 images in batches of 8: one batch per shard; shard 2 not run yet.
    for k in ["1/3", "3/3"] {
        let text = run(root, &["reproduce", "table2", "--shard", k]);
        assert!(text.contains(&format!("shard {k} recorded in")), "{text}");
    }
    let published = root.join("results/quick/table2@images=24,batch_size=8");
    let (ok, text) = castream_in(root, &[&["merge", "table2"], &FLAGS[..]].concat());
    assert!(!ok && text.contains("missing shard(s) 2/3") && text.contains("nothing was published"), "{text}");
    assert!(!published.exists(), "a refused merge published {}", published.display());

    run(root, &["reproduce", "table2", "--shard", "2/3"]);
    let text = run(root, &["merge", "table2"]);
    assert!(text.contains("merged its shards into"), "{text}");
    let merged = files(&published);
    assert_eq!(merged.len(), whole.len());
    for ((name, a), (_, b)) in whole.iter().zip(&merged) {
        assert!(a == b, "{name}: the merged file differs from the unsharded run's");
    }
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(published.join("run.json")).unwrap()).unwrap();
    assert_eq!(record["shards"].as_array().map(|s| s.len()), Some(3), "{record}");

    // A record from other code is named; the published results stay as they are.
    let shard3 = root.join("shards/quick/table2@images=24,batch_size=8/shard-3-of-3.json");
    let original = std::fs::read(&shard3).unwrap();
    let mut edited: serde_json::Value = serde_json::from_slice(&original).unwrap();
    edited["commit"] = "0123456789abcdef".into();
    std::fs::write(&shard3, serde_json::to_vec(&edited).unwrap()).unwrap();
    let (ok, text) = castream_in(root, &[&["merge", "table2", "--results", "refused"], &FLAGS[..]].concat());
    assert!(!ok && text.contains("mismatch: shard 3/3") && text.contains("commit 0123456789abcdef"), "{text}");
    assert!(!root.join("refused/quick").join("table2@images=24,batch_size=8").exists());
    // So is one from other weights.
    let mut edited: serde_json::Value = serde_json::from_slice(&original).unwrap();
    let weights = edited["weights"].as_object_mut().unwrap();
    let (name, _) = weights.iter().find(|(k, _)| k.ends_with("backbone")).map(|(k, v)| (k.clone(), v.clone())).unwrap();
    weights.insert(name.clone(), "feedface".into());
    std::fs::write(&shard3, serde_json::to_vec(&edited).unwrap()).unwrap();
    let (ok, text) = castream_in(root, &[&["merge", "table2", "--results", "refused"], &FLAGS[..]].concat());
    assert!(
        !ok && text.contains("mismatch: shard 3/3") && text.contains(&format!("weights `{name}` feedface")),
        "{text}"
    );
    assert!(!root.join("refused/quick").join("table2@images=24,batch_size=8").exists());

    // Rerun, the shard reads its finished cells and writes the same values again.
    run(root, &["reproduce", "table2", "--shard", "3/3"]);
    let again: serde_json::Value = serde_json::from_slice(&std::fs::read(&shard3).unwrap()).unwrap();
    let first: serde_json::Value = serde_json::from_slice(&original).unwrap();
    assert_eq!(again["cells"], first["cells"]);
}

#[test]
fn sharding_is_refused_where_it_does_not_apply() {
    let project = project();
    let root = project.path();
    let (ok, text) = castream_in(root, &["reproduce", "figure1", "--shard", "1/2"]);
    assert!(
        !ok && text.contains("not sharded") && text.contains("interpretability experiments, table1 and table4"),
        "{text}"
    );
    let (ok, text) = castream_in(root, &["reproduce", "all", "--shard", "1/2"]);
    assert!(!ok && text.contains("one spec at a time"), "{text}");
    let (ok, text) = castream_in(root, &["reproduce", "table2", "--shard", "3/2"]);
    assert!(!ok && text.contains("1 ≤ K ≤ N"), "{text}");
    let (ok, text) = castream_in(root, &["merge", "table2", "--images", "8"]);
    assert!(!ok && text.contains("no shard records in") && text.contains("--shard K/N"), "{text}");
    let (ok, text) = castream_in(root, &["slurm", "submit", "table2", "--shards", "4", "--images", "8", "--dry-run"]);
    assert!(ok, "{text}");
    for expected in [
        "#SBATCH --array=1-4",
        "--dependency=afterok:<prepare job id>",
        "--shard \"${SLURM_ARRAY_TASK_ID}/4\"",
        "merge 'table2'",
        "shard-%a-of-4.log",
    ] {
        assert!(text.contains(expected), "{expected}: {text}");
    }
}
