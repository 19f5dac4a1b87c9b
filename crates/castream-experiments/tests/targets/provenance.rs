//! The provenance every published run must carry.

use std::path::Path;

use castream_data::labelled::hex;
use sha2::{Digest, Sha256};

/// The run.json of a published run records how it was made: command, data read, weights loaded,
/// (`models`: the target loads models) seeds, commit, machine, peak memory, wall time, and every output with its SHA-256.
pub fn assert_provenance(models: bool, dir: &Path) {
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("run.json")).unwrap()).unwrap();
    let nonempty = |key: &str| {
        let v = &record[key];
        let ok = match v {
            serde_json::Value::String(s) => !s.is_empty(),
            serde_json::Value::Array(a) => !a.is_empty(),
            serde_json::Value::Object(o) => !o.is_empty(),
            serde_json::Value::Number(n) => n.as_f64().is_some_and(|x| x > 0.0),
            serde_json::Value::Bool(_) => true,
            serde_json::Value::Null => false,
        };
        assert!(ok, "{}: run.json `{key}` is empty: {v}", dir.display());
    };
    for key in ["command", "commit", "dirty", "data", "seeds", "wall_seconds", "peak_memory_bytes", "outputs"] {
        nonempty(key);
    }
    if models {
        nonempty("weights");
    }
    assert!(!record["machine"]["cpu"].as_str().unwrap().is_empty() && record["machine"]["threads"].as_u64() > Some(0));
    for d in record["data"].as_array().unwrap() {
        assert_eq!(d["sha256"].as_str().unwrap().len(), 64, "{d}");
        assert!(d["images"].as_u64() > Some(0), "{d}");
    }
    for (file, sha) in record["weights"].as_object().unwrap() {
        assert_eq!(sha.as_str().unwrap().len(), 64, "{file}: {sha}");
    }
    for o in record["outputs"].as_array().unwrap() {
        let bytes = std::fs::read(dir.join(o["file"].as_str().unwrap())).unwrap();
        assert_eq!(o["sha256"].as_str().unwrap(), hex(&Sha256::digest(&bytes)), "{o}");
    }
}
