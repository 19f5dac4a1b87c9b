//! The evaluation engine. It takes typed inputs — models ([`castream_cam::Subject`]), saliency
//! sources ([`Source`]), metrics ([`castream_metrics::Metric`]), an image set and a
//! [`Protocol`] — and returns per-image values; it knows nothing of specs, files or runs.
//!
//! - [`interpretability`]: per-image metric values of a (model, saliency source) cell, cached.
//! - [`protocol`]: the class explained, the insertion/deletion variant, the methods' options.
//! - [`recognition`]: per-image correctness of a GAP network and its CA models.
//! - [`sanity`]: the model-randomisation sanity check.
//! - [`saliency`]: maps of a batch for figures, image-list hashes.
//! - [`shard`]: what each cell computes — all images, one shard's part, or the merge of the shards.

pub mod interpretability;
pub mod protocol;
pub mod recognition;
pub mod saliency;
pub mod sanity;
pub mod shard;

pub use interpretability::{Baseline, Evaluation, Explained, ModelKey, Source};
pub use protocol::{CausalChoice, Protocol};
pub use shard::{Shard, Sharding};
