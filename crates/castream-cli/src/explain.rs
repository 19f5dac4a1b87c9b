//! `castream explain`: saliency overlays (jet unless told otherwise) of CAM methods (METHOD.md §4)
//! on an image file or on a slice of the quick profile's Fashion-MNIST test scenes, one PNG per
//! image, pooling and method, optionally with a colour bar. The CLI only parses arguments;
//! everything else is here.

mod model;

use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{anyhow, bail, ensure, Context, Result};
use candle_core::{Tensor, D};
use castream_backbones::{CheckpointMeta, Stem};
use castream_cam::{explain, PoolingKind};
use castream_data::image_folder::{load_image, EvalTransform};
use castream_data::valid::in_range;
use castream_data::{DataError, Normalisation};

pub use castream_cam::{Method, MethodOptions};
pub use castream_report::colourmap::ColourMap;
pub use model::{parse_pretrained, scene_model_warning, ModelSource, PRETRAINED_EXAMPLE};

use castream_report::overlay::write_overlay;
use castream_zoo::ca::QuickData;

/// What to explain.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// An image file (any format the `image` crate was built with: PNG, JPEG), squashed to the
    /// model's input size.
    Image(PathBuf),
    /// Test scenes `start..end` of the quick profile (spec defaults: Fashion-MNIST, 64 px).
    Scenes(Range<usize>),
}

/// `start..end` (end exclusive) or a single index, as `--scenes` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SceneRange(pub Range<usize>);

impl FromStr for SceneRange {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<SceneRange> {
        let index = |t: &str| {
            t.trim().parse::<usize>().map_err(|_| anyhow!("`{s}` is not `start..end` (e.g. `0..8`) or one index"))
        };
        let range = match s.split_once("..") {
            Some((a, b)) => index(a)?..index(b)?,
            None => index(s).map(|i| i..i + 1)?,
        };
        ensure!(range.start < range.end, "`{s}` is empty: the end is exclusive, e.g. `0..8` is scenes 0 to 7");
        Ok(SceneRange(range))
    }
}

/// Which class each map explains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassChoice {
    /// The explained network's top-1 prediction (per pooling).
    Predicted,
    /// The scene's label (scenes only).
    GroundTruth,
    /// One fixed class index for every image.
    Index(u32),
}

impl FromStr for ClassChoice {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<ClassChoice> {
        match s {
            "predicted" => Ok(ClassChoice::Predicted),
            "ground-truth" => Ok(ClassChoice::GroundTruth),
            _ => s.parse().map(ClassChoice::Index).map_err(|_| {
                anyhow!("unknown class `{s}`: choose `predicted`, `ground-truth` or a class index such as `3`")
            }),
        }
    }
}

pub struct ExplainOptions {
    pub device: castream_data::DeviceChoice,
    pub input: Input,
    pub model: ModelSource,
    /// GAP, CA or both, in this order.
    pub poolings: Vec<PoolingKind>,
    pub methods: Vec<Method>,
    pub method_options: MethodOptions,
    /// `None`: the ground truth for scenes, the prediction for an image file.
    pub class: Option<ClassChoice>,
    pub out: PathBuf,
    /// The saliency colour map (jet, the paper's, by default).
    pub colour_map: ColourMap,
    /// Draw a vertical colour bar labelled 0 and 1 beside each overlay.
    pub colour_bar: bool,
    /// Input side in pixels for an image file; `None`: the checkpoint's (see [`input_size`]).
    pub size: Option<usize>,
    /// Screen pixels per image pixel; `None`: `max(1, 256 / side)`.
    pub scale: Option<usize>,
}

/// One PNG written, and what it shows.
#[derive(Debug, Clone)]
pub struct Written {
    pub path: PathBuf,
    /// `scene 12` or the image file's name.
    pub image: String,
    pub pooling: PoolingKind,
    pub method: Method,
    /// The top-1 class and its softmax probability.
    pub predicted: u32,
    pub probability: f32,
    /// The class the map explains.
    pub explained: u32,
}

/// Images per forward pass.
const BATCH: usize = 16;

/// The input side a checkpoint expects: `extra.input_size`, else `extra.scenes.canvas` (the quick
/// backbones: 64), else 64 for the small stem and 224 for the ImageNet stem.
pub fn input_size(meta: &CheckpointMeta) -> usize {
    let extra = |p: &str| meta.extra.pointer(p).and_then(|v| v.as_u64()).map(|v| v as usize);
    extra("/input_size").or_else(|| extra("/scenes/canvas")).unwrap_or(match meta.config.stem {
        Stem::Small => 64,
        Stem::Imagenet => 224,
    })
}

/// Checks the flag combinations before anything is loaded; errors name the flag and the fix.
pub fn validate(opts: &ExplainOptions) -> Result<()> {
    ensure!(!opts.methods.is_empty(), "--method: give at least one method, e.g. `--method grad-cam`");
    ensure!(!opts.poolings.is_empty(), "--pooling: give `gap`, `ca` or `gap,ca`");
    let has = |p| opts.poolings.contains(&p);
    for &m in &opts.methods {
        if !has(PoolingKind::Gap) && !m.applies_to(PoolingKind::Ca) {
            bail!("--method {}: needs --pooling gap (CAM reads the GAP classifier's weights; the CA model has no GAP). Fix: use --pooling gap (or gap,ca), or a gradient method such as grad-cam", m.key());
        }
        if !has(PoolingKind::Ca) && !m.applies_to(PoolingKind::Gap) {
            bail!("--method {}: needs --pooling ca (the GAP network has no attention). Fix: add --pooling ca (or gap,ca), or drop {}", m.key(), m.key());
        }
    }
    if has(PoolingKind::Ca) && !opts.model.has_stream() {
        bail!(
            "--pooling ca with {}: it comes with no trained CA-Stream. Fix: --pooling gap with this model; for CA, train a \
             stream on its backbone with `castream train-stream` and pass --stream (docs/paper-profile.md), or use \
             --backbone <name> (a shipped quick backbone, default resnet18)",
            opts.model.flag()
        );
    }
    if let (Input::Image(path), Some(ClassChoice::GroundTruth)) = (&opts.input, opts.class) {
        bail!("--class ground-truth with --image {}: an image file has no label. Fix: use --class predicted or --class <index>, or --scenes", path.display());
    }
    opts.method_options.validate().map_err(|e| anyhow!("{}", e.as_flag(&format!("--{}", e.key))))?;
    if let Some(size) = opts.size {
        in_range("size", size, SIZES, 224).map_err(|e| anyhow!("{}", e.as_flag("--size")))?;
    }
    if let Some(scale) = opts.scale {
        in_range("scale", scale, SCALES, 4).map_err(|e| anyhow!("{}", e.as_flag("--scale")))?;
    }
    Ok(())
}

/// `--size`: an input side from 32 px (the ImageNet stem's last stage is then 1x1) to 1024 px.
pub const SIZES: RangeInclusive<usize> = 32..=1024;
/// `--scale`: screen pixels per image pixel, 1 to 64 ...
pub const SCALES: RangeInclusive<usize> = 1..=64;
/// ... and at most this many pixels on an overlay's side (`side x scale`).
pub const MAX_OVERLAY_SIDE: usize = 4096;

/// The screen pixels per image pixel for an input of `side` pixels: `--scale`, else
/// `max(1, 256 / side)`; refused when the overlay would exceed [`MAX_OVERLAY_SIDE`].
fn overlay_scale(scale: Option<usize>, side: usize) -> Result<usize> {
    let scale = scale.unwrap_or((256 / side).max(1));
    ensure!(
        side * scale <= MAX_OVERLAY_SIDE,
        "--scale {scale}: a {side} px input would give overlays of {} px; valid: at most {MAX_OVERLAY_SIDE} px a side \
         (scale 1 to {} here). Fix: e.g. --scale {}",
        side * scale,
        (MAX_OVERLAY_SIDE / side).max(1),
        (MAX_OVERLAY_SIDE / side).clamp(1, (256 / side).max(1))
    );
    Ok(scale)
}

/// One image to explain: CHW pixels in [0, 1].
struct Item {
    name: String,
    file_stem: String,
    rgb: Vec<f32>,
    label: Option<u32>,
}

/// Writes the overlays of `opts` under `opts.out`, prints each image's predictions and the paths,
/// and returns what was written.
pub fn run(root: &Path, opts: &ExplainOptions) -> Result<Vec<Written>> {
    validate(opts)?;
    let device = opts.device.device()?;
    let needs_data = matches!(opts.input, Input::Scenes(_))
        || (opts.poolings.contains(&PoolingKind::Ca) && matches!(opts.model, ModelSource::Backbone(_)));
    let data = if needs_data { Some(QuickData::load(&Default::default(), &Default::default())?) } else { None };
    let (loaded, meta) = model::load(root, &opts.model, &opts.poolings, data.as_ref(), &device)?;
    if let Some(warning) = model::scene_model_warning(&meta, &opts.input) {
        eprintln!("{warning}");
    }
    let num_classes = loaded.backbone().net.num_classes();
    if let Some(ClassChoice::Index(c)) = opts.class {
        ensure!(
            (c as usize) < num_classes,
            "--class {c}: the model has {num_classes} classes; Fix: give an index in 0..{}",
            num_classes - 1
        );
    }
    let class_name = |c: u32| meta.classes.get(c as usize).cloned().unwrap_or_else(|| format!("class {c}"));

    let (items, side) = match &opts.input {
        Input::Image(path) => {
            let side = opts.size.unwrap_or_else(|| input_size(&meta));
            ensure!(
                SIZES.contains(&side),
                "the checkpoint's input size ({side} px, from its sidecar's `extra`) is out of range; valid: {} to {} px. \
                 Fix: give --size, e.g. --size 224",
                SIZES.start(),
                SIZES.end()
            );
            let identity = Normalisation { mean: [0.0; 3], std: [1.0; 3] };
            let rgb =
                load_image(path, EvalTransform::Squash { size: side as u32 }, &identity).map_err(|e| match e {
                    DataError::Io { source, .. } => {
                        anyhow!("--image {}: cannot read: {source}. Fix: check the path", path.display())
                    }
                    DataError::Decode { reason, .. } => {
                        anyhow!(
                            "--image {}: cannot decode it as an image ({reason}). Fix: give a PNG or JPEG file",
                            path.display()
                        )
                    }
                    e => anyhow!("--image {}: {e}", path.display()),
                })?;
            let name = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let file_stem = sanitise(&path.file_stem().map(|s| s.to_string_lossy()).unwrap_or_default());
            (vec![Item { name, file_stem, rgb, label: None }], side)
        }
        Input::Scenes(range) => {
            let test = &data.as_ref().expect("loaded for scenes").test;
            ensure!(
                range.end <= test.len(),
                "--scenes {}..{}: the test split has {} scenes; Fix: use a range within 0..{}",
                range.start,
                range.end,
                test.len(),
                test.len()
            );
            let ids: Vec<usize> = range.clone().collect();
            let items = ids
                .iter()
                .zip(test.scenes(&ids))
                .map(|(&i, s)| Item {
                    name: format!("scene {i} (truth: {})", test.dataset.class_names()[s.label]),
                    file_stem: format!("scene-{i:05}"),
                    rgb: s.image,
                    label: Some(s.label as u32),
                })
                .collect();
            (items, test.config.canvas)
        }
    };
    let choice = opts.class.unwrap_or(match opts.input {
        Input::Image(_) => ClassChoice::Predicted,
        Input::Scenes(_) => ClassChoice::GroundTruth,
    });
    let scale = overlay_scale(opts.scale, side)?;
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("--out {}: cannot create the folder", opts.out.display()))?;
    for &p in &opts.poolings {
        for m in opts.methods.iter().filter(|m| !m.applies_to(p)) {
            println!("note: {} does not apply to {p}; skipped there", m.key());
        }
    }

    let norm = meta.normalisation;
    let tag = opts.model.tag();
    let mut written = Vec::new();
    for batch in items.chunks(BATCH) {
        let mut x = Vec::with_capacity(batch.len() * 3 * side * side);
        for item in batch {
            let mut chw = item.rgb.clone();
            norm.apply(&mut chw);
            x.extend(chw);
        }
        let x = Tensor::from_vec(x, (batch.len(), 3, side, side), &device)?;
        // Per pooling: softmax probabilities, explained classes and each method's maps.
        let mut results = Vec::new();
        for &pooling in &opts.poolings {
            let subject = loaded.subject(pooling, norm);
            let probs: Vec<Vec<f32>> = candle_nn::ops::softmax(&subject.logits(&x)?, D::Minus1)?.to_vec2()?;
            let classes: Vec<u32> = match choice {
                ClassChoice::Predicted => probs.iter().map(|p| argmax(p)).collect(),
                ClassChoice::GroundTruth => batch.iter().map(|i| i.label.expect("scenes have labels")).collect(),
                ClassChoice::Index(c) => vec![c; batch.len()],
            };
            let mut maps = Vec::new();
            for &method in opts.methods.iter().filter(|m| m.applies_to(pooling)) {
                let e = explain(method.build(&opts.method_options).as_ref(), &subject, &x, &classes)?;
                maps.push((method, e.upsampled.flatten_from(1)?.to_vec2::<f32>()?));
            }
            results.push((pooling, probs, classes, maps));
        }
        for (b, item) in batch.iter().enumerate() {
            for (pooling, probs, classes, maps) in &results {
                let top = argmax(&probs[b]);
                let p = probs[b][top as usize];
                let explained = classes[b];
                println!(
                    "{}: {pooling} predicts {} ({:.1}%), explaining {}",
                    item.name,
                    class_name(top),
                    100.0 * p,
                    class_name(explained)
                );
                for (method, maps) in maps {
                    let path =
                        opts.out.join(format!("{}_{tag}_{}_{}.png", item.file_stem, pooling.key(), method.key()));
                    let rgb = opts.colour_map.blend(&item.rgb, &maps[b]);
                    write_overlay(&path, &rgb, side, scale, opts.colour_bar.then_some(opts.colour_map))?;
                    println!("  {}", path.display());
                    let (pooling, method, image) = (*pooling, *method, item.name.clone());
                    written.push(Written { path, image, pooling, method, predicted: top, probability: p, explained });
                }
            }
        }
    }
    Ok(written)
}

fn argmax(p: &[f32]) -> u32 {
    p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as u32)
}

/// Letters, digits, `-` and `_` kept; anything else becomes `_`.
fn sanitise(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scene_ranges_parse_or_say_why_not() {
        assert_eq!("3..7".parse::<SceneRange>().unwrap().0, 3..7);
        assert_eq!("5".parse::<SceneRange>().unwrap().0, 5..6);
        assert!("7..3".parse::<SceneRange>().unwrap_err().to_string().contains("empty"));
        assert!("a..b".parse::<SceneRange>().unwrap_err().to_string().contains("start..end"));
    }

    #[test]
    fn class_choices_parse() {
        assert_eq!("predicted".parse::<ClassChoice>().unwrap(), ClassChoice::Predicted);
        assert_eq!("ground-truth".parse::<ClassChoice>().unwrap(), ClassChoice::GroundTruth);
        assert_eq!("4".parse::<ClassChoice>().unwrap(), ClassChoice::Index(4));
        assert!("truth".parse::<ClassChoice>().unwrap_err().to_string().contains("ground-truth"));
    }
}
