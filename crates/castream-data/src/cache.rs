//! Caches of computed results (trained streams, saliency maps, metric scores) under
//! `target/castream/`. An entry is a payload file and a card beside it (`<payload>.card.json`)
//! recording the cache's format version, the entry's key and the payload's SHA-256.
//!
//! The key hashes everything the payload depends on: the inputs' own SHA-256 (weights, data), the
//! settings, and the format version, which the owner of a cache raises whenever its computation
//! changes. An entry is used only when its card matches and the payload's checksum holds; a damaged
//! one (truncated, edited, unreadable) is reported in one line naming the file and recomputed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::atomic;
use crate::labelled::hex;

/// One cache: its folder under the cache root and its format version.
#[derive(Debug, Clone, Copy)]
pub struct CacheKind {
    pub dir: &'static str,
    /// Raised whenever the computation behind the cache changes, which retires every old entry.
    pub format: u32,
}

/// What a card records. `extra` carries the owner's small facts about the payload (e.g. a trained
/// stream's validation accuracy).
#[derive(Debug, Serialize, Deserialize)]
struct Card {
    format: u32,
    key: String,
    sha256: String,
    bytes: u64,
    extra: serde_json::Value,
}

/// A verified payload read from the cache.
pub struct Hit {
    pub bytes: Vec<u8>,
    pub sha256: String,
    pub extra: serde_json::Value,
}

/// One entry of a cache: where it lives and the key it must carry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: PathBuf,
    card: PathBuf,
    key: String,
    format: u32,
}

impl Entry {
    /// The entry of `kind` under `root` for `inputs` (hashed as JSON with the format version):
    /// `<root>/<dir>/<stem>-<key>.<ext>`.
    pub fn new(root: &Path, kind: CacheKind, stem: &str, ext: &str, inputs: &impl Serialize) -> Result<Entry> {
        let mut h = Sha256::new();
        h.update(kind.format.to_le_bytes());
        h.update(serde_json::to_vec(inputs)?);
        let key = hex(&h.finalize());
        let path = root.join(kind.dir).join(format!("{stem}-{}.{ext}", &key[..20]));
        let card = path.with_extension(format!("{ext}.card.json"));
        Ok(Entry { path, card, key, format: kind.format })
    }

    /// The payload, when the entry exists and is intact. A missing entry is `None` silently; a
    /// damaged one is `None` after a one-line warning naming the file, so the caller recomputes.
    pub fn load(&self) -> Option<Hit> {
        if !self.card.exists() && !self.path.exists() {
            return None;
        }
        match self.verified() {
            Ok(hit) => Some(hit),
            Err(e) => {
                eprintln!("warning: cache entry {}: {e:#}; recomputing it", self.path.display());
                None
            }
        }
    }

    fn verified(&self) -> Result<Hit> {
        let card: Card = serde_json::from_slice(
            &std::fs::read(&self.card).with_context(|| format!("reading its card {}", self.card.display()))?,
        )
        .with_context(|| format!("its card {} is corrupt", self.card.display()))?;
        anyhow::ensure!(card.format == self.format && card.key == self.key, "its card is for other inputs");
        let bytes = std::fs::read(&self.path).context("reading it")?;
        let sha256 = hex(&Sha256::digest(&bytes));
        anyhow::ensure!(
            sha256 == card.sha256 && bytes.len() as u64 == card.bytes,
            "checksum mismatch ({} bytes, SHA-256 {sha256}; its card says {} bytes, {})",
            bytes.len(),
            card.bytes,
            card.sha256
        );
        Ok(Hit { bytes, sha256, extra: card.extra })
    }

    /// Writes the payload, then its card (each atomically): a crash between the two leaves a
    /// payload whose card is missing or stale, which [`Entry::load`] rejects. Returns the SHA-256.
    pub fn store(&self, bytes: &[u8], extra: serde_json::Value) -> Result<String> {
        atomic::write(&self.path, bytes)?;
        let sha256 = hex(&Sha256::digest(bytes));
        let card = Card {
            format: self.format,
            key: self.key.clone(),
            sha256: sha256.clone(),
            bytes: bytes.len() as u64,
            extra,
        };
        atomic::write(&self.card, &serde_json::to_vec_pretty(&card)?)?;
        Ok(sha256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIND: CacheKind = CacheKind { dir: "things", format: 1 };

    #[test]
    fn an_entry_is_keyed_by_its_inputs_and_format() {
        let root = tempfile::tempdir().unwrap();
        let a = Entry::new(root.path(), KIND, "t", "bin", &("weights-sha", 3)).unwrap();
        let b = Entry::new(root.path(), KIND, "t", "bin", &("weights-sha", 4)).unwrap();
        let c = Entry::new(root.path(), CacheKind { format: 2, ..KIND }, "t", "bin", &("weights-sha", 3)).unwrap();
        assert!(a.path != b.path && a.path != c.path);
        a.store(b"payload", serde_json::json!({"acc": 0.5})).unwrap();
        let hit = a.load().unwrap();
        assert_eq!((hit.bytes.as_slice(), hit.extra["acc"].as_f64()), (&b"payload"[..], Some(0.5)));
        assert_eq!(hit.sha256, hex(&Sha256::digest(b"payload")));
        assert!(b.load().is_none() && c.load().is_none());
    }

    #[test]
    fn a_damaged_entry_is_a_miss_not_a_wrong_result() {
        let root = tempfile::tempdir().unwrap();
        let e = Entry::new(root.path(), KIND, "t", "bin", &"inputs").unwrap();
        e.store(b"0123456789", serde_json::Value::Null).unwrap();
        // Edited but the same length: only the checksum can tell.
        std::fs::write(&e.path, b"0123456780").unwrap();
        assert!(e.load().is_none());
        // Truncated.
        std::fs::write(&e.path, b"01234").unwrap();
        assert!(e.load().is_none());
        // A card that is not JSON, then a payload without a card.
        e.store(b"0123456789", serde_json::Value::Null).unwrap();
        std::fs::write(&e.card, b"{").unwrap();
        assert!(e.load().is_none());
        std::fs::remove_file(&e.card).unwrap();
        assert!(e.load().is_none());
        // Recomputed and stored again, it is a hit.
        e.store(b"0123456789", serde_json::Value::Null).unwrap();
        assert_eq!(e.load().unwrap().bytes, b"0123456789");
    }
}
