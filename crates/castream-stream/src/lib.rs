//! The CA-Stream (METHOD.md §2): a learned query `q_0` cross-attends to the backbone's stage
//! outputs `F_0 … F_4`, one block per tapped stage, each block's pooled vector mapped linearly to the
//! next query; the last query replaces `GAP(F_4)` as the classifier's input.

pub mod maps;
pub mod model;
pub mod stream;
pub mod streaming;

pub use maps::{attention_map, minmax_normalise, AttentionSelect};
pub use model::{CaModel, FeatureCache, StreamTask};
pub use stream::{cross_attention, Attention, AttentionScale, CaStream, StreamConfig, StreamOutput};
pub use streaming::ImageStreamTask;
