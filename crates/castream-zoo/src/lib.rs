//! The quick profile's model zoo: which backbone a spec names (`backbone`), the shipped GAP backbones (`quick`: recipe, manifest, training,
//! verified loading), their CA-Streams trained on the frozen backbone and cached (`ca`), the
//! Fashion-MNIST scene sets, and the training progress display (`progress`).

pub mod backbone;
pub mod ca;
pub mod progress;
pub mod quick;

pub use backbone::BackboneSpec;
