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
