//! A miniature ImageNet that proves the paper profile end to end without ImageNet: quick-profile
//! scenes written as JPEG files in synset-named class folders (train), a validation folder with a
//! `val.csv` in the authors' `name,label` format and object boxes, MNIST digit scenes as the
//! unseen classes, and small timm-named ResNet and ConvNeXt weights placed in an hf-hub cache.
//! Beside them, stream recipes and copies of the repository's specs whose `[paper]` tables point
//! at all of it. `castream paper-fixture <dir>` builds it; the end-to-end test and
//! `scripts/paper-smoke.sh` run the paper profile's commands on it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Tensor;
use castream_backbones::{Arch, BackboneConfig, Model};
use castream_data::device::cpu;
use castream_data::discovery::{DataLocation, DatasetName, Locator};
use castream_data::hub::{put_in_cache, HubRepo, RepoKind};
use castream_data::labelled::Split;
use castream_data::scenes::{Scene, SceneConfig, SceneSet};
use toml::{Table, Value};

use crate::backbone::HUB_WEIGHTS;

/// Side the fixture's evaluation and training transforms produce (`F_4` is 3x3).
pub const SIDE: i64 = 96;
const CLASSES: usize = 10;
const TRAIN_PER_CLASS: usize = 20;
const VAL_PER_CLASS: usize = 6;
const UNSEEN_PER_CLASS: usize = 3;

/// The two fixture backbones: hub repository, spec table.
fn backbones() -> [(&'static str, BackboneConfig, Value); 2] {
    let resnet = BackboneConfig { base_width: Some(8), ..BackboneConfig::new(Arch::Resnet18, CLASSES) };
    let convnext = BackboneConfig {
        base_width: Some(16),
        depths: Some([1, 1, 1, 1]),
        ..BackboneConfig::new(Arch::ConvnextTiny, CLASSES)
    };
    let entry = |arch: &str, hub: &str, width: i64, depths: Option<[i64; 4]>| {
        let mut t = Table::new();
        t.insert("arch".into(), arch.into());
        t.insert("hub".into(), hub.into());
        t.insert("num_classes".into(), Value::Integer(CLASSES as i64));
        t.insert("base_width".into(), Value::Integer(width));
        if let Some(d) = depths {
            t.insert("depths".into(), Value::Array(d.iter().map(|&v| Value::Integer(v)).collect()));
        }
        Value::Table(t)
    };
    [
        ("castream-fixture/resnet18-tiny", resnet, entry("resnet18", "castream-fixture/resnet18-tiny", 8, None)),
        (
            "castream-fixture/convnext-tiny",
            convnext,
            entry("convnext-tiny", "castream-fixture/convnext-tiny", 16, Some([1, 1, 1, 1])),
        ),
    ]
}

/// The streams the paper specs need: (recipe name, backbone index, taps, heads). Table 4's
/// variants are on the ResNet.
const STREAMS: [(&str, usize, &[i64], i64); 5] = [
    ("resnet", 0, &[0, 1, 2, 3, 4], 1),
    ("resnet-last-two", 0, &[3, 4], 1),
    ("resnet-last", 0, &[4], 1),
    ("resnet-4-heads", 0, &[0, 1, 2, 3, 4], 4),
    ("convnext", 1, &[0, 1, 2, 3, 4], 1),
];

pub struct PaperFixture {
    /// The hf-hub cache holding the weights (set `HF_HUB_CACHE` to it, `HF_HUB_OFFLINE=1`).
    pub hub_cache: PathBuf,
    /// The stream recipes.
    pub recipes: Vec<PathBuf>,
}

/// Builds the fixture in `dir` (which becomes the root the commands run in) from the
/// repository at `repo` (its `experiments/`). Needs the quick profile's Fashion-MNIST and MNIST.
pub fn build(repo: &Path, dir: &Path) -> Result<PaperFixture> {
    // Absolute paths in specs and recipes: the commands then work from any folder (the
    // repository's `cargo xtask` included).
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    let dir = &std::path::absolute(dir)?;
    let at = |p: &str| Value::String(dir.join(p).display().to_string());
    let scenes = SceneConfig::default();
    let load = |name: DatasetName, split: Split| -> Result<SceneSet> {
        let located = Locator::from_environment(name).locate(name, &DataLocation::default())?;
        Ok(SceneSet::new(located.load(split)?, name, split, scenes.clone())?)
    };
    let data = dir.join("data");
    let fashion_train = load(DatasetName::FashionMnist, Split::Train)?;
    for (i, scene) in per_class(&fashion_train, TRAIN_PER_CLASS) {
        let class = format!("n{:08}", scene.label);
        write_jpeg(&data.join("train").join(&class).join(format!("{class}_{i}.JPEG")), &scene)?;
    }
    let fashion_test = load(DatasetName::FashionMnist, Split::Test)?;
    let (mut list, mut boxes) = (String::new(), String::from("name,x0,y0,x1,y1\n"));
    for (k, (_, scene)) in per_class(&fashion_test, VAL_PER_CLASS).into_iter().enumerate() {
        let name = format!("ILSVRC2012_val_{:08}.JPEG", k + 1);
        write_jpeg(&data.join("val").join(&name), &scene)?;
        writeln!(list, "{name},{}", scene.label)?;
        if let Some(b) = scene.bbox {
            writeln!(boxes, "{name},{},{},{},{}", b.x0, b.y0, b.x1, b.y1)?;
        }
    }
    write(&data.join("val.csv"), &list)?;
    write(&data.join("val_boxes.csv"), &boxes)?;
    let digits = load(DatasetName::Mnist, Split::Test)?;
    for (i, scene) in per_class(&digits, UNSEEN_PER_CLASS) {
        write_jpeg(&data.join("unseen").join(format!("digit-{}", scene.label)).join(format!("{i}.JPEG")), &scene)?;
    }

    let hub_cache = dir.join("hf-cache");
    let backbones = backbones();
    for (seed, (repo_id, config, _)) in backbones.iter().enumerate() {
        let model = Model::new(config.clone(), seed as u64 + 1, &cpu())?;
        let tensors: Vec<(String, Tensor)> =
            model.named_vars().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
        let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), None)?;
        put_in_cache(&hub_cache, &HubRepo::new(repo_id, RepoKind::Model), HUB_WEIGHTS, &bytes)?;
    }

    let transform = || {
        let mut t = Table::new();
        t.insert("kind".into(), "squash".into());
        t.insert("size".into(), Value::Integer(SIDE));
        Value::Table(t)
    };
    let image_set = |root: &str, list: Option<&str>, boxes: Option<&str>| {
        let mut t = Table::new();
        t.insert("root".into(), at(root));
        if let Some(l) = list {
            t.insert("list".into(), at(l));
        }
        t.insert("transform".into(), transform());
        if let Some(b) = boxes {
            t.insert("boxes".into(), at(b));
        }
        Value::Table(t)
    };
    let experiments = dir.join("experiments");
    let mut recipes = Vec::new();
    for (name, backbone, taps, heads) in STREAMS {
        let recipe = format!(
            "# A fixture stream: one epoch on the miniature ImageNet.\nname = \"{name}\"\nbackbone = {}\noutput = {}\n\
             val_images = 40\neval_batch_size = 32\n\n[train_data]\nroot = {}\n\n[val_data]\nroot = {}\nlist = {}\n\
             transform = {{ kind = \"squash\", size = {SIDE} }}\n\n[augment]\nsize = {SIDE}\n\n[stream]\ntaps = {taps:?}\nheads = {heads}\n\n\
             [train]\nepochs = 1\nbatch_size = 32\nseed = 0\noptimizer = {{ kind = \"adam-w\", lr = 0.003, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0 }}\n\
             schedule = {{ kind = \"constant\" }}\n",
            backbones[backbone].2,
            at(&format!("streams/{name}.safetensors")),
            at("data/train"),
            at("data/val"),
            at("data/val.csv"),
        );
        let path = PathBuf::from("experiments/streams").join(format!("{name}.toml"));
        write(&dir.join(&path), &recipe)?;
        recipes.push(dir.join(path));
    }
    let streams = Value::Array(STREAMS.iter().map(|s| at(&format!("streams/{}.safetensors", s.0))).collect());
    for entry in
        std::fs::read_dir(repo.join("experiments")).with_context(|| format!("{}/experiments", repo.display()))?
    {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let name = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path)?;
        let mut spec: Table = toml::from_str(&text).with_context(|| path.display().to_string())?;
        if let Some(Value::Table(paper)) = spec.get_mut("paper") {
            let chosen: Vec<Value> = match name.as_str() {
                "table1" => backbones.iter().map(|b| b.2.clone()).collect(),
                "table3" => vec![backbones[1].2.clone()],
                _ => vec![backbones[0].2.clone()],
            };
            paper.insert("backbones".into(), Value::Array(chosen));
            paper.insert("streams".into(), streams.clone());
            let images = paper.get("images").and_then(Value::as_integer).unwrap_or(16).min(16);
            paper.insert("images".into(), Value::Integer(images));
            paper.insert("batch_size".into(), Value::Integer(16));
            let mut data = Table::new();
            data.insert("imagenet".into(), image_set("data/val", Some("data/val.csv"), Some("data/val_boxes.csv")));
            data.insert("unseen".into(), image_set("data/unseen", None, None));
            paper.insert("data".into(), Value::Table(data));
        }
        write(&experiments.join(format!("{name}.toml")), &toml::to_string(&spec)?)?;
    }
    Ok(PaperFixture { hub_cache, recipes })
}

/// The first `n` scenes of each of the first [`CLASSES`] classes, with their indices.
fn per_class(set: &SceneSet, n: usize) -> Vec<(usize, Scene)> {
    let mut counts = [0usize; CLASSES];
    let mut out = Vec::new();
    for i in 0..set.len() {
        let label = set.source.label(i);
        if label < CLASSES && counts[label] < n {
            counts[label] += 1;
            out.push((i, set.scene(i)));
        }
        if counts.iter().all(|&c| c == n) {
            break;
        }
    }
    out
}

fn write_jpeg(path: &Path, scene: &Scene) -> Result<()> {
    let side = (scene.image.len() / 3).isqrt();
    let plane = side * side;
    let image = image::RgbImage::from_fn(side as u32, side as u32, |x, y| {
        let p = y as usize * side + x as usize;
        image::Rgb([0, 1, 2].map(|c| (scene.image[c * plane + p] * 255.0).round().clamp(0.0, 255.0) as u8))
    });
    std::fs::create_dir_all(path.parent().expect("a file in a folder"))?;
    image.save_with_format(path, image::ImageFormat::Jpeg).with_context(|| path.display().to_string())
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::create_dir_all(path.parent().expect("a file in a folder"))?;
    std::fs::write(path, text).with_context(|| path.display().to_string())
}
