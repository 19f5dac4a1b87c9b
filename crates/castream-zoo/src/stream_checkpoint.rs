//! Trained CA-Streams as files of their own: `<name>.safetensors` (the stream's `q0`, `blocks.*`)
//! and `<name>.safetensors.json`, the card saying what it is and how it was made. Specs (`streams`),
//! `explain --stream` and every target load one instead of training a stream; a stream is bound to
//! the exact backbone weights it was trained on, and loading it on other weights is refused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use castream_backbones::model::sidecar_path;
use castream_backbones::train::EpochReport;
use castream_data::hub::{HubRepo, RepoKind};
use castream_data::images::DataRecord;
use castream_data::labelled::hex;
use castream_stream::{CaModel, StreamConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::backbone::{hub_access, BackboneSpec};

/// Raise when the card's meaning changes.
pub const CARD_FORMAT: u32 = 1;
/// The files of a stream published on the hub.
pub const HUB_STREAM: &str = "stream.safetensors";

/// What a stream checkpoint's `.json` card records.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamCard {
    pub format: u32,
    /// `ca-stream`.
    pub architecture: String,
    /// The backbone as the recipe named it, and the SHA-256 of its weights.
    pub backbone: BackboneSpec,
    pub backbone_sha256: String,
    pub stream: StreamConfig,
    /// The training recipe as run (data, transforms, schedule), verbatim.
    pub recipe: serde_json::Value,
    /// The training and validation lists, with their hashes.
    pub data: Vec<DataRecord>,
    /// Top-1 accuracy on the validation list after the last epoch.
    pub val_top1: f64,
    pub history: Vec<EpochReport>,
    pub commit: String,
    pub dirty: bool,
    pub command: Vec<String>,
    /// SHA-256 of the safetensors file.
    pub weights_sha256: String,
}

/// Where a trained stream is: a local file, or `hub:owner/name[@revision]` (its
/// [`HUB_STREAM`] and card).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum StreamSource {
    File(PathBuf),
    Hub(HubRepo),
}

impl TryFrom<String> for StreamSource {
    type Error = String;
    fn try_from(s: String) -> Result<StreamSource, String> {
        let Some(id) = s.strip_prefix("hub:") else { return Ok(StreamSource::File(s.into())) };
        let (repo, revision) = id.split_once('@').unwrap_or((id, "main"));
        if repo.split('/').count() != 2 || repo.split('/').any(str::is_empty) {
            return Err(format!("`{s}`: a hub stream is `hub:owner/name` or `hub:owner/name@revision`"));
        }
        Ok(StreamSource::Hub(HubRepo { revision: revision.into(), ..HubRepo::new(repo, RepoKind::Model) }))
    }
}

impl From<StreamSource> for String {
    fn from(s: StreamSource) -> String {
        match s {
            StreamSource::File(p) => p.display().to_string(),
            StreamSource::Hub(r) if r.revision == "main" => format!("hub:{}", r.repo),
            StreamSource::Hub(r) => format!("hub:{}@{}", r.repo, r.revision),
        }
    }
}

impl std::str::FromStr for StreamSource {
    type Err = String;
    fn from_str(s: &str) -> Result<StreamSource, String> {
        StreamSource::try_from(s.to_string())
    }
}

impl StreamSource {
    /// The local weights file (a hub stream is fetched with its card into hf-hub's cache).
    pub fn resolve(&self, root: &Path) -> Result<PathBuf> {
        match self {
            StreamSource::File(p) => Ok(root.join(p)),
            StreamSource::Hub(repo) => {
                let card = sidecar_path(Path::new(HUB_STREAM)).display().to_string();
                repo.fetch(&card, hub_access(), None)?;
                Ok(repo.fetch(HUB_STREAM, hub_access(), None)?)
            }
        }
    }
}

/// Reads the card of the stream at `path`.
pub fn read_card(path: &Path) -> Result<StreamCard> {
    let file = sidecar_path(path);
    let text = std::fs::read_to_string(&file).with_context(|| {
        format!("{}: cannot read the stream's card (written beside it by `castream train-stream`)", file.display())
    })?;
    let card: StreamCard =
        serde_json::from_str(&text).with_context(|| format!("{}: not a stream card", file.display()))?;
    if card.format != CARD_FORMAT {
        bail!(
            "{}: card format {} (this build reads {CARD_FORMAT}); Fix: retrain the stream",
            file.display(),
            card.format
        );
    }
    Ok(card)
}

/// Writes the stream of `model` to `path` and `card` (its `weights_sha256` filled in) beside it,
/// each atomically, the weights first.
pub fn save(path: &Path, model: &CaModel, mut card: StreamCard) -> Result<StreamCard> {
    let tensors: HashMap<String, Tensor> =
        model.stream.named_vars().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
    let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), None)?;
    card.weights_sha256 = hex(&Sha256::digest(&bytes));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    castream_data::atomic::write(path, &bytes)?;
    castream_data::atomic::write(&sidecar_path(path), &serde_json::to_vec_pretty(&card)?)?;
    Ok(card)
}

/// Loads the stream at `path` into `model`, whose backbone has weights `backbone_sha256`. Refused,
/// before any weight is set, when the card names other backbone weights (both hashes printed), a
/// different stream configuration, or weights that are not the file's.
pub fn load(path: &Path, model: &CaModel, backbone_sha256: &str) -> Result<StreamCard> {
    let card = read_card(path)?;
    if card.backbone_sha256 != backbone_sha256 {
        bail!(
            "stream {}: trained on backbone `{}` with weights SHA-256 {}, but the backbone loaded has SHA-256 {}; \
             a stream only fits the weights it was trained on. Fix: name that backbone, or train a stream for this one \
             with `castream train-stream`",
            path.display(),
            card.backbone,
            card.backbone_sha256,
            backbone_sha256
        );
    }
    if &card.stream != model.stream.config() {
        bail!(
            "stream {}: its card describes {:?}, the model was built for {:?}",
            path.display(),
            card.stream,
            model.stream.config()
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read the stream", path.display()))?;
    let sha = hex(&Sha256::digest(&bytes));
    if sha != card.weights_sha256 {
        bail!(
            "stream {}: SHA-256 {sha} differs from its card's {}; the file was changed after training, or its saving \
             was interrupted. Fix: train it again",
            path.display(),
            card.weights_sha256
        );
    }
    set_weights(model, &bytes).with_context(|| format!("stream {}", path.display()))?;
    Ok(card)
}

/// Sets the stream of `model` from safetensors `bytes` holding exactly its tensors, each of its
/// shape; everything is checked before the first weight is set, so a refused file leaves the
/// model as it was.
pub fn set_weights(model: &CaModel, bytes: &[u8]) -> Result<()> {
    let tensors = candle_core::safetensors::load_buffer(bytes, &model.backbone.device)?;
    let vars = model.stream.named_vars();
    for (name, var) in &vars {
        let t = tensors.get(name).with_context(|| format!("lacks `{name}`"))?;
        if t.shape() != var.shape() {
            bail!("`{name}` has shape {:?}, not {:?}", t.shape(), var.shape());
        }
    }
    if let Some(extra) = tensors.keys().find(|k| !vars.iter().any(|(n, _)| n == *k)) {
        bail!("unexpected tensor `{extra}`");
    }
    for (name, var) in vars {
        var.set(&tensors[&name])?;
    }
    Ok(())
}

/// The listed streams whose cards name `backbone` and the stream configuration `config`, in
/// list order, with their resolved paths; and why each unavailable one (a missing file, a hub
/// stream not reachable) could not be read. Only cards are read: weights are checked by [`load`].
pub struct Found {
    pub matches: Vec<(PathBuf, StreamCard)>,
    pub unavailable: Vec<String>,
}

pub fn find(root: &Path, sources: &[StreamSource], backbone: &BackboneSpec, config: &StreamConfig) -> Found {
    let mut found = Found { matches: Vec::new(), unavailable: Vec::new() };
    for source in sources {
        match source.resolve(root).and_then(|path| read_card(&path).map(|card| (path, card))) {
            Ok((path, card)) => {
                if card.backbone.name() == backbone.name() && &card.stream == config {
                    found.matches.push((path, card));
                }
            }
            Err(e) => found.unavailable.push(format!("{}: {e:#}", String::from(source.clone()))),
        }
    }
    found
}
