//! The architecture invariants of docs/architecture.md that can be read from `Cargo.toml` files
//! and source text: dependencies point down, heavy crates stay where they belong, the CAM crate
//! reads no files, the engine knows no spec, one place chooses the device, files stay small.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn crates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Layer of every workspace crate: a crate may depend only on crates of a lower layer.
const LAYERS: [(&str, u8); 12] = [
    ("castream-data", 0),
    ("castream-kernels", 0),
    ("castream-backbones", 1),
    ("castream-stream", 2),
    ("castream-cam", 3),
    ("castream-metrics", 3),
    ("castream-zoo", 4),
    ("castream-eval", 4),
    ("castream-report", 5),
    ("castream-experiments", 6),
    ("castream-cli", 7),
    ("xtask", 8),
];

/// `[dependencies]` (not dev-dependencies) of every crate, by crate name.
fn dependencies() -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(crates_dir()).unwrap() {
        let manifest = entry.unwrap().path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else { continue };
        let value: toml::Table = toml::from_str(&text).unwrap();
        let name = value["package"]["name"].as_str().unwrap().to_string();
        let deps = value
            .get("dependencies")
            .and_then(|d| d.as_table())
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default();
        out.insert(name, deps);
    }
    out
}

/// Every `.rs` file under `dir`, recursively.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

fn layer(name: &str) -> u8 {
    LAYERS.iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("{name} has no layer in LAYERS")).1
}

#[test]
fn every_crate_depends_only_on_lower_layers() {
    let deps = dependencies();
    assert_eq!(deps.len(), LAYERS.len() - 1, "a crate is missing from LAYERS or from crates/: {:?}", deps.keys());
    for (name, list) in &deps {
        for dep in list.iter().filter(|d| d.starts_with("castream-")) {
            assert!(layer(dep) < layer(name), "{name} (layer {}) depends on {dep} (layer {})", layer(name), layer(dep));
        }
    }
}

#[test]
fn only_the_report_layer_links_polars_and_plotters() {
    for (name, list) in dependencies() {
        for heavy in ["polars", "plotters"] {
            assert!(name == "castream-report" || !list.iter().any(|d| d == heavy), "{name} depends on {heavy}");
        }
    }
}

#[test]
fn the_lower_crates_know_no_spec_and_pull_no_http_stack() {
    let deps = dependencies();
    for name in [
        "castream-data",
        "castream-kernels",
        "castream-backbones",
        "castream-stream",
        "castream-cam",
        "castream-metrics",
        "castream-eval",
    ] {
        for forbidden in ["toml", "clap", "castream-experiments", "castream-zoo"] {
            assert!(!deps[name].iter().any(|d| d == forbidden), "{name} depends on {forbidden}");
        }
        assert!(name == "castream-data" || !deps[name].iter().any(|d| d == "hf-hub"), "{name} depends on hf-hub");
    }
    // hf-hub is an optional feature of castream-data, enabled only above the engine.
    let data: toml::Table =
        toml::from_str(&std::fs::read_to_string(crates_dir().join("castream-data/Cargo.toml")).unwrap()).unwrap();
    assert_eq!(
        data["dependencies"]["hf-hub"]["optional"].as_bool(),
        Some(true),
        "castream-data: hf-hub must stay optional"
    );
    for name in [
        "castream-backbones",
        "castream-stream",
        "castream-cam",
        "castream-metrics",
        "castream-eval",
        "castream-report",
    ] {
        let text = std::fs::read_to_string(crates_dir().join(name).join("Cargo.toml")).unwrap();
        let manifest: toml::Table = toml::from_str(&text).unwrap();
        let features = manifest["dependencies"].get("castream-data").and_then(|d| d.get("features"));
        assert!(
            features.is_none_or(|f| !f.as_array().unwrap().iter().any(|v| v.as_str() == Some("hub"))),
            "{name} enables hub"
        );
    }
}

#[test]
fn the_cam_crate_reads_no_files_and_the_engine_knows_no_spec() {
    for file in sources(&crates_dir().join("castream-cam/src")) {
        let text = std::fs::read_to_string(&file).unwrap();
        for forbidden in ["std::fs", "File::", "toml", "Spec"] {
            assert!(!text.contains(forbidden), "{}: mentions `{forbidden}`", file.display());
        }
    }
    for file in sources(&crates_dir().join("castream-eval/src")) {
        let text = std::fs::read_to_string(&file).unwrap();
        for forbidden in ["toml", "RunContext", "castream_experiments", "Settings"] {
            assert!(!text.contains(forbidden), "{}: mentions `{forbidden}`", file.display());
        }
    }
}

#[test]
fn one_place_chooses_the_device() {
    let place = crates_dir().join("castream-data/src/device.rs");
    let mut found = Vec::new();
    for name in dependencies().keys().filter(|n| n.starts_with("castream-")) {
        for file in sources(&crates_dir().join(name).join("src")) {
            if file != place && std::fs::read_to_string(&file).unwrap().contains("Device::Cpu") {
                found.push(file.display().to_string());
            }
        }
    }
    assert!(found.is_empty(), "Device::Cpu outside castream-data/src/device.rs: {found:?}");
}

#[test]
fn no_source_file_outside_the_kernels_reaches_450_lines() {
    for name in dependencies().keys().filter(|n| *n != "castream-kernels") {
        for file in sources(&crates_dir().join(name).join("src")) {
            let lines = std::fs::read_to_string(&file).unwrap().lines().count();
            assert!(lines < 450, "{}: {lines} lines; split it by what its parts do", file.display());
        }
    }
}
