//! The shipped quick-profile backbones load with their manifest's SHA-256 and reproduce the test
//! accuracy the manifest records (checkpoints/quick/, docs/backbones.md).

use std::path::Path;

use castream_backbones::train::evaluate;
use castream_data::discovery::DataLocation;
use castream_experiments::ca::QuickData;
use castream_experiments::quick::{load_backbone, load_recipe, SceneSubset};
use castream_experiments::spec::{DataSpec, Settings};

#[test]
fn shipped_backbones_load_and_reproduce_their_manifest_accuracy() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let recipe = load_recipe(&root).unwrap();
    let settings = Settings {
        scenes: recipe.scenes.clone(),
        data: DataSpec { fashion_mnist: DataLocation::default(), ..DataSpec::default() },
        ..Settings::default()
    };
    let data = QuickData::load(&settings).unwrap();
    for b in &recipe.backbone {
        let (model, meta, entry) = load_backbone(&root, &b.name).unwrap();
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
