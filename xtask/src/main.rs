//! `cargo xtask`: developer workflow. `setup` installs the datasets; every other command is
//! forwarded to the `castream` CLI, built and run in release mode (tensor code is 25-30x slower
//! unoptimised).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    let status = match args.first().map(String::as_str) {
        None | Some("help" | "--help" | "-h") => {
            println!(
                "cargo xtask <command>\n\n  setup                 install the quick-profile datasets (scripts/setup-data.sh)\n  \
                 reproduce <name|all>  run experiment specs (see `cargo xtask reproduce --help`)\n  \
                 train-backbones       train the quick profile's GAP backbones (--retrain, --resume, --only NAME)\n  \
                 bench [--cam]         throughput of every backbone (vs candle's ops and ONNX Runtime), or of the CAM methods\n  \
                 explain               jet overlays of CAM methods for an image or test scenes (see `cargo xtask explain --help`)\n  \
                 list                  list the specs and whether each can run\n\nAny other command is passed to the `castream` CLI."
            );
            return ExitCode::SUCCESS;
        }
        Some("setup") => Command::new("bash").arg(root.join("scripts/setup-data.sh")).args(&args[1..]).status(),
        Some(_) => Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["run", "--quiet", "--release", "--package", "castream-cli", "--bin", "castream", "--"])
            .args(&args)
            .current_dir(&root)
            .status(),
    };
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => ExitCode::from(s.code().unwrap_or(1).clamp(1, 255) as u8),
        Err(e) => {
            eprintln!("xtask: cannot start command: {e}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace root").to_path_buf()
}
