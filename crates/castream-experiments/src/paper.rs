//! The published values (`experiments/paper-values.toml`), read as data and looked up by the
//! network a spec names with `paper = "…"`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use castream_cam::{Method, PoolingKind};
use castream_metrics::Metric;
use serde::Deserialize;

pub const FILE: &str = "paper-values.toml";

/// One network's published interpretability values: method → pooling → metric → value.
pub type NetworkValues = BTreeMap<Method, BTreeMap<PoolingKind, BTreeMap<Metric, f64>>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaperValues {
    /// Network → pooling → top-1 %.
    #[serde(default)]
    pub recognition: BTreeMap<String, BTreeMap<PoolingKind, f64>>,
    /// Network → method → pooling → metric → value.
    #[serde(default)]
    pub interpretability: BTreeMap<String, NetworkValues>,
    #[serde(skip)]
    path: PathBuf,
}

impl PaperValues {
    /// Reads `<experiments>/paper-values.toml`.
    pub fn load(experiments: &Path) -> Result<PaperValues> {
        let path = experiments.join(FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: cannot read the paper values", path.display()))?;
        let mut values: PaperValues = toml::from_str(&text).map_err(|e| {
            anyhow!("{}: {e}Fix: correct the entry above (docs/specs.md, \"Published values\")", path.display())
        })?;
        values.path = path;
        Ok(values)
    }

    /// The interpretability values of `network`, or an error listing the networks there are.
    pub fn interpretability(&self, network: &str) -> Result<&NetworkValues> {
        self.interpretability.get(network).ok_or_else(|| {
            let known: Vec<&str> = self.interpretability.keys().map(String::as_str).collect();
            anyhow!(
                "paper = \"{network}\": {} has no interpretability values for it; valid: {}",
                self.path.display(),
                known.join(", ")
            )
        })
    }

    /// The top-1 of `network` with `pooling`.
    pub fn top1(&self, network: &str, pooling: PoolingKind) -> Option<f64> {
        self.recognition.get(network)?.get(&pooling).copied()
    }
}
