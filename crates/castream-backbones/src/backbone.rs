//! The one interface every backbone implements. CA-Stream reads the five stage outputs; CAM
//! methods run the network from a stage onward (candle keeps gradients only for `Var`s, so the
//! activation is wrapped in a `Var` between the two halves).

use std::ops::RangeInclusive;

use candle_core::{Result, Tensor};

/// A CNN split at the paper's taps: `F_0` is the stem output (after the max-pool for ResNet),
/// `F_1 … F_4` the outputs of the four stages. Implementors provide the stem, the stages and the
/// classifier; everything else is derived.
pub trait Backbone: Send + Sync {
    /// Channel widths `d_0 … d_4` of `F_0 … F_4`.
    fn stage_widths(&self) -> [usize; 5];

    fn num_classes(&self) -> usize;

    /// `F_0` from a normalised input batch `(B, 3, H, W)`. `train` selects BatchNorm's training
    /// mode (batch statistics, running-statistics update); LayerNorm ignores it.
    fn stem(&self, x: &Tensor, train: bool) -> Result<Tensor>;

    /// `F_l` from `F_{l-1}`, for `l` in 1..=4.
    fn stage(&self, l: usize, f: &Tensor, train: bool) -> Result<Tensor>;

    /// The classifier on pooled features `(B, d_4)`: ResNet's `fc`; ConvNeXt's LayerNorm + `fc`.
    /// CA-Stream applies it to its last token instead of to `GAP(F_4)`.
    fn classify(&self, pooled: &Tensor) -> Result<Tensor>;

    /// The classifier's `(weight (classes, d_4), bias)` when it is a single linear layer on the
    /// pooled features (ResNet), which CAM needs; `None` otherwise (ConvNeXt normalises first).
    fn linear_classifier(&self) -> Option<(Tensor, Tensor)> {
        None
    }

    /// `F_0 … F_4`.
    fn stages(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let mut out = vec![self.stem(x, train)?];
        for l in 1..=4 {
            out.push(self.stage(l, &out[l - 1], train)?);
        }
        Ok(out)
    }

    /// Runs `stages` one after the other on the input of the first (none: returns `f`). A
    /// backbone may run them as one op.
    fn run_stages(&self, stages: RangeInclusive<usize>, f: &Tensor, train: bool) -> Result<Tensor> {
        stages.into_iter().try_fold(f.clone(), |f, i| self.stage(i, &f, train))
    }

    /// `F_l` only, without computing the later stages.
    fn stages_to(&self, l: usize, x: &Tensor, train: bool) -> Result<Tensor> {
        self.run_stages(1..=l, &self.stem(x, train)?, train)
    }

    /// Runs the stages after `l` on `F_l`, returning `F_4` (`l == 4` returns `f`).
    fn forward_from(&self, l: usize, f: &Tensor, train: bool) -> Result<Tensor> {
        self.run_stages(l + 1..=4, f, train)
    }

    /// The original head: global average pooling of `F_4`, then [`Backbone::classify`].
    fn head(&self, f4: &Tensor) -> Result<Tensor> {
        self.classify(&f4.mean((2, 3))?)
    }

    /// Logits of the GAP network.
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.head(&self.stages_to(4, x, train)?)
    }
}
