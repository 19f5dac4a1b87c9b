//! The dataset card end to end on the real datasets (installed by `cargo xtask setup`).

use std::path::{Path, PathBuf};

use crate::provenance::assert_provenance;
use castream_experiments::runner::{reproduce, Mode, Options};
use castream_experiments::spec::Profile;

use polars::prelude::*;

fn experiments_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments")
}

#[test]
fn data_card_writes_every_output_with_true_counts() {
    let results = tempfile::tempdir().unwrap();
    let opts = Options {
        root: Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."),
        experiments: experiments_dir(),
        results: results.path().into(),
        profile: Profile::Quick,
        images: Some(8),
        seed: None,
        device: None,
        batch_size: None,
        mode: Mode::Whole,
        shards: PathBuf::from("shards"),
    };
    let dir = reproduce("data-card", &opts).unwrap();
    assert_provenance(false, &dir);
    assert_eq!(dir, results.path().join("quick/data-card@images=8"), "an override publishes beside the reference");
    for file in [
        "class_counts.csv",
        "class_counts.parquet",
        "class_counts.md",
        "class_counts_fashion-mnist.png",
        "class_counts_fashion-mnist.svg",
        "class_counts_mnist.png",
        "scene_stats.csv",
        "scene_stats.md",
        "scenes.png",
        "backbone_curves.csv",
        "backbone_curves.md",
        "backbone_curves.png",
        "backbone_curves.svg",
        "run.json",
    ] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }

    // The learning curves: one row per shipped backbone and epoch, the manifest's values.
    let manifest = castream_zoo::quick::load_manifest(&opts.root).unwrap();
    let curves = CsvReadOptions::default()
        .try_into_reader_with_file_path(Some(dir.join("backbone_curves.csv")))
        .unwrap()
        .finish()
        .unwrap();
    assert_eq!(curves.height(), manifest.values().map(|e| e.history.len()).sum::<usize>());
    let val: Vec<f64> = curves.column("val_accuracy").unwrap().f64().unwrap().into_no_null_iter().collect();
    let expected: Vec<f64> = manifest.values().flat_map(|e| e.history.iter().map(|h| h.val_accuracy)).collect();
    assert!(val.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-9), "{val:?} vs {expected:?}");

    let counts = CsvReadOptions::default()
        .try_into_reader_with_file_path(Some(dir.join("class_counts.csv")))
        .unwrap()
        .finish()
        .unwrap();
    assert_eq!(counts.height(), 40, "10 classes x 2 splits x 2 datasets");
    let count = |dataset: &str, split: &str| -> Vec<u32> {
        let mask = counts.column("dataset").unwrap().str().unwrap().equal(dataset)
            & counts.column("split").unwrap().str().unwrap().equal(split);
        let rows = counts.filter(&mask).unwrap();
        rows.column("count").unwrap().cast(&DataType::UInt32).unwrap().u32().unwrap().into_no_null_iter().collect()
    };
    // Fashion-MNIST is balanced; MNIST's test digit counts are well known.
    assert_eq!(count("Fashion-MNIST", "train"), vec![6000; 10]);
    assert_eq!(count("Fashion-MNIST", "test"), vec![1000; 10]);
    assert_eq!(count("MNIST", "test"), vec![980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]);

    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("run.json")).unwrap()).unwrap();
    assert_eq!(record["spec"], "data-card");
    assert_eq!(record["profile"], "quick");
    assert_eq!(record["overrides"][0], "images=8");
    assert_eq!(record["data"].as_array().unwrap().len(), 4);
    assert_eq!(record["data"][0]["images"], 60000);
    assert!(record["versions"]["candle-core"].as_str().unwrap().starts_with("0."));
    assert!(record["image_list_sha256"].as_str().unwrap().len() == 64);

    let grid = image::open(dir.join("scenes.png")).unwrap();
    assert!(grid.width() > 8 * 64 * 3, "grid of 8 columns at 3x scale");
}

#[test]
fn paper_profile_runs_end_to_end_on_a_small_image_list() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("val");
    std::fs::create_dir_all(&images).unwrap();
    let mut list = String::from("name,label\n");
    for (i, colour) in [[255u8, 0, 0], [0, 255, 0], [0, 0, 255]].iter().enumerate() {
        let img = image::RgbImage::from_pixel(40 + 10 * i as u32, 30, image::Rgb(*colour));
        img.save(images.join(format!("img{i}.png"))).unwrap();
        list.push_str(&format!("img{i}.png,{}\n", i % 2));
    }
    std::fs::write(tmp.path().join("val.csv"), list).unwrap();
    let experiments = tmp.path().join("experiments");
    std::fs::create_dir_all(&experiments).unwrap();
    std::fs::write(
        experiments.join("data-card.toml"),
        format!(
            "name = \"data-card\"\ntitle = \"t\"\ntarget = \"data-card\"\n[paper]\nimages = 3\n\
             [paper.data.imagenet]\nroot = {:?}\nlist = {:?}\ntransform = {{ kind = \"squash\", size = 32 }}\n",
            images,
            tmp.path().join("val.csv")
        ),
    )
    .unwrap();
    let opts = Options {
        root: tmp.path().into(),
        experiments,
        results: tmp.path().join("results"),
        profile: Profile::Paper,
        images: None,
        seed: None,
        device: None,
        batch_size: None,
        mode: Mode::Whole,
        shards: PathBuf::from("shards"),
    };
    let dir = reproduce("data-card", &opts).unwrap();
    assert_provenance(false, &dir);
    let md = std::fs::read_to_string(dir.join("class_counts.md")).unwrap();
    assert!(
        md.contains("| imagenet | val | 0 | class 0 | 2 |") && md.contains("| imagenet | val | 1 | class 1 | 1 |"),
        "{md}"
    );
    assert!(dir.join("scenes.png").is_file() && dir.join("run.json").is_file());
}
