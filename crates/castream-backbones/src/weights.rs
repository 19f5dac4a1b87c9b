//! Strict loading of torchvision/timm-named safetensors. Every parameter and running statistic of
//! the model must be in the file with the right shape, and the file must hold nothing else: a
//! silently half-loaded backbone would invalidate every saliency number computed on it. All
//! problems are collected and reported together; nothing is written into the model unless the
//! whole file fits.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use candle_core::safetensors::Load;
use candle_core::{DType, Var};
use castream_data::hub::{HubAccess, HubRepo};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

/// Where pretrained weights come from, as written in a spec: `{ file = "weights/r18.safetensors" }`
/// or `{ hub = { repo = { repo = "timm/resnet50.tv_in1k" }, file = "model.safetensors" } }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum WeightSource {
    /// A local safetensors file.
    File(PathBuf),
    /// A safetensors file of a Hugging Face Hub repository, through hf-hub's cache.
    Hub { repo: HubRepo, file: String },
}

impl WeightSource {
    /// The local path of the file; `access` and `cache_dir` apply to hub sources only.
    pub fn resolve(&self, access: HubAccess, cache_dir: Option<&Path>) -> anyhow::Result<PathBuf> {
        match self {
            WeightSource::File(path) => Ok(path.clone()),
            WeightSource::Hub { repo, file } => Ok(repo.fetch(file, access, cache_dir)?),
        }
    }
}

/// What a successful load did.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    pub file: PathBuf,
    /// Tensors copied into the model.
    pub loaded: usize,
    /// Keys present in the file and deliberately not loaded: PyTorch's BatchNorm
    /// `num_batches_tracked` counters, which only matter for momentum-free running averages.
    pub ignored: Vec<String>,
    /// Tensors stored as f16, bf16 or f64 and converted to f32.
    pub converted: usize,
}

/// The file does not match the model: every offending key, sorted.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyMismatch {
    pub file: PathBuf,
    /// The model, as [`crate::BackboneConfig::describe`] writes it.
    pub model: String,
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    /// `(name, expected shape, shape in the file)`.
    pub mis_shaped: Vec<(String, Vec<usize>, Vec<usize>)>,
    /// `(name, dtype)` for keys whose dtype is not a float type.
    pub bad_dtype: Vec<(String, String)>,
}

/// Entries shown per list before the rest are only counted.
const SHOWN: usize = 12;

fn write_list(f: &mut fmt::Formatter<'_>, what: &str, items: &[String]) -> fmt::Result {
    if items.is_empty() {
        return Ok(());
    }
    write!(f, "\n  {what} ({}): ", items.len())?;
    write!(f, "{}", items.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", "))?;
    if items.len() > SHOWN {
        write!(f, ", … and {} more", items.len() - SHOWN)?;
    }
    Ok(())
}

impl fmt::Display for KeyMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: weights do not fit {}", self.file.display(), self.model)?;
        write_list(f, "missing from the file", &self.missing)?;
        write_list(f, "unexpected in the file", &self.unexpected)?;
        let shapes: Vec<String> =
            self.mis_shaped.iter().map(|(n, want, got)| format!("{n} expected {want:?} found {got:?}")).collect();
        write_list(f, "wrong shape", &shapes)?;
        let dtypes: Vec<String> = self.bad_dtype.iter().map(|(n, d)| format!("{n} is {d}")).collect();
        write_list(f, "not a float tensor", &dtypes)?;
        write!(
            f,
            "\n  Fix: make the config match the file (arch, num_classes, base_width, depths, stem), or use a file \
             exported from that architecture with torchvision/timm parameter names."
        )
    }
}

impl std::error::Error for KeyMismatch {}

/// BatchNorm's step counter, which our BatchNorm (fixed momentum) has no use for.
fn is_batch_counter(name: &str, vars: &BTreeMap<String, Var>) -> bool {
    name.strip_suffix(".num_batches_tracked").is_some_and(|bn| vars.contains_key(&format!("{bn}.running_mean")))
}

/// Loads `file` into `vars` (a model's full store) if, and only if, it matches exactly.
pub(crate) fn load_into(vars: &BTreeMap<String, Var>, file: &Path, model: &str) -> anyhow::Result<LoadReport> {
    let bytes = std::fs::read(file).with_context(|| format!("{}: cannot read weights", file.display()))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        anyhow!(
            "{}: not a safetensors file ({e}). Fix: convert the checkpoint to safetensors, or check the path",
            file.display()
        )
    })?;
    let mut mismatch = KeyMismatch {
        file: file.to_path_buf(),
        model: model.to_string(),
        missing: vars.keys().filter(|k| st.tensor(k).is_err()).cloned().collect(),
        unexpected: vec![],
        mis_shaped: vec![],
        bad_dtype: vec![],
    };
    let mut ignored = vec![];
    let mut matched = vec![];
    let mut names = st.names();
    names.sort();
    for name in names {
        let view = st.tensor(name)?;
        let Some(var) = vars.get(name) else {
            if is_batch_counter(name, vars) {
                ignored.push(name.to_string());
            } else {
                mismatch.unexpected.push(name.to_string());
            }
            continue;
        };
        if var.dims() != view.shape() {
            mismatch.mis_shaped.push((name.to_string(), var.dims().to_vec(), view.shape().to_vec()));
        } else if !matches!(view.dtype(), Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64) {
            mismatch.bad_dtype.push((name.to_string(), format!("{:?}", view.dtype())));
        } else {
            matched.push((var, view));
        }
    }
    if !(mismatch.missing.is_empty()
        && mismatch.unexpected.is_empty()
        && mismatch.mis_shaped.is_empty()
        && mismatch.bad_dtype.is_empty())
    {
        return Err(mismatch.into());
    }
    let mut converted = 0;
    for (var, view) in &matched {
        let tensor = view.load(var.device())?;
        if tensor.dtype() != DType::F32 {
            converted += 1;
        }
        var.set(&tensor.to_dtype(DType::F32)?)?;
    }
    Ok(LoadReport { file: file.to_path_buf(), loaded: matched.len(), ignored, converted })
}
