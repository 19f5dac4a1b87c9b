//! Grad-CAM++ (Chattopadhay et al. 2018) in the closed form with gradient powers used by the
//! authors and by pytorch-grad-cam: `alpha = g^2 / (2 g^2 + (sum_ij A^k_ij) g^3 + eps)`,
//! `alpha = 0` where `g = 0`, `w_k = sum_ij relu(g_ij) alpha_ij`. `eps` is the authors' float64
//! machine epsilon by default ([`crate::methods::AUTHORS_GRAD_CAM_PP_EPS`]; pytorch-grad-cam: 1e-6).

use candle_core::{Result, Tensor};

use crate::gradients::target_gradients;
use crate::method::{weighted_sum, CamMethod};
use crate::subject::Subject;

pub struct GradCamPlusPlus {
    /// Added to the denominator of `alpha`.
    pub eps: f64,
}

impl CamMethod for GradCamPlusPlus {
    fn name(&self) -> &'static str {
        "Grad-CAM++"
    }

    fn saliency(&self, subject: &Subject, x: &Tensor, classes: &[u32]) -> Result<Tensor> {
        let t = target_gradients(subject, x, classes)?;
        let (a, g) = (&t.activations, &t.gradients);
        let alpha = alpha(g, &a.sum_keepdim((2, 3))?, self.eps)?;
        weighted_sum(&(g.relu()? * alpha)?.sum((2, 3))?, a)
    }
}

/// `alpha = g² / (2 g² + sum_a g³ + eps)` per position, 0 where `g = 0`; `sum_a` `(B, K, 1, 1)`.
fn alpha(g: &Tensor, sum_a: &Tensor, eps: f64) -> Result<Tensor> {
    let g2 = g.sqr()?;
    let g3 = (&g2 * g)?;
    let denominator = ((g2.affine(2.0, eps)?) + g3.broadcast_mul(sum_a)?)?;
    // Where g = 0 the numerator is 0 as well; the mask keeps a 0/0 from ever appearing.
    g.ne(0f32)?.where_cond(&(&g2 / denominator)?, &g.zeros_like()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use castream_data::device::cpu;

    /// Worked by hand with `sum_a = 2`: g = 0.5 gives 0.25 / (0.5 + 0.25) = 1/3 whatever the eps;
    /// g = 1e-4 gives 1e-8 / (2e-8 + 2e-12 + eps): 0.49995 with the authors' eps, 0.0098 with
    /// pytorch-grad-cam's 1e-6, which swamps the small gradients' terms; g = 0 gives 0.
    #[test]
    fn alpha_matches_a_worked_example_and_eps_matters_for_small_gradients() {
        let g = Tensor::from_vec(vec![0.5f32, 1e-4, 0.0], (1, 1, 1, 3), &cpu()).unwrap();
        let sum_a = Tensor::from_vec(vec![2f32], (1, 1, 1, 1), &cpu()).unwrap();
        let at = |eps| alpha(&g, &sum_a, eps).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let authors = at(crate::methods::AUTHORS_GRAD_CAM_PP_EPS);
        let expected = [1.0 / 3.0, 1e-8 / (2e-8 + 2e-12), 0.0];
        for (got, want) in authors.iter().zip(expected) {
            assert!((*got as f64 - want).abs() <= 1e-6 * want.max(1.0), "{authors:?}");
        }
        let grad_cam = at(1e-6);
        assert!((grad_cam[0] as f64 - 1.0 / 3.0).abs() < 1e-6, "{grad_cam:?}");
        assert!((grad_cam[1] as f64 - 1e-8 / (2e-8 + 2e-12 + 1e-6)).abs() < 1e-7, "{grad_cam:?}");
    }
}
