//! `reproduce`: load a spec, run its target under a profile into a staging directory, write
//! `run.json`, and publish `results/<profile>/<name>/` atomically.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};

use castream_data::atomic::{self, StagedDir};
use castream_data::DeviceChoice;
use castream_report::record::RunRecord;

use crate::spec::{available_specs, Profile, Spec};
use crate::targets::{self, NotYetAvailable, RunContext};

#[derive(Debug, Clone)]
pub struct Options {
    /// The repository root (shipped checkpoints, caches).
    pub root: PathBuf,
    pub experiments: PathBuf,
    pub results: PathBuf,
    pub profile: Profile,
    /// Overrides the spec's `images`.
    pub images: Option<usize>,
    /// Overrides the spec's `seed`.
    pub seed: Option<u64>,
    pub device: DeviceChoice,
}

#[derive(Debug)]
pub enum Outcome {
    Written { dir: PathBuf, seconds: f64 },
    Pending(NotYetAvailable),
}

/// Runs one spec by name. A target that is not yet available is an error here: the user asked for it.
pub fn reproduce(name: &str, opts: &Options) -> Result<PathBuf> {
    let (dir, _) = run_spec(&Spec::load(&spec_path(&opts.experiments, name))?, opts)?;
    Ok(dir)
}

/// Runs every spec in the experiments directory. Targets that report [`NotYetAvailable`] are
/// listed as pending; any other failure is collected and makes the whole call fail at the end.
pub fn reproduce_all(opts: &Options) -> Result<Vec<(String, Outcome)>> {
    let names = available_specs(&opts.experiments);
    if names.is_empty() {
        bail!("no specs (*.toml) in {}", opts.experiments.display());
    }
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    for name in names {
        match Spec::load(&spec_path(&opts.experiments, &name)).and_then(|spec| run_spec(&spec, opts)) {
            Ok((dir, seconds)) => outcomes.push((name, Outcome::Written { dir, seconds })),
            Err(e) => match e.downcast::<NotYetAvailable>() {
                Ok(pending) => outcomes.push((name, Outcome::Pending(pending))),
                Err(e) => failures.push(format!("{name}: {e:#}")),
            },
        }
    }
    if !failures.is_empty() {
        bail!("{} of the specs failed:\n{}", failures.len(), failures.join("\n"));
    }
    Ok(outcomes)
}

fn spec_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.toml"))
}

/// Runs a spec; returns the published directory and the wall time in seconds.
fn run_spec(spec: &Spec, opts: &Options) -> Result<(PathBuf, f64)> {
    let mut settings = spec.settings(opts.profile)?.clone();
    let mut overrides = Vec::new();
    if let Some(n) = opts.images {
        settings.images = Some(n);
        overrides.push(format!("images={n}"));
    }
    if let Some(seed) = opts.seed {
        settings.seed = seed;
        overrides.push(format!("seed={seed}"));
    }
    let target = serde_json::to_value(spec.target)?.as_str().unwrap_or_default().to_string();
    let mut record =
        RunRecord::new(&spec.name, &spec.path, &target, opts.profile.key(), serde_json::to_value(&settings)?);
    record.overrides = overrides;
    record.device = opts.device.to_string();
    let staged = StagedDir::begin(&opts.results.join(opts.profile.key()).join(&spec.name))?;
    let started = Instant::now();
    targets::run(&mut RunContext {
        spec,
        profile: opts.profile,
        settings: &settings,
        out: staged.path(),
        root: &opts.root,
        experiments: &opts.experiments,
        device: opts.device.device(),
        record: &mut record,
    })?;
    record.wall_seconds = started.elapsed().as_secs_f64();
    let mut outputs: Vec<String> = std::fs::read_dir(staged.path())?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    outputs.sort();
    record.outputs = outputs;
    atomic::write(&staged.path().join("run.json"), serde_json::to_string_pretty(&record)?.as_bytes())?;
    let seconds = record.wall_seconds;
    Ok((staged.commit()?, seconds))
}
