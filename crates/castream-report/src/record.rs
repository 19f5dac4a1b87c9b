//! `run.json`: everything needed to tell how a result was produced.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use castream_data::provenance::{cpu_model, git_state};
use serde::Serialize;

pub use castream_data::images::DataRecord;

/// A published file and its SHA-256.
#[derive(Debug, Clone, Serialize)]
pub struct OutputRecord {
    pub file: String,
    pub sha256: String,
}

/// The machine a run ran on.
#[derive(Debug, Clone, Serialize)]
pub struct MachineRecord {
    pub cpu: String,
    /// Threads of the compute pool.
    pub threads: usize,
    pub os: &'static str,
    pub arch: &'static str,
}

/// A shard record a merged run was assembled from.
#[derive(Debug, Clone, Serialize)]
pub struct ShardSource {
    /// `K/N`.
    pub shard: String,
    pub file: String,
    pub sha256: String,
    /// The command line that computed the shard.
    pub command: Vec<String>,
    pub device: String,
    pub cpu: String,
    pub wall_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    /// The command line that made this run.
    pub command: Vec<String>,
    pub spec: String,
    pub spec_file: String,
    pub target: String,
    pub profile: String,
    /// The profile's settings as used, command-line overrides applied.
    pub settings: serde_json::Value,
    pub overrides: Vec<String>,
    pub commit: String,
    /// Whether the working tree had uncommitted changes.
    pub dirty: bool,
    pub castream_version: &'static str,
    pub versions: BTreeMap<String, String>,
    pub device: String,
    pub machine: MachineRecord,
    pub seeds: BTreeMap<String, u64>,
    pub data: Vec<DataRecord>,
    /// SHA-256 of every weight file the run loaded (backbones, their sidecars, trained streams).
    pub weights: BTreeMap<String, String>,
    /// SHA-256 of the ordered list of evaluated image identifiers.
    pub image_list_sha256: Option<String>,
    pub started_unix: u64,
    pub wall_seconds: f64,
    /// Peak resident memory of the process while the target ran.
    pub peak_memory_bytes: u64,
    pub outputs: Vec<OutputRecord>,
    /// The shard records a merge assembled the per-image values from (none for a whole run).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardSource>,
}

impl RunRecord {
    pub fn new(spec: &str, spec_file: &Path, target: &str, profile: &str, settings: serde_json::Value) -> RunRecord {
        let (commit, dirty) = git_state(spec_file.parent().unwrap_or(Path::new(".")));
        RunRecord {
            command: std::env::args().collect(),
            spec: spec.into(),
            spec_file: spec_file.display().to_string(),
            target: target.into(),
            profile: profile.into(),
            settings,
            overrides: Vec::new(),
            commit,
            dirty,
            castream_version: env!("CARGO_PKG_VERSION"),
            versions: env!("CASTREAM_VERSIONS")
                .split(';')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            device: "cpu".into(),
            machine: MachineRecord {
                cpu: cpu_model(),
                threads: rayon::current_num_threads(),
                os: std::env::consts::OS,
                arch: std::env::consts::ARCH,
            },
            seeds: BTreeMap::new(),
            data: Vec::new(),
            weights: BTreeMap::new(),
            image_list_sha256: None,
            started_unix: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            wall_seconds: 0.0,
            peak_memory_bytes: 0,
            outputs: Vec::new(),
            shards: Vec::new(),
        }
    }

    /// Records a dataset split read (once, however often it is read).
    pub fn read_data(&mut self, data: DataRecord) {
        if !self.data.iter().any(|d| d.dataset == data.dataset && d.split == data.split && d.sha256 == data.sha256) {
            self.data.push(data);
        }
    }
}
