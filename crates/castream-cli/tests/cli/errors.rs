//! The `castream` binary's error paths, as a user meets them.

use std::path::Path;
use std::process::Command;

use sha2::Digest;

use crate::common::{castream_in, quick_project, repository, BRIEF_STREAM};

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
    assert_eq!(written(&results), 0, "a pending target wrote something");
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
    assert!(
        text.contains("Saliency grid") && text.contains("quick: can run") && text.contains("paper: pending"),
        "{text}"
    );
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
    let (ok, text) = castream(&["explain", "--image", "cat.jpg", "--pretrained", "\"resnet18\""]);
    assert!(!ok);
    assert!(text.contains("--pretrained") && text.contains("--backbone") && text.contains("Fix:"), "{text}");
    let (ok, text) = castream(&["explain", "--image", "cat.jpg", "--colour-map", "rainbow"]);
    assert!(!ok);
    assert!(text.contains("--colour-map") && text.contains("jet, viridis, turbo"), "{text}");
}

/// docs/specs.md's user-written experiment (experiments/examples/stage3-cams.toml): Layer-CAM and
/// XGrad-CAM at stage 3 of both shipped backbones, run through the binary in a root holding the
/// shipped checkpoints, with a small stream so that it trains in seconds.
#[test]
fn a_user_written_experiment_runs_from_the_cli() {
    let root = quick_project();
    let experiments = root.path().join("experiments");
    let spec = std::fs::read_to_string(repository().join("experiments/examples/stage3-cams.toml")).unwrap();
    std::fs::write(experiments.join("stage3-cams.toml"), spec + BRIEF_STREAM).unwrap();
    let (ok, text) = castream_in(root.path(), &["reproduce", "stage3-cams", "--images", "6"]);
    assert!(ok, "{text}");
    let dir = root.path().join("results/quick/stage3-cams@images=6");
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

/// A refusal as the user meets it: a failing exit, the expected text, no panic or backtrace.
fn assert_refused(ok: bool, text: &str, expected: &[&str]) {
    assert!(!ok, "accepted: {text}");
    for e in expected {
        assert!(text.contains(e), "missing `{e}` in: {text}");
    }
    assert!(!text.contains("panicked") && !text.contains("backtrace"), "{text}");
}

#[test]
fn explain_refuses_an_input_size_out_of_range() {
    let (ok, text) = castream(&["explain", "--image", "no/such/picture.png", "--size", "20000"]);
    assert_refused(ok, &text, &["--size 20000: out of range; valid: 32 to 1024", "Fix: e.g. --size 224"]);
    let (ok, text) = castream(&["explain", "--image", "no/such/picture.png", "--size", "4"]);
    assert_refused(ok, &text, &["--size 4: out of range; valid: 32 to 1024"]);
}

#[test]
fn explain_refuses_a_scale_out_of_range() {
    let (ok, text) = castream(&["explain", "--image", "no/such/picture.png", "--scale", "1100"]);
    assert_refused(ok, &text, &["--scale 1100: out of range; valid: 1 to 64", "Fix: e.g. --scale 4"]);
    let (ok, text) = castream(&["explain", "--image", "no/such/picture.png", "--channels", "0"]);
    assert_refused(ok, &text, &["--channels 0: out of range; valid: 1 to 8192", "Fix:"]);
}

#[test]
fn reproduce_refuses_zero_images_from_the_command_line() {
    let results = tempfile::tempdir().unwrap();
    let (ok, text) =
        castream(&["reproduce", "data-card", "--images", "0", "--results", results.path().to_str().unwrap()]);
    assert_refused(ok, &text, &["--images 0: out of range; valid: at least 1", "Fix: e.g. --images 8"]);
    assert_eq!(written(results.path()), 0, "wrote results");
}

/// Entries in `<results>/quick`: a refused run leaves none, not even a staging folder.
fn written(results: &Path) -> usize {
    entries(&results.join("quick")).len()
}

/// More images than the test split holds: refused once the data is loaded, before any work, naming
/// `images`, where it was set and the split's size; from `--images` and from the spec.
#[test]
fn reproduce_refuses_more_images_than_the_data_holds() {
    let root = tempfile::tempdir().unwrap();
    let results = root.path().join("results");
    let (ok, text) = castream(&["reproduce", "data-card", "--images", "20000", "--results", results.to_str().unwrap()]);
    assert_refused(
        ok,
        &text,
        &["--images 20000: out of range; valid: 1 to 10000 (the Fashion-MNIST test split has 10000 images)"],
    );
    let experiments = root.path().join("experiments");
    std::fs::create_dir(&experiments).unwrap();
    let spec = std::fs::read_to_string(repository().join("experiments/data-card.toml")).unwrap();
    std::fs::write(experiments.join("data-card.toml"), spec.replace("images = 32", "images = 20000")).unwrap();
    let (ok, text) = castream_in(root.path(), &["reproduce", "data-card"]);
    assert_refused(
        ok,
        &text,
        &[
            "experiments/data-card.toml: [quick] images = 20000: out of range; valid: 1 to 10000",
            "Fix: e.g. images = 10000",
        ],
    );
    assert_eq!(written(&results), 0, "wrote results");
}

/// Spec values the parser accepts and the method cannot use, run through the binary: refused before
/// any work with `file:line: [profile] key = value`, the valid range and a fix.
#[test]
fn reproduce_refuses_spec_values_out_of_range_with_file_line_and_range() {
    let root = tempfile::tempdir().unwrap();
    let experiments = root.path().join("experiments");
    std::fs::create_dir(&experiments).unwrap();
    let spec = std::fs::read_to_string(repository().join("experiments/examples/stage3-cams.toml")).unwrap();
    let stream = |epochs: &str, lr: &str, train_images: &str| {
        format!(
            "[quick.stream]\ntrain_images = {train_images}\nval_images = 16\ntrain = {{ epochs = {epochs}, batch_size = 32, seed = 0, \
             optimizer = {{ kind = \"adam-w\", lr = {lr}, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0 }}, \
             schedule = {{ kind = \"constant\" }} }}\n"
        )
    };
    let cases = [
        (
            spec.clone() + &stream("0", "1e-2", "64"),
            ":20: [quick] stream.train.epochs = 0: out of range; valid: 1 to 10000",
        ),
        (spec.clone() + &stream("1", "nan", "64"), ":20: [quick] stream.train.optimizer.lr = NaN: out of range"),
        (
            spec.clone() + &stream("1", "-1e-2", "64"),
            ":20: [quick] stream.train.optimizer.lr = -0.01: out of range; valid: a finite number in (0, 10]",
        ),
        (
            spec.clone() + &stream("1", "1e-2", "0"),
            ":18: [quick] stream.train_images = 0: out of range; valid: 1 to 60000",
        ),
        (
            spec.clone() + "[quick.protocol]\nresamples = 0\n",
            ":18: [quick] protocol.resamples = 0: out of range; valid: 1 to 1000000",
        ),
        (
            spec.clone() + "[quick.protocol]\ncam = { channels = 0 }\n",
            ":18: [quick] protocol.cam.channels = 0: out of range; valid: 1 to 8192",
        ),
        (spec.replace("images = 200", "images = 0"), ":11: [quick] images = 0: out of range; valid: at least 1"),
    ];
    for (text, expected) in cases {
        std::fs::write(experiments.join("stage3-cams.toml"), &text).unwrap();
        let (ok, out) = castream_in(root.path(), &["reproduce", "stage3-cams"]);
        assert_refused(ok, &out, &[&format!("experiments/stage3-cams.toml{expected}"), "Fix: e.g."]);
        assert!(!root.path().join("results").exists(), "{text}: wrote results");
    }
}

/// Waits (bounded) until a run of `name` has a staging folder under `profile_dir`.
fn wait_for_staging(profile_dir: &Path, name: &str) {
    let prefix = format!(".{name}.partial-");
    for _ in 0..1200 {
        let found = std::fs::read_dir(profile_dir)
            .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with(&prefix)))
            .unwrap_or(false);
        if found {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("no staging folder of {name} appeared in {}", profile_dir.display());
}

/// Entries of `dir` other than the locks of runs (`.<name>.lock`, which stay).
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.retain(|n| !n.ends_with(".lock"));
    names.sort();
    names
}

fn spawn_reproduce(name: &str, results: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_castream"))
        .args(["reproduce", name, "--results", results.to_str().unwrap()])
        .current_dir(repository())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Two runs of one target at once: the second is refused naming the first's pid and leaves it
/// alone; the first publishes every output it wrote, each matching the SHA-256 in its run.json.
#[test]
fn two_runs_of_one_target_at_once_publish_exactly_one_complete_result() {
    let results = tempfile::tempdir().unwrap();
    let quick = results.path().join("quick");
    let first = spawn_reproduce("data-card", results.path());
    wait_for_staging(&quick, "data-card");
    let second = spawn_reproduce("data-card", results.path()).wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "the second run was not refused: {text}");
    assert!(text.contains(&format!("another run of data-card (pid {}) is in progress", first.id())), "{text}");
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert_eq!(entries(&quick), ["data-card"], "staging folders left behind");
    let dir = quick.join("data-card");
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("run.json")).unwrap()).unwrap();
    let outputs = record["outputs"].as_array().unwrap();
    assert!(outputs.len() >= 10, "{outputs:?}");
    for o in outputs {
        let bytes = std::fs::read(dir.join(o["file"].as_str().unwrap())).unwrap();
        let sha = castream_data::labelled::hex(&sha2::Sha256::digest(&bytes));
        assert_eq!(o["sha256"].as_str().unwrap(), sha, "{o}");
    }
    let mut listed: Vec<&str> = outputs.iter().map(|o| o["file"].as_str().unwrap()).chain(["run.json"]).collect();
    listed.sort();
    assert_eq!(entries(&dir), listed, "published files and run.json's outputs differ");
    // Redirected output still reports progress, one line per finished stage.
    assert!(String::from_utf8_lossy(&first.stderr).contains(" done in "), "no progress lines");
}

/// Ctrl-C during a run removes its staging folder and publishes nothing; the exit status says so.
#[test]
#[cfg(unix)]
fn an_interrupted_run_leaves_nothing_behind() {
    let results = tempfile::tempdir().unwrap();
    let quick = results.path().join("quick");
    let run = spawn_reproduce("data-card", results.path());
    wait_for_staging(&quick, "data-card");
    assert!(Command::new("kill").args(["-INT", &run.id().to_string()]).status().unwrap().success());
    let out = run.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("interrupted"));
    assert_eq!(entries(&quick), Vec::<String>::new(), "an interrupted run left files");
}

/// `explain` replaces a symlink in `--out` with its own file and never writes through it.
#[test]
#[cfg(unix)]
fn explain_never_writes_through_a_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let (out, outside) = (dir.path().join("out"), dir.path().join("precious.txt"));
    std::fs::create_dir(&out).unwrap();
    std::fs::write(&outside, "precious").unwrap();
    let overlay = out.join("scene-00000_resnet18_gap_grad-cam.png");
    std::os::unix::fs::symlink(&outside, &overlay).unwrap();
    let (ok, text) = castream(&["explain", "--scenes", "0", "--out", out.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "precious", "wrote through the symlink");
    let meta = std::fs::symlink_metadata(&overlay).unwrap();
    assert!(meta.file_type().is_file() && meta.len() > 0);
}

/// `list` says per profile whether each spec can run, and lists every spec even when one is invalid.
#[test]
fn list_shows_readiness_per_profile_and_survives_an_invalid_spec() {
    let root = tempfile::tempdir().unwrap();
    let experiments = root.path().join("experiments");
    std::fs::create_dir(&experiments).unwrap();
    for name in ["table2", "table3", "data-card"] {
        std::fs::copy(repository().join(format!("experiments/{name}.toml")), experiments.join(format!("{name}.toml")))
            .unwrap();
    }
    std::fs::write(experiments.join("broken.toml"), "name = \"broken\"\ntarget = \"tabel9\"\n").unwrap();
    // No checkpoints in this root: the quick tables wait for their backbones.
    let (ok, text) = castream_in(root.path(), &["list"]);
    assert!(!ok, "an invalid spec must make list fail: {text}");
    assert!(text.contains("broken") && text.contains("INVALID"), "{text}");
    for name in ["table2", "table3", "data-card"] {
        assert!(text.contains(name), "{name} not listed after the invalid spec: {text}");
    }
    assert!(text.contains("quick: pending, needs the quick `resnet18` backbone"), "{text}");
    assert!(text.contains("paper: pending, needs experiments/table2.toml [paper.data.imagenet] root"), "{text}");
    assert!(text.contains("train it with `cargo xtask train-stream"), "{text}");
    assert!(text.contains("quick: can run"), "the data card can run: {text}");
}

/// `reproduce all --profile paper` without ImageNet: one line per target naming what is missing
/// (the data, the trained streams), a non-zero exit, and nothing written.
#[test]
fn the_paper_profile_lists_targets_without_inputs_as_pending() {
    let root = tempfile::tempdir().unwrap();
    let experiments = root.path().join("experiments");
    std::fs::create_dir(&experiments).unwrap();
    for entry in std::fs::read_dir(repository().join("experiments")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".toml") && name != "data-card.toml" {
            std::fs::copy(entry.path(), experiments.join(&name)).unwrap();
        }
    }
    let (ok, text) = castream_in(root.path(), &["reproduce", "all", "--profile", "paper"]);
    assert!(!ok, "pending targets must fail the run: {text}");
    assert!(text.contains("13 spec(s) could not run on the paper profile"), "{text}");
    for name in [
        "metrics",
        "opti-cam",
        "table1",
        "table2",
        "table2-opti-cam-protocol",
        "table3",
        "table4",
        "table5",
        "table6",
        "figure1",
        "figure2",
        "figure3",
        "figure4",
    ] {
        let line = text.lines().find(|l| l.starts_with(&format!("{name:<10} pending: not yet available, needs ")));
        let line = line.unwrap_or_else(|| panic!("{name}: no pending line in {text}"));
        let data = if name == "figure4" { "[paper.data.unseen] root" } else { "[paper.data.imagenet] root" };
        assert!(line.contains(data) && line.contains("a CA-Stream trained on `timm/"), "{line}");
    }
    assert!(!root.path().join("results").exists(), "a pending target wrote something");
}

/// A spec's `device` is honoured (and `--device` overrides it): in a build without CUDA a CUDA
/// device is refused, saying how to build one, before anything is written.
#[test]
fn a_cuda_device_in_a_cpu_build_is_refused_with_the_fix() {
    let root = tempfile::tempdir().unwrap();
    let experiments = root.path().join("experiments");
    std::fs::create_dir(&experiments).unwrap();
    let spec = std::fs::read_to_string(repository().join("experiments/data-card.toml")).unwrap();
    std::fs::write(experiments.join("data-card.toml"), spec.replacen("[quick]\n", "[quick]\ndevice = \"cuda:1\"\n", 1))
        .unwrap();
    let results = root.path().join("results");
    let (ok, text) = castream_in(root.path(), &["reproduce", "data-card", "--results", results.to_str().unwrap()]);
    if cfg!(feature = "cuda") {
        return;
    }
    assert!(!ok);
    assert!(text.contains("cuda:1") && text.contains("--features cuda"), "{text}");
    assert_eq!(written(&results), 0, "a refused device wrote something");
    let (ok, text) = castream_in(root.path(), &["reproduce", "data-card", "--device", "gpu"]);
    assert!(!ok && text.contains("unknown device `gpu`") && text.contains("cuda:N"), "{text}");
}
