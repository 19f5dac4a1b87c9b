//! Image datasets of the paper profile: ImageNet validation given as a `name,label` list (the
//! authors' format, or the classic whitespace-separated `val.txt`), and class-per-folder sets
//! such as MIT 67. Images are decoded lazily, batch by batch, in parallel with rayon, so a
//! 50 000-image list costs nothing until it is evaluated.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use image::imageops::{self, FilterType};
use image::RgbImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::normalise::Normalisation;
use crate::scenes::BBox;

/// One image and its class index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEntry {
    pub path: PathBuf,
    pub label: usize,
}

/// An ordered list of labelled images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageList {
    pub entries: Vec<ImageEntry>,
    /// Class names indexed by label; empty when the source gives only numeric labels (lists).
    pub classes: Vec<String>,
}

/// Classes of ImageNet-1k, the labels of the paper profile's validation list.
pub const IMAGENET_CLASSES: usize = 1000;

const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

impl ImageList {
    /// Reads a list of `name,label` lines (or `name label`, the classic ImageNet `val.txt`),
    /// `name` relative to `image_root`. Blank lines, `#` comments and a leading `name,label`
    /// header are skipped. Every label must be a class index in `0..classes` (ImageNet:
    /// [`IMAGENET_CLASSES`]); a line with another label is refused with its line number.
    ///
    /// The images themselves are not checked here (stat-ing 50 000 files would dominate start-up);
    /// a missing or corrupt image is reported, with its path, when its batch is decoded.
    pub fn from_csv(list_file: &Path, image_root: &Path, classes: usize) -> Result<ImageList> {
        let text = std::fs::read_to_string(list_file).map_err(|e| DataError::io(list_file, e))?;
        let list_error = |line: usize, reason: String| DataError::List { path: list_file.to_path_buf(), line, reason };

        let mut entries = Vec::new();
        let mut seen_data_line = false;
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let first_data_line = !seen_data_line;
            seen_data_line = true;

            let split = match line.rsplit_once(',') {
                Some(pair) => Some(pair),
                None => line.rsplit_once(char::is_whitespace),
            };
            let Some((name, label)) = split.map(|(n, l)| (n.trim(), l.trim())) else {
                return Err(list_error(line_no, format!("expected `name,label` (or `name label`), found `{line}`")));
            };
            if first_data_line && name.eq_ignore_ascii_case("name") && label.eq_ignore_ascii_case("label") {
                continue;
            }
            if name.is_empty() {
                return Err(list_error(
                    line_no,
                    format!("expected `name,label` with a non-empty name, found `{line}`"),
                ));
            }
            let label: usize = label.parse().map_err(|_| {
                list_error(line_no, format!("expected `name,label` with an integer label, found `{label}`"))
            })?;
            if label >= classes {
                return Err(list_error(
                    line_no,
                    format!(
                        "label {label} is out of range; valid: 0 to {} (0..{classes}, a class index of the {classes} classes). \
                         Fix: correct the label of `{name}`",
                        classes.saturating_sub(1)
                    ),
                ));
            }
            entries.push(ImageEntry { path: image_root.join(name), label });
        }

        if entries.is_empty() {
            return Err(list_error(
                text.lines().count(),
                "the list holds no `name,label` entries (only blank lines, comments or a header)".into(),
            ));
        }
        Ok(ImageList { entries, classes: Vec::new() })
    }

    /// Reads a class-per-folder dataset: each sub-directory of `root` is a class, labelled by
    /// its index in name order (the order torchvision's `ImageFolder` uses, so labels match
    /// checkpoints trained with it); its `.jpg`/`.jpeg`/`.png` files (any case) are the images,
    /// in name order. Other files, and files directly under `root`, are ignored.
    pub fn from_class_folders(root: &Path) -> Result<ImageList> {
        let mut class_dirs = Vec::new();
        for entry in std::fs::read_dir(root).map_err(|e| DataError::io(root, e))? {
            let path = entry.map_err(|e| DataError::io(root, e))?.path();
            if path.is_dir() {
                class_dirs.push(path);
            }
        }
        if class_dirs.is_empty() {
            return Err(DataError::Config {
                field: "image_root".into(),
                reason: format!(
                    "{} has no class sub-directories; expected one folder per class holding \
                     .jpg/.jpeg/.png images",
                    root.display()
                ),
            });
        }
        class_dirs.sort();

        let mut entries = Vec::new();
        let mut classes = Vec::with_capacity(class_dirs.len());
        for (label, dir) in class_dirs.iter().enumerate() {
            let mut images = Vec::new();
            for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
                let path = entry.map_err(|e| DataError::io(dir, e))?.path();
                if path.is_file() && has_image_extension(&path) {
                    images.push(path);
                }
            }
            if images.is_empty() {
                return Err(DataError::Config {
                    field: "image_root".into(),
                    reason: format!(
                        "class folder {} holds no .jpg/.jpeg/.png images; add its images or \
                         remove the folder (it would shift the labels of the classes after it)",
                        dir.display()
                    ),
                });
            }
            images.sort();
            entries.extend(images.into_iter().map(|path| ImageEntry { path, label }));
            classes.push(dir.file_name().unwrap_or_default().to_string_lossy().into_owned());
        }
        Ok(ImageList { entries, classes })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Decodes the images at `indices` in parallel and returns an f32 tensor `(B, 3, S, S)`,
    /// `S = transform.output_size()`, and the u32 labels `(B,)`, both in the order of `indices`.
    ///
    /// If several images fail, the error of the first in `indices` order is returned, so the
    /// message does not depend on thread scheduling.
    pub fn load_batch(
        &self,
        indices: &[usize],
        transform: EvalTransform,
        norm: &Normalisation,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        transform.validate()?;
        self.check_indices(indices)?;
        let decoded: Vec<Result<Vec<f32>>> =
            indices.par_iter().map(|&i| load_image(&self.entries[i].path, transform, norm)).collect();
        self.stack_batch(indices, decoded, transform.output_size(), device)
    }

    /// Refuses an index past the end of the list, before any image is decoded.
    pub(crate) fn check_indices(&self, indices: &[usize]) -> Result<()> {
        match indices.iter().find(|&&i| i >= self.entries.len()) {
            Some(&bad) => Err(DataError::Config {
                field: "indices".into(),
                reason: format!("index {bad} is out of range for a list of {} images", self.len()),
            }),
            None => Ok(()),
        }
    }

    /// The decoded `size x size` CHW images of `indices` as `(B, 3, S, S)` and their labels as
    /// `(B,)`; the first error in `indices` order wins, so the message does not depend on thread
    /// scheduling.
    pub(crate) fn stack_batch(
        &self,
        indices: &[usize],
        decoded: Vec<Result<Vec<f32>>>,
        size: u32,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let size = size as usize;
        let mut pixels = Vec::with_capacity(indices.len() * 3 * size * size);
        for image in decoded {
            pixels.extend(image?);
        }
        let labels: Vec<u32> = indices.iter().map(|&i| self.entries[i].label as u32).collect();
        let images = Tensor::from_vec(pixels, (indices.len(), 3, size, size), device)?;
        let labels = Tensor::from_vec(labels, indices.len(), device)?;
        Ok((images, labels))
    }
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// The deterministic evaluation transform applied before normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum EvalTransform {
    /// Resize to `size x size` ignoring the aspect ratio, no crop: the authors' ImageNet
    /// evaluation transform, so reproducing their numbers needs it rather than a crop.
    Squash { size: u32 },
    /// The common torchvision evaluation: resize the shorter side to `resize`, keeping the
    /// aspect ratio, then centre-crop `crop x crop`.
    ResizeCenterCrop { resize: u32, crop: u32 },
}

impl Default for EvalTransform {
    fn default() -> Self {
        EvalTransform::Squash { size: 224 }
    }
}

impl EvalTransform {
    /// Side of the square images the transform produces.
    pub fn output_size(&self) -> u32 {
        match *self {
            EvalTransform::Squash { size } => size,
            EvalTransform::ResizeCenterCrop { crop, .. } => crop,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let reason = match *self {
            EvalTransform::Squash { size: 0 } => "`size` must be at least 1".to_string(),
            EvalTransform::ResizeCenterCrop { resize, crop } if crop == 0 || crop > resize => {
                format!("`crop` ({crop}) must be between 1 and `resize` ({resize})")
            }
            _ => return Ok(()),
        };
        Err(DataError::Config { field: "eval_transform".into(), reason })
    }

    /// The box `[x0, y0, x1, y1]` of an image `w x h` (original pixels, end exclusive) in the
    /// transformed image's pixels, clipped to it; `None` when nothing of it remains (cropped away).
    pub fn map_box(&self, b: [f64; 4], w: u32, h: u32) -> Option<BBox> {
        let (w, h) = (f64::from(w), f64::from(h));
        // Scale factors and offsets exactly as `apply` resizes and crops.
        let (sx, sy, ox, oy, side) = match *self {
            EvalTransform::Squash { size } => {
                let s = f64::from(size);
                (s / w, s / h, 0.0, 0.0, s)
            }
            EvalTransform::ResizeCenterCrop { resize, crop } => {
                let r = f64::from(resize);
                let (nw, nh) = if w <= h { (r, (r * h / w).floor()) } else { ((r * w / h).floor(), r) };
                let c = f64::from(crop);
                (nw / w, nh / h, ((nw - c) / 2.0).round_ties_even(), ((nh - c) / 2.0).round_ties_even(), c)
            }
        };
        let clip = |v: f64| v.clamp(0.0, side);
        let (x0, x1) = (clip((b[0] * sx - ox).floor()), clip((b[2] * sx - ox).ceil()));
        let (y0, y1) = (clip((b[1] * sy - oy).floor()), clip((b[3] * sy - oy).ceil()));
        (x0 < x1 && y0 < y1).then_some(BBox { x0: x0 as usize, y0: y0 as usize, x1: x1 as usize, y1: y1 as usize })
    }

    fn apply(&self, image: &RgbImage) -> RgbImage {
        match *self {
            EvalTransform::Squash { size } => imageops::resize(image, size, size, FilterType::Triangle),
            EvalTransform::ResizeCenterCrop { resize, crop } => {
                let (w, h) = image.dimensions();
                // torchvision truncates the long side: int(resize * long / short).
                let long = |l: u32, s: u32| (u64::from(resize) * u64::from(l) / u64::from(s)) as u32;
                let (nw, nh) = if w <= h { (resize, long(h, w)) } else { (long(w, h), resize) };
                let resized = imageops::resize(image, nw, nh, FilterType::Triangle);
                // torchvision's offset is Python's round((side - crop) / 2): ties to even.
                let offset = |side: u32| (f64::from(side - crop) / 2.0).round_ties_even() as u32;
                imageops::crop_imm(&resized, offset(nw), offset(nh), crop, crop).to_image()
            }
        }
    }
}

/// Decodes a JPEG or PNG image (converted to RGB, alpha dropped as PIL's `convert("RGB")` does),
/// applies `transform` and returns it as CHW f32 scaled to [0, 1] and then normalised.
pub fn load_image(path: &Path, transform: EvalTransform, norm: &Normalisation) -> Result<Vec<f32>> {
    transform.validate()?;
    let image = read_rgb(path)?;
    Ok(normalised_chw(&transform.apply(&image), norm))
}

/// Reads and decodes a JPEG or PNG file to RGB (alpha dropped, as PIL's `convert("RGB")`); a
/// missing file is an io error and an undecodable or empty one a decode error, both naming `path`.
pub(crate) fn read_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let decode_error = |reason: String| DataError::Decode { path: path.to_path_buf(), reason };
    let image = image::load_from_memory(&bytes).map_err(|e| decode_error(e.to_string()))?.to_rgb8();
    if image.width() == 0 || image.height() == 0 {
        return Err(decode_error("the image has no pixels".into()));
    }
    Ok(image)
}

/// An RGB image as CHW f32 scaled to [0, 1], then normalised with `norm`.
pub(crate) fn normalised_chw(image: &RgbImage, norm: &Normalisation) -> Vec<f32> {
    let plane = (image.width() * image.height()) as usize;
    let mut chw = vec![0.0f32; 3 * plane];
    for (i, pixel) in image.pixels().enumerate() {
        for c in 0..3 {
            chw[c * plane + i] = f32::from(pixel.0[c]) / 255.0;
        }
    }
    norm.apply(&mut chw);
    chw
}

#[cfg(test)]
mod tests;
