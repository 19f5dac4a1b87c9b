//! Interpretability metrics (METHOD.md §5) and the statistics every table cell carries.
//!
//! - [`metric`]: the registry of every metric (key, column, direction, group).
//! - [`confidence`]: explanation images and per-image Average Drop / Gain / Increase.
//! - [`causal`]: RISE-style insertion and deletion curves, batched, their AUC and AOPC.
//! - [`blur`]: the blurred image insertion starts from (the authors' `gkern`, or a Gaussian).
//! - [`road`]: ROAD, pixels removed at fixed fractions and filled by noisy linear imputation.
//! - [`sensitivity`]: max-sensitivity of a map to small input perturbations.
//! - [`adcc`]: coherency, complexity and their harmonic mean with Average Drop (ADCC).
//! - [`options`]: the settings of ROAD and max-sensitivity.
//! - [`localisation`]: pointing game, energy in a box or mask, box IoU of a binarised map.
//! - [`sanity`]: Spearman rank correlation, for the randomisation sanity checks.
//! - [`bootstrap`]: percentile bootstrap intervals of means and paired differences.

pub mod adcc;
pub mod blur;
pub mod bootstrap;
pub mod causal;
pub mod confidence;
pub mod localisation;
pub mod metric;
pub mod options;
pub mod road;
pub mod sanity;
pub mod sensitivity;

pub use metric::{Metric, PerImage};
