//! Backbones: ResNet and ConvNeXt with stage taps (the paper's "pretrained, frozen network f"),
//! strict weight loading, checkpoints and GAP training.

pub mod backbone;
