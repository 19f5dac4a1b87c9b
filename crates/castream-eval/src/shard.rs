//! Sharded evaluation: a table's images split into parts computed by separate processes (a Slurm
//! job array, or machines sharing a filesystem) and merged into exactly the values one process
//! computes (docs/scale-out.md).
//!
//! Every per-image computation of a target is a *cell* — a (model, saliency source) scored on the
//! images, a recognition pass, a sanity check — identified by the SHA-256 of its inputs. A
//! [`Sharding`] decides what a cell does: compute all its images ([`Sharding::Whole`]), compute
//! one shard's part and keep it for the shard's record ([`Sharding::Compute`]), or assemble it
//! from every shard's record ([`Sharding::Merge`]). A part is a run of whole batches of the
//! unsharded run ([`Shard::part`]), so every image is computed in the same batch as without
//! sharding and the merged values are the same bits.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Mutex;

use anyhow::{bail, ensure, Context, Result};
use castream_data::cache::{CacheKind, Entry};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Shard `index` of `count` (1-based), written `K/N` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Shard, String> {
        let parsed = s.split_once('/').and_then(|(k, n)| Some((k.trim().parse().ok()?, n.trim().parse().ok()?)));
        match parsed {
            Some((index, count)) if (1..=count).contains(&index) => Ok(Shard { index, count }),
            _ => Err(format!(
                "`{s}` is not a shard: expected K/N with 1 ≤ K ≤ N, e.g. `--shard 2/4` for the second of four"
            )),
        }
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// This shard's images of `ids`, evaluated in batches of `batch`: a contiguous run of whole
    /// batches. With `B = ⌈len/batch⌉` batches, shard `k` of `N` takes batches
    /// `⌊(k−1)·B/N⌋ .. ⌊k·B/N⌋`, so shards differ by at most one batch and a shard is empty when
    /// there are fewer batches than shards.
    pub fn part<'a>(&self, ids: &'a [usize], batch: usize) -> &'a [usize] {
        let batch = batch.max(1);
        let batches = ids.len().div_ceil(batch);
        let first = (self.index - 1) * batches / self.count;
        let end = self.index * batches / self.count;
        &ids[(first * batch).min(ids.len())..(end * batch).min(ids.len())]
    }

    /// `shard-K-of-N`: the name of the shard's record and of its cells in the cell cache.
    pub fn stem(&self) -> String {
        format!("shard-{}-of-{}", self.index, self.count)
    }
}

/// Per-image values that a merge concatenates: the parts of consecutive shards, in order.
pub trait PerImageValues: Serialize + DeserializeOwned + Default {
    /// Every per-image column with what it is (a metric, a model, a method and pooling), in a
    /// fixed order; none for the values of an empty part.
    fn columns(&mut self) -> Vec<(String, &mut Vec<f64>)>;
}

/// Metric → per-image values (an interpretability cell).
impl<K: Ord + Serialize + DeserializeOwned + fmt::Debug> PerImageValues for BTreeMap<K, Vec<f64>> {
    fn columns(&mut self) -> Vec<(String, &mut Vec<f64>)> {
        self.iter_mut().map(|(k, v)| (format!("{k:?}"), v)).collect()
    }
}

/// One column of per-image values per model (a recognition cell: GAP, then each CA model).
impl PerImageValues for Vec<Vec<f64>> {
    fn columns(&mut self) -> Vec<(String, &mut Vec<f64>)> {
        self.iter_mut().enumerate().map(|(i, v)| (format!("model {i}"), v)).collect()
    }
}

/// Appends `next`, the values of the images that follow those of `values`: column by column,
/// the same columns on both sides unless one side is an empty part.
fn append<T: PerImageValues>(values: &mut T, mut next: T) -> Result<()> {
    if next.columns().is_empty() {
        return Ok(());
    }
    if values.columns().is_empty() {
        *values = next;
        return Ok(());
    }
    let (mut mine, theirs) = (values.columns(), next.columns());
    let names = |c: &[(String, &mut Vec<f64>)]| c.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    ensure!(names(&mine) == names(&theirs), "parts hold other values: {:?} vs {:?}", names(&mine), names(&theirs));
    for ((_, column), (_, more)) in mine.iter_mut().zip(theirs) {
        column.append(more);
    }
    Ok(())
}

/// Checks that every column of `values` holds one value per image of `n`.
fn check_lengths<T: PerImageValues>(values: &mut T, n: usize) -> Result<()> {
    for (name, column) in values.columns() {
        ensure!(column.len() == n, "{name} holds {} values for {n} images", column.len());
    }
    Ok(())
}

/// One shard's values of one cell, as its record stores them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellPart {
    /// What the cell is, for messages (e.g. `Grad-CAM ca`).
    pub label: String,
    /// The images of this part, in order.
    pub ids: Vec<usize>,
    pub values: serde_json::Value,
}

/// The cells of a shard's record, by cell id.
pub type Cells = BTreeMap<String, CellPart>;

/// Finished parts of a shard, kept as each cell completes so that a rerun shard resumes there.
const PARTS: CacheKind = CacheKind { dir: "parts", format: 1 };

/// Where a shard keeps its finished parts, and the code that computed them (the executable's
/// SHA-256): a rerun by other code recomputes them.
pub struct Resume {
    pub dir: PathBuf,
    pub code: String,
}

/// What each cell of a run computes.
pub enum Sharding {
    /// All images (no sharding).
    Whole,
    /// One shard's part of every cell, kept in `cells`; each finished part is also stored under
    /// `resume` (when set), where a rerun of the shard finds it.
    Compute { shard: Shard, resume: Option<Resume>, cells: Mutex<Cells> },
    /// Every cell assembled from the records of all `shards` (index `k − 1` holds shard `k`).
    Merge { shards: Vec<Cells> },
}

impl Sharding {
    /// Whether this run computes a shard: its cells are recorded, its tables are the merge's work.
    pub fn is_shard(&self) -> bool {
        matches!(self, Sharding::Compute { .. })
    }

    /// The values of the cell identified by `inputs` on the images `ids` — only this shard's part
    /// of them when computing a shard — evaluated in batches of `batch`: `compute`d, resumed from
    /// a finished part, or read from the shards' records.
    pub fn cell<T: PerImageValues>(
        &self,
        label: &str,
        inputs: &impl Serialize,
        ids: &[usize],
        batch: usize,
        compute: impl FnOnce(&[usize]) -> Result<T>,
    ) -> Result<T> {
        match self {
            Sharding::Whole => compute(ids),
            Sharding::Compute { shard, resume, cells } => {
                let id = cell_id(inputs, ids, batch)?;
                let part = shard.part(ids, batch);
                // Finished parts are keyed by the executable too: other code recomputes them.
                let entry = match resume {
                    Some(r) => Some(Entry::new(&r.dir, PARTS, &shard.stem(), "json", &(&id, part, &r.code))?),
                    None => None,
                };
                let resumed = entry.as_ref().and_then(|e| e.load()).and_then(|hit| {
                    let mut values: T = serde_json::from_slice(&hit.bytes).ok()?;
                    check_lengths(&mut values, part.len()).ok().map(|_| values)
                });
                let mut values = match resumed {
                    Some(values) => {
                        eprintln!("shard {shard}: {label}: resumed from its finished part");
                        values
                    }
                    // An empty part (fewer batches than shards) has nothing to compute.
                    None if part.is_empty() => T::default(),
                    None => {
                        let mut values = compute(part)?;
                        check_lengths(&mut values, part.len()).with_context(|| format!("cell {label}"))?;
                        if let Some(e) = &entry {
                            e.store(&serde_json::to_vec(&values)?, serde_json::Value::Null)?;
                        }
                        values
                    }
                };
                check_lengths(&mut values, part.len())?;
                let part =
                    CellPart { label: label.to_string(), ids: part.to_vec(), values: serde_json::to_value(&values)? };
                cells.lock().map_err(|_| anyhow::anyhow!("a shard's cell list was poisoned"))?.insert(id, part);
                Ok(values)
            }
            Sharding::Merge { shards } => {
                let id = cell_id(inputs, ids, batch)?;
                let mut out = T::default();
                let mut missing = Vec::new();
                for (k, cells) in shards.iter().enumerate() {
                    let shard = Shard { index: k + 1, count: shards.len() };
                    let Some(part) = cells.get(&id) else {
                        missing.push(shard.to_string());
                        continue;
                    };
                    ensure!(
                        part.ids == shard.part(ids, batch),
                        "cell {label}: shard {shard} computed other images than its part of this run's images"
                    );
                    let mut values: T = serde_json::from_value(part.values.clone())
                        .with_context(|| format!("cell {label}: the values of shard {shard} do not read"))?;
                    check_lengths(&mut values, part.ids.len())
                        .with_context(|| format!("cell {label}: shard {shard}"))?;
                    append(&mut out, values).with_context(|| format!("cell {label}: shard {shard}"))?;
                }
                if !missing.is_empty() {
                    bail!(
                        "cell {label} is missing from shard(s) {}: they computed other cells (other settings, weights or \
                         images); Fix: rerun those shards with the same spec and flags",
                        missing.join(", ")
                    );
                }
                check_lengths(&mut out, ids.len()).with_context(|| format!("cell {label}, merged"))?;
                Ok(out)
            }
        }
    }

    /// The parts a shard computed (empty for the other modes).
    pub fn into_cells(self) -> Result<Cells> {
        match self {
            Sharding::Compute { cells, .. } => {
                cells.into_inner().map_err(|_| anyhow::anyhow!("a shard's cell list was poisoned"))
            }
            _ => Ok(Cells::new()),
        }
    }
}

/// A cell's identity: the SHA-256 of its inputs, all its images and the batch size.
fn cell_id(inputs: &impl Serialize, ids: &[usize], batch: usize) -> Result<String> {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(&(inputs, ids, batch))?);
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_whole_batches_that_cover_every_image_once_in_order() {
        for (n, batch, count) in [(32, 8, 4), (32, 64, 4), (10, 3, 3), (1000, 64, 7), (5, 1, 5), (0, 4, 2), (17, 4, 1)]
        {
            let ids: Vec<usize> = (100..100 + n).collect();
            let mut joined = Vec::new();
            for index in 1..=count {
                let part = Shard { index, count }.part(&ids, batch);
                // Each part starts on a batch boundary of the whole list.
                if let Some(first) = part.first() {
                    assert_eq!((first - 100) % batch, 0, "n {n} batch {batch} shard {index}/{count}");
                }
                joined.extend_from_slice(part);
            }
            assert_eq!(joined, ids, "n {n} batch {batch} count {count}");
        }
        // 4 batches of 8 over 4 shards: one batch each; 1 batch over 4 shards: the last takes it.
        let ids: Vec<usize> = (0..32).collect();
        assert_eq!(Shard { index: 2, count: 4 }.part(&ids, 8), &ids[8..16]);
        assert!(Shard { index: 3, count: 4 }.part(&ids, 64).is_empty());
        assert_eq!(Shard { index: 4, count: 4 }.part(&ids, 64), &ids[..]);
        // 10 images in batches of 3 (4 batches) over 3 shards: batches 0 | 1 | 2, 3.
        let ids: Vec<usize> = (0..10).collect();
        let parts: Vec<&[usize]> = (1..=3).map(|index| Shard { index, count: 3 }.part(&ids, 3)).collect();
        assert_eq!(parts, [&ids[0..3], &ids[3..6], &ids[6..10]]);
    }

    #[test]
    fn shards_parse_from_k_slash_n_and_bad_ones_say_what_is_expected() {
        assert_eq!("2/4".parse::<Shard>(), Ok(Shard { index: 2, count: 4 }));
        assert_eq!(Shard { index: 3, count: 8 }.to_string(), "3/8");
        for bad in ["0/4", "5/4", "2", "a/b", "1/0", ""] {
            let e = bad.parse::<Shard>().unwrap_err();
            assert!(e.contains("K/N") && e.contains(&format!("`{bad}`")), "{e}");
        }
    }

    type Values = BTreeMap<String, Vec<f64>>;

    /// Per-image values squared, as a stand-in for a cell's computation.
    fn square(ids: &[usize]) -> Result<Values> {
        Ok(BTreeMap::from([("sq".to_string(), ids.iter().map(|&i| (i * i) as f64 / 7.0).collect())]))
    }

    #[test]
    fn merged_shards_give_the_whole_run_values_and_a_missing_cell_is_named() {
        let ids: Vec<usize> = (0..45).collect();
        let whole = Sharding::Whole.cell("sq", &"inputs", &ids, 8, square).unwrap();
        let records: Vec<Cells> = (1..=4)
            .map(|index| {
                let s = Sharding::Compute { shard: Shard { index, count: 4 }, resume: None, cells: Mutex::default() };
                let part = s.cell("sq", &"inputs", &ids, 8, square).unwrap();
                assert_eq!(part["sq"].len(), Shard { index, count: 4 }.part(&ids, 8).len());
                s.into_cells().unwrap()
            })
            .collect();
        let merge = Sharding::Merge { shards: records.clone() };
        assert_eq!(
            merge.cell::<Values>("sq", &"inputs", &ids, 8, |_| panic!("a merge computes nothing")).unwrap(),
            whole
        );
        // Other inputs are another cell, which no shard computed.
        let e = merge.cell::<Values>("other", &"other inputs", &ids, 8, square).unwrap_err();
        assert!(e.to_string().contains("cell other is missing from shard(s) 1/4, 2/4, 3/4, 4/4"), "{e}");
        // A record with one shard's cells dropped is named.
        let mut records = records;
        records[2].clear();
        let e = Sharding::Merge { shards: records }.cell("sq", &"inputs", &ids, 8, square).unwrap_err();
        assert!(e.to_string().contains("missing from shard(s) 3/4"), "{e}");
    }

    #[test]
    fn a_part_with_a_value_missing_is_refused_by_the_merge() {
        let ids: Vec<usize> = (0..16).collect();
        let mut records: Vec<Cells> = (1..=2)
            .map(|index| {
                let s = Sharding::Compute { shard: Shard { index, count: 2 }, resume: None, cells: Mutex::default() };
                s.cell("sq", &0, &ids, 4, square).unwrap();
                s.into_cells().unwrap()
            })
            .collect();
        let part = records[1].values_mut().next().unwrap();
        part.values["sq"].as_array_mut().unwrap().pop();
        let e = Sharding::Merge { shards: records }.cell::<Values>("sq", &0, &ids, 4, square).unwrap_err();
        assert!(format!("{e:#}").contains("shard 2/2: \"sq\" holds 7 values for 8 images"), "{e:#}");
        // A computation that returns too few values is caught where it runs.
        let s = Sharding::Compute { shard: Shard { index: 1, count: 2 }, resume: None, cells: Mutex::default() };
        let e = s.cell("short", &0, &ids, 4, |p| square(&p[1..])).unwrap_err();
        assert!(format!("{e:#}").contains("holds 7 values for 8 images"), "{e:#}");
    }

    #[test]
    fn a_rerun_shard_reads_its_finished_parts_instead_of_computing_them() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<usize> = (0..20).collect();
        let shard = Shard { index: 2, count: 2 };
        let run = |compute: &dyn Fn(&[usize]) -> Result<Values>, code: &str| {
            let resume = Resume { dir: dir.path().to_path_buf(), code: code.into() };
            let s = Sharding::Compute { shard, resume: Some(resume), cells: Mutex::default() };
            let values = s.cell("sq", &1, &ids, 4, compute).unwrap();
            (values, s.into_cells().unwrap())
        };
        let (first, cells) = run(&square, "this build");
        let (again, cells_again) = run(&|_| panic!("the finished part is read, not computed"), "this build");
        assert_eq!((first, cells.len()), (again, 1));
        assert_eq!(serde_json::to_string(&cells).unwrap(), serde_json::to_string(&cells_again).unwrap());
        // Another executable recomputes.
        let computed = std::cell::Cell::new(false);
        run(
            &|ids| {
                computed.set(true);
                square(ids)
            },
            "another build",
        );
        assert!(computed.get());
    }
}
