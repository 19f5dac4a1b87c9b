//! The gradient of the target score with respect to the target activation, for a whole batch in
//! one backward pass: the images are independent, so the gradient of the sum of the per-image
//! target logits is, image by image, the gradient of each image's own logit.

use candle_core::{Result, Tensor, Var};

use crate::subject::{class_index, Subject};

pub struct TargetGradients {
    /// `A`, `(B, K, h, w)`.
    pub activations: Tensor,
    /// `dy_c / dA`, same shape; zeros where the score does not depend on `A`.
    pub gradients: Tensor,
}

/// `A` and `dy_c / dA` where `y_c` is the logit of `classes[i]` for image `i`.
pub fn target_gradients(subject: &Subject, x: &Tensor, classes: &[u32]) -> Result<TargetGradients> {
    let acts = subject.activations(x)?;
    let a = Var::from_tensor(&acts.target)?;
    let logits = subject.logits_from(&acts, a.as_tensor())?;
    let score = logits.gather(&class_index(classes, x.device())?, 1)?.sum_all()?;
    let grads = score.backward()?;
    let gradients = match grads.get(a.as_tensor()) {
        Some(g) => g.clone(),
        None => a.as_tensor().zeros_like()?,
    };
    Ok(TargetGradients { activations: acts.target, gradients })
}
