//! CAM methods (METHOD.md §4) for any candle model, and the colour maps of their overlays.
//!
//! - [`CamModel`]: what a model offers to be explained — activations at a target layer, logits
//!   from those activations, optionally its linear head and attention. castream's GAP network and
//!   CA model implement it ([`Network`]); so can any candle model (`examples/own_model.rs`).
//! - [`Subject`]: a model with the input normalisation it was trained with.
//! - [`CamMethod`]: one trait for every method; [`Method`] and [`REGISTRY`] name them (Grad-CAM,
//!   Grad-CAM++, Score-CAM, raw attention; CAM, HiResCAM, XGrad-CAM, Layer-CAM, Ablation-CAM).
//! - [`explain`]: a method's maps, rectified, min-max normalised and upsampled to the input.
//! - [`overlay`]: the jet colour map and its blend on an image.
//!
//! The crate reads no files and knows no spec; its errors are candle's.

pub mod chunks;
pub mod gradients;
pub mod method;
pub mod methods;
pub mod model;
pub mod network;
pub mod overlay;
pub mod subject;

pub use method::{explain, explain_shared, resize, upsample, upsample_align_corners, CamMethod, Explanation};
pub use methods::{Method, MethodOptions, PoolingKind, Upsampling, REGISTRY};
pub use model::{Activations, CamModel};
pub use network::{Network, Pooling};
pub use subject::{Subject, TargetClass};
