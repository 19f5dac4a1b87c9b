//! Training the stream on images decoded as it goes: the paper profile's ImageNet train set is
//! far too large for a feature cache, and random-resized crops change every epoch anyway. Each
//! batch is decoded and augmented in parallel (one seed per image, drawn from the batch's own
//! random stream, so a resumed run sees the same crops), run through the frozen backbone without
//! gradients, and only the stream learns.

use anyhow::Result;
use candle_core::{Tensor, Var};
use castream_backbones::train::{count_correct, Task};
use castream_data::image_folder::ImageList;
use castream_data::images::EvalImages;
use castream_data::train_transform::TrainTransform;
use castream_data::Normalisation;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::model::CaModel;

pub struct ImageStreamTask<'a> {
    pub model: &'a CaModel,
    pub train: &'a ImageList,
    pub augment: TrainTransform,
    /// Validation images (evaluation transform) and the ones used.
    pub val: &'a dyn EvalImages,
    pub val_ids: &'a [usize],
    pub normalisation: Normalisation,
    pub eval_batch_size: usize,
}

impl Task for ImageStreamTask<'_> {
    fn len(&self) -> usize {
        self.train.len()
    }

    fn checkpoint_vars(&self) -> Vec<(String, Var)> {
        self.model.stream.named_vars()
    }

    fn trainable_vars(&self) -> Vec<(String, Var)> {
        self.model.stream.named_vars()
    }

    fn train_batch(&self, indices: &[usize], rng: &mut ChaCha8Rng) -> Result<(Tensor, Tensor)> {
        let seeds: Vec<u64> = indices.iter().map(|_| rng.random()).collect();
        let device = &self.model.backbone.device;
        let (x, y) = self.train.load_train_batch(indices, &self.augment, &seeds, &self.normalisation, device)?;
        // The backbone is frozen: its features are constants of the stream's loss.
        let features: Vec<Tensor> =
            self.model.backbone.net.stages(&x, false)?.into_iter().map(|f| f.detach()).collect();
        Ok((self.model.logits_from_features(&features)?.0, y))
    }

    fn validate(&self) -> Result<f64> {
        accuracy(self.model, self.val, self.val_ids, &self.normalisation, self.eval_batch_size)
    }
}

/// Top-1 accuracy of the CA model on the images `ids` of `set`.
pub fn accuracy(
    model: &CaModel,
    set: &dyn EvalImages,
    ids: &[usize],
    norm: &Normalisation,
    batch: usize,
) -> Result<f64> {
    let mut correct = 0usize;
    for chunk in ids.chunks(batch.max(1)) {
        let (x, y) = set.batch(chunk, norm, &model.backbone.device)?;
        let (logits, _) = model.forward(&x)?;
        correct += count_correct(&logits, &y)?;
    }
    Ok(correct as f64 / ids.len().max(1) as f64)
}
