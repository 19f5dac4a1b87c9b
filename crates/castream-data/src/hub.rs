//! Files from the Hugging Face Hub through `hf-hub`, the one way castream reaches the hub: dataset
//! files (resolved from the local cache only) and, later, model weights.
//!
//! The cache is hf-hub's standard layout (`<cache>/<kind>s--<owner>--<name>/{refs,snapshots,blobs}`),
//! shared with Python's `huggingface_hub`; its location follows `HF_HUB_CACHE` / `HF_HOME` unless a
//! directory is given.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RepoKind {
    #[default]
    Model,
    Dataset,
}

/// A repository on the hub, as written in a spec: `{ repo = "owner/name", revision = "main" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubRepo {
    /// `owner/name`.
    pub repo: String,
    /// Branch, tag or 40-hex commit.
    #[serde(default = "default_revision")]
    pub revision: String,
    #[serde(default)]
    pub kind: RepoKind,
    /// Folder inside the repository holding the files (empty: the root).
    #[serde(default)]
    pub subdir: String,
}

fn default_revision() -> String {
    "main".into()
}

/// Whether a look-up may use the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubAccess {
    /// Only the local cache (`local_files_only`): never a network request.
    CacheOnly,
    /// Download when the cache lacks the file (hf-hub falls back to the cache when offline).
    Download,
}

impl HubRepo {
    pub fn new(repo: &str, kind: RepoKind) -> HubRepo {
        HubRepo { repo: repo.into(), revision: default_revision(), kind, subdir: String::new() }
    }

    /// Resolves `filename` (relative to `subdir`) to a local path. `cache_dir` overrides hf-hub's
    /// default cache location.
    #[cfg(feature = "hub")]
    pub fn fetch(&self, filename: &str, access: HubAccess, cache_dir: Option<&Path>) -> Result<PathBuf> {
        let (owner, name) = self.repo.split_once('/').ok_or_else(|| DataError::Config {
            field: "repo".into(),
            reason: format!("`{}` is not of the form `owner/name`", self.repo),
        })?;
        let cache = match cache_dir.map(Path::to_path_buf).or_else(env_cache_dir) {
            Some(dir) => hf_hub::Cache::new(dir),
            None => hf_hub::Cache::from_env(),
        };
        let repo = hf_hub::Repo::with_revision(
            format!("{owner}/{name}"),
            match self.kind {
                RepoKind::Model => hf_hub::RepoType::Model,
                RepoKind::Dataset => hf_hub::RepoType::Dataset,
            },
            self.revision.clone(),
        );
        let path = if self.subdir.is_empty() { filename.to_string() } else { format!("{}/{filename}", self.subdir) };
        let place = || format!("{}@{}: {path}", self.repo, self.revision);
        // HF_HUB_OFFLINE as in huggingface_hub: the cache only, never a request.
        let offline =
            std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "yes"));
        let result = if access == HubAccess::CacheOnly || offline {
            cache.repo(repo).get(&path).ok_or_else(|| {
                let why = if offline { " and HF_HUB_OFFLINE is set" } else { "" };
                format!("not in the local cache {}{why}", cache.path().display())
            })
        } else {
            // A cached file is returned without a request, so a populated cache works offline.
            let mut builder = hf_hub::api::sync::ApiBuilder::from_cache(cache);
            if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
                builder = builder.with_endpoint(endpoint);
            }
            builder.build().and_then(|api| api.repo(repo).get(&path)).map_err(|e| e.to_string())
        };
        result.map_err(|e| DataError::Hub(format!("{}: {e}", place())))
    }

    /// Without the `hub` feature there is no hf-hub client: the look-up is refused, saying why.
    #[cfg(not(feature = "hub"))]
    pub fn fetch(&self, filename: &str, _: HubAccess, _: Option<&Path>) -> Result<PathBuf> {
        Err(DataError::Hub(format!(
            "{}: {filename}: this build has no hf-hub client; Fix: enable castream-data's `hub` feature",
            self.repo
        )))
    }
}

/// `HF_HUB_CACHE`, which Python's `huggingface_hub` honours before `HF_HOME` (hf-hub reads only the latter).
#[cfg(feature = "hub")]
fn env_cache_dir() -> Option<PathBuf> {
    std::env::var_os("HF_HUB_CACHE").filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// Places `bytes` in hf-hub's cache layout under `cache` as a download of `filename` from `repo`
/// would (`refs/<revision>` naming a snapshot that holds the file), so that cache-only look-ups
/// find it: for filling the cache of an offline machine from a copied file, and for tests.
pub fn put_in_cache(cache: &Path, repo: &HubRepo, filename: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let kind = match repo.kind {
        RepoKind::Model => "models",
        RepoKind::Dataset => "datasets",
    };
    let folder = cache.join(format!("{kind}--{}", repo.repo.replace('/', "--")));
    // A placeholder commit: a real download names the snapshot by the commit it resolved.
    let commit = "0000000000000000000000000000000000000000";
    std::fs::create_dir_all(folder.join("refs"))?;
    std::fs::write(folder.join("refs").join(&repo.revision), commit)?;
    let path = if repo.subdir.is_empty() { filename.to_string() } else { format!("{}/{filename}", repo.subdir) };
    let file = folder.join("snapshots").join(commit).join(path);
    std::fs::create_dir_all(file.parent().expect("inside the snapshot"))?;
    std::fs::write(&file, bytes)?;
    Ok(file)
}

#[cfg(all(test, feature = "hub"))]
mod tests {
    use super::*;

    #[test]
    fn resolves_from_a_prefilled_cache_without_network() {
        let cache = tempfile::tempdir().unwrap();
        let mut repo = HubRepo::new("someone/weights", RepoKind::Model);
        repo.subdir = "v1".into();
        put_in_cache(cache.path(), &repo, "model.safetensors", b"abc").unwrap();
        let path = repo.fetch("model.safetensors", HubAccess::CacheOnly, Some(cache.path())).unwrap();
        assert_eq!(std::fs::read(path).unwrap(), b"abc");
    }

    #[test]
    fn a_file_missing_from_the_cache_is_an_error_naming_repo_and_file() {
        let cache = tempfile::tempdir().unwrap();
        let repo = HubRepo::new("someone/data", RepoKind::Dataset);
        put_in_cache(cache.path(), &repo, "a.bin", b"abc").unwrap();
        let err = repo.fetch("b.bin", HubAccess::CacheOnly, Some(cache.path())).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("someone/data") && msg.contains("b.bin"), "{msg}");
    }

    #[test]
    fn a_malformed_repo_id_is_a_config_error() {
        let err = HubRepo::new("no-slash", RepoKind::Model).fetch("x", HubAccess::CacheOnly, None).unwrap_err();
        assert!(matches!(err, DataError::Config { .. }), "{err}");
    }
}
