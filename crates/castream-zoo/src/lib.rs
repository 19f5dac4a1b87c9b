//! The model zoo: which backbone a spec names (`backbone`: shipped, a checkpoint, or a pretrained
//! hf-hub model), the quick profile's shipped GAP backbones (`quick`: recipe, manifest, training,
//! verified loading), their CA-Streams trained on the frozen backbone and cached (`ca`), trained
//! streams as files with cards (`stream_checkpoint`), stream training on image files for the paper
//! profile (`train_stream`), and the training progress display (`progress`).

pub mod backbone;
pub mod ca;
pub mod fixture;
pub mod progress;
pub mod quick;
pub mod stream_checkpoint;
pub mod train_stream;

pub use backbone::BackboneSpec;
