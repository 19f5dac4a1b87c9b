//! The one interface a network offers to be explained: [`CamModel`]. Any candle model implements
//! it in a few lines (`examples/own_model.rs`); the GAP network and the CA model implement it in
//! [`crate::network`]. candle keeps gradients only for `Var`s, so a model is split in two at its
//! target layer: [`CamModel::activations`] runs to the layer, [`CamModel::logits_from`] runs from a
//! (possibly modified or `Var`-wrapped) activation to the logits.

use candle_core::{Result, Tensor};

/// The forward pass up to the target layer.
pub struct Activations {
    /// Whatever else the rest of the network reads besides the target activation, detached (the
    /// CA model's stream reads the earlier stages; empty for a plain CNN).
    pub context: Vec<Tensor>,
    /// `A`, the target layer's output, detached, `(B, K, h, w)`.
    pub target: Tensor,
}

impl Activations {
    /// Only the target activation (a model whose head reads nothing else).
    pub fn of(target: Tensor) -> Activations {
        Activations { context: Vec::new(), target }
    }

    /// The rows `ids` of every tensor (a batch built from repeated images).
    pub fn select(&self, ids: &[u32]) -> Result<Activations> {
        let ids = Tensor::from_slice(ids, ids.len(), self.target.device())?;
        Ok(Activations {
            context: self.context.iter().map(|t| t.index_select(&ids, 0)).collect::<Result<_>>()?,
            target: self.target.index_select(&ids, 0)?,
        })
    }
}

/// A network split at the layer whose activations a CAM method weighs.
pub trait CamModel: Send + Sync {
    /// Runs the network (evaluation mode) on a normalised batch `(B, 3, H, W)` to the target layer.
    fn activations(&self, x: &Tensor) -> Result<Activations>;

    /// Logits `(B, classes)` with the target activation replaced by `a` (same batch as `acts`);
    /// gradients must flow to `a` when it is a `Var`'s tensor.
    fn logits_from(&self, acts: &Activations, a: &Tensor) -> Result<Tensor>;

    /// Logits of a normalised input batch, for scoring (the activations are detached: train with
    /// the model's own forward). Override when a full forward is cheaper than the split one, and
    /// for Opti-CAM, which optimises through it: it needs logits differentiable in the input.
    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let acts = self.activations(x)?;
        self.logits_from(&acts, &acts.target)
    }

    /// Classifier rows `(classes, K)` when the logits are a linear layer on the global average of
    /// the target activation (what CAM needs); `None` otherwise.
    fn class_weights(&self) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// The model's own attention over the input, `(B, H, W)` in [0, 1] at the input size, for
    /// raw-attention saliency; `None` for a model without attention.
    fn attention(&self, _x: &Tensor, _select: castream_stream::AttentionSelect) -> Result<Option<Tensor>> {
        Ok(None)
    }
}

impl<T: CamModel + ?Sized> CamModel for &T {
    fn activations(&self, x: &Tensor) -> Result<Activations> {
        (**self).activations(x)
    }
    fn logits_from(&self, acts: &Activations, a: &Tensor) -> Result<Tensor> {
        (**self).logits_from(acts, a)
    }
    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        (**self).logits(x)
    }
    fn class_weights(&self) -> Result<Option<Tensor>> {
        (**self).class_weights()
    }
    fn attention(&self, x: &Tensor, select: castream_stream::AttentionSelect) -> Result<Option<Tensor>> {
        (**self).attention(x, select)
    }
}
