//! Where a result or a checkpoint came from: the code's commit, and whether the tree differs from it.

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
}
