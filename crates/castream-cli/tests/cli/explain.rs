//! `castream explain` end to end on an image file written here and tiny random networks (a
//! checkpoint saved with `Model::save`, timm-named pretrained weights), and its documented flag
//! errors.

use std::path::{Path, PathBuf};

use candle_core::Device;
use castream_backbones::{Arch, BackboneConfig, CheckpointMeta, Model, Stem};
use castream_cam::{Method, MethodOptions, PoolingKind};
use castream_cli::explain::{run, ClassChoice, ColourMap, ExplainOptions, Input, ModelSource};
use castream_report::overlay::COLOUR_BAR_WIDTH;
use castream_zoo::backbone::Shape;
use castream_zoo::BackboneSpec;
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
        colour_map: ColourMap::JET,
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

    let mut opts = options(dir.path(), vec![Method::GradCam], vec![PoolingKind::Ca]);
    opts.model = ModelSource::Pretrained(pretrained(dir.path()));
    let msg = err(opts);
    assert!(msg.contains("--pooling ca with --pretrained") && msg.contains("--stream"), "{msg}");

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

/// timm-named weights of a 10-class ResNet-18 of width 8 with the ImageNet stem, as a file.
fn pretrained(dir: &Path) -> BackboneSpec {
    let shape = Shape { num_classes: Some(10), base_width: Some(8), depths: None };
    let config = BackboneConfig { base_width: shape.base_width, ..BackboneConfig::new(Arch::Resnet18, 10) };
    let model = Model::new(config, 3, &Device::Cpu).unwrap();
    let tensors: Vec<(String, candle_core::Tensor)> =
        model.named_vars().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
    let file = dir.join("resnet18-tiny.safetensors");
    std::fs::write(&file, safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), None).unwrap()).unwrap();
    BackboneSpec::File { arch: Arch::Resnet18, file, shape }
}

#[test]
fn a_photo_is_explained_with_pretrained_weights_at_their_input_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path(), vec![Method::GradCam], vec![PoolingKind::Gap]);
    opts.model = ModelSource::Pretrained(pretrained(dir.path()));
    opts.colour_map = ColourMap::VIRIDIS;
    opts.colour_bar = true;
    opts.size = None;
    opts.scale = Some(1);
    let written = run(Path::new("."), &opts).unwrap();
    assert_eq!(written.len(), 1);
    let w = &written[0];
    assert_eq!(w.path, dir.path().join("out/photo_resnet18-tiny_gap_grad-cam.png"));
    assert!(w.predicted < 10 && w.explained == w.predicted);
    // The ImageNet stem's input: 224 px, and a viridis colour bar (viridis(1) is yellow at the top).
    let img = image::open(&w.path).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (224 + COLOUR_BAR_WIDTH as u32, 224));
    assert_eq!(img.get_pixel(224 + 8, 0).0, ColourMap::VIRIDIS.rgb8(1.0));
}
