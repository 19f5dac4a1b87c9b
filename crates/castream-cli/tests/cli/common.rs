//! Helpers shared by the test modules.

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs the binary in `dir` (the project root it works on): whether it succeeded, and its output.
pub fn castream_in(dir: &Path, args: &[&str]) -> (bool, String) {
    outcome(Command::new(env!("CARGO_BIN_EXE_castream")).args(args).current_dir(dir))
}

/// [`castream_in`] with the paper fixture's offline hub cache (`dir/hf-cache`).
pub fn castream_offline(dir: &Path, args: &[&str]) -> (bool, String) {
    outcome(
        Command::new(env!("CARGO_BIN_EXE_castream"))
            .args(args)
            .current_dir(dir)
            .env("HF_HUB_CACHE", dir.join("hf-cache"))
            .env("HF_HUB_OFFLINE", "1")
            .env_remove("HF_HOME"),
    )
}

/// Whether `command` succeeded, and its output (stdout, then stderr).
fn outcome(command: &mut Command) -> (bool, String) {
    let out = command.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// A project root with copies of the shipped quick backbones and an empty `experiments/`.
pub fn quick_project() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let checkpoints = root.path().join("checkpoints/quick");
    std::fs::create_dir_all(&checkpoints).unwrap();
    for entry in std::fs::read_dir(repository().join("checkpoints/quick")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), checkpoints.join(entry.file_name())).unwrap();
    }
    std::fs::create_dir(root.path().join("experiments")).unwrap();
    root
}

/// A `[quick.stream]` table that trains a stream in seconds.
pub const BRIEF_STREAM: &str = "[quick.stream]\ntrain_images = 64\nval_images = 16\ntrain = { epochs = 1, batch_size = 32, \
    seed = 0, optimizer = { kind = \"adam-w\", lr = 1e-2, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0 }, \
    schedule = { kind = \"constant\" } }\n";
