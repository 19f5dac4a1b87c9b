//! Every quick target that needs a CA model, end to end on a tiny backbone "shipped" into a
//! temporary repository root (real Fashion-MNIST and MNIST scenes, installed by `cargo xtask setup`).

use std::path::{Path, PathBuf};

use crate::provenance::assert_provenance;
use candle_core::Device;
use castream_backbones::model::sidecar_path;
use castream_backbones::{Arch, BackboneConfig, CheckpointMeta, Model, Stem};
use castream_data::labelled::hex;
use castream_experiments::runner::{reproduce, Mode, Options};
use castream_experiments::spec::Profile;
use castream_zoo::quick::{load_recipe, ManifestEntry};
use polars::prelude::*;
use sha2::{Digest, Sha256};

const RECIPE: &str = r#"
[data]
train_images = 59000
eval_batch_size = 64

[[backbone]]
name = "tiny"
init_seed = 0
model = { arch = "resnet18", num_classes = 10, stem = "small", base_width = 4 }
train = { epochs = 1, batch_size = 8, seed = 0, optimizer = { kind = "adam-w", lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0 }, schedule = { kind = "constant" } }
"#;

/// A small, fast stream for the tiny backbone.
const STREAM: &str = "[quick.stream]\ntrain_images = 40\nval_images = 16\n\
    train = { epochs = 1, batch_size = 20, seed = 0, optimizer = { kind = \"adam-w\", lr = 1e-2, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0 }, schedule = { kind = \"constant\" } }\n";

fn spec(name: &str) -> String {
    format!("name = \"{name}\"\ntitle = \"t\"\ntarget = \"{name}\"\n[quick]\nimages = 24\nbatch_size = 12\nbackbones = [\"tiny\"]\n{STREAM}")
}

/// The repository's spec `name` on the tiny backbone with the small stream.
fn repository_spec(name: &str) -> String {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../experiments/{name}.toml")))
            .unwrap();
    text.replace("backbones = [\"resnet18\"]", "backbones = [\"tiny\"]").replace("batch_size = 64", "batch_size = 12")
        + STREAM
}

/// A temporary repository root with an untrained "shipped" backbone and its manifest.
fn fake_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("checkpoints/quick");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("backbones.toml"), RECIPE).unwrap();
    let recipe = load_recipe(root.path()).unwrap().backbone.remove(0);
    let config = BackboneConfig { stem: Stem::Small, base_width: Some(4), ..BackboneConfig::new(Arch::Resnet18, 10) };
    assert_eq!(config, recipe.model);
    let model = Model::new(config.clone(), 0, &Device::Cpu).unwrap();
    let path = dir.join("tiny.safetensors");
    let meta = CheckpointMeta {
        config,
        classes: Vec::new(),
        normalisation: castream_data::Normalisation { mean: [0.31; 3], std: [0.16; 3] },
        extra: serde_json::Value::Null,
    };
    model.save(&path, &meta).unwrap();
    let entry = ManifestEntry {
        command: "test".into(),
        commit: "test".into(),
        recipe,
        data_sha256: String::new(),
        sha256: hex(&Sha256::digest(std::fs::read(&path).unwrap())),
        sidecar_sha256: hex(&Sha256::digest(std::fs::read(sidecar_path(&path)).unwrap())),
        test_accuracy: 0.1,
        test_images: 0,
        val_accuracy: 0.1,
        parameters: model.parameter_count(),
        threads: 1,
        train_seconds: 0.0,
        history: Vec::new(),
    };
    let manifest = serde_json::json!({ "tiny": entry });
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
    let experiments = root.path().join("experiments");
    std::fs::create_dir_all(&experiments).unwrap();
    for name in ["table1", "table4", "figure1", "figure2", "figure3", "figure4"] {
        std::fs::write(experiments.join(format!("{name}.toml")), spec(name)).unwrap();
    }
    for name in ["table2", "table5", "table6"] {
        std::fs::write(experiments.join(format!("{name}.toml")), repository_spec(name)).unwrap();
    }
    // table3 asks for a ConvNeXt backbone that this root does not ship.
    std::fs::write(experiments.join("table3.toml"), repository_spec("table3")).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments/paper-values.toml"),
        experiments.join("paper-values.toml"),
    )
    .unwrap();
    root
}

/// The quick profile in `root`, with `images` overriding the specs'.
fn options(root: &Path, images: Option<usize>) -> Options {
    Options {
        root: root.into(),
        experiments: root.join("experiments"),
        results: root.join("results"),
        profile: Profile::Quick,
        images,
        seed: None,
        device: None,
        batch_size: None,
        mode: Mode::Whole,
        shards: PathBuf::from("shards"),
    }
}

fn csv(path: &Path) -> DataFrame {
    CsvReadOptions::default().try_into_reader_with_file_path(Some(path.into())).unwrap().finish().unwrap()
}

#[test]
fn ca_targets_run_end_to_end_on_a_tiny_backbone() {
    let root = fake_root();
    let opts = options(root.path(), None);
    let t1 = reproduce("table1", &opts).unwrap();
    assert_provenance(true, &t1);
    let table1 = csv(&t1.join("table1.csv"));
    assert_eq!(table1.height(), 2, "GAP and CA rows");
    let pooling: Vec<&str> = table1.column("pooling").unwrap().str().unwrap().iter().flatten().collect();
    assert_eq!(pooling, ["GAP", "CA"]);
    let stream_params: Vec<i64> = table1.column("stream_params").unwrap().i64().unwrap().into_no_null_iter().collect();
    assert_eq!(stream_params[0], 0);
    // q0 (4) + 4->4, 4->8, 8->16, 16->32, 32->32 linear maps with biases.
    assert_eq!(stream_params[1], 4 + (16 + 4) + (32 + 8) + (128 + 16) + (512 + 32) + (1024 + 32));
    assert!(t1.join("table1.png").is_file() && t1.join("table1.md").is_file());
    assert!(t1.join("table1_forest.png").is_file() && t1.join("table1_forest.svg").is_file());
    // CA − GAP in points with the paper's change and the verdict on it; the interval holds the mean.
    let claims = csv(&t1.join("table1_ca_vs_gap.csv"));
    assert_eq!(claims.height(), 1);
    let get = |c: &str| claims.column(c).unwrap().f64().unwrap().get(0).unwrap();
    assert!(get("low") <= get("ca_minus_gap") && get("ca_minus_gap") <= get("high"));
    let claim = claims.column("claim").unwrap().str().unwrap().get(0).unwrap().to_string();
    assert!(["reproduced", "contradicted", "inconclusive"].contains(&claim.as_str()), "{claim}");

    let t4 = reproduce("table4", &opts).unwrap();
    assert_provenance(true, &t4);
    assert_eq!(csv(&t4.join("table4.csv")).height(), 5, "four streams and GAP");
    assert_eq!(csv(&t4.join("table4_gradcam.csv")).height(), 8, "four streams, each paired with GAP");

    let f1 = reproduce("figure1", &opts).unwrap();
    assert_provenance(true, &f1);
    assert!(f1.join("figure1.png").is_file() && f1.join("figure1.svg").is_file());

    let f3 = reproduce("figure3", &opts).unwrap();
    assert_provenance(true, &f3);
    let diffs = csv(&f3.join("figure3.csv"));
    let max = diffs.column("max_abs_difference").unwrap().f64().unwrap().max().unwrap();
    assert!(max < 1e-5, "cross attention and CAM differ by {max}");
    assert!(f3.join("figure3.png").is_file());

    let f2 = reproduce("figure2", &opts).unwrap();
    assert_provenance(true, &f2);
    assert!(f2.join("figure2.png").is_file());
    let f4 = reproduce("figure4", &opts).unwrap();
    assert_provenance(true, &f4);
    assert_eq!(csv(&f4.join("figure4.csv")).height(), 24, "one row per digit scene");
}

#[test]
fn interpretability_tables_run_end_to_end_on_a_tiny_backbone() {
    let root = fake_root();
    let opts = options(root.path(), Some(12));
    let t2 = reproduce("table2", &opts).unwrap();
    assert_provenance(true, &t2);
    assert!(
        t2.ends_with("quick/table2@images=12"),
        "an override publishes beside the reference results: {}",
        t2.display()
    );
    let table2 = csv(&t2.join("table2.csv"));
    assert_eq!(table2.height(), 8, "three methods and Fake-CAM x GAP, CA");
    // Fake-CAM keeps all but one pixel of the image: the image's own confidence, nothing dropped.
    let methods: Vec<&str> = table2.column("method").unwrap().str().unwrap().iter().flatten().collect();
    let ad: Vec<f64> = table2.column("AD").unwrap().f64().unwrap().into_no_null_iter().collect();
    let fake: Vec<f64> = methods.iter().zip(&ad).filter(|(m, _)| **m == "Fake-CAM").map(|(_, a)| *a).collect();
    assert!(fake.len() == 2 && fake.iter().all(|&a| a < 0.5), "Fake-CAM's AD {fake:?}");
    for column in ["AD_paper", "AD", "AD_low", "AD_high", "AD_diff", "D_paper", "D"] {
        assert!(table2.column(column).is_ok(), "table2 lacks {column}");
    }
    let differences = csv(&t2.join("table2_ca_vs_gap.csv"));
    assert_eq!(differences.height(), 20, "three methods and Fake-CAM x five metrics");
    // Three stream seeds by default: each difference lists its seeds' own means.
    let per_seed: Vec<&str> = differences.column("per_seed").unwrap().str().unwrap().iter().flatten().collect();
    assert!(per_seed.iter().all(|p| p.split(", ").count() == 3), "{per_seed:?}");
    assert_eq!(csv(&t2.join("table2_sanity.csv")).height(), 6);
    let per_image =
        ParquetReader::new(std::fs::File::open(t2.join("table2_per_image.parquet")).unwrap()).finish().unwrap();
    assert_eq!(per_image.height(), (4 + 4 * 3) * 12, "GAP rows once, CA rows per stream seed");
    let seeds: Vec<u32> = per_image.column("seed").unwrap().u32().unwrap().into_no_null_iter().collect();
    assert_eq!(seeds.iter().max(), Some(&2));
    for metric in ["AD", "AG", "AI", "I", "D"] {
        assert!(t2.join(format!("table2_{metric}.png")).is_file() && t2.join(format!("table2_{metric}.svg")).is_file());
    }
    assert!(t2.join("table2_forest.png").is_file() && t2.join("table2_forest.svg").is_file());
    let md = std::fs::read_to_string(t2.join("table2.md")).unwrap();
    assert!(md.contains("The paper's GAP→CA change, AD↓: "), "{md}");

    let t5 = reproduce("table5", &opts).unwrap();
    assert_provenance(true, &t5);
    // CA-0 … CA-4, product, mean, three CAM methods, centre prior, random map, Fake-CAM.
    assert_eq!(csv(&t5.join("table5.csv")).height(), 13);
    let t6 = reproduce("table6", &opts).unwrap();
    assert_provenance(true, &t6);
    // CAM (GAP), raw attention (CA), seven methods x two poolings, the centre prior, Fake-CAM.
    assert_eq!(csv(&t6.join("table6.csv")).height(), 18);

    let err = reproduce("table3", &opts).unwrap_err();
    assert!(err.downcast_ref::<castream_experiments::targets::NotYetAvailable>().is_some(), "{err:#}");
    assert!(err.to_string().contains("`convnext` backbone"), "{err}");
}
