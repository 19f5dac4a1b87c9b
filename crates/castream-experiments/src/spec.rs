//! Experiment specs: one TOML file per catalogue entry under `experiments/`, with a `[quick]` and a
//! `[paper]` profile. The schema is documented in `docs/specs.md`; unknown keys are rejected so a
//! typo never silently falls back to a default.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};
use castream_backbones::optim::OptimizerConfig;
use castream_backbones::schedule::Schedule;
use castream_backbones::train::TrainConfig;
use castream_cam::{MethodOptions, TargetClass};
use castream_data::discovery::DataLocation;
use castream_data::image_folder::EvalTransform;
use castream_data::scenes::SceneConfig;
use castream_data::Normalisation;
use castream_metrics::causal::CausalVariant;
use castream_stream::StreamConfig;
use serde::{Deserialize, Serialize};

/// What a spec reproduces: the catalogue of EXPERIMENTS.md plus the dataset card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    DataCard,
    Table1,
    Table2,
    Table3,
    Table4,
    Table5,
    Table6,
    Figure1,
    Figure2,
    Figure3,
    Figure4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    Quick,
    Paper,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Quick => "quick",
            Profile::Paper => "paper",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "quick" => Ok(Profile::Quick),
            "paper" => Ok(Profile::Paper),
            other => Err(format!("unknown profile `{other}`: use `quick` or `paper`")),
        }
    }
}

/// A whole spec file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Must equal the file name without `.toml`.
    pub name: String,
    pub title: String,
    pub target: Target,
    #[serde(default)]
    pub description: String,
    pub quick: Option<Settings>,
    pub paper: Option<Settings>,
    /// Where the spec was read from (not part of the file).
    #[serde(skip)]
    pub path: PathBuf,
}

/// The settings of one profile. Every key is optional; defaults are documented in docs/specs.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Seed of every random choice of the run (scene generation has its own `scenes.seed`).
    pub seed: u64,
    /// Number of evaluation images; `--images N` overrides it. Each target documents its default.
    pub images: Option<usize>,
    /// Images per forward pass.
    pub batch_size: usize,
    pub data: DataSpec,
    pub scenes: SceneConfig,
    /// Input normalisation of the paper profile (default: ImageNet statistics). Quick-profile
    /// targets use the normalisation stored with each backbone checkpoint instead.
    pub normalisation: Normalisation,
    /// Quick profile: the shipped backbones (`checkpoints/quick/<name>.safetensors`) to evaluate.
    pub backbones: Vec<String>,
    /// The CA-Stream and its training on the frozen backbone.
    pub stream: StreamSpec,
    /// How saliency maps are computed and scored (tables 2–6).
    pub metrics: MetricsSpec,
}

/// The interpretability metrics' options (METHOD.md §5); the defaults are the authors' variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSpec {
    /// Insertion/deletion: `authors` (8 rows of pixels per step, ground-truth class) or `opti-cam`
    /// (one row per step, the predicted class explained and scored everywhere).
    pub causal: CausalChoice,
    /// Options of the CAM methods (Score-CAM's `chunk` and `channels`, raw attention's block).
    pub cam: MethodOptions,
    /// Bootstrap resamples of every confidence interval.
    pub resamples: usize,
}

impl Default for MetricsSpec {
    fn default() -> Self {
        MetricsSpec { causal: CausalChoice::Authors, cam: MethodOptions::default(), resamples: 2000 }
    }
}

/// The spec spelling of [`CausalVariant`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CausalChoice {
    Authors,
    OptiCam,
}

impl CausalChoice {
    pub fn variant(self) -> CausalVariant {
        match self {
            CausalChoice::Authors => CausalVariant::Authors,
            CausalChoice::OptiCam => CausalVariant::OptiCam,
        }
    }

    /// The class each map explains and every score tracks.
    pub fn target_class(self) -> TargetClass {
        match self {
            CausalChoice::Authors => TargetClass::GroundTruth,
            CausalChoice::OptiCam => TargetClass::Predicted,
        }
    }

    /// How table footers name the variant.
    pub fn describe(self) -> &'static str {
        match self {
            CausalChoice::Authors => {
                "authors' variant: ground-truth class; insertion/deletion change 8 rows of pixels per step"
            }
            CausalChoice::OptiCam => {
                "Opti-CAM variant: predicted class; insertion/deletion change one row of pixels per step"
            }
        }
    }
}

/// How the CA-Stream is built and trained (METHOD.md §2–3). Trained streams are cached under
/// `target/castream/streams/`, keyed by backbone checkpoint, this table and the scene settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamSpec {
    pub config: StreamConfig,
    /// Training scenes (the first ones of the Fashion-MNIST train split), whose stage features are
    /// cached in memory once.
    pub train_images: usize,
    /// Validation scenes (from the end of the train split, outside the backbones' training set).
    pub val_images: usize,
    pub train: TrainConfig,
}

impl Default for StreamSpec {
    fn default() -> Self {
        StreamSpec {
            config: StreamConfig::default(),
            train_images: 10_000,
            val_images: 2_000,
            train: TrainConfig {
                epochs: 10,
                batch_size: 128,
                optimizer: OptimizerConfig::adamw(3e-3, 0.0),
                schedule: Schedule::Cosine { warmup_epochs: 0.5, min_ratio: 0.01 },
                seed: 0,
            },
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            seed: 0,
            images: None,
            batch_size: 64,
            data: DataSpec::default(),
            scenes: SceneConfig::default(),
            normalisation: Normalisation::IMAGENET,
            backbones: vec!["resnet18".into()],
            stream: StreamSpec::default(),
            metrics: MetricsSpec::default(),
        }
    }
}

/// Where the datasets are. Quick-profile datasets are found automatically (see
/// `castream_data::discovery`); the paper profile's image sets must be given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct DataSpec {
    pub fashion_mnist: DataLocation,
    pub mnist: DataLocation,
    /// The paper profile's evaluation set (ImageNet validation).
    pub imagenet: Option<ImageSetSpec>,
    /// Images of classes the network never saw (paper: MIT 67 Indoor Scenes; figure4).
    pub unseen: Option<ImageSetSpec>,
}

/// An image set on disk: a `name,label` list or a class-per-folder tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSetSpec {
    /// Folder the list's names are relative to, or the root of the class folders.
    pub root: PathBuf,
    /// A `name,label` list (the authors' format); absent: one sub-folder per class under `root`.
    pub list: Option<PathBuf>,
    #[serde(default)]
    pub transform: EvalTransform,
}

impl Spec {
    /// Reads and validates `path`. Errors name the file, the line and column, and the fix.
    pub fn load(path: &Path) -> Result<Spec> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            let available = path.parent().map(available_specs).unwrap_or_default();
            anyhow!(
                "{}: cannot read spec: {e}\nFix: use one of the specs in {}: {}",
                path.display(),
                path.parent().map(|p| p.display().to_string()).unwrap_or_default(),
                if available.is_empty() { "(none found)".to_string() } else { available.join(", ") }
            )
        })?;
        Spec::parse(&text, path)
    }

    /// Parses spec text; `path` is used for messages and the name check.
    pub fn parse(text: &str, path: &Path) -> Result<Spec> {
        let mut spec: Spec = toml::from_str(text).map_err(|e| {
            anyhow!(
                "{}: {}Fix: correct the key or value above; the schema is documented in docs/specs.md",
                path.display(),
                e
            )
        })?;
        spec.path = path.to_path_buf();
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        if spec.name != stem {
            bail!(
                "{}: `name = \"{}\"` differs from the file name; Fix: set `name = \"{stem}\"`",
                path.display(),
                spec.name
            );
        }
        for (profile, settings) in [(Profile::Quick, &spec.quick), (Profile::Paper, &spec.paper)] {
            if let Some(s) = settings {
                s.scenes.validate().with_context(|| format!("{}: in [{profile}]", path.display()))?;
                if s.batch_size == 0 {
                    bail!("{}: [{profile}] batch_size must be at least 1", path.display());
                }
            }
        }
        Ok(spec)
    }

    /// The settings of `profile`, or an error saying the spec lacks that table.
    pub fn settings(&self, profile: Profile) -> Result<&Settings> {
        match profile {
            Profile::Quick => self.quick.as_ref(),
            Profile::Paper => self.paper.as_ref(),
        }
        .with_context(|| format!("{}: has no [{profile}] table; Fix: add one (see docs/specs.md)", self.path.display()))
    }
}

/// The spec names (file stems) in a directory, sorted.
pub fn available_specs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
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
}
