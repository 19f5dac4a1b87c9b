//! Caches and shipped files are checked on read: a trained stream's cache entry that was edited,
//! truncated or whose card is gone is retrained (bit-identically) rather than used; a shipped
//! backbone whose weights or sidecar differ from the manifest is refused.

use std::path::{Path, PathBuf};

use castream_data::device::cpu;
use castream_data::discovery::DataLocation;
use castream_zoo::ca::{quick_models, QuickData, StreamSpec};
use castream_zoo::quick::{load_backbone, load_recipe};
use castream_zoo::BackboneSpec;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A scratch root holding a copy of the shipped checkpoints (and its own `target/castream/`).
fn scratch_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let dst = root.path().join("checkpoints/quick");
    std::fs::create_dir_all(&dst).unwrap();
    for entry in std::fs::read_dir(repo().join("checkpoints/quick")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
    root
}

#[test]
fn a_damaged_stream_cache_entry_is_retrained_not_used() {
    let root = scratch_root();
    let recipe = load_recipe(root.path()).unwrap();
    let data = QuickData::load(&DataLocation::default(), &recipe.scenes).unwrap();
    let mut spec = StreamSpec { train_images: 64, val_images: 32, ..StreamSpec::default() };
    spec.train.epochs = 1;
    spec.train.batch_size = 32;
    let backbone = BackboneSpec::Shipped("resnet18".into());
    let load = || quick_models(root.path(), &backbone, &spec, &data, &mut None, &cpu()).unwrap();

    let trained = load();
    assert!(!trained.from_cache);
    let again = load();
    assert!(again.from_cache);
    assert_eq!(again.stream_sha256, trained.stream_sha256);
    let file = trained.stream_file.clone();
    let original = std::fs::read(&file).unwrap();

    // Edited in place (same length, still a valid safetensors file: a weight's last byte).
    let mut edited = original.clone();
    *edited.last_mut().unwrap() ^= 0x40;
    std::fs::write(&file, &edited).unwrap();
    let retrained = load();
    assert!(!retrained.from_cache, "an edited stream was used");
    assert_eq!(retrained.stream_sha256, trained.stream_sha256, "retraining is deterministic");
    assert_eq!(std::fs::read(&file).unwrap(), original);

    // Truncated.
    std::fs::write(&file, &original[..original.len() / 2]).unwrap();
    assert!(!load().from_cache, "a truncated stream was used");

    // Other settings are another entry.
    let mut other = spec.clone();
    other.train.seed = 1;
    let m = quick_models(root.path(), &backbone, &other, &data, &mut None, &cpu()).unwrap();
    assert!(!m.from_cache && m.stream_file != file && m.stream_sha256 != trained.stream_sha256);
}

#[test]
fn a_shipped_backbone_with_an_edited_sidecar_or_weights_is_refused() {
    let root = scratch_root();
    let dir = root.path().join("checkpoints/quick");
    load_backbone(root.path(), "resnet18", &cpu()).expect("an untouched copy loads");

    let sidecar = dir.join("resnet18.safetensors.json");
    let text = std::fs::read_to_string(&sidecar).unwrap();
    // Still valid JSON that the loader would accept: a different class name.
    std::fs::write(&sidecar, text.replacen("T-shirt/top", "T-shirt", 1)).unwrap();
    assert_ne!(std::fs::read_to_string(&sidecar).unwrap(), text, "the edit must change the sidecar");
    let msg = format!("{:#}", load_backbone(root.path(), "resnet18", &cpu()).err().expect("edited sidecar loaded"));
    assert!(msg.contains("resnet18.safetensors.json") && msg.contains("differs from the manifest"), "{msg}");
    std::fs::write(&sidecar, &text).unwrap();

    let weights = dir.join("resnet18.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&weights, &bytes).unwrap();
    let msg = format!("{:#}", load_backbone(root.path(), "resnet18", &cpu()).err().expect("edited weights loaded"));
    assert!(msg.contains("resnet18.safetensors:") && msg.contains("differs from the manifest"), "{msg}");
}
