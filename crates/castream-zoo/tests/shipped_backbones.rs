//! The shipped quick-profile backbones load with their manifest's SHA-256 and reproduce the test
//! accuracy the manifest records (checkpoints/quick/, docs/backbones.md).

use std::path::Path;

use castream_backbones::train::evaluate;
use castream_data::discovery::DataLocation;
use castream_zoo::ca::QuickData;
use castream_zoo::quick::{load_backbone, load_recipe, SceneSubset};

#[test]
fn shipped_backbones_load_and_reproduce_their_manifest_accuracy() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let recipe = load_recipe(&root).unwrap();
    let data = QuickData::load(&DataLocation::default(), &recipe.scenes).unwrap();
    for b in &recipe.backbone {
        let (model, meta, entry) = load_backbone(&root, &b.name, &candle_core::Device::Cpu).unwrap();
        assert_eq!(entry.recipe, *b, "{}: manifest recipe differs from backbones.toml; retrain", b.name);
        assert_eq!(meta.config, b.model);
        let ids: Vec<usize> = (0..entry.test_images).collect();
        let test = SceneSubset { set: &data.test, indices: ids, normalisation: meta.normalisation };
        let accuracy = evaluate(&model, &test, 256).unwrap();
        assert!(
            (accuracy - entry.test_accuracy).abs() <= 1e-3,
            "{}: test accuracy {accuracy} vs manifest {}",
            b.name,
            entry.test_accuracy
        );
    }
}
