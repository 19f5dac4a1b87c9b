//! The CA model: a frozen backbone whose GAP is replaced by the stream, the backbone's own
//! classifier applied to the stream's last token (METHOD.md §2–3). The GAP baseline is the
//! backbone alone, so both share every backbone and classifier weight.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{Tensor, Var};
use castream_backbones::train::{count_correct, LabelledSet, Task};
use castream_backbones::Model;
use rand_chacha::ChaCha8Rng;

use crate::stream::{CaStream, StreamConfig, StreamOutput};

pub struct CaModel {
    pub backbone: Model,
    pub stream: CaStream,
}

impl CaModel {
    /// A fresh stream (seeded) on `backbone`; the classifier input width is `d_4`.
    pub fn new(backbone: Model, config: &StreamConfig, seed: u64) -> Result<CaModel> {
        let widths = backbone.net.stage_widths();
        let stream = CaStream::new(config, widths, widths[4], seed, &backbone.device)?;
        Ok(CaModel { backbone, stream })
    }

    /// Logits from stage outputs `F_0 … F_4` (untapped entries are not read).
    pub fn logits_from_features(&self, features: &[Tensor]) -> candle_core::Result<(Tensor, StreamOutput)> {
        let out = self.stream.forward(features)?;
        Ok((self.backbone.net.classify(&out.token)?, out))
    }

    /// Logits of an input batch, the backbone in evaluation mode.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<(Tensor, StreamOutput)> {
        self.logits_from_features(&self.backbone.net.stages(x, false)?)
    }
}

/// Stage outputs of a whole image set, computed once by the frozen backbone (evaluation mode, no
/// augmentation), so that training the stream costs only the stream.
///
/// Each tapped stage is held either in memory or, when the cache is built with a memory budget
/// ([`FeatureCache::build_bounded`]), spilled to an unnamed temporary file that is read back row
/// by row per batch (`pread`, so the file's pages never count towards the process's resident
/// memory). Both hold the very f32 values the backbone produced, so a batch is bit-identical
/// either way, and so is a stream trained on it.
pub struct FeatureCache {
    /// `F_l` of every image, per stage; [`CachedStage::Untapped`] for stages not asked for.
    stages: Vec<CachedStage>,
    pub labels: Tensor,
}

/// Where one stage's cached features live.
enum CachedStage {
    Untapped,
    /// `(N, c, h, w)`.
    Memory(Tensor),
    /// `N` rows of `c * h * w` little-endian f32, image after image.
    Disk {
        file: std::fs::File,
        dims: [usize; 3],
    },
}

impl CachedStage {
    fn bytes(&self, n: usize) -> usize {
        match self {
            CachedStage::Untapped => 0,
            CachedStage::Memory(t) => t.elem_count() * 4,
            CachedStage::Disk { dims, .. } => n * dims.iter().product::<usize>() * 4,
        }
    }
}

impl FeatureCache {
    /// Every tapped stage in memory.
    pub fn build(
        backbone: &Model,
        set: &dyn LabelledSet,
        taps: &[usize],
        batch_size: usize,
        on_batch: impl FnMut(usize),
    ) -> Result<FeatureCache> {
        Self::build_inner(backbone, set, taps, batch_size, None, on_batch)
    }

    /// Tapped stages in memory, smallest first, while their total stays within `memory_budget`
    /// bytes; the others are spilled to an unnamed temporary file in `spill_dir` (deleted when the
    /// cache is dropped, or by the OS if the process dies).
    pub fn build_bounded(
        backbone: &Model,
        set: &dyn LabelledSet,
        taps: &[usize],
        batch_size: usize,
        memory_budget: usize,
        spill_dir: &Path,
        on_batch: impl FnMut(usize),
    ) -> Result<FeatureCache> {
        Self::build_inner(backbone, set, taps, batch_size, Some((memory_budget, spill_dir)), on_batch)
    }

    fn build_inner(
        backbone: &Model,
        set: &dyn LabelledSet,
        taps: &[usize],
        batch_size: usize,
        bound: Option<(usize, &Path)>,
        mut on_batch: impl FnMut(usize),
    ) -> Result<FeatureCache> {
        enum Sink {
            Untapped,
            Memory(Vec<f32>),
            Disk(std::io::BufWriter<std::fs::File>),
        }
        let device = &backbone.device;
        let n = set.len();
        let (mut sinks, mut dims, mut labels): (Vec<Sink>, Vec<[usize; 3]>, Vec<Tensor>) =
            (Vec::new(), Vec::new(), Vec::new());
        let ids: Vec<usize> = (0..n).collect();
        for chunk in ids.chunks(batch_size.max(1)) {
            let (x, y) = set.batch(chunk, device)?;
            let features = backbone.net.stages(&x, false)?;
            if sinks.is_empty() {
                // Placement is decided from the first batch's shapes: the smallest stages stay in
                // memory while the budget allows.
                dims = features
                    .iter()
                    .map(|f| -> Result<[usize; 3]> {
                        let (_, c, h, w) = f.dims4()?;
                        Ok([c, h, w])
                    })
                    .collect::<Result<_>>()?;
                let size = |l: usize| n * dims[l].iter().product::<usize>() * 4;
                let mut order: Vec<usize> = (0..features.len()).filter(|l| taps.contains(l)).collect();
                order.sort_by_key(|&l| (size(l), std::cmp::Reverse(l)));
                let mut in_memory = vec![false; features.len()];
                let mut used = 0usize;
                for l in order {
                    if bound.is_none_or(|(budget, _)| used + size(l) <= budget) {
                        used += size(l);
                        in_memory[l] = true;
                    }
                }
                for l in 0..features.len() {
                    sinks.push(if !taps.contains(&l) {
                        Sink::Untapped
                    } else if in_memory[l] {
                        Sink::Memory(Vec::with_capacity(n * dims[l].iter().product::<usize>()))
                    } else {
                        let dir = bound.expect("only a bounded cache spills").1;
                        std::fs::create_dir_all(dir)?;
                        let file = tempfile::tempfile_in(dir)
                            .with_context(|| format!("creating a feature spill file in {}", dir.display()))?;
                        Sink::Disk(std::io::BufWriter::with_capacity(1 << 20, file))
                    });
                }
            }
            for (f, sink) in features.iter().zip(&mut sinks) {
                match sink {
                    Sink::Untapped => {}
                    Sink::Memory(v) => v.extend(f.flatten_all()?.to_vec1::<f32>()?),
                    Sink::Disk(writer) => {
                        let bytes: Vec<u8> =
                            f.flatten_all()?.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect();
                        writer.write_all(&bytes)?;
                    }
                }
            }
            labels.push(y);
            on_batch(chunk.len());
        }
        let stages = sinks
            .into_iter()
            .zip(&dims)
            .map(|(sink, &[c, h, w])| {
                Ok(match sink {
                    Sink::Untapped => CachedStage::Untapped,
                    Sink::Memory(v) => CachedStage::Memory(Tensor::from_vec(v, (n, c, h, w), device)?),
                    Sink::Disk(writer) => {
                        CachedStage::Disk { file: writer.into_inner().map_err(|e| e.into_error())?, dims: [c, h, w] }
                    }
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let labels = if labels.is_empty() {
            Tensor::zeros(0, candle_core::DType::U32, device)?
        } else {
            Tensor::cat(&labels, 0)?
        };
        Ok(FeatureCache { stages, labels })
    }

    pub fn len(&self) -> usize {
        self.labels.dims1().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of all cached features, in memory and on disk.
    pub fn bytes(&self) -> usize {
        self.memory_bytes() + self.disk_bytes()
    }

    /// Bytes of the cached features held in memory.
    pub fn memory_bytes(&self) -> usize {
        self.stages.iter().filter(|s| matches!(s, CachedStage::Memory(_))).map(|s| s.bytes(self.len())).sum()
    }

    /// Bytes of the cached features spilled to disk.
    pub fn disk_bytes(&self) -> usize {
        self.stages.iter().filter(|s| matches!(s, CachedStage::Disk { .. })).map(|s| s.bytes(self.len())).sum()
    }

    /// The stages held on disk.
    pub fn spilled_stages(&self) -> Vec<usize> {
        (0..self.stages.len()).filter(|&l| matches!(self.stages[l], CachedStage::Disk { .. })).collect()
    }

    /// The cached stage outputs and labels of `indices` (an empty placeholder for untapped stages).
    pub fn batch(&self, indices: &[usize]) -> Result<(Vec<Tensor>, Tensor)> {
        let device = self.labels.device();
        let ids = Tensor::from_vec(indices.iter().map(|&i| i as u32).collect::<Vec<_>>(), indices.len(), device)?;
        let stages = self
            .stages
            .iter()
            .map(|s| match s {
                CachedStage::Untapped => Ok(Tensor::zeros(0, candle_core::DType::F32, device)?),
                CachedStage::Memory(t) => Ok(t.index_select(&ids, 0)?),
                CachedStage::Disk { file, dims: [c, h, w] } => {
                    let row = c * h * w * 4;
                    let mut bytes = vec![0u8; indices.len() * row];
                    // Consecutive indices are read in one call.
                    let mut k = 0;
                    while k < indices.len() {
                        let mut run = 1;
                        while k + run < indices.len() && indices[k + run] == indices[k] + run {
                            run += 1;
                        }
                        if indices[k] + run > self.len() {
                            bail!("feature cache index {} out of range 0..{}", indices[k] + run - 1, self.len());
                        }
                        file.read_exact_at(&mut bytes[k * row..(k + run) * row], (indices[k] * row) as u64)?;
                        k += run;
                    }
                    let values: Vec<f32> =
                        bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                    Ok(Tensor::from_vec(values, (indices.len(), *c, *h, *w), device)?)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((stages, self.labels.index_select(&ids, 0)?))
    }
}

/// Top-1 accuracy of a CA model on cached features.
pub fn cached_accuracy(model: &CaModel, cache: &FeatureCache, batch_size: usize) -> Result<f64> {
    let mut correct = 0usize;
    let ids: Vec<usize> = (0..cache.len()).collect();
    for chunk in ids.chunks(batch_size.max(1)) {
        let (features, labels) = cache.batch(chunk)?;
        let (logits, _) = model.logits_from_features(&features)?;
        correct += count_correct(&logits, &labels)?;
    }
    Ok(correct as f64 / cache.len().max(1) as f64)
}

/// Training the stream on a frozen backbone (METHOD.md §3): only `q_0`, `W_l`, `b_l` are
/// updated; backbone and classifier weights never change.
pub struct StreamTask<'a> {
    pub model: &'a CaModel,
    pub train: &'a FeatureCache,
    pub val: &'a FeatureCache,
    pub eval_batch_size: usize,
}

impl Task for StreamTask<'_> {
    fn len(&self) -> usize {
        self.train.len()
    }

    fn checkpoint_vars(&self) -> Vec<(String, Var)> {
        self.model.stream.named_vars()
    }

    fn trainable_vars(&self) -> Vec<(String, Var)> {
        self.model.stream.named_vars()
    }

    fn train_batch(&self, indices: &[usize], _rng: &mut ChaCha8Rng) -> Result<(Tensor, Tensor)> {
        let (features, labels) = self.train.batch(indices)?;
        Ok((self.model.logits_from_features(&features)?.0, labels))
    }

    fn validate(&self) -> Result<f64> {
        cached_accuracy(self.model, self.val, self.eval_batch_size)
    }
}

#[cfg(test)]
mod tests;
