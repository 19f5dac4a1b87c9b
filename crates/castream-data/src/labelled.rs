//! A split of an MNIST-format dataset: a `(n, rows, cols)` byte image file and an `(n,)` label file.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{DataError, Result};
use crate::idx::{read_idx, IdxArray};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    Train,
    Test,
}

impl Split {
    /// The file-name prefix MNIST-format datasets use for this split.
    pub fn file_prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// The image and label files of one split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitFiles {
    pub images: PathBuf,
    pub labels: PathBuf,
}

impl SplitFiles {
    /// The canonical file names (`train-images-idx3-ubyte`, …) of `split` inside `dir`, gzipped
    /// (`.gz`) or plain, whichever exists; `None` unless both files exist.
    pub fn in_dir(dir: &Path, split: Split) -> Option<SplitFiles> {
        let find = |kind: &str| {
            let stem = format!("{}-{kind}-ubyte", split.file_prefix());
            [format!("{stem}.gz"), stem].into_iter().map(|n| dir.join(n)).find(|p| p.is_file())
        };
        Some(SplitFiles { images: find("images-idx3")?, labels: find("labels-idx1")? })
    }

    /// The file names looked for, with and without `.gz`, for error messages and hub look-ups.
    pub fn candidate_names(split: Split) -> [[String; 2]; 2] {
        ["images-idx3", "labels-idx1"].map(|kind| {
            let stem = format!("{}-{kind}-ubyte", split.file_prefix());
            [format!("{stem}.gz"), stem]
        })
    }
}

/// The decoded images and labels of a split, with a hash of their content for run records.
#[derive(Debug, Clone)]
pub struct LabelledImages {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    pub rows: usize,
    pub cols: usize,
    pub classes: usize,
    /// SHA-256 of the decompressed image bytes followed by the label bytes.
    pub sha256: String,
    pub files: SplitFiles,
}

impl LabelledImages {
    /// Loads and cross-checks a split; every label must be below `classes`.
    pub fn load(files: &SplitFiles, classes: usize) -> Result<LabelledImages> {
        let images = read_idx(&files.images)?;
        let labels = read_idx(&files.labels)?;
        let [n_images, rows, cols] = images.dims[..] else {
            return Err(wrong_shape(&files.images, "3-d array (n, rows, cols) of images", &images));
        };
        let [n_labels] = labels.dims[..] else {
            return Err(wrong_shape(&files.labels, "1-d array of labels", &labels));
        };
        if n_images != n_labels {
            return Err(DataError::CountMismatch {
                images: files.images.clone(),
                labels: files.labels.clone(),
                n_images,
                n_labels,
            });
        }
        if let Some((index, &label)) = labels.data.iter().enumerate().find(|(_, &l)| l as usize >= classes) {
            return Err(DataError::LabelOutOfRange {
                path: files.labels.clone(),
                index,
                label: label as usize,
                classes,
            });
        }
        let mut hasher = Sha256::new();
        hasher.update(&images.data);
        hasher.update(&labels.data);
        Ok(LabelledImages {
            images: images.data,
            labels: labels.data,
            rows,
            cols,
            classes,
            sha256: hex(&hasher.finalize()),
            files: files.clone(),
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The `rows x cols` bytes of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let size = self.rows * self.cols;
        &self.images[i * size..(i + 1) * size]
    }

    pub fn label(&self, i: usize) -> usize {
        self.labels[i] as usize
    }

    /// Number of images of each class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes];
        self.labels.iter().for_each(|&l| counts[l as usize] += 1);
        counts
    }
}

fn wrong_shape(path: &Path, expected: &'static str, array: &IdxArray) -> DataError {
    DataError::WrongShape { path: path.to_path_buf(), expected, shape: array.dims.clone() }
}

/// Lower-case hexadecimal rendering of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::idx::tests::{gzip, idx_bytes};

    /// Writes a tiny MNIST-format split (`n` images of `side x side`) into `dir`; image i is filled
    /// with the value i+1 and labelled `i % classes`.
    pub(crate) fn write_split(dir: &Path, split: Split, n: u32, side: u32, classes: u8, gz: bool) {
        let images: Vec<u8> = (0..n).flat_map(|i| vec![(i + 1) as u8; (side * side) as usize]).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % classes as u32) as u8).collect();
        let write = |kind: &str, bytes: Vec<u8>| {
            let stem = format!("{}-{kind}-ubyte", split.file_prefix());
            let (name, bytes) = if gz { (format!("{stem}.gz"), gzip(&bytes)) } else { (stem, bytes) };
            std::fs::write(dir.join(name), bytes).unwrap();
        };
        write("images-idx3", idx_bytes(&[n, side, side], &images));
        write("labels-idx1", idx_bytes(&[n], &labels));
    }

    #[test]
    fn loads_a_split_and_counts_classes() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), Split::Test, 7, 4, 3, true);
        let files = SplitFiles::in_dir(dir.path(), Split::Test).unwrap();
        assert!(SplitFiles::in_dir(dir.path(), Split::Train).is_none());
        let data = LabelledImages::load(&files, 3).unwrap();
        assert_eq!((data.len(), data.rows, data.cols), (7, 4, 4));
        assert_eq!(data.image(2), &[3u8; 16]);
        assert_eq!(data.label(5), 2);
        assert_eq!(data.class_counts(), vec![3, 2, 2]);
        assert_eq!(data.sha256.len(), 64);
    }

    #[test]
    fn count_mismatch_names_both_files() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), Split::Train, 5, 2, 2, false);
        std::fs::write(dir.path().join("train-labels-idx1-ubyte"), idx_bytes(&[4], &[0, 1, 0, 1])).unwrap();
        let files = SplitFiles::in_dir(dir.path(), Split::Train).unwrap();
        let err = LabelledImages::load(&files, 2).unwrap_err();
        assert!(matches!(err, DataError::CountMismatch { n_images: 5, n_labels: 4, .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("train-images-idx3-ubyte") && msg.contains("train-labels-idx1-ubyte"), "{msg}");
    }

    #[test]
    fn labels_out_of_range_and_wrong_rank_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), Split::Train, 5, 2, 4, false);
        let files = SplitFiles::in_dir(dir.path(), Split::Train).unwrap();
        let err = LabelledImages::load(&files, 3).unwrap_err();
        assert!(matches!(err, DataError::LabelOutOfRange { index: 3, label: 3, .. }), "{err}");

        std::fs::write(&files.images, idx_bytes(&[5, 4], &[0; 20])).unwrap();
        let err = LabelledImages::load(&files, 4).unwrap_err();
        assert!(matches!(err, DataError::WrongShape { .. }), "{err}");
    }
}
