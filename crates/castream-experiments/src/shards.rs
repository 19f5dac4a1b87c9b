//! Shard records: what `reproduce <name> --shard K/N` leaves for `merge <name>`, and the checks a
//! merge makes before it uses them (docs/scale-out.md).
//!
//! A shard's record `<shards>/<profile>/<name>[@overrides]/shard-K-of-N.json` holds the per-image
//! values of its part of every cell and how they were made: the spec file's SHA-256, the settings
//! as run, the code's commit (and, from a tree with uncommitted changes, the executable's
//! SHA-256), the weights, data and image list. It is written atomically when the shard finishes;
//! finished cells are kept under `parts/` as they complete, so a rerun shard resumes there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use castream_data::atomic;
use castream_eval::shard::Cells;
use castream_eval::Shard;
use castream_report::record::{RunRecord, ShardSource};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Raised when the record's layout changes: older records are refused, not misread.
const FORMAT: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
pub struct ShardRecord {
    pub format: u32,
    pub shard: Shard,
    pub spec: String,
    pub spec_sha256: String,
    pub profile: String,
    pub settings: serde_json::Value,
    pub overrides: Vec<String>,
    pub commit: String,
    pub dirty: bool,
    pub executable_sha256: String,
    pub weights: BTreeMap<String, String>,
    pub data: serde_json::Value,
    pub image_list_sha256: Option<String>,
    pub device: String,
    pub cpu: String,
    pub command: Vec<String>,
    pub wall_seconds: f64,
    pub cells: Cells,
}

/// The SHA-256 of a file, hex.
pub fn file_sha256(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect())
}

/// The SHA-256 of the running executable: the code that computed a shard's values.
pub fn executable_sha256() -> Result<String> {
    file_sha256(&std::env::current_exe().context("locating the running executable")?)
}

impl ShardRecord {
    /// The record of `shard` after its target ran: `record` says how, `cells` holds the values.
    pub fn new(shard: Shard, record: &RunRecord, spec_file: &Path, cells: Cells) -> Result<ShardRecord> {
        Ok(ShardRecord {
            format: FORMAT,
            shard,
            spec: record.spec.clone(),
            spec_sha256: file_sha256(spec_file)?,
            profile: record.profile.clone(),
            settings: record.settings.clone(),
            overrides: record.overrides.clone(),
            commit: record.commit.clone(),
            dirty: record.dirty,
            executable_sha256: executable_sha256()?,
            weights: record.weights.clone(),
            data: serde_json::to_value(&record.data)?,
            image_list_sha256: record.image_list_sha256.clone(),
            device: record.device.clone(),
            cpu: record.machine.cpu.clone(),
            command: record.command.clone(),
            wall_seconds: record.wall_seconds,
            cells,
        })
    }

    /// Writes the record into `dir` atomically; returns its path.
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join(format!("{}.json", self.shard.stem()));
        atomic::write(&path, &serde_json::to_vec(self)?)?;
        Ok(path)
    }

    /// How a merged run.json names this shard.
    fn source(&self, file: &Path) -> Result<ShardSource> {
        Ok(ShardSource {
            shard: self.shard.to_string(),
            file: file.display().to_string(),
            sha256: file_sha256(file)?,
            command: self.command.clone(),
            device: self.device.clone(),
            cpu: self.cpu.clone(),
            wall_seconds: self.wall_seconds,
        })
    }
}

/// How much of the run's inputs a merge has loaded when it checks the records against them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    /// Before the target, or after it failed: what is in the merge's record so far.
    SoFar,
    /// After the target ran: every weight file, dataset and image list.
    All,
}

/// The shard records of one run, as a merge reads them.
pub struct Shards {
    dir: PathBuf,
    count: usize,
    /// By shard index.
    records: Vec<(PathBuf, ShardRecord)>,
}

impl Shards {
    /// Every shard record in `dir`, of one split `N` (records of several are refused).
    pub fn read(dir: &Path, spec: &str) -> Result<Shards> {
        let run_first = format!(
            "Fix: run the shards first (`castream reproduce {spec} --shard K/N` with the same flags as this merge), or \
             point --shard-dir at where they wrote"
        );
        let entries = std::fs::read_dir(dir)
            .map_err(|e| anyhow::anyhow!("no shard records in {} ({e}); {run_first}", dir.display()))?;
        let mut records: Vec<(PathBuf, ShardRecord)> = Vec::new();
        for entry in entries {
            let path = entry?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            // Only `shard-K-of-N.json`: copies and backups beside the records are not records.
            let Some(named) = name
                .strip_prefix("shard-")
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.split_once("-of-"))
                .and_then(|(k, n)| format!("{k}/{n}").parse::<Shard>().ok())
            else {
                continue;
            };
            let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let record: ShardRecord = serde_json::from_slice(&text).with_context(|| {
                format!("{} is not a shard record of this version; Fix: rerun that shard", path.display())
            })?;
            if record.format != FORMAT {
                bail!(
                    "{}: shard record format {} (this castream reads {FORMAT}); Fix: rerun that shard",
                    path.display(),
                    record.format
                );
            }
            if record.shard != named {
                bail!("{} holds the record of shard {}; Fix: rerun shard {named}", path.display(), record.shard);
            }
            records.push((path, record));
        }
        if records.is_empty() {
            bail!("no shard records in {}; {run_first}", dir.display());
        }
        let counts: std::collections::BTreeSet<usize> = records.iter().map(|(_, r)| r.shard.count).collect();
        if counts.len() > 1 {
            let names: Vec<String> = records.iter().map(|(p, _)| p.display().to_string()).collect();
            bail!(
                "the records in {} come from runs split {counts:?} ways: {}; Fix: delete the records of the split you do not want",
                dir.display(),
                names.join(", ")
            );
        }
        records.sort_by_key(|(_, r)| r.shard.index);
        Ok(Shards { dir: dir.to_path_buf(), count: records[0].1.shard.count, records })
    }

    /// Refuses, naming each, missing shards and records made by another spec file, settings,
    /// executable or device than `ours` (this merge), or from other weights, data or images than
    /// the merge has loaded so far (all of them once `loaded` is complete).
    pub fn check(&self, ours: &RunRecord, spec_file: &Path, loaded: Loaded) -> Result<()> {
        let count = self.count;
        let missing: Vec<String> = (1..=count)
            .filter(|k| !self.records.iter().any(|(_, r)| r.shard.index == *k))
            .map(|k| format!("{k}/{count}"))
            .collect();
        let spec_sha256 = file_sha256(spec_file)?;
        let ours_data = serde_json::to_value(&ours.data)?;
        let executable = executable_sha256()?;
        let mut mismatches = Vec::new();
        for (path, r) in &self.records {
            let mut differs = |what: &str, theirs: String, mine: String| {
                if theirs != mine {
                    mismatches.push(format!(
                        "mismatch: shard {} ({}): {what} {theirs}, this merge's {mine}; Fix: rerun that shard with this \
                         code and spec",
                        r.shard,
                        path.display()
                    ));
                }
            };
            differs("spec file SHA-256", r.spec_sha256.clone(), spec_sha256.clone());
            differs("settings", r.settings.to_string(), ours.settings.to_string());
            differs("commit", r.commit.clone(), ours.commit.clone());
            differs("uncommitted changes", r.dirty.to_string(), ours.dirty.to_string());
            // Another device sums in another order.
            differs("device", r.device.clone(), ours.device.clone());
            // The same commit built otherwise, or a dirty tree: the executable tells the code apart.
            differs("executable SHA-256", r.executable_sha256.clone(), executable.clone());
            for (name, sha) in &ours.weights {
                differs(
                    &format!("weights `{name}`"),
                    r.weights.get(name).cloned().unwrap_or_else(|| "(none)".into()),
                    sha.clone(),
                );
            }
            if ours.image_list_sha256.is_some() {
                differs(
                    "image list SHA-256",
                    format!("{:?}", r.image_list_sha256),
                    format!("{:?}", ours.image_list_sha256),
                );
            }
            if loaded == Loaded::All {
                let extra: Vec<&String> = r.weights.keys().filter(|k| !ours.weights.contains_key(*k)).collect();
                if !extra.is_empty() {
                    differs("weights", format!("{extra:?}"), "none of these".into());
                }
                differs("data", r.data.to_string(), ours_data.to_string());
            }
        }
        let mut lines = Vec::new();
        if !missing.is_empty() {
            lines.push(format!(
                "missing shard(s) {} (no record in {}: not run, still running, or failed); Fix: run each with `castream \
                 reproduce {} --shard K/{count}` and the same flags as this merge",
                missing.join(", "),
                self.dir.display(),
                ours.spec
            ));
        }
        lines.extend(mismatches);
        if !lines.is_empty() {
            bail!("cannot merge {}: nothing was published.\n{}", ours.spec, lines.join("\n"));
        }
        Ok(())
    }

    /// The cells of shard `k` at index `k − 1` (taken out of the records).
    pub fn take_cells(&mut self) -> Vec<Cells> {
        self.records.iter_mut().map(|(_, r)| std::mem::take(&mut r.cells)).collect()
    }

    /// How the merged run.json names the records.
    pub fn sources(&self) -> Result<Vec<ShardSource>> {
        self.records.iter().map(|(path, r)| r.source(path)).collect()
    }
}
