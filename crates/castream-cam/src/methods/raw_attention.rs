//! The CA model's raw attention (METHOD.md §2): the softmax attention of a block (or a
//! combination of blocks) over its stage's positions, a class-agnostic map at the input
//! resolution. The class argument is ignored.

use anyhow::{bail, Result};
use candle_core::Tensor;
use castream_stream::{attention_map, AttentionSelect};

use crate::method::CamMethod;
use crate::subject::{Pooling, Subject};

pub struct RawAttention {
    pub select: AttentionSelect,
}

impl CamMethod for RawAttention {
    fn name(&self) -> &'static str {
        "raw attention"
    }

    fn saliency(&self, subject: &Subject, x: &Tensor, _classes: &[u32]) -> Result<Tensor> {
        let Pooling::Ca(model) = subject.pooling else {
            bail!("raw attention exists only in a CA model; the GAP network has no attention");
        };
        let (_, _, h, w) = x.dims4()?;
        Ok(attention_map(&model.forward(x)?.1, self.select, h, w)?)
    }
}
