//! Data for castream: MNIST-format IDX files, dataset discovery (spec path, environment, hf-hub
//! cache, system packages), the deterministic *Fashion-MNIST scenes* of the quick profile, image
//! folders and lists for the paper profile, and seeded batching.
//!
//! candle-datasets is not used: its MNIST loader reads neither gzip nor reports which file is
//! corrupt, and it pulls in arrow's `parquet` and `tokenizers`, duplicating what polars already
//! builds (several minutes of a cold build on two cores).

pub mod atomic;
pub mod batching;
pub mod cache;
pub mod device;
pub mod discovery;
pub mod error;
pub mod hub;
pub mod idx;
pub mod image_folder;
pub mod image_set;
pub mod images;
pub mod keyed;
pub mod labelled;
pub mod normalise;
pub mod progress;
pub mod provenance;
pub mod scenes;
pub mod train_transform;
pub mod valid;

pub use device::DeviceChoice;
pub use error::{DataError, Result};
pub use normalise::Normalisation;
