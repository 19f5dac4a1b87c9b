//! The settings of one profile (`[quick]` / `[paper]`) and their defaults (docs/specs.md).

use castream_cam::{Method, MethodOptions, PoolingKind, TargetClass};
use castream_data::discovery::DataLocation;
pub use castream_data::image_set::ImageSetSpec;
use castream_data::scenes::SceneConfig;
use castream_data::valid::{in_range, OutOfRange};
use castream_data::DeviceChoice;
use castream_data::Normalisation;
use castream_eval::{Baseline, CausalChoice, Protocol};
use castream_metrics::blur::InsertionBlur;
use castream_metrics::options::MetricOptions;
use castream_metrics::Metric;
use castream_stream::AttentionSelect;
use castream_zoo::ca::StreamSpec;
use castream_zoo::stream_checkpoint::StreamSource;
use castream_zoo::BackboneSpec;
use serde::{Deserialize, Serialize};
use toml::Spanned;

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
    /// Where tensors live (`cpu`, `cuda`, `cuda:N`); `--device` overrides it. Default: the CPU.
    pub device: Option<DeviceChoice>,
    pub data: DataSpec,
    pub scenes: SceneConfig,
    /// Input normalisation of the paper profile (default: ImageNet statistics). Quick-profile
    /// targets use the normalisation stored with each backbone checkpoint instead.
    pub normalisation: Normalisation,
    /// The backbones to evaluate: shipped names, castream checkpoints or hf-hub repositories.
    pub backbones: Vec<BackboneSpec>,
    /// The CA-Stream and its training on the frozen backbone.
    pub stream: StreamSpec,
    /// How many streams per backbone (and configuration) a target trains and evaluates, with
    /// training seeds `stream.train.seed + k`; default: 3 on the quick profile, 1 on the paper
    /// profile ([`Settings::stream_seeds`]).
    pub stream_seeds: Option<usize>,
    /// Trained streams (files written by `castream train-stream`, or `hub:owner/name`): a backbone
    /// whose stream configuration matches one is evaluated with it instead of training a stream.
    /// The paper profile needs one per backbone (and per table4 variant).
    pub streams: Vec<StreamSource>,
    /// How saliency maps are computed and scored.
    pub protocol: ProtocolSpec,
    /// Interpretability experiments: the networks explained, GAP and/or CA.
    pub poolings: Vec<PoolingKind>,
    /// Interpretability experiments: the CAM methods, by registry key.
    pub methods: Vec<Spanned<Method>>,
    /// Interpretability experiments: raw-attention maps of the CA model scored like methods.
    pub attention: Vec<AttentionChoice>,
    /// Interpretability experiments: model-free maps scored like methods.
    pub baselines: Vec<Baseline>,
    /// Interpretability experiments: the metrics, by registry key.
    pub metrics: Vec<Spanned<Metric>>,
    /// The stage whose output the CAM methods explain, 1–4.
    pub layer: Spanned<usize>,
    /// Interpretability experiments: add the model-randomisation sanity check of every method.
    pub sanity: bool,
    /// The network of `experiments/paper-values.toml` whose published values stand beside ours.
    pub paper: Option<String>,
    /// Lines added to the table's footer.
    pub notes: Vec<String>,
}

/// How maps are computed and scored (METHOD.md §4–5); the defaults are the authors'.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProtocolSpec {
    /// Insertion/deletion: `authors` (8 rows of pixels per step, ground-truth class) or `opti-cam`
    /// (one row per step, the predicted class explained and scored everywhere).
    pub causal: CausalChoice,
    /// The class each map explains and every score tracks; default: the `causal` preset's.
    pub class: Option<TargetClass>,
    /// Options of the CAM methods (Score-CAM's `chunk`, `channels` and upsampling, Grad-CAM++'s
    /// `eps`, raw attention's block).
    pub cam: MethodOptions,
    /// The blur insertion starts from: the authors' `gkern` or a closed-form Gaussian.
    pub insertion_blur: InsertionBlur,
    /// ROAD's removal step and noise, max-sensitivity's radius and samples.
    pub scoring: MetricOptions,
    /// Bootstrap resamples of every confidence interval.
    pub resamples: usize,
}

impl ProtocolSpec {
    /// Most bootstrap resamples of an interval.
    pub const MAX_RESAMPLES: usize = 1_000_000;

    /// The evaluation protocol these settings declare.
    pub fn protocol(&self) -> Protocol {
        Protocol { scoring: self.scoring, ..Protocol::new(self.causal, self.class, self.cam, self.insertion_blur) }
    }

    /// The valid ranges (docs/specs.md, "Valid ranges"): `resamples` 1 to
    /// [`Self::MAX_RESAMPLES`], and the CAM options' ([`MethodOptions::validate`]).
    pub fn validate(&self) -> Result<(), OutOfRange> {
        in_range("resamples", self.resamples, 1..=Self::MAX_RESAMPLES, 2000)?;
        self.scoring.validate().map_err(|e| e.within("scoring"))?;
        self.cam.validate().map_err(|e| e.within("cam"))
    }
}

impl Settings {
    /// Most streams per backbone.
    pub const MAX_STREAM_SEEDS: usize = 64;

    /// The number of streams per backbone: the spec's `stream_seeds`, else 3 on the quick profile
    /// (so the intervals include seed variation) and 1 on the paper profile (the authors train one).
    pub fn stream_seeds(&self, profile: super::Profile) -> usize {
        self.stream_seeds.unwrap_or(match profile {
            super::Profile::Quick => 3,
            super::Profile::Paper => 1,
        })
    }

    /// The ranges of the values in these settings (docs/specs.md, "Valid ranges"), each checked
    /// by the type that owns it; keys are dotted from the profile's table (`stream.train.epochs`).
    /// `images` is checked against the data's size later, by [`Settings::check_images`].
    pub fn validate(&self) -> Result<(), OutOfRange> {
        if let Some(n) = self.images {
            Settings::check_images(n, None)?;
        }
        if let Some(n) = self.stream_seeds {
            in_range("stream_seeds", n, 1..=Self::MAX_STREAM_SEEDS, 3)?;
        }
        self.stream.validate().map_err(|e| e.within("stream"))?;
        self.protocol.validate().map_err(|e| e.within("protocol"))
    }

    /// `images` (from the spec or `--images`): at least 1 and, once the data is loaded, at most
    /// `available`, the size of the evaluated split (named by `split`).
    pub fn check_images(n: usize, available: Option<(usize, &str)>) -> Result<(), OutOfRange> {
        match available {
            _ if n == 0 => Err(OutOfRange::new("images", n, "at least 1 (and at most the evaluated split's size)", 8)),
            Some((size, split)) if n > size => {
                Err(OutOfRange::new("images", n, format!("1 to {size} (the {split} split has {size} images)"), size))
            }
            _ => Ok(()),
        }
    }
}

impl Default for ProtocolSpec {
    fn default() -> Self {
        ProtocolSpec {
            causal: CausalChoice::Authors,
            class: None,
            cam: MethodOptions::default(),
            insertion_blur: InsertionBlur::default(),
            scoring: MetricOptions::default(),
            resamples: 2000,
        }
    }
}

/// Which raw attention of the CA model an interpretability experiment scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum AttentionChoice {
    /// One row per block of the stream.
    EachBlock,
    One(AttentionSelect),
}

impl AttentionChoice {
    const KEYS: &'static str = "`each-block`, `last`, `product`, `mean` or `block-L` (L a tapped stage, 0–4)";

    /// The selections this choice stands for on a stream with blocks at `taps`.
    pub fn expand(self, taps: &[usize]) -> Vec<AttentionSelect> {
        match self {
            AttentionChoice::EachBlock => taps.iter().map(|&t| AttentionSelect::Block(t)).collect(),
            AttentionChoice::One(select) => vec![select],
        }
    }
}

impl TryFrom<String> for AttentionChoice {
    type Error = String;
    fn try_from(s: String) -> Result<AttentionChoice, String> {
        Ok(match s.as_str() {
            "each-block" => AttentionChoice::EachBlock,
            "last" => AttentionChoice::One(AttentionSelect::Last),
            "product" => AttentionChoice::One(AttentionSelect::Product),
            "mean" => AttentionChoice::One(AttentionSelect::Mean),
            other => match other.strip_prefix("block-").and_then(|l| l.parse::<usize>().ok()) {
                Some(l) if l <= 4 => AttentionChoice::One(AttentionSelect::Block(l)),
                _ => return Err(format!("unknown attention `{other}`: choose {}", Self::KEYS)),
            },
        })
    }
}

impl From<AttentionChoice> for String {
    fn from(a: AttentionChoice) -> String {
        match a {
            AttentionChoice::EachBlock => "each-block".into(),
            AttentionChoice::One(AttentionSelect::Last) => "last".into(),
            AttentionChoice::One(AttentionSelect::Product) => "product".into(),
            AttentionChoice::One(AttentionSelect::Mean) => "mean".into(),
            AttentionChoice::One(AttentionSelect::Block(l)) => format!("block-{l}"),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            seed: 0,
            images: None,
            stream_seeds: None,
            batch_size: 64,
            device: None,
            data: DataSpec::default(),
            scenes: SceneConfig::default(),
            normalisation: Normalisation::IMAGENET,
            backbones: vec![BackboneSpec::Shipped("resnet18".into())],
            stream: StreamSpec::default(),
            streams: Vec::new(),
            protocol: ProtocolSpec::default(),
            poolings: PoolingKind::ALL.to_vec(),
            methods: Vec::new(),
            attention: Vec::new(),
            baselines: Vec::new(),
            metrics: Vec::new(),
            layer: Spanned::new(0..0, 4),
            sanity: false,
            paper: None,
            notes: Vec::new(),
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
