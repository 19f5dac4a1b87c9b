//! CAM methods (METHOD.md §4) for the GAP network and the CA model at the same target layer, and
//! the colour maps of their overlays.
//!
//! - [`Subject`]: the network split at the target stage (`F_4` by default).
//! - [`CamMethod`]: one trait for every method; [`Method`] names them (Grad-CAM, Grad-CAM++,
//!   Score-CAM, raw attention; CAM, HiResCAM, XGrad-CAM, Layer-CAM, Ablation-CAM).
//! - [`explain`]: a method's maps, rectified, min-max normalised and upsampled to the input.
//! - [`overlay`]: the jet colour map and its blend on an image.

pub mod gradients;
pub mod method;
pub mod methods;
pub mod overlay;
pub mod subject;

pub use method::{explain, upsample, CamMethod, Explanation};
pub use methods::{Method, MethodOptions};
pub use subject::{Activations, Pooling, Subject, TargetClass};
