//! The `castream` binary's error paths, as a user meets them.

use std::path::Path;
use std::process::Command;

fn repository() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs the binary in `dir` (the project root it works on).
fn castream_in(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_castream")).args(args).current_dir(dir).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

fn castream(args: &[&str]) -> (bool, String) {
    castream_in(&repository(), args)
}

/// A root holding the real table3 spec but no shipped backbones: table3 is pending there.
#[test]
fn a_pending_target_says_what_it_needs_and_fails() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("experiments")).unwrap();
    std::fs::copy(repository().join("experiments/table3.toml"), root.path().join("experiments/table3.toml")).unwrap();
    let results = root.path().join("results");
    let (ok, text) = castream_in(root.path(), &["reproduce", "table3", "--results", results.to_str().unwrap()]);
    assert!(!ok);
    assert!(text.contains("table3: not yet available: needs"), "{text}");
    // The profile folder may exist; nothing may be inside it, not even a staging folder.
    let quick = results.join("quick");
    let written = if quick.exists() { std::fs::read_dir(&quick).unwrap().count() } else { 0 };
    assert_eq!(written, 0, "a pending target wrote something");
}

#[test]
fn an_unknown_spec_lists_the_available_ones() {
    let (ok, text) = castream(&["reproduce", "tabel1"]);
    assert!(!ok);
    assert!(text.contains("tabel1.toml") && text.contains("table1") && text.contains("data-card"), "{text}");
}

#[test]
fn an_unknown_profile_is_rejected_by_the_parser() {
    let (ok, text) = castream(&["reproduce", "data-card", "--profile", "fast"]);
    assert!(!ok);
    assert!(text.contains("unknown profile `fast`"), "{text}");
}

#[test]
fn list_shows_every_spec_with_its_profiles() {
    let (ok, text) = castream(&["list"]);
    assert!(ok, "{text}");
    for name in ["data-card", "table1", "table6", "figure4"] {
        assert!(text.contains(name), "{name} missing from: {text}");
    }
    assert!(text.contains("Saliency grid") && text.contains("profiles: quick, paper"), "{text}");
}

#[test]
fn the_paper_profile_names_the_missing_imagenet_folder() {
    let results = tempfile::tempdir().unwrap();
    let (ok, text) =
        castream(&["reproduce", "data-card", "--profile", "paper", "--results", results.path().to_str().unwrap()]);
    assert!(!ok);
    assert!(text.contains("experiments/data-card.toml") && text.contains("/data/imagenet/val"), "{text}");
    assert!(text.contains("Fix:"), "{text}");
}

#[test]
fn explain_rejects_bad_flags_before_loading_anything() {
    let (ok, text) = castream(&["explain", "--scenes", "0..2", "--method", "raw-attention"]);
    assert!(!ok);
    assert!(
        text.contains("--method raw-attention") && text.contains("--pooling ca") && text.contains("Fix:"),
        "{text}"
    );
    let (ok, text) = castream(&["explain", "--scenes", "0..2", "--method", "gradcam"]);
    assert!(!ok);
    assert!(text.contains("--method") && text.contains("grad-cam, "), "{text}");
    let (ok, text) = castream(&["explain", "--image", "no/such/picture.png"]);
    assert!(!ok);
    assert!(text.contains("--image no/such/picture.png") && text.contains("Fix:"), "{text}");
    let (ok, text) = castream(&["explain"]);
    assert!(!ok);
    assert!(text.contains("--image") && text.contains("--scenes"), "{text}");
}

/// docs/specs.md's user-written experiment (experiments/examples/stage3-cams.toml): Layer-CAM and
/// XGrad-CAM at stage 3 of both shipped backbones, run through the binary in a root holding the
/// shipped checkpoints, with a small stream so that it trains in seconds.
#[test]
fn a_user_written_experiment_runs_from_the_cli() {
    let root = tempfile::tempdir().unwrap();
    let checkpoints = root.path().join("checkpoints/quick");
    std::fs::create_dir_all(&checkpoints).unwrap();
    for entry in std::fs::read_dir(repository().join("checkpoints/quick")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), checkpoints.join(entry.file_name())).unwrap();
    }
    let experiments = root.path().join("experiments");
    std::fs::create_dir(&experiments).unwrap();
    let spec = std::fs::read_to_string(repository().join("experiments/examples/stage3-cams.toml")).unwrap();
    let stream = "[quick.stream]\ntrain_images = 64\nval_images = 16\ntrain = { epochs = 1, batch_size = 32, seed = 0, \
                  optimizer = { kind = \"adam-w\", lr = 1e-2, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0 }, \
                  schedule = { kind = \"constant\" } }\n";
    std::fs::write(experiments.join("stage3-cams.toml"), spec + stream).unwrap();
    let (ok, text) = castream_in(root.path(), &["reproduce", "stage3-cams", "--images", "6"]);
    assert!(ok, "{text}");
    let dir = root.path().join("results/quick/stage3-cams");
    let csv = std::fs::read_to_string(dir.join("stage3-cams.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    // Two backbones x two methods x two poolings.
    assert_eq!(rows.len(), 8, "{csv}");
    for (backbone, method) in [("resnet18", "Layer-CAM"), ("convnext", "XGrad-CAM")] {
        assert!(rows.iter().any(|r| r.starts_with(&format!("{backbone},{method},CA,"))), "{csv}");
    }
    let md = std::fs::read_to_string(dir.join("stage3-cams.md")).unwrap();
    assert!(md.contains("maps of F_3") && md.contains("6 images per cell"), "{md}");
    assert!(dir.join("stage3-cams_ca_vs_gap.csv").is_file() && dir.join("run.json").is_file());
}

/// A bad list entry is refused before any work, naming the file, the line, the key and the valid values.
#[test]
fn a_bad_spec_entry_is_refused_with_file_line_key_and_valid_values() {
    let root = tempfile::tempdir().unwrap();
    let experiments = root.path().join("experiments");
    std::fs::create_dir(&experiments).unwrap();
    let spec = std::fs::read_to_string(repository().join("experiments/examples/stage3-cams.toml")).unwrap();
    let cases = [
        (spec.replace("\"layer-cam\"", "\"layer-kam\""), "unknown CAM method `layer-kam`: choose one of cam, grad-cam"),
        (
            spec.replace("[\"gap\", \"ca\"]", "[\"ca\"]").replace("\"layer-cam\"", "\"cam\""),
            "applies to none of poolings",
        ),
        (spec.replace("layer = 3", "layer = 7"), "layer = 7: not a stage; valid: 1, 2, 3 or 4"),
    ];
    for (to, expected) in cases {
        std::fs::write(experiments.join("stage3-cams.toml"), &to).unwrap();
        let (ok, text) = castream_in(root.path(), &["reproduce", "stage3-cams"]);
        assert!(!ok, "{to}: {text}");
        assert!(text.contains("experiments/stage3-cams.toml") && text.contains(expected), "{to}: {text}");
        assert!(text.contains("line") || text.contains(".toml:"), "no line in: {text}");
        assert!(!root.path().join("results").exists(), "{to}: wrote results");
    }
}
