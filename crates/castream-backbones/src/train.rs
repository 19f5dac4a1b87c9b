//! The training loop: seeded data order and augmentation, a per-step learning-rate schedule, a
//! checkpoint after every epoch and exact resume. [`GapTask`] trains a backbone with GAP (the
//! quick profile's "pretrained network f"); the stream crate trains a CA-Stream with it.
//!
//! Every random choice is drawn from a ChaCha8 stream keyed by (seed, epoch, batch), so an
//! interrupted run resumed from its last checkpoint ends with the same weights as an
//! uninterrupted one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use castream_data::batching::{batch_indices, epoch_seed};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::model::Model;
use crate::optim::{Optimizer, OptimizerConfig};
use crate::schedule::Schedule;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub optimizer: OptimizerConfig,
    pub schedule: Schedule,
    pub seed: u64,
}

/// Label-preserving augmentation applied to normalised images.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Augment {
    /// Mirror each image left-right with probability 1/2.
    pub hflip: bool,
    /// Translate each image by up to this many pixels in x and y, filling with 0 (the mean
    /// colour in normalised space).
    pub max_shift: usize,
}

/// A labelled image set the trainer draws batches from.
pub trait LabelledSet: Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Normalised images `(B, 3, H, W)` f32 and labels `(B,)` u32 for `indices`.
    fn batch(&self, indices: &[usize], device: &Device) -> Result<(Tensor, Tensor)>;
}

/// A labelled set held in memory as tensors.
pub struct TensorSet {
    /// `(N, 3, H, W)`, normalised.
    pub images: Tensor,
    /// `(N,)` u32.
    pub labels: Tensor,
}

impl LabelledSet for TensorSet {
    fn len(&self) -> usize {
        self.labels.dims1().unwrap_or(0)
    }

    fn batch(&self, indices: &[usize], device: &Device) -> Result<(Tensor, Tensor)> {
        let ids = Tensor::from_vec(
            indices.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            indices.len(),
            self.labels.device(),
        )?;
        Ok((
            self.images.index_select(&ids, 0)?.to_device(device)?,
            self.labels.index_select(&ids, 0)?.to_device(device)?,
        ))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_accuracy: f64,
    pub lr: f64,
    pub seconds: f64,
}

/// Receives progress; the CLI draws bars with it, tests ignore it.
pub trait Progress {
    fn step(&mut self, _epoch: usize, _step: usize, _steps: usize, _loss: f64) {}
    fn epoch(&mut self, _report: &EpochReport) {}
}

impl Progress for () {}

/// What is trained: the GAP backbone ([`GapTask`]) or, in the stream crate, a CA-Stream on a
/// frozen backbone. The loop below owns order, seeds, schedule, checkpoints and resume.
pub trait Task {
    /// Number of training examples.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Tensors a checkpoint must hold to resume exactly (trainable ones and state such as
    /// BatchNorm running statistics), by name.
    fn checkpoint_vars(&self) -> Vec<(String, Var)>;
    /// The tensors the optimizer updates.
    fn trainable_vars(&self) -> Vec<(String, Var)>;
    /// Training-mode logits and labels of the examples `indices`; `rng` is this batch's own
    /// stream for augmentation.
    fn train_batch(&self, indices: &[usize], rng: &mut ChaCha8Rng) -> Result<(Tensor, Tensor)>;
    /// Validation accuracy in evaluation mode.
    fn validate(&self) -> Result<f64>;
}

/// What the checkpoint's metadata holds besides the tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    config: TrainConfig,
    epochs_done: usize,
    optimizer_steps: u64,
    history: Vec<EpochReport>,
}

const STATE_KEY: &str = "castream.train_state";

/// The checkpoint file of a run directory.
pub fn checkpoint_path(run_dir: &Path) -> PathBuf {
    run_dir.join("last.safetensors")
}

/// Trains `task`, validating after each epoch and checkpointing into `run_dir`. With `resume`,
/// continues from `run_dir`'s checkpoint, which must come from the same configuration. Returns
/// the history of every epoch, resumed ones included.
pub fn train(
    task: &dyn Task,
    config: &TrainConfig,
    run_dir: &Path,
    resume: bool,
    progress: &mut dyn Progress,
) -> Result<Vec<EpochReport>> {
    if task.is_empty() {
        bail!("training needs at least one example");
    }
    config.validate().map_err(|e| anyhow::anyhow!("training config: {e}"))?;
    let mut optimizer = Optimizer::new(config.optimizer.clone(), task.trainable_vars());
    let (mut history, first_epoch) = if resume {
        let state = restore(task, &mut optimizer, run_dir)?;
        if &state.config != config {
            bail!(
                "{}: the checkpoint was made with a different training configuration; Fix: resume with the same \
                 settings, or start a new run without --resume",
                checkpoint_path(run_dir).display()
            );
        }
        (state.history, state.epochs_done)
    } else {
        (Vec::new(), 0)
    };
    let per_epoch = task.len().div_ceil(config.batch_size);
    let total = per_epoch * config.epochs;
    for epoch in first_epoch..config.epochs {
        let started = Instant::now();
        let seed = epoch_seed(config.seed, epoch as u64);
        let order = batch_indices(task.len(), config.batch_size, Some(seed))?;
        let (mut loss_sum, mut correct, mut seen, mut lr) = (0.0, 0usize, 0usize, 0.0);
        for (i, indices) in order.iter().enumerate() {
            // Stream 0 of the epoch seed shuffled the order; batch i augments from stream i + 1.
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(i as u64 + 1);
            let (logits, labels) = task.train_batch(indices, &mut rng)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
            lr = config.schedule.lr(config.optimizer.lr(), epoch * per_epoch + i, per_epoch, total);
            optimizer.step(&loss.backward()?, lr)?;
            let batch_loss = loss.to_scalar::<f32>()? as f64;
            loss_sum += batch_loss * indices.len() as f64;
            correct += count_correct(&logits, &labels)?;
            seen += indices.len();
            progress.step(epoch, i, per_epoch, batch_loss);
        }
        let report = EpochReport {
            epoch,
            train_loss: loss_sum / seen as f64,
            train_accuracy: correct as f64 / seen as f64,
            val_accuracy: task.validate()?,
            lr,
            seconds: started.elapsed().as_secs_f64(),
        };
        history.push(report);
        let state = CheckpointState {
            config: config.clone(),
            epochs_done: epoch + 1,
            optimizer_steps: optimizer.steps(),
            history: history.clone(),
        };
        save_checkpoint(task, &optimizer, &state, run_dir)?;
        progress.epoch(history.last().expect("pushed above"));
    }
    Ok(history)
}

/// GAP training of a backbone on a labelled image set, with augmentation.
pub struct GapTask<'a> {
    pub model: &'a Model,
    pub train: &'a dyn LabelledSet,
    pub val: &'a dyn LabelledSet,
    pub augment: Augment,
    pub eval_batch_size: usize,
}

impl Task for GapTask<'_> {
    fn len(&self) -> usize {
        self.train.len()
    }

    fn checkpoint_vars(&self) -> Vec<(String, Var)> {
        self.model.named_vars()
    }

    fn trainable_vars(&self) -> Vec<(String, Var)> {
        self.model.trainable_vars()
    }

    fn train_batch(&self, indices: &[usize], rng: &mut ChaCha8Rng) -> Result<(Tensor, Tensor)> {
        let (x, y) = self.train.batch(indices, &self.model.device)?;
        let x = augment(&x, &self.augment, rng)?;
        Ok((self.model.net.forward(&x, true)?, y))
    }

    fn validate(&self) -> Result<f64> {
        evaluate(self.model, self.val, self.eval_batch_size)
    }
}

/// Top-1 accuracy of the GAP network in evaluation mode.
pub fn evaluate(model: &Model, set: &dyn LabelledSet, batch_size: usize) -> Result<f64> {
    if set.is_empty() {
        return Ok(f64::NAN);
    }
    let mut correct = 0;
    for indices in batch_indices(set.len(), batch_size, None)? {
        let (x, y) = set.batch(&indices, &model.device)?;
        correct += count_correct(&model.net.forward(&x, false)?, &y)?;
    }
    Ok(correct as f64 / set.len() as f64)
}

/// How many rows of `logits` have their largest value at the `labels`' class.
pub fn count_correct(logits: &Tensor, labels: &Tensor) -> Result<usize> {
    let predicted = logits.argmax(1)?;
    Ok(predicted.eq(labels)?.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()? as usize)
}

/// Applies `aug` image by image, drawing from `rng` in image order.
fn augment(x: &Tensor, aug: &Augment, rng: &mut ChaCha8Rng) -> Result<Tensor> {
    if !aug.hflip && aug.max_shift == 0 {
        return Ok(x.clone());
    }
    let (b, c, h, w) = x.dims4()?;
    let src: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let mut out = vec![0f32; src.len()];
    let s = aug.max_shift as i64;
    for i in 0..b {
        let flip = aug.hflip && rng.random_bool(0.5);
        let (dx, dy) = if s > 0 { (rng.random_range(-s..=s), rng.random_range(-s..=s)) } else { (0, 0) };
        for ch in 0..c {
            let base = (i * c + ch) * h * w;
            for y in 0..h as i64 {
                let sy = y - dy;
                if sy < 0 || sy >= h as i64 {
                    continue;
                }
                for xx in 0..w as i64 {
                    let sx = xx - dx;
                    if sx < 0 || sx >= w as i64 {
                        continue;
                    }
                    let sx = if flip { w as i64 - 1 - sx } else { sx };
                    out[base + (y as usize) * w + xx as usize] = src[base + (sy as usize) * w + sx as usize];
                }
            }
        }
    }
    Ok(Tensor::from_vec(out, (b, c, h, w), x.device())?)
}

fn save_checkpoint(task: &dyn Task, optimizer: &Optimizer, state: &CheckpointState, run_dir: &Path) -> Result<()> {
    let mut tensors: HashMap<String, Tensor> =
        task.checkpoint_vars().into_iter().map(|(n, v)| (format!("model.{n}"), v.as_tensor().clone())).collect();
    tensors.extend(optimizer.state().into_iter().map(|(n, t)| (format!("optim.{n}"), t)));
    let metadata = HashMap::from([(STATE_KEY.to_string(), serde_json::to_string(state)?)]);
    castream_data::atomic::write(&checkpoint_path(run_dir), &serialize(&tensors, metadata)?)
}

/// safetensors bytes with string metadata (candle's own writer takes no metadata).
fn serialize(tensors: &HashMap<String, Tensor>, metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    Ok(safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(metadata))?)
}

fn restore(task: &dyn Task, optimizer: &mut Optimizer, run_dir: &Path) -> Result<CheckpointState> {
    let path = checkpoint_path(run_dir);
    let bytes = std::fs::read(&path)
        .with_context(|| format!("{}: cannot read the checkpoint to resume from", path.display()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let state: CheckpointState = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(STATE_KEY))
        .with_context(|| format!("{}: no training state in the checkpoint", path.display()))
        .and_then(|s| serde_json::from_str(s).with_context(|| format!("{}: corrupt training state", path.display())))?;
    let device = task.checkpoint_vars().first().map(|(_, v)| v.device().clone()).context("a task without variables")?;
    let mut tensors = candle_core::safetensors::load_buffer(&bytes, &device)?;
    for (name, var) in task.checkpoint_vars() {
        let t = tensors
            .remove(&format!("model.{name}"))
            .with_context(|| format!("{}: the checkpoint lacks `{name}`", path.display()))?;
        var.set(&t).with_context(|| format!("{}: `{name}` does not fit the model", path.display()))?;
    }
    let optim: HashMap<String, Tensor> =
        tensors.into_iter().filter_map(|(n, t)| n.strip_prefix("optim.").map(|n| (n.to_string(), t))).collect();
    optimizer.restore(optim, state.optimizer_steps)?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Arch, BackboneConfig, Stem};
    use castream_data::device::cpu;

    /// Random 16x16 images labelled by the sign of their mean red value.
    pub(crate) fn toy_set(n: usize, seed: u64) -> TensorSet {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let v: Vec<f32> = (0..n * 3 * 16 * 16).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let images = Tensor::from_vec(v, (n, 3, 16, 16), &cpu()).unwrap();
        let red: Vec<f32> = images.narrow(1, 0, 1).unwrap().mean((1, 2, 3)).unwrap().to_vec1().unwrap();
        let labels = Tensor::from_vec(red.iter().map(|&r| (r > 0.0) as u32).collect::<Vec<_>>(), n, &cpu()).unwrap();
        TensorSet { images, labels }
    }

    fn model() -> Model {
        let config =
            BackboneConfig { stem: Stem::Small, base_width: Some(4), ..BackboneConfig::new(Arch::Resnet18, 2) };
        Model::new(config, 7, &cpu()).unwrap()
    }

    fn config() -> TrainConfig {
        TrainConfig {
            epochs: 2,
            batch_size: 5,
            optimizer: OptimizerConfig::adamw(1e-2, 0.05),
            schedule: Schedule::Cosine { warmup_epochs: 0.5, min_ratio: 0.1 },
            seed: 3,
        }
    }

    fn weights(m: &Model) -> Vec<(String, Vec<f32>)> {
        m.named_vars().into_iter().map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())).collect()
    }

    struct Interrupt;
    impl Progress for Interrupt {
        fn epoch(&mut self, _: &EpochReport) {
            panic!("simulated kill after the first epoch's checkpoint");
        }
    }

    #[test]
    fn a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one() {
        let (train_set, val_set) = (toy_set(12, 1), toy_set(6, 2));
        let aug = Augment { hflip: true, max_shift: 2 };
        let (a, b) = (model(), model());
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let task = |m| GapTask { model: m, train: &train_set, val: &val_set, augment: aug.clone(), eval_batch_size: 4 };
        let full = train(&task(&a), &config(), dir_a.path(), false, &mut ()).unwrap();
        assert_eq!(full.len(), 2);

        let killed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            train(&task(&b), &config(), dir_b.path(), false, &mut Interrupt)
        }));
        assert!(killed.is_err());
        let fresh = model(); // a new process: weights come only from the checkpoint
        let resumed = train(&task(&fresh), &config(), dir_b.path(), true, &mut ()).unwrap();
        assert_eq!(
            resumed,
            full.iter().map(|r| EpochReport { seconds: resumed[r.epoch].seconds, ..r.clone() }).collect::<Vec<_>>()
        );
        assert_eq!(weights(&fresh), weights(&a), "resumed weights differ from the uninterrupted run");

        let other = TrainConfig { seed: 4, ..config() };
        let err = train(&task(&model()), &other, dir_b.path(), true, &mut ()).unwrap_err().to_string();
        assert!(err.contains("different training configuration"), "{err}");
    }

    #[test]
    fn train_save_load_gives_identical_logits() {
        let (train_set, val_set) = (toy_set(10, 5), toy_set(4, 6));
        let m = model();
        let dir = tempfile::tempdir().unwrap();
        let task =
            GapTask { model: &m, train: &train_set, val: &val_set, augment: Augment::default(), eval_batch_size: 4 };
        train(&task, &TrainConfig { epochs: 1, ..config() }, dir.path(), false, &mut ()).unwrap();
        let path = dir.path().join("m.safetensors");
        let meta = crate::model::CheckpointMeta {
            config: m.config.clone(),
            classes: vec!["dark".into(), "red".into()],
            normalisation: castream_data::Normalisation::IMAGENET,
            extra: serde_json::Value::Null,
        };
        m.save(&path, &meta).unwrap();
        let (loaded, meta2) = Model::load(&path, &cpu()).unwrap();
        assert_eq!(meta2.classes, meta.classes);
        let logits =
            |m: &Model| m.net.forward(&val_set.images, false).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(logits(&m), logits(&loaded));
    }

    #[test]
    fn augmentation_mirrors_or_keeps_each_image_and_shifts_with_zero_fill() {
        let x = Tensor::arange(0f32, 2.0 * 3.0 * 4.0 * 4.0, &cpu()).unwrap().reshape((2, 3, 4, 4)).unwrap();
        let src: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let (mut flipped, mut kept) = (0, 0);
        for seed in 0..20 {
            let out =
                augment(&x, &Augment { hflip: true, max_shift: 0 }, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
            let out: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
            for img in 0..2 {
                let range = img * 48..(img + 1) * 48;
                let mirrored: Vec<f32> =
                    src[range.clone()].chunks(4).flat_map(|row| row.iter().rev().copied()).collect();
                if out[range.clone()] == mirrored[..] {
                    flipped += 1;
                } else {
                    assert_eq!(out[range.clone()], src[range], "neither kept nor mirrored");
                    kept += 1;
                }
            }
        }
        assert!(flipped > 0 && kept > 0);
        // A shift moves content and fills with zeros; the image mass inside stays a sub-multiset.
        let out = augment(&x, &Augment { hflip: false, max_shift: 1 }, &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
        let out: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
        assert!(out.iter().all(|v| *v == 0.0 || src.contains(v)));
    }
}
