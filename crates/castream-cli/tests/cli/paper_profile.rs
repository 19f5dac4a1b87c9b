//! The paper profile end to end on the miniature ImageNet (`castream paper-fixture`), through the
//! binary as a user runs it: every target pending with what it needs, `train-stream` for every
//! stream the specs name, then every paper-profile target on 16 images; a trained stream in
//! `explain`, and a stream refused on other backbone weights.

use std::path::Path;
use std::process::Command;

use crate::common::{castream_offline, repository};

fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_castream"))
        .args(["paper-fixture", dir.path().to_str().unwrap()])
        .current_dir(repository())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    dir
}

const TARGETS: [&str; 11] = [
    "data-card",
    "figure1",
    "figure2",
    "figure3",
    "figure4",
    "table1",
    "table2",
    "table3",
    "table4",
    "table5",
    "table6",
];

fn recipes(dir: &Path) -> Vec<String> {
    let mut r: Vec<String> = std::fs::read_dir(dir.join("experiments/streams"))
        .unwrap()
        .map(|e| format!("experiments/streams/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    r.sort();
    r
}

/// Every number of a CSV's numeric columns, by column name.
fn numbers(csv: &Path) -> Vec<(String, f64)> {
    let text = std::fs::read_to_string(csv).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines
        .flat_map(|l| l.split(',').map(str::to_string).collect::<Vec<_>>().into_iter().zip(header.clone()))
        .filter_map(|(v, h)| v.parse::<f64>().ok().map(|v| (h.to_string(), v)))
        .collect()
}

#[test]
fn every_paper_target_runs_on_the_miniature_imagenet() {
    let dir = fixture();
    let root = dir.path();

    let (ok, text) = castream_offline(root, &["reproduce", "all", "--profile", "paper"]);
    assert!(!ok, "targets without their streams must fail: {text}");
    for target in &TARGETS[1..] {
        let line =
            text.lines().find(|l| l.starts_with(target)).unwrap_or_else(|| panic!("no line for {target}: {text}"));
        assert!(line.contains("pending") && line.contains("train-stream experiments/streams/"), "{line}");
    }

    // An experiment of GAP networks only needs no stream.
    let table2 = std::fs::read_to_string(root.join("experiments/table2.toml")).unwrap();
    let gap_only = table2.replace("name = \"table2\"", "name = \"gap-only\"").replace("\"gap\", \"ca\"", "\"gap\"");
    assert_ne!(gap_only, table2);
    std::fs::write(root.join("experiments/gap-only.toml"), gap_only).unwrap();
    let (ok, text) = castream_offline(root, &["reproduce", "gap-only", "--profile", "paper"]);
    assert!(ok, "{text}");
    let run = std::fs::read_to_string(root.join("results/paper/gap-only/run.json")).unwrap();
    assert!(run.contains("\"untrained\""), "{run}");
    std::fs::remove_file(root.join("experiments/gap-only.toml")).unwrap();

    // With only its own stream trained, table2 runs: the other listed streams are not its business.
    let (ok, text) = castream_offline(root, &["train-stream", "experiments/streams/resnet.toml"]);
    assert!(ok && text.contains("validation top-1"), "{text}");
    let (ok, text) = castream_offline(root, &["reproduce", "table2", "--profile", "paper"]);
    assert!(ok, "{text}");
    for recipe in recipes(root).into_iter().filter(|r| !r.ends_with("/resnet.toml")) {
        let (ok, text) = castream_offline(root, &["train-stream", &recipe]);
        assert!(ok, "{recipe}: {text}");
        assert!(text.contains("validation top-1"), "{text}");
    }
    let (ok, text) = castream_offline(root, &["reproduce", "all", "--profile", "paper"]);
    assert!(ok, "{text}");
    for target in TARGETS {
        let out = root.join("results/paper").join(target);
        let run: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
        for file in run["outputs"].as_array().unwrap() {
            assert!(out.join(file["file"].as_str().unwrap()).is_file(), "{target}: {file} missing");
        }
        if target != "data-card" && target != "figure1" {
            assert!(run["image_list_sha256"].is_string(), "{target}: no image list recorded");
        }
        let weights = run["weights"].as_object().unwrap();
        assert!(target == "data-card" || weights.keys().any(|k| k.contains("stream")), "{target}: {weights:?}");
    }
    for (table, paper_columns) in
        [("table1", true), ("table2", true), ("table3", true), ("table5", false), ("table6", false)]
    {
        let values = numbers(&root.join("results/paper").join(table).join(format!("{table}.csv")));
        assert!(!values.is_empty(), "{table}: no numbers");
        for (column, v) in &values {
            assert!(v.is_finite(), "{table}: {column} = {v}");
        }
        let filled = values.iter().filter(|(c, _)| c.ends_with("_paper")).count();
        assert_eq!(filled > 0, paper_columns, "{table}: paper columns filled {filled}");
    }
    // 16 images per interpretability cell, sampled from the 60 of the list.
    let table2 = std::fs::read_to_string(root.join("results/paper/table2/table2.md")).unwrap();
    assert!(table2.contains("16 of the 60"), "{table2}");

    // Two shards of the sampled image files merge into the unsharded bytes.
    let flags = ["--profile", "paper", "--batch-size", "8"];
    let (ok, text) = castream_offline(root, &[&["reproduce", "table2", "--results", "whole"], &flags[..]].concat());
    assert!(ok, "{text}");
    for k in ["1/2", "2/2"] {
        let (ok, text) = castream_offline(root, &[&["reproduce", "table2", "--shard", k], &flags[..]].concat());
        assert!(ok, "{text}");
    }
    let (ok, text) = castream_offline(root, &[&["merge", "table2", "--results", "merged"], &flags[..]].concat());
    assert!(ok, "{text}");
    let (whole, merged) = (root.join("whole/paper/table2@batch_size=8"), root.join("merged/paper/table2@batch_size=8"));
    let mut compared = 0;
    for entry in std::fs::read_dir(&whole).unwrap() {
        let name = entry.unwrap().file_name();
        if name != "run.json" {
            assert!(
                std::fs::read(whole.join(&name)).unwrap() == std::fs::read(merged.join(&name)).unwrap(),
                "{name:?} differs"
            );
            compared += 1;
        }
    }
    assert!(compared >= 10, "{compared} files");

    // Inputs normalised otherwise than the stream learnt on are refused.
    let spec = std::fs::read_to_string(root.join("experiments/table2.toml")).unwrap();
    let other = spec.replace("name = \"table2\"", "name = \"renormalised\"").replacen(
        "[paper]\n",
        "[paper]\nnormalisation = { mean = [0.5, 0.5, 0.5], std = [0.5, 0.5, 0.5] }\n",
        1,
    );
    std::fs::write(root.join("experiments/renormalised.toml"), other).unwrap();
    let (ok, text) = castream_offline(root, &["reproduce", "renormalised", "--profile", "paper"]);
    assert!(!ok && text.contains("normalisation") && text.contains("was trained with"), "{text}");
    std::fs::remove_file(root.join("experiments/renormalised.toml")).unwrap();

    // A trained stream explains an image with the backbone its card names.
    let image = root.join("data/val/ILSVRC2012_val_00000001.JPEG");
    let (ok, text) = castream_offline(
        root,
        &[
            "explain",
            "--image",
            image.to_str().unwrap(),
            "--stream",
            "streams/resnet.safetensors",
            "--pooling",
            "gap,ca",
            "--out",
            "explained",
        ],
    );
    assert!(ok, "{text}");
    assert!(std::fs::read_dir(root.join("explained")).unwrap().count() >= 2, "{text}");

    // The ConvNeXt's stream on the ResNet's weights: the card's backbone hash is checked.
    let card = root.join("streams/convnext.safetensors.json");
    let resnet: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("streams/resnet.safetensors.json")).unwrap()).unwrap();
    let mut text: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&card).unwrap()).unwrap();
    let theirs = text["backbone_sha256"].as_str().unwrap().to_string();
    text["backbone_sha256"] = resnet["backbone_sha256"].clone();
    std::fs::write(&card, serde_json::to_string(&text).unwrap()).unwrap();
    let (ok, out) = castream_offline(
        root,
        &["explain", "--image", image.to_str().unwrap(), "--stream", "streams/convnext.safetensors", "--pooling", "ca"],
    );
    assert!(!ok);
    assert!(out.contains(&theirs) && out.contains(resnet["backbone_sha256"].as_str().unwrap()), "{out}");
}

/// `--resume` after the first epoch ends with the bytes of an uninterrupted two-epoch run.
#[test]
fn an_interrupted_stream_training_resumes_bit_identically() {
    let dir = fixture();
    let root = dir.path();
    let recipe = root.join("experiments/streams/resnet-last.toml");
    // Two epochs of 25 small steps: the second takes long enough to be interrupted.
    let two_epochs = std::fs::read_to_string(&recipe)
        .unwrap()
        .replace("epochs = 1", "epochs = 2")
        .replace("batch_size = 32", "batch_size = 8");
    std::fs::write(&recipe, &two_epochs).unwrap();
    let (ok, text) = castream_offline(root, &["train-stream", "experiments/streams/resnet-last.toml"]);
    assert!(ok, "{text}");
    let full = std::fs::read(root.join("streams/resnet-last.safetensors")).unwrap();

    // Kill a second run as soon as its first epoch checkpoint exists, then resume it. On a loaded
    // machine the run may get past its second epoch before the kill lands: then try again.
    let mut resumed = None;
    for _ in 0..5 {
        std::fs::remove_dir_all(root.join("target/castream/stream-runs")).ok();
        std::fs::remove_file(root.join("streams/resnet-last.safetensors")).ok();
        let mut child = Command::new(env!("CARGO_BIN_EXE_castream"))
            .args(["train-stream", "experiments/streams/resnet-last.toml"])
            .current_dir(root)
            .env("HF_HUB_CACHE", root.join("hf-cache"))
            .env("HF_HUB_OFFLINE", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let checkpoint = || {
            std::fs::read_dir(root.join("target/castream/stream-runs"))
                .ok()
                .and_then(|mut d| d.next())
                .map(|e| e.unwrap().path().join("last.safetensors"))
                .filter(|p| p.exists())
        };
        while checkpoint().is_none() && child.try_wait().unwrap().is_none() {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        child.kill().ok();
        child.wait().unwrap();
        let (ok, text) = castream_offline(root, &["train-stream", "experiments/streams/resnet-last.toml", "--resume"]);
        assert!(ok, "{text}");
        if text.contains("epoch 2:") && !text.contains("epoch 1:") {
            resumed = Some(text);
            break;
        }
    }
    let text = resumed.expect("in five tries, no run was interrupted between its two epochs");
    assert_eq!(std::fs::read(root.join("streams/resnet-last.safetensors")).unwrap(), full, "{text}");
}
