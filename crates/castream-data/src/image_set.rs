//! Labelled image files as an evaluation reads them ([`ImageSet`]: a list or class folders, the
//! evaluation transform, optional object boxes) and as specs name them ([`ImageSetSpec`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{DataError, Result};
use crate::image_folder::{load_image, EvalTransform, ImageList};
use crate::images::{DataRecord, EvalImages};
use crate::labelled::hex;
use crate::normalise::Normalisation;
use crate::scenes::BBox;

/// An image set on disk as specs write it: a `name,label` list or a class-per-folder tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSetSpec {
    /// Folder the list's names are relative to, or the root of the class folders.
    pub root: PathBuf,
    /// A `name,label` list (the authors' format); absent: one sub-folder per class under `root`.
    pub list: Option<PathBuf>,
    #[serde(default)]
    pub transform: EvalTransform,
    /// Object boxes, `name,x0,y0,x1,y1` per line in original pixels (localisation metrics).
    pub boxes: Option<PathBuf>,
}

impl ImageSetSpec {
    /// Everything missing on disk, if anything: checked before a run starts (`where_` says where
    /// the table is set, e.g. `experiments/table2.toml [paper.data.imagenet]`).
    pub fn missing(&self, where_: &str) -> Option<String> {
        let mut missing = Vec::new();
        if !self.root.is_dir() {
            missing
                .push(format!("{where_} root = {:?}, which is not a folder; Fix: point it to the images", self.root));
        }
        for (key, file) in [("list", &self.list), ("boxes", &self.boxes)] {
            if let Some(f) = file.as_ref().filter(|f| !f.is_file()) {
                missing.push(format!("{where_} {key} = {f:?}, which is not a file; Fix: correct the path"));
            }
        }
        (!missing.is_empty()).then(|| missing.join("; "))
    }

    /// Reads the list (labels below `classes`) or the class folders, and the boxes, as `dataset`/`split`.
    pub fn open(&self, dataset: &str, split: &str, classes: usize, where_: &str) -> Result<ImageSet> {
        if let Some(missing) = self.missing(where_) {
            return Err(DataError::Missing(missing));
        }
        let list = match &self.list {
            Some(file) => ImageList::from_csv(file, &self.root, classes)?,
            None => ImageList::from_class_folders(&self.root)?,
        };
        let origin = serde_json::json!({ "root": self.root, "list": self.list, "boxes": self.boxes });
        let set = ImageSet::new(list, &self.root, self.transform, dataset, split, origin)?;
        match &self.boxes {
            Some(file) => set.with_boxes(file),
            None => Ok(set),
        }
    }
}

/// Image files with labels, the evaluation transform applied on read, and optionally object
/// boxes (table 6's localisation on ImageNet).
pub struct ImageSet {
    pub list: ImageList,
    pub transform: EvalTransform,
    /// Per image, its box in transformed pixels.
    pub boxes: Option<Vec<Option<BBox>>>,
    /// `imagenet`, `mit67`, … and the split.
    pub dataset: String,
    pub split: String,
    /// The folder the list's names are relative to.
    pub root: PathBuf,
    /// SHA-256 of the list: names relative to `root` and labels, in order.
    pub sha256: String,
    pub origin: serde_json::Value,
    /// The files' identity (absolute root, each file's size and modification time), computed on
    /// first use: the images are not hashed (50,000 files), but a changed or moved copy is noticed.
    files: std::sync::OnceLock<String>,
}

impl ImageSet {
    /// `list` (read from `root`), named `dataset`/`split`; `origin` is recorded in `run.json`.
    pub fn new(
        list: ImageList,
        root: &Path,
        transform: EvalTransform,
        dataset: &str,
        split: &str,
        origin: serde_json::Value,
    ) -> Result<ImageSet> {
        transform.validate()?;
        let mut hasher = Sha256::new();
        for e in &list.entries {
            let name = e.path.strip_prefix(root).unwrap_or(&e.path);
            hasher.update(format!("{},{}\n", name.display(), e.label));
        }
        Ok(ImageSet {
            list,
            transform,
            boxes: None,
            dataset: dataset.into(),
            split: split.into(),
            root: root.to_path_buf(),
            sha256: hex(&hasher.finalize()),
            origin,
            files: std::sync::OnceLock::new(),
        })
    }

    /// Reads object boxes from `file`: `name,x0,y0,x1,y1` lines in the original image's pixels
    /// (`name` as in the list, end exclusive), several lines of one image meaning several objects
    /// (their enclosing box is kept). Each box is mapped through the evaluation transform and
    /// clipped to the image; an image without a line has no box.
    pub fn with_boxes(mut self, file: &Path) -> Result<ImageSet> {
        let text = std::fs::read_to_string(file).map_err(|e| DataError::io(file, e))?;
        let bad = |line: usize, reason: String| DataError::List { path: file.to_path_buf(), line, reason };
        let mut by_name: HashMap<PathBuf, [f64; 4]> = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || (i == 0 && line.starts_with("name,")) {
                continue;
            }
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let [name, coords @ ..] = fields.as_slice() else { unreachable!("split yields at least one field") };
            let values: Vec<f64> =
                coords.iter().filter_map(|v| v.parse().ok()).filter(|v: &f64| v.is_finite()).collect();
            if coords.len() != 4 || values.len() != 4 || values[0] >= values[2] || values[1] >= values[3] {
                return Err(bad(
                    i + 1,
                    format!("expected `name,x0,y0,x1,y1` with x0 < x1 and y0 < y1, found `{line}`"),
                ));
            }
            let b = by_name.entry(self.root.join(name)).or_insert([values[0], values[1], values[2], values[3]]);
            *b = [b[0].min(values[0]), b[1].min(values[1]), b[2].max(values[2]), b[3].max(values[3])];
        }
        if let Some(unmatched) = by_name.keys().find(|n| !self.list.entries.iter().any(|e| &e.path == *n)) {
            if !self.list.entries.iter().any(|e| by_name.contains_key(&e.path)) {
                return Err(DataError::Config {
                    field: file.display().to_string(),
                    reason: format!(
                        "none of its boxes names an image of the list (e.g. {} is not one; the list's first is {}); \
                         Fix: write the names as the list does, relative to {}",
                        unmatched.display(),
                        self.list.entries[0].path.display(),
                        self.root.display()
                    ),
                });
            }
        }
        let boxes = self
            .list
            .entries
            .iter()
            .map(|e| match by_name.get(&e.path) {
                None => Ok(None),
                Some(b) => {
                    let (w, h) = image::image_dimensions(&e.path)
                        .map_err(|err| DataError::Decode { path: e.path.clone(), reason: err.to_string() })?;
                    Ok(self.transform.map_box(*b, w, h))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        self.boxes = Some(boxes);
        Ok(self)
    }
}

impl ImageSet {
    /// See [`ImageSet::files`]'s field: absolute root, size and modification time of every file
    /// (a missing file counts as size 0; its batch reports it).
    fn files(&self) -> &str {
        self.files.get_or_init(|| {
            let mut hasher = Sha256::new();
            hasher.update(
                std::path::absolute(&self.root).unwrap_or_else(|_| self.root.clone()).to_string_lossy().as_bytes(),
            );
            for e in &self.list.entries {
                let meta = std::fs::metadata(&e.path).ok();
                let modified = meta
                    .as_ref()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
                hasher.update(format!("{},{},{:?}\n", e.path.display(), meta.map_or(0, |m| m.len()), modified));
            }
            hex(&hasher.finalize())
        })
    }
}

impl EvalImages for ImageSet {
    fn len(&self) -> usize {
        self.list.len()
    }

    fn describe(&self) -> String {
        format!("{} {}", self.dataset, self.split)
    }

    fn tag(&self) -> String {
        format!("{}/{}@{}", self.dataset, self.split, &self.sha256[..16])
    }

    fn identity(&self) -> String {
        let id = (&self.sha256, &self.dataset, &self.split, &self.transform, self.files());
        serde_json::to_string(&id).expect("plain data serialises")
    }

    fn boxes_identity(&self) -> Option<String> {
        self.boxes.as_ref().map(|b| hex(&Sha256::digest(serde_json::to_vec(b).expect("plain data"))))
    }

    fn record(&self) -> DataRecord {
        DataRecord {
            dataset: self.dataset.clone(),
            split: self.split.clone(),
            images: self.list.len(),
            sha256: self.sha256.clone(),
            origin: self.origin.clone(),
        }
    }

    fn side(&self) -> usize {
        self.transform.output_size() as usize
    }

    fn batch(&self, ids: &[usize], norm: &Normalisation, device: &Device) -> Result<(Tensor, Tensor)> {
        self.list.load_batch(ids, self.transform, norm, device)
    }

    fn rgb(&self, i: usize) -> Result<Vec<f32>> {
        load_image(&self.list.entries[i].path, self.transform, &Normalisation::IDENTITY)
    }

    fn label(&self, i: usize) -> usize {
        self.list.entries[i].label
    }

    fn bbox(&self, i: usize) -> Option<BBox> {
        self.boxes.as_ref().and_then(|b| b[i])
    }

    fn class_name(&self, label: usize) -> String {
        self.list.classes.get(label).cloned().unwrap_or_else(|| format!("class {label}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cpu;

    fn write_png(path: &Path, w: u32, h: u32) {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 100]));
        img.save(path).unwrap();
    }

    /// Two class folders, one 40x20 image each, boxes given in original pixels.
    fn fixture() -> (tempfile::TempDir, ImageSet) {
        let dir = tempfile::tempdir().unwrap();
        for (class, name) in [("n01", "a.png"), ("n02", "b.png")] {
            std::fs::create_dir_all(dir.path().join(class)).unwrap();
            write_png(&dir.path().join(class).join(name), 40, 20);
        }
        let list = ImageList::from_class_folders(dir.path()).unwrap();
        let set =
            ImageSet::new(list, dir.path(), EvalTransform::Squash { size: 10 }, "toy", "val", serde_json::Value::Null)
                .unwrap();
        (dir, set)
    }

    #[test]
    fn squashed_boxes_scale_each_axis_and_several_objects_give_their_enclosing_box() {
        let (dir, set) = fixture();
        let boxes = dir.path().join("boxes.csv");
        std::fs::write(&boxes, "name,x0,y0,x1,y1\nn01/a.png,4,2,20,10\nn01/a.png,8,0,12,4\n").unwrap();
        let set = set.with_boxes(&boxes).unwrap();
        // 40x20 -> 10x10: x / 4, y / 2; the union of the two boxes is (4, 0)-(20, 10).
        assert_eq!(set.bbox(0), Some(BBox { x0: 1, y0: 0, x1: 5, y1: 5 }));
        assert_eq!(set.bbox(1), None);
        assert_eq!((set.class_name(1), set.label(1), set.side()), ("n02".to_string(), 1, 10));
    }

    /// The mapped box against the rectangle found in the transformed pixels themselves.
    #[test]
    fn mapped_boxes_enclose_the_object_as_the_transform_draws_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.png");
        let (w, h, rect) = (90u32, 60u32, [30u32, 12, 70, 40]);
        let inside = |x: u32, y: u32| x >= rect[0] && x < rect[2] && y >= rect[1] && y < rect[3];
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb(if inside(x, y) { [255, 0, 0] } else { [0, 0, 0] }))
            .save(&path)
            .unwrap();
        for t in [EvalTransform::Squash { size: 32 }, EvalTransform::ResizeCenterCrop { resize: 40, crop: 32 }] {
            let rgb = load_image(&path, t, &Normalisation::IDENTITY).unwrap();
            let side = t.output_size() as usize;
            let red: Vec<bool> = rgb[..side * side].iter().map(|&v| v > 0.5).collect();
            let seen = BBox::of_mask(&red, side).unwrap();
            let b = t.map_box(rect.map(f64::from), w, h).unwrap();
            for (got, want) in [(b.x0, seen.x0), (b.y0, seen.y0), (b.x1, seen.x1), (b.y1, seen.y1)] {
                assert!(got.abs_diff(want) <= 1, "{t:?}: mapped {b:?}, drawn {seen:?}");
            }
        }
        let cropped_away = EvalTransform::ResizeCenterCrop { resize: 40, crop: 32 }.map_box([0.0, 0.0, 3.0, 3.0], w, h);
        assert_eq!(cropped_away, None);
    }

    #[test]
    fn a_malformed_box_line_names_the_file_and_line() {
        let (dir, set) = fixture();
        let boxes = dir.path().join("boxes.csv");
        std::fs::write(&boxes, "n01/a.png,4,2,20,10\nn01/a.png,9,2,3,10\n").unwrap();
        let msg = set.with_boxes(&boxes).err().unwrap().to_string();
        assert!(msg.contains("boxes.csv") && msg.contains('2') && msg.contains("x0 < x1"), "{msg}");
        std::fs::write(&boxes, "n01/a.png,nan,2,20,10\n").unwrap();
        assert!(fixture().1.with_boxes(&boxes).is_err(), "NaN is not a coordinate");
    }

    #[test]
    fn boxes_naming_no_image_of_the_list_are_refused() {
        let (dir, set) = fixture();
        let boxes = dir.path().join("boxes.csv");
        std::fs::write(&boxes, "a.png,4,2,20,10\n").unwrap();
        let msg = set.with_boxes(&boxes).err().unwrap().to_string();
        assert!(msg.contains("none of its boxes names an image of the list") && msg.contains("a.png"), "{msg}");
    }

    #[test]
    fn the_identity_follows_names_labels_transform_files_and_boxes_and_batches_match_rgb() {
        let (dir, set) = fixture();
        let id = set.identity();
        assert_eq!(id, set.identity());
        let (_other_dir, other) = fixture();
        assert_eq!(set.sha256, other.sha256, "the list hash is independent of the root");
        assert_ne!(id, other.identity(), "another copy of the files is other images");
        let resized = ImageSet::new(
            set.list.clone(),
            dir.path(),
            EvalTransform::Squash { size: 12 },
            "toy",
            "val",
            serde_json::Value::Null,
        )
        .unwrap();
        assert_ne!(id, resized.identity());
        // An image rewritten in place (another size) changes the identity.
        write_png(&dir.path().join("n02/b.png"), 41, 20);
        let rewritten =
            ImageSet::new(set.list.clone(), dir.path(), set.transform, "toy", "val", serde_json::Value::Null).unwrap();
        assert_ne!(id, rewritten.identity());
        let boxes = dir.path().join("boxes.csv");
        std::fs::write(&boxes, "n01/a.png,4,2,20,10\n").unwrap();
        let set = set.with_boxes(&boxes).unwrap();
        assert_eq!(id, set.identity(), "boxes key the scores, not the maps");
        assert!(set.boxes_identity().is_some());
        let (x, y) = set.batch(&[1, 0], &Normalisation::IDENTITY, &cpu()).unwrap();
        assert_eq!(y.to_vec1::<u32>().unwrap(), vec![1, 0]);
        let first: Vec<f32> = x.get(1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(first, set.rgb(0).unwrap());
    }
}
