//! `cargo xtask`: developer workflow. `setup` installs the datasets; every other command is
//! forwarded to the `castream` CLI, built and run in release mode (tensor code is 25-30x slower
//! unoptimised).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cwd = std::env::current_dir().unwrap_or_default();
    let Some(root) = workspace_root(&cwd) else {
        eprintln!(
            "xtask: no castream workspace (a Cargo.toml with [workspace] and xtask/) at or above {}",
            cwd.display()
        );
        return ExitCode::FAILURE;
    };
    let status = match args.first().map(String::as_str) {
        None | Some("help" | "--help" | "-h") => {
            println!(
                "cargo xtask <command>\n\n  setup                 install the quick-profile datasets (scripts/setup-data.sh)\n  \
                 reproduce <name|all>  run experiment specs (see `cargo xtask reproduce --help`; --shard K/N for one shard)\n  \
                 merge <name>          publish a sharded run's tables from its shards' records\n  \
                 slurm submit <name>   a spec as Slurm jobs: shards, their merge, what they need (--dry-run)\n  \
                 train-backbones       train the quick profile's GAP backbones (--retrain, --resume, --only NAME)\n  \
                 train-stream <recipe> train a CA-Stream on a pretrained backbone (--resume, --device cuda)\n  \
                 bench [--cam]         throughput of every backbone (vs candle's ops and ONNX Runtime), or of the CAM methods\n  \
                 explain               jet overlays of CAM methods for an image or test scenes (see `cargo xtask explain --help`)\n  \
                 list                  list the specs and whether each can run\n\nAny other command is passed to the `castream` CLI, \
                 built with the cargo features in CASTREAM_FEATURES (e.g. `cuda`)."
            );
            return ExitCode::SUCCESS;
        }
        Some("setup") => Command::new("bash").arg(root.join("scripts/setup-data.sh")).args(&args[1..]).status(),
        Some(_) => Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["run", "--quiet", "--release", "--package", "castream-cli", "--bin", "castream"])
            .args(features())
            .arg("--")
            .args(&args)
            .current_dir(&root)
            .status(),
    };
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => match (s.code(), killed_by(&s)) {
            (Some(code), _) => ExitCode::from(code.clamp(1, 255) as u8),
            (None, Some(signal)) => {
                eprintln!("xtask: the command was killed by signal {signal} ({})", signal_name(signal));
                ExitCode::from((128 + signal).clamp(1, 255) as u8)
            }
            (None, None) => ExitCode::FAILURE,
        },
        Err(e) => {
            eprintln!("xtask: cannot start command: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--features <list>` from `CASTREAM_FEATURES` (e.g. `cuda`), so that `cargo xtask` runs a GPU
/// build where one is wanted.
fn features() -> Vec<String> {
    match std::env::var("CASTREAM_FEATURES") {
        Ok(f) if !f.trim().is_empty() => vec!["--features".into(), f.trim().into()],
        _ => Vec::new(),
    }
}

/// The signal that ended a child process, if one did (Unix).
fn killed_by(status: &std::process::ExitStatus) -> Option<i32> {
    #[cfg(unix)]
    {
        std::os::unix::process::ExitStatusExt::signal(status)
    }
    #[cfg(not(unix))]
    {
        let _ = status;
        None
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        1 => "SIGHUP",
        2 => "SIGINT, Ctrl-C",
        6 => "SIGABRT",
        9 => "SIGKILL: out of memory, or killed",
        11 => "SIGSEGV",
        15 => "SIGTERM",
        _ => "see `kill -l`",
    }
}

/// The workspace `cargo xtask` was run in: the nearest folder at or above `start` holding a
/// `Cargo.toml` with `[workspace]` and this `xtask/`. Found at run time, so a copied or moved
/// checkout acts on itself, never on the tree the binary was first built in.
fn workspace_root(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|dir| {
            dir.join("xtask/Cargo.toml").is_file()
                && std::fs::read_to_string(dir.join("Cargo.toml"))
                    .is_ok_and(|t| t.lines().any(|l| l.trim() == "[workspace]"))
        })
        .map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_is_the_nearest_workspace_above_the_current_folder() {
        let base = std::env::temp_dir().join(format!("xtask-root-{}", std::process::id()));
        let (a, b) = (base.join("a"), base.join("a/copy"));
        for root in [&a, &b] {
            std::fs::create_dir_all(root.join("xtask")).unwrap();
            std::fs::create_dir_all(root.join("crates/x/src")).unwrap();
            std::fs::write(root.join("Cargo.toml"), "[workspace]\nmembers = []\n").unwrap();
            std::fs::write(root.join("xtask/Cargo.toml"), "[package]\n").unwrap();
        }
        assert_eq!(workspace_root(&a.join("crates/x/src")), Some(a.clone()));
        assert_eq!(workspace_root(&b.join("crates/x")), Some(b.clone()), "a copy inside acts on itself");
        assert_eq!(workspace_root(&b), Some(b.clone()));
        std::fs::write(base.join("Cargo.toml"), "[package]\nname = \"p\"\n").unwrap();
        assert_eq!(workspace_root(&base), None);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    #[cfg(unix)]
    fn a_child_killed_by_a_signal_is_reported_as_such() {
        let status = Command::new("sh").args(["-c", "kill -9 $$"]).status().unwrap();
        assert_eq!(status.code(), None);
        assert_eq!(killed_by(&status), Some(9));
        assert!(signal_name(9).contains("SIGKILL"));
        assert_eq!(killed_by(&Command::new("true").status().unwrap()), None);
    }
}
