//! The CA model: a frozen backbone whose GAP is replaced by the stream, the backbone's own
//! classifier applied to the stream's last token (METHOD.md §2–3). The GAP baseline is the
//! backbone alone, so both share every backbone and classifier weight.

use anyhow::Result;
use candle_core::{Tensor, Var};
use castream_backbones::train::{LabelledSet, Task};
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
pub struct FeatureCache {
    /// `F_l` of every image for the tapped stages; an empty placeholder for the others.
    pub stages: Vec<Tensor>,
    pub labels: Tensor,
}

impl FeatureCache {
    pub fn build(
        backbone: &Model,
        set: &dyn LabelledSet,
        taps: &[usize],
        batch_size: usize,
        mut on_batch: impl FnMut(usize),
    ) -> Result<FeatureCache> {
        let device = &backbone.device;
        let (mut parts, mut labels): (Vec<Vec<Tensor>>, Vec<Tensor>) = (vec![Vec::new(); 5], Vec::new());
        let ids: Vec<usize> = (0..set.len()).collect();
        for chunk in ids.chunks(batch_size.max(1)) {
            let (x, y) = set.batch(chunk, device)?;
            for (l, f) in backbone.net.stages(&x, false)?.into_iter().enumerate() {
                if taps.contains(&l) {
                    parts[l].push(f.detach());
                }
            }
            labels.push(y);
            on_batch(chunk.len());
        }
        let stages = parts
            .into_iter()
            .map(|p| {
                if p.is_empty() {
                    Ok(Tensor::zeros(0, candle_core::DType::F32, device)?)
                } else {
                    Ok(Tensor::cat(&p, 0)?)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(FeatureCache { stages, labels: Tensor::cat(&labels, 0)? })
    }

    pub fn len(&self) -> usize {
        self.labels.dims1().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Memory held by the cached features.
    pub fn bytes(&self) -> usize {
        self.stages.iter().map(|t| t.elem_count() * 4).sum()
    }

    /// The cached stage outputs and labels of `indices`.
    pub fn batch(&self, indices: &[usize]) -> Result<(Vec<Tensor>, Tensor)> {
        let ids = Tensor::from_vec(
            indices.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            indices.len(),
            self.labels.device(),
        )?;
        let stages = self
            .stages
            .iter()
            .map(|t| if t.elem_count() == 0 { Ok(t.clone()) } else { Ok(t.index_select(&ids, 0)?) })
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
        let hits = logits.argmax(1)?.eq(&labels)?.to_dtype(candle_core::DType::U32)?.sum_all()?.to_scalar::<u32>()?;
        correct += hits as usize;
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
mod tests {
    use super::*;
    use castream_backbones::optim::OptimizerConfig;
    use castream_backbones::schedule::Schedule;
    use castream_backbones::train::{train, TensorSet, TrainConfig};
    use castream_backbones::{Arch, BackboneConfig, Stem};
    use castream_data::device::cpu;
    use rand::{Rng, SeedableRng};

    fn set(n: usize, seed: u64) -> TensorSet {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let v: Vec<f32> = (0..n * 3 * 16 * 16).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let labels: Vec<u32> = (0..n).map(|i| (i % 3) as u32).collect();
        TensorSet {
            images: Tensor::from_vec(v, (n, 3, 16, 16), &cpu()).unwrap(),
            labels: Tensor::from_vec(labels, n, &cpu()).unwrap(),
        }
    }

    fn ca_model() -> CaModel {
        let config =
            BackboneConfig { stem: Stem::Small, base_width: Some(4), ..BackboneConfig::new(Arch::Resnet18, 3) };
        CaModel::new(Model::new(config, 1, &cpu()).unwrap(), &StreamConfig::default(), 2).unwrap()
    }

    fn snapshot(vars: Vec<(String, Var)>) -> Vec<(String, Vec<f32>)> {
        vars.into_iter().map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())).collect()
    }

    #[test]
    fn stream_training_leaves_backbone_and_classifier_bit_identical() {
        let model = ca_model();
        let (train_set, val_set) = (set(9, 1), set(4, 2));
        let taps = &model.stream.config().taps;
        let train_cache = FeatureCache::build(&model.backbone, &train_set, taps, 4, |_| {}).unwrap();
        let val_cache = FeatureCache::build(&model.backbone, &val_set, taps, 4, |_| {}).unwrap();
        let (backbone_before, stream_before) =
            (snapshot(model.backbone.named_vars()), snapshot(model.stream.named_vars()));
        let task = StreamTask { model: &model, train: &train_cache, val: &val_cache, eval_batch_size: 4 };
        let config = TrainConfig {
            epochs: 2,
            batch_size: 4,
            optimizer: OptimizerConfig::adamw(1e-2, 0.0),
            schedule: Schedule::Constant,
            seed: 0,
        };
        let dir = tempfile::tempdir().unwrap();
        train(&task, &config, dir.path(), false, &mut ()).unwrap();
        assert_eq!(snapshot(model.backbone.named_vars()), backbone_before, "a backbone or classifier weight moved");
        assert_ne!(snapshot(model.stream.named_vars()), stream_before, "the stream did not train");
    }

    #[test]
    fn a_convnext_backbone_gets_a_stream_through_its_layernorm_head() {
        let config = BackboneConfig {
            stem: Stem::Small,
            base_width: Some(8),
            depths: Some([1, 1, 1, 1]),
            ..BackboneConfig::new(Arch::ConvnextTiny, 3)
        };
        let model = CaModel::new(Model::new(config, 1, &cpu()).unwrap(), &StreamConfig::default(), 2).unwrap();
        // ConvNeXt taps: stem 8, stages 8, 16, 32, 64; the last block maps to the head's 64 inputs.
        assert_eq!(model.backbone.net.stage_widths(), [8, 8, 16, 32, 64]);
        assert_eq!(model.stream.parameter_count(), 8 + (64 + 8) + (128 + 16) + (512 + 32) + (2048 + 64) + (4096 + 64));
        let data = set(2, 4);
        let (logits, out) = model.forward(&data.images).unwrap();
        assert_eq!(logits.dims(), &[2, 3]);
        assert_eq!(out.attention.len(), 5);
        // The classifier is the backbone's own head (LayerNorm + fc) applied to the token.
        let direct = model.backbone.net.classify(&out.token).unwrap();
        assert_eq!(
            snapshot(vec![("l".into(), Var::from_tensor(&logits).unwrap())]),
            snapshot(vec![("l".into(), Var::from_tensor(&direct).unwrap())])
        );
    }

    #[test]
    fn cached_features_give_the_same_logits_as_the_live_model() {
        let model = ca_model();
        let data = set(5, 3);
        let cache = FeatureCache::build(&model.backbone, &data, &model.stream.config().taps, 2, |_| {}).unwrap();
        assert_eq!(cache.len(), 5);
        let (features, _) = cache.batch(&[0, 1, 2, 3, 4]).unwrap();
        let cached: Vec<f32> =
            model.logits_from_features(&features).unwrap().0.flatten_all().unwrap().to_vec1().unwrap();
        let live: Vec<f32> = model.forward(&data.images).unwrap().0.flatten_all().unwrap().to_vec1().unwrap();
        for (a, b) in cached.iter().zip(&live) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}
