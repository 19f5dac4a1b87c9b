//! `castream explain` end to end on an image file written here and a tiny random checkpoint saved
//! with `Model::save`, and its documented flag errors.

use std::path::{Path, PathBuf};

use candle_core::Device;
use castream_backbones::{Arch, BackboneConfig, CheckpointMeta, Model, Stem};
use castream_cam::{Method, MethodOptions, PoolingKind};
use castream_cli::explain::{run, ClassChoice, ExplainOptions, Input, ModelSource};
use castream_report::overlay::COLOUR_BAR_WIDTH;
use image::GenericImageView;

/// A 3-class tiny ResNet checkpoint in `dir`.
fn checkpoint(dir: &Path) -> PathBuf {
    let config = BackboneConfig { stem: Stem::Small, base_width: Some(4), ..BackboneConfig::new(Arch::Resnet18, 3) };
    let model = Model::new(config.clone(), 0, &Device::Cpu).unwrap();
    let meta = CheckpointMeta {
        config,
        classes: vec!["red".into(), "green".into(), "blue".into()],
        normalisation: castream_data::Normalisation { mean: [0.5; 3], std: [0.25; 3] },
        extra: serde_json::Value::Null,
    };
    let path = dir.join("tiny.safetensors");
    model.save(&path, &meta).unwrap();
    path
}

/// A 40x30 gradient image (squashed to the model's input size on load).
fn image_file(dir: &Path) -> PathBuf {
    let img = image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([(x * 6) as u8, (y * 8) as u8, 128]));
    let path = dir.join("photo.png");
    img.save(&path).unwrap();
    path
}

fn options(dir: &Path, methods: Vec<Method>, poolings: Vec<PoolingKind>) -> ExplainOptions {
    ExplainOptions {
        device: castream_data::DeviceChoice::Cpu,
        input: Input::Image(image_file(dir)),
        model: ModelSource::Checkpoint(checkpoint(dir)),
        poolings,
        methods,
        method_options: MethodOptions::default(),
        class: None,
        out: dir.join("out"),
        colour_bar: false,
        size: Some(32),
        scale: None,
    }
}

#[test]
fn explain_writes_one_overlay_per_method_at_the_expected_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path(), vec![Method::GradCam, Method::ScoreCam], vec![PoolingKind::Gap]);
    let written = run(Path::new("."), &opts).unwrap();
    assert_eq!(written.len(), 2);
    for (w, key) in written.iter().zip(["grad-cam", "score-cam"]) {
        assert_eq!(w.path, dir.path().join(format!("out/photo_tiny_gap_{key}.png")));
        // 32 px input, default scale 256 / 32 = 8.
        assert_eq!(image::open(&w.path).unwrap().dimensions(), (256, 256), "{}", w.path.display());
        assert_eq!(w.explained, w.predicted, "an image file explains the prediction by default");
        assert!((0.0..=1.0).contains(&w.probability));
    }

    opts.colour_bar = true;
    opts.scale = Some(2);
    opts.class = Some(ClassChoice::Index(2));
    let written = run(Path::new("."), &opts).unwrap();
    assert_eq!(image::open(&written[0].path).unwrap().dimensions(), (64 + COLOUR_BAR_WIDTH as u32, 64));
    assert_eq!(written[0].explained, 2);
}

#[test]
fn bad_combinations_name_the_flag_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let err = |opts: ExplainOptions| format!("{:#}", run(Path::new("."), &opts).unwrap_err());

    let msg = err(options(dir.path(), vec![Method::RawAttention], vec![PoolingKind::Gap]));
    assert!(msg.contains("--method raw-attention") && msg.contains("--pooling ca") && msg.contains("Fix:"), "{msg}");

    let msg = err(options(dir.path(), vec![Method::Cam], vec![PoolingKind::Ca]));
    assert!(msg.contains("--method cam") && msg.contains("--pooling gap") && msg.contains("Fix:"), "{msg}");

    let msg = err(options(dir.path(), vec![Method::GradCam], vec![PoolingKind::Ca]));
    assert!(msg.contains("--pooling ca with --checkpoint") && msg.contains("Fix:"), "{msg}");

    let mut opts = options(dir.path(), vec![Method::GradCam], vec![PoolingKind::Gap]);
    opts.class = Some(ClassChoice::GroundTruth);
    let msg = err(opts);
    assert!(msg.contains("--class ground-truth") && msg.contains("no label"), "{msg}");

    let mut opts = options(dir.path(), vec![Method::GradCam], vec![PoolingKind::Gap]);
    opts.class = Some(ClassChoice::Index(7));
    let msg = err(opts);
    assert!(msg.contains("--class 7") && msg.contains("3 classes"), "{msg}");

    let mut opts = options(dir.path(), vec![Method::GradCam], vec![PoolingKind::Gap]);
    let bad = dir.path().join("notes.png");
    std::fs::write(&bad, "not an image").unwrap();
    opts.input = Input::Image(bad.clone());
    let msg = err(opts);
    assert!(msg.contains("--image") && msg.contains(&bad.display().to_string()), "{msg}");
}
