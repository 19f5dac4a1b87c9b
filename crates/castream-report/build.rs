//! Records the versions of the crates that determine numbers (read from the workspace lock file)
//! and of rustc, for run records.

use std::process::Command;

const TRACKED: [&str; 7] = ["candle-core", "candle-nn", "safetensors", "hf-hub", "polars", "plotters", "image"];

fn main() {
    // Read at run time: a build script compiled for another checkout must not read that one's lock file.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let lock = format!("{manifest_dir}/../../Cargo.lock");
    println!("cargo:rerun-if-changed={lock}");
    let text = std::fs::read_to_string(lock).unwrap_or_default();
    let mut versions = Vec::new();
    let mut name = None;
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"').to_string());
        } else if let (Some(v), Some(n)) = (line.strip_prefix("version = "), name.take()) {
            if TRACKED.contains(&n.as_str()) {
                versions.push(format!("{n}={}", v.trim_matches('"')));
            }
        }
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc = Command::new(rustc)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    versions.push(format!("rustc={rustc}"));
    println!("cargo:rustc-env=CASTREAM_VERSIONS={}", versions.join(";"));
}
