//! How saliency is computed and scored (METHOD.md §4–5): the class each map explains, the
//! insertion/deletion variant and the CAM methods' options. The defaults are the authors'.

use castream_cam::{MethodOptions, TargetClass};
use castream_metrics::blur::InsertionBlur;
use castream_metrics::causal::CausalVariant;
use castream_metrics::options::MetricOptions;
use serde::{Deserialize, Serialize};

/// The named evaluation protocols: which class is explained and scored, and how many pixels
/// each insertion/deletion step changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CausalChoice {
    /// Ground-truth class; 8 rows of pixels per step.
    #[default]
    Authors,
    /// Predicted class; one row of pixels per step.
    OptiCam,
}

impl CausalChoice {
    pub fn variant(self) -> CausalVariant {
        match self {
            CausalChoice::Authors => CausalVariant::Authors,
            CausalChoice::OptiCam => CausalVariant::OptiCam,
        }
    }

    /// The class each map explains and every score tracks, unless a spec names another.
    pub fn target_class(self) -> TargetClass {
        match self {
            CausalChoice::Authors => TargetClass::GroundTruth,
            CausalChoice::OptiCam => TargetClass::Predicted,
        }
    }

    /// How table footers name the variant.
    pub fn describe(self) -> &'static str {
        match self {
            CausalChoice::Authors => "authors' variant: insertion/deletion change 8 rows of pixels per step",
            CausalChoice::OptiCam => "Opti-CAM variant: insertion/deletion change one row of pixels per step",
        }
    }
}

/// Everything besides the model, the saliency source and the images that a cell's values depend on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Protocol {
    pub causal: CausalChoice,
    pub class: TargetClass,
    pub cam: MethodOptions,
    /// The blurred image insertion starts from.
    pub blur: InsertionBlur,
    /// ROAD's and max-sensitivity's settings. Not serialised: a cell's key holds only the options
    /// its metrics use (`MetricOptions::used_by`).
    #[serde(skip)]
    pub scoring: MetricOptions,
}

impl Protocol {
    /// `causal` with its own class choice.
    pub fn new(causal: CausalChoice, class: Option<TargetClass>, cam: MethodOptions, blur: InsertionBlur) -> Protocol {
        Protocol { causal, class: class.unwrap_or(causal.target_class()), cam, blur, scoring: MetricOptions::default() }
    }

    /// For table footers.
    pub fn describe(&self) -> String {
        let class = match self.class {
            TargetClass::GroundTruth => "ground-truth class",
            TargetClass::Predicted => "predicted class",
        };
        format!("{class} explained and scored; {}", self.causal.describe())
    }
}

impl Default for Protocol {
    fn default() -> Self {
        Protocol::new(CausalChoice::Authors, None, MethodOptions::default(), InsertionBlur::default())
    }
}
