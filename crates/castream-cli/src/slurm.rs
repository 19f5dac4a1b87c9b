//! `castream slurm submit`: one spec as Slurm jobs. Slurm schedules; castream shards and merges
//! (docs/scale-out.md). The jobs, each waiting for the previous ones to succeed
//! (`--dependency=afterok`):
//!
//! 1. `train-stream-<recipe>` (paper profile): one per stream the spec needs that is not trained;
//! 2. `prepare`: loads every model once (the quick profile trains and caches its streams, the
//!    paper profile fetches the backbones), so the shards do not each do it;
//! 3. `shards`: a job array, task `K` running `castream reproduce <spec> --shard K/N`;
//! 4. `merge`: `castream merge <spec>`, which publishes the tables.
//!
//! The scripts and the logs (`logs/<job>.log`, `logs/shard-K-of-N.log`) are written beside the
//! shard records, `<shard-dir>/<profile>/<name>[@overrides]/slurm/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use castream_experiments::runner::{shard_plan, Mode};
use clap::{Args, Subcommand};

use crate::args::RunArgs;

#[derive(Subcommand)]
pub enum SlurmCommand {
    /// Write the job scripts of a spec and submit them, or print them with --dry-run.
    Submit(SubmitArgs),
}

#[derive(Args)]
pub struct SubmitArgs {
    /// The spec's name (a file under the experiments folder without `.toml`).
    pub spec: String,
    /// Shards: tasks of the job array, each computing a contiguous part of every cell.
    #[arg(long)]
    pub shards: usize,
    /// Slurm partition of every job.
    #[arg(long)]
    pub partition: Option<String>,
    /// Generic resources of every job, e.g. `gpu:1`; a GPU makes the jobs run with `--device cuda`
    /// unless --device says otherwise.
    #[arg(long)]
    pub gres: Option<String>,
    /// Time limit of each job, in Slurm's format (e.g. `12:00:00`).
    #[arg(long)]
    pub time: Option<String>,
    /// CPUs of each job (the shard's compute threads).
    #[arg(long, default_value_t = 1)]
    pub cpus_per_task: usize,
    /// Memory of each job, in Slurm's format (e.g. `16G`).
    #[arg(long)]
    pub mem: Option<String>,
    /// Another `#SBATCH` option for every job (e.g. `--account=abc`); repeatable.
    #[arg(long = "sbatch-option", value_name = "OPTION")]
    pub sbatch_options: Vec<String>,
    /// Print the scripts and the sbatch commands; write and submit nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

pub fn run(command: SlurmCommand) -> Result<()> {
    match command {
        SlurmCommand::Submit(args) => submit(args),
    }
}

/// One job: its name, script and the jobs it waits for (indices into the job list).
struct Job {
    name: String,
    script: String,
    after: Vec<usize>,
}

fn submit(mut a: SubmitArgs) -> Result<()> {
    if a.shards == 0 {
        bail!("--shards 0: must be at least 1; Fix: e.g. --shards 8 (one array task per shard)");
    }
    if a.cpus_per_task == 0 {
        bail!("--cpus-per-task 0: must be at least 1");
    }
    let root = std::path::absolute(".")?;
    // The jobs run elsewhere: every path they use is absolute.
    a.run.experiments = std::path::absolute(&a.run.experiments)?;
    a.run.results = std::path::absolute(&a.run.results)?;
    a.run.shard_dir = std::path::absolute(&a.run.shard_dir)?;
    let gpu = a.gres.as_deref().is_some_and(|g| g.split(',').any(|r| r.starts_with("gpu")));
    if gpu && a.run.device.is_none() {
        a.run.device = Some("cuda".parse().map_err(|e: String| anyhow::anyhow!(e))?);
    }
    let plan = shard_plan(&a.spec, &a.run.clone().options(Mode::Whole))?;
    let dir = plan.dir.join("slurm");
    let logs = dir.join("logs");
    let exe = std::env::current_exe().context("locating the castream executable")?;
    let flags = run_flags(&a.run);
    let device = a.run.device.map(|d| d.to_string()).unwrap_or_else(|| "cpu".into());
    let n = a.shards;
    let mut jobs = Vec::new();
    for recipe in &plan.recipes {
        let stem = recipe.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let command =
            format!("{} train-stream {} --device {device}", quote(&exe), quote(&std::path::absolute(recipe)?));
        let name = format!("train-stream-{stem}");
        let log = logs.join(format!("{name}.log"));
        jobs.push(Job { script: script(&a, &root, &name, &log, None, &command), name, after: vec![] });
    }
    let trainers: Vec<usize> = (0..jobs.len()).collect();
    let spec = quote(Path::new(&a.spec));
    let prepare = format!("{} reproduce {spec} --prepare {flags}", quote(&exe));
    jobs.push(Job {
        name: "prepare".into(),
        script: script(&a, &root, "prepare", &logs.join("prepare.log"), None, &prepare),
        after: trainers,
    });
    let shard = format!("{} reproduce {spec} --shard \"${{SLURM_ARRAY_TASK_ID}}/{n}\" {flags}", quote(&exe));
    let shard_log = logs.join(format!("shard-%a-of-{n}.log"));
    jobs.push(Job {
        name: "shards".into(),
        script: script(&a, &root, "shards", &shard_log, Some(n), &shard),
        after: vec![jobs.len() - 1],
    });
    let merge = format!("{} merge {spec} {flags}", quote(&exe));
    jobs.push(Job {
        name: "merge".into(),
        script: script(&a, &root, "merge", &logs.join("merge.log"), None, &merge),
        after: vec![jobs.len() - 1],
    });

    if a.dry_run {
        for (i, job) in jobs.iter().enumerate() {
            let after: Vec<String> = job.after.iter().map(|&j| format!("<{} job id>", jobs[j].name)).collect();
            let dependency =
                if after.is_empty() { String::new() } else { format!("--dependency=afterok:{} ", after.join(":")) };
            println!(
                "# job {} of {}: sbatch --parsable {dependency}{}",
                i + 1,
                jobs.len(),
                dir.join(format!("{}.sbatch", job.name)).display()
            );
            println!("{}", job.script);
        }
        println!("# dry run: nothing written or submitted");
        return Ok(());
    }
    which("sbatch")?;
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let mut ids: Vec<String> = Vec::new();
    for job in &jobs {
        let path = dir.join(format!("{}.sbatch", job.name));
        castream_data::atomic::write(&path, job.script.as_bytes())?;
        let mut sbatch = Command::new("sbatch");
        sbatch.arg("--parsable");
        if !job.after.is_empty() {
            let after: Vec<&str> = job.after.iter().map(|&j| ids[j].as_str()).collect();
            sbatch.arg(format!("--dependency=afterok:{}", after.join(":")));
        }
        let out = sbatch.arg(&path).output().context("running sbatch")?;
        if !out.status.success() {
            bail!(
                "sbatch refused {} ({}): {}{}",
                path.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                if ids.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; the jobs already submitted ({}) still run: cancel them with `scancel {}`",
                        ids.join(", "),
                        ids.join(" ")
                    )
                }
            );
        }
        // `--parsable` prints `id` or `id;cluster`.
        let stdout = String::from_utf8_lossy(&out.stdout);
        let id = stdout.trim().split(';').next().unwrap_or_default().to_string();
        if id.is_empty() {
            bail!("sbatch printed no job id for {}", path.display());
        }
        println!("submitted {:<24} job {id}", job.name);
        ids.push(id);
    }
    println!("scripts in {}; logs in {}", dir.display(), logs.display());
    println!(
        "the merge publishes {}/{}/{}… when every shard has finished (`squeue -j {}`)",
        a.run.results.display(),
        a.run.profile,
        a.spec,
        ids.join(",")
    );
    Ok(())
}

/// The run flags of every castream command of the jobs, paths absolute.
fn run_flags(r: &RunArgs) -> String {
    let mut flags = vec![format!("--profile {}", r.profile)];
    if let Some(n) = r.images {
        flags.push(format!("--images {n}"));
    }
    if let Some(seed) = r.seed {
        flags.push(format!("--seed {seed}"));
    }
    if let Some(b) = r.batch_size {
        flags.push(format!("--batch-size {b}"));
    }
    if let Some(d) = r.device {
        flags.push(format!("--device {d}"));
    }
    flags.push(format!("--experiments {}", quote(&r.experiments)));
    flags.push(format!("--results {}", quote(&r.results)));
    flags.push(format!("--shard-dir {}", quote(&r.shard_dir)));
    flags.join(" ")
}

/// A job script: the `#SBATCH` header, the repository as working directory, one command.
fn script(a: &SubmitArgs, root: &Path, job: &str, log: &Path, array: Option<usize>, command: &str) -> String {
    let mut lines = vec!["#!/bin/bash".to_string(), format!("#SBATCH --job-name=castream-{}-{job}", a.spec)];
    if let Some(n) = array {
        lines.push(format!("#SBATCH --array=1-{n}"));
    }
    lines.push(format!("#SBATCH --output={}", log.display()));
    // A resubmitted shard appends to its log rather than erasing the first attempt's.
    lines.push("#SBATCH --open-mode=append".into());
    lines.push(format!("#SBATCH --cpus-per-task={}", a.cpus_per_task));
    // A job whose predecessor failed is cancelled, not left pending for ever.
    lines.push("#SBATCH --kill-on-invalid-dep=yes".into());
    for (key, value) in [("partition", &a.partition), ("gres", &a.gres), ("time", &a.time), ("mem", &a.mem)] {
        if let Some(v) = value {
            lines.push(format!("#SBATCH --{key}={v}"));
        }
    }
    lines.extend(a.sbatch_options.iter().map(|o| format!("#SBATCH {o}")));
    lines.push("set -euo pipefail".into());
    lines.push(format!("cd {}", quote(root)));
    lines.push("export RAYON_NUM_THREADS=\"${SLURM_CPUS_PER_TASK:-1}\" RUST_BACKTRACE=0".into());
    lines.push("echo \"$(date -u +%FT%TZ) job ${SLURM_JOB_ID:-} task ${SLURM_ARRAY_TASK_ID:-} on $(hostname)\"".into());
    lines.push(command.to_string());
    lines.join("\n") + "\n"
}

/// A path quoted for bash.
fn quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

/// Fails with the fix when `program` is not on PATH.
fn which(program: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(program)).find(|p| p.is_file()))
        .with_context(|| {
            format!("`{program}` is not on PATH: this is not a Slurm node; Fix: run on a login node of the cluster, or add --dry-run to print the scripts")
        })
}
