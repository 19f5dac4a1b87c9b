//! `reproduce`: load a spec, run its target under a profile into a staging directory, write
//! `run.json`, and publish `results/<profile>/<name>/` atomically — or compute one shard of it,
//! or merge the shards into what the whole run publishes (docs/scale-out.md).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use castream_data::atomic::{self, StagedDir};
use castream_data::{provenance, DeviceChoice};
use castream_report::index;
use castream_report::record::{OutputRecord, RunRecord};

use castream_eval::shard::Resume;
pub use castream_eval::Shard;
use castream_eval::Sharding;

use crate::shards::{executable_sha256, Loaded, ShardRecord, Shards};
use crate::spec::{available_specs, Profile, Spec, Target};
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
    /// Overrides the spec's `batch_size`.
    pub batch_size: Option<usize>,
    pub mode: Mode,
    /// Root of the shard records (`--shard-dir`): `<shards>/<profile>/<name>[@overrides]/`.
    pub shards: PathBuf,
}

/// What a run of one spec does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// Compute every cell and publish the results.
    #[default]
    Whole,
    /// Compute one shard's part of every cell into its record; publish nothing.
    Shard(Shard),
    /// Assemble every cell from the shards' records and publish what the whole run publishes.
    Merge,
    /// Load every model the spec evaluates (on the quick profile, train and cache its streams),
    /// then stop: the job a sharded run waits for, so that its shards do not each train them.
    Prepare,
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
    if opts.mode != Mode::Whole {
        bail!("`all` runs every spec whole; Fix: shard, merge or prepare one spec at a time (e.g. `reproduce table2 --shard 1/4`)");
    }
    // An unavailable `--device` fails once, before any spec.
    if let Some(device) = opts.device {
        device.device()?;
    }
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    let mut published = Vec::new();
    for name in names {
        let run =
            Spec::load(&spec_path(&opts.experiments, &name)).and_then(|spec| Ok((run_spec(&spec, opts)?, spec.title)));
        match run {
            Ok(((dir, seconds), title)) => {
                published.push(index::Entry { name: name.clone(), title, dir: dir.clone() });
                outcomes.push((name, Outcome::Written { dir, seconds }))
            }
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
    // The index describes the reference results: a run with overrides publishes beside them.
    let reference = published.iter().all(|e| e.dir.file_name().is_some_and(|n| n.to_string_lossy() == e.name));
    if !published.is_empty() && reference {
        index::write(&opts.results.join(opts.profile.key()), opts.profile.key(), &published)?;
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

/// The spec's settings for the run's profile with the command line's overrides applied, the
/// overrides as the results folder names them, and the device.
fn effective_settings(spec: &Spec, opts: &Options) -> Result<(crate::spec::Settings, Vec<String>, DeviceChoice)> {
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
    if let Some(batch) = opts.batch_size {
        if batch == 0 {
            bail!("--batch-size 0: must be at least 1; Fix: e.g. --batch-size 64");
        }
        settings.batch_size = batch;
        overrides.push(format!("batch_size={batch}"));
    }
    let choice = opts.device.or(settings.device).unwrap_or_default();
    if !choice.is_cpu() {
        // The reference results are the CPU's: a GPU run publishes beside them.
        overrides.push(format!("device={}", choice.key()));
    }
    Ok((settings, overrides, choice))
}

/// What a sharded run of one spec needs before its shards: where its records go, and the
/// recipes of the paper profile's streams still to train.
pub struct ShardPlan {
    /// `<shards>/<profile>/<name>[@overrides]`.
    pub dir: PathBuf,
    pub recipes: Vec<PathBuf>,
}

/// Checks that spec `name` can run sharded with `opts` (a target that shards, nothing missing
/// but streams a recipe trains) and says where its records go.
pub fn shard_plan(name: &str, opts: &Options) -> Result<ShardPlan> {
    let spec = Spec::load(&spec_path(&opts.experiments, name))?;
    let (settings, overrides, _) = effective_settings(&spec, opts)?;
    check_shardable(&spec)?;
    let recipes = targets::streams_to_train(&spec, opts.profile, &settings, &opts.root)?;
    // Streams with a recipe are trained by the first jobs; anything else missing is refused now.
    if let Some(pending) = targets::missing_inputs(&spec, opts.profile, &settings, &opts.root, recipes.is_empty())? {
        return Err(pending.into());
    }
    Ok(ShardPlan { dir: shard_dir(opts, &spec, &overrides)?, recipes })
}

fn check_shardable(spec: &Spec) -> Result<()> {
    if !matches!(spec.target, Target::Interpretability | Target::Table1 | Target::Table4) {
        bail!(
            "{}: target `{}` draws a handful of images and is not sharded; Fix: run it whole (`reproduce {}`); --shard \
             and merge apply to interpretability experiments, table1 and table4",
            spec.path.display(),
            target_key(spec)?,
            spec.name
        );
    }
    Ok(())
}

/// Where the shard records of a run go: `<shards>/<profile>/<results folder name>`.
fn shard_dir(opts: &Options, spec: &Spec, overrides: &[String]) -> Result<PathBuf> {
    let dir = results_dir(opts, spec, overrides);
    Ok(opts.shards.join(opts.profile.key()).join(dir.file_name().context("results folder has no name")?))
}

/// Runs a spec; returns what it wrote (the published directory, or a shard's record) and the
/// wall time in seconds.
fn run_spec(spec: &Spec, opts: &Options) -> Result<(PathBuf, f64)> {
    let (settings, overrides, choice) = effective_settings(spec, opts)?;
    if matches!(opts.mode, Mode::Shard(_) | Mode::Merge) {
        // Interpretability experiments, tables 1 and 4: their work is per-image cells.
        check_shardable(spec)?;
    }
    if let Some(pending) = targets::pending(spec, opts.profile, &settings, &opts.root)? {
        return Err(pending.into());
    }
    let mut record = RunRecord::new(
        &spec.name,
        &spec.path,
        &target_key(spec)?,
        opts.profile.key(),
        serde_json::to_value(&settings)?,
    );
    record.overrides = overrides;
    record.device = choice.to_string();
    let device = choice.device()?;
    let dir = results_dir(opts, spec, &record.overrides);
    let shard_dir = shard_dir(opts, spec, &record.overrides)?;
    let started = Instant::now();
    provenance::reset_peak_memory();
    let run_target =
        |out: &Path, record: &mut RunRecord, sharding: &Sharding, run: &dyn Fn(&mut RunContext) -> Result<()>| {
            run(&mut RunContext {
                spec,
                profile: opts.profile,
                settings: &settings,
                out,
                root: &opts.root,
                experiments: &opts.experiments,
                device: device.clone(),
                record,
                quick: None,
                sharding,
            })
        };
    match opts.mode {
        Mode::Whole => {
            let staged = StagedDir::begin(&dir)?;
            run_target(staged.path(), &mut record, &Sharding::Whole, &targets::run)?;
            publish(staged, record, started)
        }
        Mode::Shard(shard) => {
            let resume = Resume { dir: shard_dir.clone(), code: executable_sha256()? };
            let sharding = Sharding::Compute { shard, resume: Some(resume), cells: Default::default() };
            // A shard writes no tables: its target stops once its cells are computed.
            let scratch = tempfile::tempdir()?;
            run_target(scratch.path(), &mut record, &sharding, &targets::run)?;
            record.wall_seconds = started.elapsed().as_secs_f64();
            let path = ShardRecord::new(shard, &record, &spec.path, sharding.into_cells()?)?.write(&shard_dir)?;
            Ok((path, record.wall_seconds))
        }
        Mode::Merge => {
            let mut shards = Shards::read(&shard_dir, &spec.name)?;
            shards.check(&record, &spec.path, Loaded::SoFar)?;
            record.shards = shards.sources()?;
            let sharding = Sharding::Merge { shards: shards.take_cells() };
            let staged = StagedDir::begin(&dir)?;
            if let Err(e) = run_target(staged.path(), &mut record, &sharding, &targets::run) {
                // A cell no record holds: other weights or images than the shards', if so, say which.
                shards.check(&record, &spec.path, Loaded::SoFar)?;
                return Err(e);
            }
            shards.check(&record, &spec.path, Loaded::All)?;
            publish(staged, record, started)
        }
        Mode::Prepare => {
            let scratch = tempfile::tempdir()?;
            run_target(scratch.path(), &mut record, &Sharding::Whole, &targets::prepare)?;
            Ok((opts.root.clone(), started.elapsed().as_secs_f64()))
        }
    }
}

/// The spec's target as specs spell it.
fn target_key(spec: &Spec) -> Result<String> {
    Ok(serde_json::to_value(spec.target)?.as_str().unwrap_or_default().to_string())
}

/// Completes `record` (time, memory, outputs) and publishes the staged results with it.
fn publish(staged: StagedDir, mut record: RunRecord, started: Instant) -> Result<(PathBuf, f64)> {
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
