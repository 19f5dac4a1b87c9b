//! `reproduce`: load a spec, run its target under a profile into a staging directory, write
//! `run.json`, and publish `results/<profile>/<name>/` atomically.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};

use castream_data::atomic::{self, StagedDir};
use castream_data::{provenance, DeviceChoice};
use castream_report::record::{OutputRecord, RunRecord};

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
    /// `--device`, overriding the spec's `device` (default: the CPU).
    pub device: Option<DeviceChoice>,
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
    // An unavailable `--device` fails once, before any spec.
    if let Some(device) = opts.device {
        device.device()?;
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
        // The pending ones are named too: the user needs both lists.
        let pending = outcomes.iter().filter_map(|(name, o)| match o {
            Outcome::Pending(p) => Some(format!("{name}: pending, needs {}", p.needs)),
            Outcome::Written { .. } => None,
        });
        let lines: Vec<String> = failures.iter().cloned().chain(pending).collect();
        bail!("{} of the specs failed:\n{}", failures.len(), lines.join("\n"));
    }
    Ok(outcomes)
}

/// Whether a spec can run on a profile now.
#[derive(Debug)]
pub enum Readiness {
    Ready,
    Pending(NotYetAvailable),
    /// The spec has no settings for this profile.
    Undefined,
}

/// One line of `list`: a spec (or why it does not load) and its readiness per profile.
pub struct Listing {
    pub name: String,
    pub spec: Result<(Spec, Vec<(Profile, Readiness)>)>,
}

/// Every spec in `experiments` with its readiness on each profile; a spec that does not load or
/// validate is listed with its error, and the others are still listed.
pub fn list(root: &Path, experiments: &Path) -> Vec<Listing> {
    available_specs(experiments)
        .into_iter()
        .map(|name| {
            let spec = Spec::load(&spec_path(experiments, &name)).and_then(|spec| {
                let readiness = Profile::ALL
                    .into_iter()
                    .map(|profile| {
                        let readiness = match spec.settings(profile) {
                            Err(_) => Readiness::Undefined,
                            Ok(settings) => match targets::pending(&spec, profile, settings, root)? {
                                Some(p) => Readiness::Pending(p),
                                None => Readiness::Ready,
                            },
                        };
                        Ok((profile, readiness))
                    })
                    .collect::<Result<_>>()?;
                Ok((spec, readiness))
            });
            Listing { name, spec }
        })
        .collect()
}

fn spec_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.toml"))
}

/// The folder a run publishes to: `<results>/<profile>/<name>`, or, when a setting is overridden
/// (`--images`, `--seed`, a `--device` other than the CPU), `<name>@<overrides>` beside it, so that
/// the reference results are only ever written by the spec's own settings.
fn results_dir(opts: &Options, spec: &Spec, overrides: &[String]) -> PathBuf {
    let name = if overrides.is_empty() { spec.name.clone() } else { format!("{}@{}", spec.name, overrides.join(",")) };
    opts.results.join(opts.profile.key()).join(name)
}

/// Runs a spec; returns the published directory and the wall time in seconds.
fn run_spec(spec: &Spec, opts: &Options) -> Result<(PathBuf, f64)> {
    let mut settings = spec.settings(opts.profile)?.clone();
    let mut overrides = Vec::new();
    if let Some(n) = opts.images {
        crate::spec::Settings::check_images(n, None).map_err(|e| anyhow::anyhow!("{}", e.as_flag("--images")))?;
        settings.images = Some(n);
        overrides.push(format!("images={n}"));
    }
    if let Some(seed) = opts.seed {
        settings.seed = seed;
        overrides.push(format!("seed={seed}"));
    }
    let choice = opts.device.or(settings.device).unwrap_or_default();
    if !choice.is_cpu() {
        // The reference results are the CPU's: a GPU run publishes beside them.
        overrides.push(format!("device={}", choice.key()));
    }
    if let Some(pending) = targets::pending(spec, opts.profile, &settings, &opts.root)? {
        return Err(pending.into());
    }
    let target = serde_json::to_value(spec.target)?.as_str().unwrap_or_default().to_string();
    let mut record =
        RunRecord::new(&spec.name, &spec.path, &target, opts.profile.key(), serde_json::to_value(&settings)?);
    record.overrides = overrides;
    record.device = choice.to_string();
    let device = choice.device()?;
    let staged = StagedDir::begin(&results_dir(opts, spec, &record.overrides))?;
    let started = Instant::now();
    provenance::reset_peak_memory();
    targets::run(&mut RunContext {
        spec,
        profile: opts.profile,
        settings: &settings,
        out: staged.path(),
        root: &opts.root,
        experiments: &opts.experiments,
        device,
        record: &mut record,
        quick: None,
    })?;
    record.wall_seconds = started.elapsed().as_secs_f64();
    record.peak_memory_bytes = provenance::peak_memory_bytes();
    if record.dirty {
        mark_dirty(&staged, &record.commit)?;
    }
    record.outputs = staged.written()?.into_iter().map(|(file, sha256)| OutputRecord { file, sha256 }).collect();
    atomic::write(&staged.path().join("run.json"), serde_json::to_string_pretty(&record)?.as_bytes())?;
    let seconds = record.wall_seconds;
    Ok((staged.commit()?, seconds))
}

/// Heads every Markdown table of a run from a tree with uncommitted changes with a warning, so
/// that a reader of the table (not only of run.json) sees it.
fn mark_dirty(staged: &StagedDir, commit: &str) -> Result<()> {
    for (file, _) in staged.written()? {
        if file.ends_with(".md") {
            let path = staged.path().join(&file);
            let text = std::fs::read_to_string(&path)?;
            let warning = format!(
                "> **Computed from a working tree with uncommitted changes** (based on commit {}); see run.json.\n\n",
                &commit[..commit.len().min(12)]
            );
            atomic::write(&path, format!("{warning}{text}").as_bytes())?;
        }
    }
    Ok(())
}
