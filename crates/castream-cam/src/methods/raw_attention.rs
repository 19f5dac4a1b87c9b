//! Raw attention (METHOD.md §2): the model's own attention over the input — for the CA model the
//! softmax attention of a block (or a combination of blocks) over its stage's positions — a
//! class-agnostic map at the input resolution. The class argument is ignored.

use candle_core::{bail, Result, Tensor};
use castream_stream::AttentionSelect;

use crate::method::CamMethod;
use crate::subject::Subject;

pub struct RawAttention {
    pub select: AttentionSelect,
}

impl CamMethod for RawAttention {
    fn name(&self) -> &'static str {
        "raw attention"
    }

    fn saliency(&self, subject: &Subject, x: &Tensor, _classes: &[u32]) -> Result<Tensor> {
        match subject.model.attention(x, self.select)? {
            Some(map) => Ok(map),
            None => {
                bail!("raw attention exists only in a model with attention (the CA model); the GAP network has none")
            }
        }
    }
}
