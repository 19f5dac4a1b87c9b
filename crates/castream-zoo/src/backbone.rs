//! Which backbone an experiment evaluates: a shipped quick backbone by name, a castream checkpoint
//! file (with its `.json` sidecar), or an hf-hub repository (the paper profile's ImageNet models).

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use castream_backbones::weights::WeightSource;
use castream_backbones::{Arch, BackboneConfig, CheckpointMeta, Model};
use castream_data::hub::{HubAccess, HubRepo, RepoKind};
use castream_data::image_folder::IMAGENET_CLASSES;
use castream_data::labelled::hex;
use castream_data::Normalisation;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::quick::{load_backbone, sha256_file};
use castream_backbones::model::sidecar_path;

/// A backbone as specs spell it: `"resnet18"`, `{ arch = "resnet18", checkpoint = "my.safetensors" }`
/// (a castream checkpoint with its sidecar), `{ arch = "resnet50", hub = "timm/resnet50.tv_in1k" }`
/// or `{ arch = "resnet50", file = "resnet50.safetensors" }` (pretrained torchvision/timm-named
/// weights: the hub repository's `model.safetensors`, or such a file on disk).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Entry", into = "Entry")]
pub enum BackboneSpec {
    Shipped(String),
    Checkpoint { arch: Arch, checkpoint: PathBuf },
    Hub { arch: Arch, hub: String, revision: Option<String>, shape: Shape },
    File { arch: Arch, file: PathBuf, shape: Shape },
}

/// A pretrained model's shape where it is not the published one (a narrower or shallower network, fewer
/// classes): what `arch` alone cannot say. Every key defaults to the published model's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shape {
    pub num_classes: Option<usize>,
    pub base_width: Option<usize>,
    pub depths: Option<[usize; 4]>,
}

/// The file of a timm repository holding the weights.
pub const HUB_WEIGHTS: &str = "model.safetensors";

/// The TOML forms of a [`BackboneSpec`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Entry {
    Name(String),
    Table(Table),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Table {
    arch: Arch,
    #[serde(skip_serializing_if = "Option::is_none")]
    checkpoint: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hub: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    num_classes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    base_width: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    depths: Option<[usize; 4]>,
}

impl Table {
    fn default_for(arch: Arch) -> Table {
        Table {
            arch,
            checkpoint: None,
            hub: None,
            file: None,
            revision: None,
            num_classes: None,
            base_width: None,
            depths: None,
        }
    }

    fn with_shape(arch: Arch, shape: Shape) -> Table {
        Table {
            num_classes: shape.num_classes,
            base_width: shape.base_width,
            depths: shape.depths,
            ..Table::default_for(arch)
        }
    }

    fn shape(&self) -> Shape {
        Shape { num_classes: self.num_classes, base_width: self.base_width, depths: self.depths }
    }
}

impl TryFrom<Entry> for BackboneSpec {
    type Error = String;
    fn try_from(e: Entry) -> Result<BackboneSpec, String> {
        match e {
            Entry::Name(name) => Ok(BackboneSpec::Shipped(name)),
            Entry::Table(t) => {
                let shape = t.shape();
                match t {
                    Table { arch, checkpoint: Some(checkpoint), hub: None, file: None, revision: None, .. }
                        if shape == Shape::default() =>
                    {
                        Ok(BackboneSpec::Checkpoint { arch, checkpoint })
                    }
                    Table { arch, checkpoint: None, hub: Some(hub), file: None, revision, .. } => {
                        Ok(BackboneSpec::Hub { arch, hub, revision, shape })
                    }
                    Table { arch, checkpoint: None, hub: None, file: Some(file), revision: None, .. } => {
                        Ok(BackboneSpec::File { arch, file, shape })
                    }
                    _ => Err(TABLE_FORMS.into()),
                }
            }
        }
    }
}

const TABLE_FORMS: &str = "a backbone table needs exactly one of `checkpoint = \"castream.safetensors\"`, \
                           `hub = \"owner/repo\"` (with an optional `revision`) or `file = \"pretrained.safetensors\"` \
                           (the last two with `num_classes`, `base_width`, `depths` for a model that is not the \
                           published one)";

impl From<BackboneSpec> for Entry {
    fn from(b: BackboneSpec) -> Entry {
        match b {
            BackboneSpec::Shipped(name) => Entry::Name(name),
            BackboneSpec::Checkpoint { arch, checkpoint } => {
                let none = Table::default_for(arch);
                Entry::Table(Table { checkpoint: Some(checkpoint), ..none })
            }
            BackboneSpec::Hub { arch, hub, revision, shape } => {
                Entry::Table(Table { hub: Some(hub), revision, ..Table::with_shape(arch, shape) })
            }
            BackboneSpec::File { arch, file, shape } => {
                Entry::Table(Table { file: Some(file), ..Table::with_shape(arch, shape) })
            }
        }
    }
}

impl BackboneSpec {
    /// How tables name it: the shipped name, the checkpoint's file stem, or the repository.
    pub fn name(&self) -> String {
        match self {
            BackboneSpec::Shipped(name) => name.clone(),
            BackboneSpec::Checkpoint { checkpoint, .. } => {
                checkpoint.file_stem().map_or_else(|| checkpoint.display().to_string(), |s| s.to_string_lossy().into())
            }
            BackboneSpec::Hub { hub, .. } => hub.clone(),
            BackboneSpec::File { file, .. } => {
                file.file_stem().map_or_else(|| file.display().to_string(), |s| s.to_string_lossy().into())
            }
        }
    }

    /// Whether it is a ConvNeXt (`false`: a ResNet), for tables that compare within a family.
    pub fn is_convnext(&self) -> bool {
        match self {
            BackboneSpec::Shipped(name) => name.starts_with("convnext"),
            BackboneSpec::Checkpoint { arch, .. }
            | BackboneSpec::Hub { arch, .. }
            | BackboneSpec::File { arch, .. } => !arch.is_resnet(),
        }
    }
}

impl fmt::Display for BackboneSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// A loaded GAP backbone and where it came from.
pub struct LoadedBackbone {
    pub model: Model,
    pub meta: CheckpointMeta,
    /// SHA-256 of the weight file.
    pub sha256: String,
    /// SHA-256 of its `.json` sidecar (configuration, normalisation: they change every output).
    pub sidecar_sha256: String,
    /// The shipped backbone's manifest entry (test accuracy, training provenance).
    pub manifest: Option<crate::quick::ManifestEntry>,
}

/// Loads `spec` (checked against the manifest for shipped backbones; a checkpoint's sidecar must
/// name `arch`), frozen ([`Model::frozen`]: the paper's "pretrained, frozen network f"). Paths are
/// relative to `root`.
pub fn load(root: &Path, spec: &BackboneSpec, device: &Device) -> Result<LoadedBackbone> {
    let loaded = load_trainable(root, spec, device)?;
    Ok(LoadedBackbone { model: loaded.model.frozen()?, ..loaded })
}

fn load_trainable(root: &Path, spec: &BackboneSpec, device: &Device) -> Result<LoadedBackbone> {
    match spec {
        BackboneSpec::Shipped(name) => {
            let (model, meta, entry) = load_backbone(root, name, device)?;
            let (sha256, sidecar_sha256) = (entry.sha256.clone(), entry.sidecar_sha256.clone());
            Ok(LoadedBackbone { model, meta, sha256, sidecar_sha256, manifest: Some(entry) })
        }
        BackboneSpec::Checkpoint { arch, checkpoint } => {
            let path = root.join(checkpoint);
            let (model, meta) =
                Model::load(&path, device).with_context(|| format!("backbone checkpoint {}", path.display()))?;
            if meta.config.arch != *arch {
                bail!(
                    "backbone checkpoint {}: its sidecar says arch `{}`, the spec says `{}`; Fix: set arch = \"{}\"",
                    path.display(),
                    meta.config.arch.name(),
                    arch.name(),
                    meta.config.arch.name()
                );
            }
            let (sha256, sidecar_sha256) = (sha256_file(&path)?, sha256_file(&sidecar_path(&path))?);
            Ok(LoadedBackbone { model, meta, sha256, sidecar_sha256, manifest: None })
        }
        BackboneSpec::Hub { arch, hub, revision, shape } => {
            let repo = HubRepo {
                revision: revision.clone().unwrap_or_else(|| "main".into()),
                ..HubRepo::new(hub, RepoKind::Model)
            };
            let file = repo.fetch(HUB_WEIGHTS, hub_access(), None).map_err(|e| {
                anyhow::anyhow!(
                    "backbone `{hub}`: {e}\nFix: download it once with `hf download {hub} {HUB_WEIGHTS}{rev}` (Python's \
                     huggingface_hub), or, offline, point HF_HOME (or HF_HUB_CACHE) to a hub cache holding it and set \
                     HF_HUB_OFFLINE=1 to never try the network (docs/paper-profile.md)",
                    rev = if repo.revision == "main" { String::new() } else { format!(" --revision {}", repo.revision) }
                )
            })?;
            let extra = serde_json::json!({ "hub": hub, "revision": repo.revision, "file": file });
            pretrained(*arch, shape, &file, extra, device).with_context(|| format!("backbone `{hub}`"))
        }
        BackboneSpec::File { arch, file, shape } => {
            let path = root.join(file);
            let extra = serde_json::json!({ "file": path });
            pretrained(*arch, shape, &path, extra, device).with_context(|| format!("backbone {}", path.display()))
        }
    }
}

/// A pretrained network of `arch` (ImageNet's 1000 classes unless `shape` says otherwise) with the
/// torchvision/timm-named weights of `file`, loaded strictly, with ImageNet normalisation.
fn pretrained(
    arch: Arch,
    shape: &Shape,
    file: &Path,
    extra: serde_json::Value,
    device: &Device,
) -> Result<LoadedBackbone> {
    let config = BackboneConfig {
        base_width: shape.base_width,
        depths: shape.depths,
        ..BackboneConfig::new(arch, shape.num_classes.unwrap_or(IMAGENET_CLASSES))
    };
    let mut model = Model::new(config.clone(), 0, device)?;
    model.load_weights(&WeightSource::File(file.to_path_buf()))?;
    let normalisation = Normalisation::IMAGENET;
    let sidecar_sha256 = pretrained_identity(&config, &normalisation)?;
    let meta = CheckpointMeta { config, classes: Vec::new(), normalisation, extra };
    Ok(LoadedBackbone { model, meta, sha256: sha256_file(file)?, sidecar_sha256, manifest: None })
}

/// What stands in for a sidecar's SHA-256 for pretrained weights, which have none: the SHA-256 of
/// what a sidecar would hold, the configuration and the input normalisation.
pub fn pretrained_identity(config: &BackboneConfig, normalisation: &Normalisation) -> Result<String> {
    Ok(hex(&Sha256::digest(serde_json::to_vec(&(config, normalisation))?)))
}

/// `HF_HUB_OFFLINE=1` (Python's `huggingface_hub` convention, which hf-hub does not read): cache
/// only, never the network.
pub fn hub_access() -> HubAccess {
    // Python's `huggingface_hub` reads 1, ON, YES, TRUE in any case.
    match std::env::var("HF_HUB_OFFLINE") {
        Ok(v) if ["1", "on", "yes", "true"].contains(&v.trim().to_ascii_lowercase().as_str()) => HubAccess::CacheOnly,
        _ => HubAccess::Download,
    }
}
