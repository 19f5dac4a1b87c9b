//! Atomic writes. A single file is written to a temporary sibling and renamed into place; a run's
//! results directory is filled as a hidden staging directory and swapped in only when the run
//! finishes. An interrupted run therefore leaves either the previous complete results or nothing,
//! never a half-written table that looks complete.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tempfile::NamedTempFile;

/// Writes a file atomically: `fill` writes the content into a temporary file next to `path`,
/// which is synced and renamed over `path`. On any error `path` is left untouched and the
/// temporary file is removed.
pub fn write_with(path: &Path, fill: impl FnOnce(&mut fs::File) -> Result<()>) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp =
        NamedTempFile::new_in(dir).with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    // tempfile creates files readable by their owner only; results and checkpoints are meant to be shared.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file().set_permissions(fs::Permissions::from_mode(0o644))?;
    }
    fill(tmp.as_file_mut())?;
    tmp.as_file_mut().flush()?;
    tmp.as_file().sync_all().with_context(|| format!("syncing {}", tmp.path().display()))?;
    tmp.persist(path).with_context(|| format!("renaming a temporary file to {}", path.display()))?;
    Ok(())
}

/// [`write_with`] for bytes already in memory.
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |f| Ok(f.write_all(bytes)?))
}

/// A results directory under construction: files go into a hidden staging directory beside the
/// final one, which [`StagedDir::commit`] swaps into place.
pub struct StagedDir {
    staging: PathBuf,
    target: PathBuf,
}

impl StagedDir {
    /// Starts a staging directory for `target`, removing stale ones left by interrupted runs.
    pub fn begin(target: &Path) -> Result<StagedDir> {
        let parent = target.parent().context("results directory has no parent")?;
        let name = target.file_name().context("results directory has no name")?.to_string_lossy().into_owned();
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        for entry in fs::read_dir(parent)? {
            let entry = entry?;
            let file = entry.file_name().to_string_lossy().into_owned();
            if file.starts_with(&format!(".{name}.partial-")) || file.starts_with(&format!(".{name}.old-")) {
                fs::remove_dir_all(entry.path())
                    .with_context(|| format!("removing stale {}", entry.path().display()))?;
            }
        }
        let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
        fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
        Ok(StagedDir { staging, target: target.to_path_buf() })
    }

    /// Where files of this run are written until commit.
    pub fn path(&self) -> &Path {
        &self.staging
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Replaces the target directory by the staging directory. Between the two renames the target
    /// is briefly absent, never partial.
    pub fn commit(self) -> Result<PathBuf> {
        let old = self.target.with_file_name(format!(
            ".{}.old-{}",
            self.target.file_name().unwrap().to_string_lossy(),
            std::process::id()
        ));
        if self.target.exists() {
            fs::rename(&self.target, &old).with_context(|| format!("moving aside {}", self.target.display()))?;
        }
        fs::rename(&self.staging, &self.target).with_context(|| format!("publishing {}", self.target.display()))?;
        if old.exists() {
            fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
        }
        Ok(self.target.clone())
    }
}

/// A run that fails with an error removes its staging directory; one killed outright leaves it
/// for the next [`StagedDir::begin`] to remove. After [`StagedDir::commit`] it no longer exists.
impl Drop for StagedDir {
    fn drop(&mut self) {
        if self.staging.exists() {
            let _ = fs::remove_dir_all(&self.staging);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_the_previous_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("table.csv");
        write(&path, b"complete,old\n").unwrap();
        let err = write_with(&path, |f| {
            f.write_all(b"half of a new ta")?;
            anyhow::bail!("killed mid-write")
        });
        assert!(err.is_err());
        assert_eq!(fs::read(&path).unwrap(), b"complete,old\n");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "temporary file left behind");
    }

    #[test]
    fn an_uncommitted_run_never_replaces_published_results() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("quick").join("table9");
        let first = StagedDir::begin(&target).unwrap();
        write(&first.path().join("t.csv"), b"v1").unwrap();
        first.commit().unwrap();
        assert_eq!(fs::read(target.join("t.csv")).unwrap(), b"v1");

        // A second run fails after writing part of its files (dropped without commit): its
        // staging directory goes with it.
        let second = StagedDir::begin(&target).unwrap();
        write(&second.path().join("t.csv"), b"v2-partial").unwrap();
        let staging = second.path().to_path_buf();
        drop(second);
        assert_eq!(fs::read(target.join("t.csv")).unwrap(), b"v1");
        assert!(!staging.exists(), "a failed run left its staging directory");

        // A run killed outright leaves one behind; the next run cleans it and publishes completely.
        let killed = root.path().join("quick").join(".table9.partial-999999");
        write(&killed.join("t.csv"), b"v2-partial").unwrap();
        let third = StagedDir::begin(&target).unwrap();
        write(&third.path().join("t.csv"), b"v3").unwrap();
        write(&third.path().join("u.csv"), b"v3").unwrap();
        third.commit().unwrap();
        assert_eq!(fs::read(target.join("t.csv")).unwrap(), b"v3");
        let names: Vec<String> = fs::read_dir(target.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["table9".to_string()], "staging directories left behind: {names:?}");
    }
}
