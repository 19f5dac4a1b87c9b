//! Experiment specs: one TOML file per catalogue entry under `experiments/`, with a `[quick]` and a
//! `[paper]` profile. The schema is documented in `docs/specs.md`; unknown keys are rejected so a
//! typo never silently falls back to a default.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

mod settings;
mod validate;

pub use settings::{AttentionChoice, DataSpec, ImageSetSpec, ProtocolSpec, Settings};

/// What a spec runs: an experiment kind declared by its keys (`interpretability`: any backbones,
/// poolings, saliency sources and metrics), or one of the catalogue's fixed targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    Interpretability,
    DataCard,
    Table1,
    Table4,
    Figure1,
    Figure2,
    Figure3,
    Figure4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum Profile {
    Quick,
    Paper,
}

impl Profile {
    pub const ALL: [Profile; 2] = [Profile::Quick, Profile::Paper];

    /// The spelling of `--profile`, specs and the results folder.
    pub fn key(self) -> &'static str {
        match self {
            Profile::Quick => "quick",
            Profile::Paper => "paper",
        }
    }
}

castream_data::keyed!(Profile, "profile", key);

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
                validate::settings(s, spec.target, &validate::Place { path, text, profile })?;
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

/// The spec names (file stems) in a directory, sorted; the published values' file is data, not a spec.
pub fn available_specs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .filter(|p| p.file_name().is_some_and(|f| f != crate::paper::FILE))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests;
