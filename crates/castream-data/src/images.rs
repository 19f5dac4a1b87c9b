//! The images an evaluation reads, whatever their source: the quick profile's generated scenes
//! ([`SceneSet`]) or labelled image files on disk ([`crate::image_set::ImageSet`]: ImageNet
//! validation, MIT 67). Targets, the cell cache and the figures see only [`EvalImages`], so every
//! table runs on both.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::normalise::Normalisation;
use crate::scenes::{BBox, SceneSet};

/// A dataset split a run read, with its content hash (`run.json`'s `data`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataRecord {
    pub dataset: String,
    pub split: String,
    pub images: usize,
    pub sha256: String,
    pub origin: serde_json::Value,
}

/// Labelled square images, read batch by batch.
pub trait EvalImages: Sync {
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How tables and errors name the images, e.g. `Fashion-MNIST test`.
    fn describe(&self) -> String;

    /// The tag of the image-list hash in `run.json` (`fashion-mnist/test`; an image set's includes
    /// its list's hash).
    fn tag(&self) -> String;

    /// Everything the pixels depend on (the source's SHA-256, generation or transform settings),
    /// as JSON text: part of every cache key of maps and scores computed on them.
    fn identity(&self) -> String;

    /// What the object boxes depend on beyond [`EvalImages::identity`], if anything: part of the
    /// scores' cache key only, so that maps are shared by tables with and without boxes.
    fn boxes_identity(&self) -> Option<String> {
        None
    }

    /// Where the images came from, for `run.json`.
    fn record(&self) -> DataRecord;

    /// Side of the square images in pixels.
    fn side(&self) -> usize;

    /// Normalised images `(B, 3, S, S)` f32 and labels `(B,)` u32 of `ids`.
    fn batch(&self, ids: &[usize], norm: &Normalisation, device: &Device) -> Result<(Tensor, Tensor)>;

    /// Image `i` before normalisation, CHW in [0, 1], for drawing.
    fn rgb(&self, i: usize) -> Result<Vec<f32>>;

    fn label(&self, i: usize) -> usize;

    /// The object's box in image pixels, when known.
    fn bbox(&self, i: usize) -> Option<BBox>;

    /// The name of class `label`, or its number when the source has no names.
    fn class_name(&self, label: usize) -> String;
}

impl EvalImages for SceneSet {
    fn len(&self) -> usize {
        SceneSet::len(self)
    }

    fn describe(&self) -> String {
        format!("{} {}", self.dataset.display_name(), self.split.name())
    }

    fn tag(&self) -> String {
        format!("{}/{}", self.dataset.display_name().to_lowercase(), self.split.name())
    }

    fn identity(&self) -> String {
        let id = (&self.source.sha256, self.dataset.display_name(), self.split.name(), &self.config);
        serde_json::to_string(&id).expect("plain data serialises")
    }

    fn record(&self) -> DataRecord {
        DataRecord {
            dataset: self.dataset.display_name().into(),
            split: self.split.name().into(),
            images: SceneSet::len(self),
            sha256: self.source.sha256.clone(),
            origin: serde_json::json!({ "images": self.source.files.images, "labels": self.source.files.labels }),
        }
    }

    fn side(&self) -> usize {
        self.config.canvas
    }

    fn batch(&self, ids: &[usize], norm: &Normalisation, device: &Device) -> Result<(Tensor, Tensor)> {
        SceneSet::batch(self, ids, norm, device)
    }

    fn rgb(&self, i: usize) -> Result<Vec<f32>> {
        Ok(self.scene(i).image)
    }

    fn label(&self, i: usize) -> usize {
        self.source.label(i)
    }

    fn bbox(&self, i: usize) -> Option<BBox> {
        self.scene(i).bbox
    }

    fn class_name(&self, label: usize) -> String {
        self.dataset.class_names().get(label).map_or_else(|| label.to_string(), |c| c.to_string())
    }
}
