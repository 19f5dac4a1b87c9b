#![allow(clippy::too_many_arguments)]

//! Every kernel against candle's reference ops, candle's autograd where candle is correct, central
//! finite differences, and hand-worked PyTorch examples.

mod batchnorm;
mod block;
mod common;
mod conv;
mod convbn;
mod epilogue;
mod fold;
mod layernorm;
mod mlp;
mod pool;
mod upsample;
