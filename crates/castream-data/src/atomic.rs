//! Atomic writes. A single file is written to a temporary sibling and renamed into place; a run's
//! results directory is filled as a hidden staging directory and swapped in only when the run
//! finishes. An interrupted run therefore leaves either the previous complete results or nothing,
//! never a half-written table that looks complete.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{ensure, Context, Result};
use sha2::{Digest, Sha256};
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
    for live in LIVE.lock().unwrap_or_else(|e| e.into_inner()).iter_mut() {
        if let Ok(name) = path.strip_prefix(&live.staging) {
            live.written.insert(name.to_path_buf());
        }
    }
    Ok(())
}

/// [`write_with`] for bytes already in memory.
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |f| Ok(f.write_all(bytes)?))
}

/// A staging directory of this process not yet committed, and the files written into it.
struct Live {
    staging: PathBuf,
    written: BTreeSet<PathBuf>,
}

/// What [`abandon_all`] removes when the process is interrupted, and the ledger of every file
/// [`write_with`] put into a staging directory (checked by [`StagedDir::written`]).
static LIVE: Mutex<Vec<Live>> = Mutex::new(Vec::new());

/// A results directory under construction: files go into a hidden staging directory beside the
/// final one, which [`StagedDir::commit`] swaps into place. It holds an exclusive advisory lock
/// on the target (`.<name>.lock` beside it) for its whole life, so two runs of one target exclude
/// each other; the lock goes with the process, also when it is killed.
pub struct StagedDir {
    staging: PathBuf,
    target: PathBuf,
    _lock: fs::File,
}

/// Another live process is writing the same results directory.
#[derive(Debug, thiserror::Error)]
#[error(
    "another run of {name} (pid {pid}) is in progress, writing {target}; wait for it to finish \
     (or stop it) and run again"
)]
pub struct Busy {
    pub name: String,
    pub pid: String,
    pub target: PathBuf,
}

impl StagedDir {
    /// Locks `target` and starts its staging directory. Staging directories left by runs that
    /// were killed are removed; a live process's never are (its pid is in the directory's name).
    pub fn begin(target: &Path) -> Result<StagedDir> {
        let parent = target.parent().context("results directory has no parent")?;
        let name = target.file_name().context("results directory has no name")?.to_string_lossy().into_owned();
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        let lock_path = parent.join(format!(".{name}.lock"));
        let mut lock = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .with_context(|| format!("opening the lock {}", lock_path.display()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let pid = fs::read_to_string(&lock_path).unwrap_or_default().trim().to_string();
                let pid = if pid.is_empty() { "unknown".to_string() } else { pid };
                return Err(Busy { name, pid, target: target.to_path_buf() }.into());
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", lock_path.display()));
            }
        }
        lock.set_len(0)?;
        write!(lock, "{}", std::process::id())?;
        for entry in fs::read_dir(parent)? {
            let entry = entry?;
            let file = entry.file_name().to_string_lossy().into_owned();
            let pid_of = |prefix: &str| file.strip_prefix(prefix).and_then(|pid| pid.parse::<u32>().ok());
            if let Some(pid) = pid_of(&format!(".{name}.old-")).filter(|&pid| !process_alive(pid)) {
                // Published results moved aside by a run that died mid-swap: they are the current ones.
                if !target.exists() {
                    fs::rename(entry.path(), target)
                        .with_context(|| format!("restoring {} from {}", target.display(), entry.path().display()))?;
                } else {
                    fs::remove_dir_all(entry.path())
                        .with_context(|| format!("removing stale {} (pid {pid})", entry.path().display()))?;
                }
            } else if pid_of(&format!(".{name}.partial-")).is_some_and(|pid| !process_alive(pid)) {
                fs::remove_dir_all(entry.path())
                    .with_context(|| format!("removing stale {}", entry.path().display()))?;
            }
        }
        let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
        if staging.exists() {
            fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
        }
        fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Live { staging: staging.clone(), written: BTreeSet::new() });
        Ok(StagedDir { staging, target: target.to_path_buf(), _lock: lock })
    }

    /// Where files of this run are written until commit.
    pub fn path(&self) -> &Path {
        &self.staging
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// The outputs of this run: every file written into the staging directory through
    /// [`write_with`], checked to be there still with their SHA-256, sorted by name. A file
    /// written but gone, a staging directory removed, or a file that did not come through the
    /// atomic writer is an error: the run is never published incomplete.
    pub fn written(&self) -> Result<Vec<(String, String)>> {
        ensure!(self.staging.is_dir(), "the staging directory {} disappeared; not publishing", self.staging.display());
        let written = LIVE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|l| l.staging == self.staging)
            .map(|l| l.written.clone())
            .unwrap_or_default();
        let mut outputs = Vec::new();
        for name in &written {
            let path = self.staging.join(name);
            let bytes = fs::read(&path)
                .with_context(|| format!("{} was written by this run but is gone; not publishing", path.display()))?;
            outputs.push((name.to_string_lossy().into_owned(), crate::labelled::hex(&Sha256::digest(&bytes))));
        }
        let mut stray = Vec::new();
        for entry in walk(&self.staging)? {
            if !written.contains(entry.strip_prefix(&self.staging).unwrap_or(&entry)) {
                stray.push(entry.display().to_string());
            }
        }
        ensure!(stray.is_empty(), "files not written by this run are in its staging directory: {}", stray.join(", "));
        Ok(outputs)
    }

    /// Replaces the target directory by the staging directory. Between the two renames the target
    /// is briefly absent, never partial; the previous results are kept aside as `.<name>.old-<pid>`
    /// until the new ones are in place (put back if the swap fails, and restored by the next
    /// [`StagedDir::begin`] if the process dies in between). From here on an interrupt no longer
    /// removes the staging directory: it is about to be the published one.
    pub fn commit(self) -> Result<PathBuf> {
        LIVE.lock().unwrap_or_else(|e| e.into_inner()).retain(|l| l.staging != self.staging);
        let old = self.target.with_file_name(format!(
            ".{}.old-{}",
            self.target.file_name().unwrap().to_string_lossy(),
            std::process::id()
        ));
        if self.target.exists() {
            fs::rename(&self.target, &old).with_context(|| format!("moving aside {}", self.target.display()))?;
        }
        if let Err(e) = fs::rename(&self.staging, &self.target) {
            if old.exists() {
                let _ = fs::rename(&old, &self.target);
            }
            return Err(e).with_context(|| format!("publishing {}", self.target.display()));
        }
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
        LIVE.lock().unwrap_or_else(|e| e.into_inner()).retain(|l| l.staging != self.staging);
        if self.staging.exists() {
            let _ = fs::remove_dir_all(&self.staging);
        }
    }
}

/// Removes every staging directory of this process: called on Ctrl-C / SIGTERM just before the
/// process exits, so an interrupted run leaves the published results as they were and nothing else.
pub fn abandon_all() {
    for live in LIVE.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
        let _ = fs::remove_dir_all(live.staging);
    }
}

/// Every file under `dir`, recursively.
fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        // The entry's own type: a symlink is a file here, never followed.
        if entry.file_type()?.is_dir() {
            files.extend(walk(&entry.path())?);
        } else {
            files.push(entry.path());
        }
    }
    Ok(files)
}

/// Whether process `pid` is alive (`/proc/<pid>` exists). The target's lock is what keeps two
/// runs apart; this check spares the folders of a process that is still alive without holding the
/// lock. Where `/proc` does not exist, nothing can be proven alive and the lock alone protects.
fn process_alive(pid: u32) -> bool {
    pid == std::process::id() || (Path::new("/proc/self").exists() && Path::new(&format!("/proc/{pid}")).exists())
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
            .filter(|n| n != ".table9.lock")
            .collect();
        assert_eq!(names, vec!["table9".to_string()], "staging directories left behind: {names:?}");
    }

    #[test]
    fn two_runs_of_one_target_exclude_each_other() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("quick").join("data-card");
        let first = StagedDir::begin(&target).unwrap();
        write(&first.path().join("a.csv"), b"1").unwrap();
        let err = StagedDir::begin(&target).err().expect("a second run while the first holds the lock");
        let msg = err.to_string();
        assert!(msg.contains(&format!("another run of data-card (pid {})", std::process::id())), "{msg}");
        assert!(first.path().join("a.csv").exists(), "the refused run touched the first one's staging directory");
        assert_eq!(first.written().unwrap().len(), 1);
        first.commit().unwrap();
        assert!(target.join("a.csv").exists());
        StagedDir::begin(&target).expect("the lock is released with the run");
    }

    #[test]
    fn a_live_process_staging_directory_is_kept_and_a_dead_one_removed() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("quick").join("table2");
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let theirs = root.path().join("quick").join(format!(".table2.partial-{}", child.id()));
        write(&theirs.join("t.csv"), b"theirs").unwrap();
        drop(StagedDir::begin(&target).unwrap());
        assert!(theirs.join("t.csv").exists(), "removed the staging directory of a live process");
        child.kill().unwrap();
        child.wait().unwrap();
        drop(StagedDir::begin(&target).unwrap());
        assert!(!theirs.exists(), "kept the staging directory of a dead process");
    }

    #[test]
    fn a_run_publishes_only_what_it_wrote_and_still_has() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("quick").join("table3");
        let run = StagedDir::begin(&target).unwrap();
        write(&run.path().join("a.csv"), b"a").unwrap();
        write(&run.path().join("sub/b.csv"), b"b").unwrap();
        let written = run.written().unwrap();
        assert_eq!(written.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["a.csv", "sub/b.csv"]);
        assert_eq!(written[0].1, crate::labelled::hex(&Sha256::digest(b"a")));
        fs::remove_file(run.path().join("sub/b.csv")).unwrap();
        let msg = run.written().unwrap_err().to_string();
        assert!(msg.contains("b.csv") && msg.contains("gone"), "{msg}");
        write(&run.path().join("sub/b.csv"), b"b").unwrap();
        fs::write(run.path().join("stray.png"), b"?").unwrap();
        let msg = run.written().unwrap_err().to_string();
        assert!(msg.contains("stray.png"), "{msg}");
        fs::remove_dir_all(run.path()).unwrap();
        assert!(run.written().unwrap_err().to_string().contains("disappeared"));
    }

    #[test]
    fn results_moved_aside_by_a_run_that_died_mid_swap_are_restored() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("quick").join("table5");
        let dead = root.path().join("quick").join(".table5.old-999999");
        write(&dead.join("t.csv"), b"published").unwrap();
        drop(StagedDir::begin(&target).unwrap());
        assert_eq!(fs::read(target.join("t.csv")).unwrap(), b"published");
        assert!(!dead.exists());
    }
}
