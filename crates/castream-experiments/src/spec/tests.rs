//! The spec parser against hand-written specs: defaults, messages naming file, line and fix.

use castream_cam::Upsampling;
use castream_data::image_folder::EvalTransform;
use castream_data::Normalisation;
use castream_metrics::blur::InsertionBlur;

use super::*;

const GOOD: &str = r#"
name = "demo"
title = "A demo"
target = "data-card"

[quick]
seed = 3
images = 8

[quick.scenes]
canvas = 48
item_size = [20, 30]

[quick.data.fashion-mnist]
path = "/somewhere"

[paper.data.imagenet]
root = "/imagenet/val"
list = "/imagenet/val.csv"
transform = { kind = "resize-center-crop", resize = 256, crop = 224 }
"#;

#[test]
fn a_full_spec_parses_with_defaults_filled_in() {
    let spec = Spec::parse(GOOD, Path::new("experiments/demo.toml")).unwrap();
    let quick = spec.settings(Profile::Quick).unwrap();
    assert_eq!((quick.seed, quick.images, quick.batch_size), (3, Some(8), 64));
    assert_eq!(quick.scenes.canvas, 48);
    assert_eq!(quick.scenes.background, Default::default());
    assert_eq!(quick.data.fashion_mnist.path.as_deref(), Some(Path::new("/somewhere")));
    let paper = spec.settings(Profile::Paper).unwrap();
    let imagenet = paper.data.imagenet.as_ref().unwrap();
    assert_eq!(imagenet.transform, EvalTransform::ResizeCenterCrop { resize: 256, crop: 224 });
    assert_eq!(paper.normalisation, Normalisation::IMAGENET);
}

#[test]
fn an_unknown_key_names_file_line_column_and_fix() {
    let text = GOOD.replace("seed = 3", "sede = 3");
    let msg = Spec::parse(&text, Path::new("experiments/demo.toml")).unwrap_err().to_string();
    assert!(msg.contains("experiments/demo.toml"), "{msg}");
    assert!(msg.contains("line 7, column 1"), "{msg}");
    assert!(msg.contains("unknown field `sede`"), "{msg}");
    assert!(msg.contains("Fix:") && msg.contains("docs/specs.md"), "{msg}");
}

#[test]
fn a_wrong_type_names_the_line() {
    let text = GOOD.replace("images = 8", "images = \"eight\"");
    let msg = Spec::parse(&text, Path::new("demo.toml")).unwrap_err().to_string();
    assert!(msg.contains("line 8"), "{msg}");
    assert!(msg.contains("invalid type"), "{msg}");
}

#[test]
fn an_unknown_target_lists_the_valid_ones() {
    let text = GOOD.replace("target = \"data-card\"", "target = \"table9\"");
    let msg = Spec::parse(&text, Path::new("demo.toml")).unwrap_err().to_string();
    assert!(msg.contains("table9") && msg.contains("figure4"), "{msg}");
}

#[test]
fn a_missing_file_lists_the_available_specs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("table1.toml"), "").unwrap();
    std::fs::write(dir.path().join("figure2.toml"), "").unwrap();
    let msg = Spec::load(&dir.path().join("tabel1.toml")).unwrap_err().to_string();
    assert!(msg.contains("tabel1.toml") && msg.contains("figure2, table1"), "{msg}");
}

#[test]
fn name_must_match_file_and_scene_ranges_are_checked() {
    let msg = Spec::parse(GOOD, Path::new("other.toml")).unwrap_err().to_string();
    assert!(msg.contains("set `name = \"other\"`"), "{msg}");
    let text = GOOD.replace("item_size = [20, 30]", "item_size = [20, 60]");
    let msg = format!("{:#}", Spec::parse(&text, Path::new("demo.toml")).unwrap_err());
    assert!(msg.contains("scenes.item_size") && msg.contains("[quick]"), "{msg}");
}

#[test]
fn a_missing_profile_is_reported() {
    let spec = Spec::parse("name = \"x\"\ntitle = \"t\"\ntarget = \"table1\"\n", Path::new("x.toml")).unwrap();
    let msg = spec.settings(Profile::Paper).unwrap_err().to_string();
    assert!(msg.contains("[paper]"), "{msg}");
}

const INTERPRETABILITY: &str = r#"
name = "mine"
title = "Mine"
target = "interpretability"

[quick]
backbones = ["resnet18", { arch = "resnet18", checkpoint = "my.safetensors" }]
poolings = ["gap", "ca"]
methods = ["layer-cam", "x-grad-cam"]
metrics = ["average-drop", "insertion"]
layer = 3
protocol = { class = "predicted" }
"#;

fn refusal(text: &str) -> String {
    format!("{:#}", Spec::parse(text, Path::new("experiments/mine.toml")).unwrap_err())
}

#[test]
fn an_interpretability_experiment_parses_into_typed_values() {
    let spec = Spec::parse(INTERPRETABILITY, Path::new("experiments/mine.toml")).unwrap();
    let s = spec.settings(Profile::Quick).unwrap();
    assert_eq!(spec.target, Target::Interpretability);
    let methods: Vec<_> = s.methods.iter().map(|m| *m.get_ref()).collect();
    assert_eq!(methods, [castream_cam::Method::LayerCam, castream_cam::Method::XGradCam]);
    assert_eq!(*s.layer.get_ref(), 3);
    assert_eq!(s.protocol.protocol().class, castream_cam::TargetClass::Predicted);
    let names: Vec<String> = s.backbones.iter().map(|b| b.name()).collect();
    assert_eq!(names, ["resnet18", "my"]);
}

#[test]
fn a_bad_list_entry_names_file_line_key_and_valid_values() {
    let msg = refusal(&INTERPRETABILITY.replace("\"x-grad-cam\"", "\"xgrad\""));
    assert!(msg.contains("experiments/mine.toml") && msg.contains("line 9"), "{msg}");
    assert!(msg.contains("unknown CAM method `xgrad`: choose one of cam, grad-cam"), "{msg}");
    let msg = refusal(&INTERPRETABILITY.replace("\"insertion\"", "\"insert\""));
    assert!(msg.contains("line 10") && msg.contains("average-drop, average-gain"), "{msg}");
    // CAM needs the GAP network; with CA alone it applies to nothing listed.
    let msg = refusal(&INTERPRETABILITY.replace("[\"gap\", \"ca\"]", "[\"ca\"]").replace("\"layer-cam\"", "\"cam\""));
    assert!(msg.contains("experiments/mine.toml:9: [quick] methods = \"cam\": applies to none of poolings"), "{msg}");
    assert!(msg.contains("valid here: grad-cam"), "{msg}");
    let msg = refusal(&INTERPRETABILITY.replace("layer = 3", "layer = 5"));
    assert!(msg.contains("experiments/mine.toml:11: [quick] layer = 5: not a stage; valid: 1, 2, 3 or 4"), "{msg}");
    let msg = refusal(&INTERPRETABILITY.replace("\"layer-cam\"", "\"cam\""));
    assert!(msg.contains("CAM reads the classifier's weights"), "{msg}");
    let msg = refusal(&INTERPRETABILITY.replace("\"x-grad-cam\"", "\"layer-cam\""));
    assert!(msg.contains("listed twice"), "{msg}");
    let msg = refusal(&INTERPRETABILITY.replace("checkpoint = \"my.safetensors\"", "weights = \"my.safetensors\""));
    assert!(msg.contains("line 7"), "{msg}");
}

#[test]
fn keys_a_target_does_not_read_are_refused() {
    let msg = refusal(&GOOD.replace("images = 8", "images = 8\nmethods = [\"grad-cam\"]").replace("demo", "mine"));
    assert!(
        msg.contains("[quick] methods: read only by target = \"interpretability\", not by target = \"data-card\""),
        "{msg}"
    );
}

/// Every registered method, pooling and metric key parses back from a spec, and docs/cam.md and
/// docs/metrics.md document each of them.
#[test]
fn every_registry_key_round_trips_through_the_spec_parser_and_is_documented() {
    use castream_cam::{Method, PoolingKind};
    use castream_metrics::Metric;
    let quote = |keys: Vec<&str>| keys.iter().map(|k| format!("\"{k}\"")).collect::<Vec<_>>().join(", ");
    let text = format!(
        "name = \"all\"\ntitle = \"t\"\ntarget = \"interpretability\"\n[quick]\npoolings = [{}]\nmethods = [{}]\nmetrics = [{}]\n",
        quote(PoolingKind::ALL.iter().map(|p| p.key()).collect()),
        quote(Method::ALL.iter().map(|m| m.key()).collect()),
        quote(Metric::ALL.iter().map(|m| m.key()).collect()),
    );
    let spec = Spec::parse(&text, Path::new("all.toml")).unwrap();
    let s = spec.settings(Profile::Quick).unwrap();
    assert_eq!(s.poolings, PoolingKind::ALL);
    assert_eq!(s.methods.iter().map(|m| *m.get_ref()).collect::<Vec<_>>(), Method::ALL);
    assert_eq!(s.metrics.iter().map(|m| *m.get_ref()).collect::<Vec<_>>(), Metric::ALL);
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
    let cam = std::fs::read_to_string(docs.join("cam.md")).unwrap();
    for m in Method::ALL {
        assert!(cam.contains(&format!("`{}`", m.key())), "docs/cam.md does not document `{}`", m.key());
    }
    for p in PoolingKind::ALL {
        assert!(cam.contains(&format!("`{}`", p.key())), "docs/cam.md does not document pooling `{}`", p.key());
    }
    let metrics = std::fs::read_to_string(docs.join("metrics.md")).unwrap();
    for m in Metric::ALL {
        assert!(metrics.contains(&format!("`{}`", m.key())), "docs/metrics.md does not document `{}`", m.key());
    }
}

/// Values the TOML types accept but the method cannot use are refused at parse time, each naming
/// the file, the line, the profile and the dotted key, the value, the valid range and a fix.
fn out_of_range(insert: &str) -> String {
    let text = GOOD.replace("[quick.scenes]", &format!("{insert}\n\n[quick.scenes]"));
    format!("{:#}", Spec::parse(&text, Path::new("experiments/demo.toml")).unwrap_err())
}

const TRAIN: &str = "[quick.stream.train]\nepochs = 10\nbatch_size = 128\nseed = 0\nschedule = { kind = \"constant\" }\n\
                     optimizer = { kind = \"adam-w\", lr = 3e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0 }";

#[test]
fn zero_stream_training_epochs_are_refused_with_file_line_and_range() {
    assert!(Spec::parse(
        &GOOD.replace("[quick.scenes]", &format!("{TRAIN}\n\n[quick.scenes]")),
        Path::new("demo.toml")
    )
    .is_ok());
    let msg = out_of_range(&TRAIN.replace("epochs = 10", "epochs = 0"));
    assert!(
        msg.contains("experiments/demo.toml:11: [quick] stream.train.epochs = 0: out of range; valid: 1 to 10000. Fix: e.g. epochs = 10"),
        "{msg}"
    );
}

#[test]
fn a_nan_or_negative_learning_rate_is_refused_with_file_line_and_range() {
    for (lr, shown) in [("nan", "NaN"), ("-0.1", "-0.1"), ("0.0", "0"), ("inf", "inf")] {
        let msg = out_of_range(&TRAIN.replace("lr = 3e-3", &format!("lr = {lr}")));
        assert!(
            msg.contains(&format!(
                "experiments/demo.toml:15: [quick] stream.train.optimizer.lr = {shown}: out of range"
            )),
            "{msg}"
        );
        assert!(msg.contains("valid: a finite number in (0, 10]. Fix: e.g. lr = 0.003"), "{msg}");
    }
}

#[test]
fn zero_bootstrap_resamples_are_refused_with_file_line_and_range() {
    let msg = out_of_range("[quick.protocol]\nresamples = 0");
    assert!(
        msg.contains("experiments/demo.toml:11: [quick] protocol.resamples = 0: out of range; valid: 1 to 1000000. Fix: e.g. resamples = 2000"),
        "{msg}"
    );
}

#[test]
fn zero_score_cam_channels_are_refused_with_file_line_and_range() {
    let msg = out_of_range("[quick.protocol]\ncam = { chunk = 64, channels = 0 }");
    assert!(
        msg.contains("experiments/demo.toml:11: [quick] protocol.cam.channels = 0: out of range; valid: 1 to 8192. Fix: e.g. channels = 256"),
        "{msg}"
    );
    let msg = out_of_range("[quick.protocol]\ncam = { chunk = 0 }");
    assert!(msg.contains("[quick] protocol.cam.chunk = 0: out of range; valid: 1 to 4096"), "{msg}");
}

#[test]
fn the_conventions_parse_by_name_and_a_bad_eps_is_refused() {
    let spec = Spec::parse(
        &GOOD.replace(
            "[quick.scenes]",
            "[quick.protocol]\ninsertion_blur = \"gaussian\"\ncam = { score_cam_upsampling = \"half-pixel\", grad_cam_pp_eps = 1e-6 }\n\n[quick.scenes]",
        ),
        Path::new("demo.toml"),
    )
    .unwrap();
    let p = spec.settings(Profile::Quick).unwrap().protocol.protocol();
    assert_eq!(
        (p.blur, p.cam.score_cam_upsampling, p.cam.grad_cam_pp_eps),
        (InsertionBlur::Gaussian, Upsampling::HalfPixel, 1e-6)
    );
    // The defaults are the authors'.
    let p = Spec::parse(GOOD, Path::new("demo.toml")).unwrap().settings(Profile::Quick).unwrap().protocol.protocol();
    assert_eq!(
        (p.blur, p.cam.score_cam_upsampling, p.cam.grad_cam_pp_eps),
        (InsertionBlur::Gkern, Upsampling::AlignCorners, f64::EPSILON)
    );
    let msg = out_of_range("[quick.protocol]\ncam = { grad_cam_pp_eps = -1.0 }");
    assert!(
        msg.contains("[quick] protocol.cam.grad_cam_pp_eps = -1: out of range; valid: above 0, at most 1"),
        "{msg}"
    );
}

#[test]
fn metric_options_parse_and_a_bad_road_step_is_refused_with_file_and_line() {
    let spec = Spec::parse(
        &GOOD.replace(
            "[quick.scenes]",
            "[quick.protocol]\nscoring = { road_step = 30, sensitivity_samples = 4 }\n\n[quick.scenes]",
        ),
        Path::new("demo.toml"),
    )
    .unwrap();
    let p = spec.settings(Profile::Quick).unwrap().protocol.protocol();
    assert_eq!((p.scoring.road_step, p.scoring.sensitivity_samples, p.scoring.road_noise), (30, 4, 0.01));
    let msg = out_of_range("[quick.protocol]\nscoring = { road_step = 60 }");
    assert!(
        msg.contains("[quick] protocol.scoring.road_step = 60: out of range; valid: 1 to 50. Fix: e.g. road_step = 10"),
        "{msg}"
    );
}

#[test]
fn zero_images_are_refused_with_file_line_and_range() {
    let msg =
        format!("{:#}", Spec::parse(&GOOD.replace("images = 8", "images = 0"), Path::new("demo.toml")).unwrap_err());
    assert!(msg.contains("demo.toml:8: [quick] images = 0: out of range; valid: at least 1"), "{msg}");
    assert!(msg.contains("Fix: e.g. images = 8"), "{msg}");
}

#[test]
fn zero_stream_train_images_are_refused_with_file_line_and_range() {
    let msg = out_of_range("[quick.stream]\nval_images = 16\ntrain_images = 0");
    assert!(
        msg.contains("experiments/demo.toml:12: [quick] stream.train_images = 0: out of range; valid: 1 to 60000. Fix: e.g. train_images = 10000"),
        "{msg}"
    );
}

/// `images` larger than the evaluated split: the range names the split and its size.
#[test]
fn images_beyond_the_data_name_the_split_and_its_size() {
    let e = Settings::check_images(20_000, Some((10_000, "Fashion-MNIST test"))).unwrap_err();
    assert_eq!(
        e.to_string(),
        "images = 20000: out of range; valid: 1 to 10000 (the Fashion-MNIST test split has 10000 images). Fix: e.g. images = 10000"
    );
    assert!(Settings::check_images(10_000, Some((10_000, "Fashion-MNIST test"))).is_ok());
    assert!(Settings::check_images(0, None).is_err());
}

#[test]
fn stream_seeds_default_by_profile_and_out_of_range_counts_are_refused() {
    let spec = Spec::parse(GOOD, Path::new("demo.toml")).unwrap();
    let quick = spec.settings(Profile::Quick).unwrap();
    assert_eq!((quick.stream_seeds(Profile::Quick), quick.stream_seeds(Profile::Paper)), (3, 1));
    let text = GOOD.replace("images = 8", "images = 8\nstream_seeds = 5");
    let five = Spec::parse(&text, Path::new("demo.toml")).unwrap();
    let five = five.settings(Profile::Quick).unwrap();
    assert_eq!(five.stream_seeds(Profile::Quick), 5);
    assert_eq!(five.stream.seeded(4).train.seed, five.stream.train.seed + 4);
    let msg = format!(
        "{:#}",
        Spec::parse(&GOOD.replace("images = 8", "images = 8\nstream_seeds = 0"), Path::new("experiments/demo.toml"))
            .unwrap_err()
    );
    assert!(
        msg.contains("experiments/demo.toml") && msg.contains("stream_seeds = 0") && msg.contains("1 to 64"),
        "{msg}"
    );
}
