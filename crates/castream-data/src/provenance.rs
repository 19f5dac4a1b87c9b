//! Where a result or a checkpoint came from: the code's commit, whether the tree differs from it,
//! and the machine (CPU model, peak memory).

use std::path::Path;
use std::process::Command;

/// The folder results are published to, relative to the repository root: a run writes there, so
/// its own outputs must not make the next target's record say "dirty".
const RESULTS: &str = "results";

/// HEAD's commit and whether the tree differs from it outside `results/`; "unknown" outside a git
/// checkout.
pub fn git_state(dir: &Path) -> (String, bool) {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let outside_results = format!(":(top,exclude){RESULTS}");
    match git(&["rev-parse", "HEAD"]) {
        Some(commit) => {
            (commit, git(&["status", "--porcelain", "--", &outside_results]).is_some_and(|s| !s.is_empty()))
        }
        None => ("unknown".into(), false),
    }
}

/// The CPU's model name (`/proc/cpuinfo`), or the architecture where that is not readable.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Starts measuring this process's peak resident memory afresh (Linux: `/proc/self/clear_refs`),
/// so that [`peak_memory_bytes`] reports the peak of what ran since. Elsewhere it does nothing
/// and the peak is the process's.
pub fn reset_peak_memory() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident memory of this process in bytes (`VmHWM`), 0 where it cannot be read.
pub fn peak_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        })
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_results_do_not_make_the_tree_dirty_but_code_does() {
        let repo = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let ok = Command::new("git").args(args).current_dir(repo.path()).output().unwrap().status.success();
            assert!(ok, "git {args:?}");
        };
        run(&["init", "-q"]);
        std::fs::create_dir_all(repo.path().join("results/quick")).unwrap();
        std::fs::create_dir_all(repo.path().join("experiments")).unwrap();
        std::fs::write(repo.path().join("results/quick/t.csv"), "a\n").unwrap();
        std::fs::write(repo.path().join("code.rs"), "fn main() {}\n").unwrap();
        run(&["add", "."]);
        run(&["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]);
        let experiments = repo.path().join("experiments");
        let (commit, dirty) = git_state(&experiments);
        assert_eq!((commit.len(), dirty), (40, false));
        std::fs::write(repo.path().join("results/quick/t.csv"), "b\n").unwrap();
        assert!(!git_state(&experiments).1, "a rewritten result is not a code change");
        std::fs::write(repo.path().join("code.rs"), "fn main() { }\n").unwrap();
        assert!(git_state(&experiments).1, "an edited source file is");
        assert_eq!(git_state(Path::new("/")).0, "unknown");
    }

    #[test]
    fn peak_memory_grows_with_what_the_process_touches() {
        reset_peak_memory();
        let before = peak_memory_bytes();
        assert!(before > 0, "VmHWM unreadable");
        let block = vec![1u8; 256 << 20];
        assert_eq!(block.iter().step_by(4096).map(|&b| b as usize).sum::<usize>(), block.len() / 4096);
        assert!(peak_memory_bytes() >= before + (200 << 20), "{} vs {before}", peak_memory_bytes());
        assert!(!cpu_model().is_empty());
    }
}
