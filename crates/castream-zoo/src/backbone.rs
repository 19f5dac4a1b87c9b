//! Which backbone an experiment evaluates: a shipped quick backbone by name, a castream checkpoint
//! file (with its `.json` sidecar), or an hf-hub repository (the paper profile's ImageNet models).

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use castream_backbones::{Arch, CheckpointMeta, Model};
use serde::{Deserialize, Serialize};

use crate::quick::{load_backbone, sha256_file};
use castream_backbones::model::sidecar_path;

/// A backbone as specs spell it: `"resnet18"`, `{ arch = "resnet18", checkpoint = "my.safetensors" }`
/// or `{ arch = "resnet50", hub = "timm/resnet50.tv_in1k" }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Entry", into = "Entry")]
pub enum BackboneSpec {
    Shipped(String),
    Checkpoint { arch: Arch, checkpoint: PathBuf },
    Hub { arch: Arch, hub: String, revision: Option<String> },
}

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
    revision: Option<String>,
}

impl TryFrom<Entry> for BackboneSpec {
    type Error = String;
    fn try_from(e: Entry) -> Result<BackboneSpec, String> {
        match e {
            Entry::Name(name) => Ok(BackboneSpec::Shipped(name)),
            Entry::Table(Table { arch, checkpoint: Some(checkpoint), hub: None, revision: None }) => {
                Ok(BackboneSpec::Checkpoint { arch, checkpoint })
            }
            Entry::Table(Table { arch, checkpoint: None, hub: Some(hub), revision }) => {
                Ok(BackboneSpec::Hub { arch, hub, revision })
            }
            Entry::Table(_) => Err("a backbone table needs exactly one of `checkpoint = \"file.safetensors\"` or \
                                    `hub = \"owner/repo\"` (with an optional `revision`)"
                .into()),
        }
    }
}

impl From<BackboneSpec> for Entry {
    fn from(b: BackboneSpec) -> Entry {
        match b {
            BackboneSpec::Shipped(name) => Entry::Name(name),
            BackboneSpec::Checkpoint { arch, checkpoint } => {
                Entry::Table(Table { arch, checkpoint: Some(checkpoint), hub: None, revision: None })
            }
            BackboneSpec::Hub { arch, hub, revision } => {
                Entry::Table(Table { arch, checkpoint: None, hub: Some(hub), revision })
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
        }
    }

    /// Whether it is a ConvNeXt (`false`: a ResNet), for tables that compare within a family.
    pub fn is_convnext(&self) -> bool {
        match self {
            BackboneSpec::Shipped(name) => name.starts_with("convnext"),
            BackboneSpec::Checkpoint { arch, .. } | BackboneSpec::Hub { arch, .. } => !arch.is_resnet(),
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
/// name `arch`). Paths are relative to `root`.
pub fn load(root: &Path, spec: &BackboneSpec, device: &Device) -> Result<LoadedBackbone> {
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
        BackboneSpec::Hub { hub, .. } => bail!(
            "backbone `{hub}`: hf-hub backbones are ImageNet models and run in the paper profile; the quick profile \
             evaluates 64-px scene models (a shipped name or a castream checkpoint)"
        ),
    }
}
