//! Where a result or a checkpoint came from: the code's commit.

use std::path::Path;
use std::process::Command;

/// HEAD's commit and whether the tree is dirty; "unknown" outside a git checkout.
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
    match git(&["rev-parse", "HEAD"]) {
        Some(commit) => (commit, git(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty())),
        None => ("unknown".into(), false),
    }
}
