//! Backbones: ResNet and ConvNeXt with stage taps, strict weight loading and GAP training.
//! Not implemented yet: the experiments that need it report `not yet available`.
