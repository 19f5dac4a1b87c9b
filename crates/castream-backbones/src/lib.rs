//! Backbones: ResNet and ConvNeXt with stage taps (the paper's "pretrained, frozen network f"),
//! strict weight loading, checkpoints and GAP training.

pub mod backbone;
pub mod config;
mod convnext;
pub mod init;
mod layers;
pub mod model;
pub mod optim;
mod resnet;
pub mod schedule;
pub mod train;
pub mod weights;

pub use backbone::Backbone;
pub use config::{Arch, BackboneConfig, ConfigError, Stem};
pub use model::{CheckpointMeta, Model};
pub use weights::{KeyMismatch, LoadReport, WeightSource};
