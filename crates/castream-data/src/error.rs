//! One error type for the data crate. Every variant names the file involved and, where there is
//! one, the fix, so a researcher can act on the message without reading the source.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: not an IDX file: magic number {found:#010x} (expected 0x0000TTNN: two zero bytes, a type code, the number of dimensions). Fix: point to the uncompressed or gzipped MNIST-format file, not an archive or a different format")]
    BadMagic { path: PathBuf, found: u32 },

    #[error("{path}: IDX element type {code:#04x} is not supported (only unsigned bytes, 0x08, are used by MNIST-format datasets)")]
    UnsupportedType { path: PathBuf, code: u8 },

    #[error("{path}: truncated: the header promises {expected} bytes of data but the file holds {found}. Fix: re-install or re-download the dataset (for Fashion-MNIST `apt-get install --reinstall dataset-fashion-mnist`)")]
    Truncated { path: PathBuf, expected: usize, found: usize },

    #[error("{path}: {found} trailing bytes after the {expected} bytes the header describes; the file is not a single IDX array")]
    TrailingBytes { path: PathBuf, expected: usize, found: usize },

    #[error("{images} holds {n_images} images but {labels} holds {n_labels} labels: the two files of a split must have the same count. Fix: make sure both files come from the same dataset release")]
    CountMismatch { images: PathBuf, labels: PathBuf, n_images: usize, n_labels: usize },

    #[error("{path}: expected a {expected}, found an IDX array of shape {shape:?}")]
    WrongShape { path: PathBuf, expected: &'static str, shape: Vec<usize> },

    #[error("{path}: label {label} at index {index} is out of range for {classes} classes")]
    LabelOutOfRange { path: PathBuf, index: usize, label: usize, classes: usize },

    #[error("dataset {dataset} not found. Looked in:\n{searched}\nFix: {install}")]
    DatasetNotFound { dataset: &'static str, searched: String, install: String },

    #[error("{path}: cannot decode image: {reason}. Fix: remove or replace the file, or drop it from the list")]
    Decode { path: PathBuf, reason: String },

    #[error("{path}:{line}: {reason}")]
    List { path: PathBuf, line: usize, reason: String },

    #[error("invalid configuration `{field}`: {reason}")]
    Config { field: String, reason: String },

    /// Inputs named by a spec that are not on disk (each with where it is set and the fix).
    #[error("{0}")]
    Missing(String),

    #[error("hf-hub: {0}")]
    Hub(String),

    /// A `--device` that this build or this machine cannot provide; the message names the fix.
    #[error("{0}")]
    Device(String),

    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io { path: path.into(), source }
    }
}

pub type Result<T> = std::result::Result<T, DataError>;
