//! *Fashion-MNIST scenes*: the quick profile's images (EXPERIMENTS.md).
//!
//! A scene is a square RGB canvas with a structured background (a two-colour linear gradient, a
//! smooth value-noise texture and fine grain) onto which one 28x28 item is scaled, tinted and
//! pasted. The item is alpha-blended with its own intensity as alpha; since the item's own
//! background is exactly zero, the object mask (alpha > 0) and its box are exact ground truth.
//! Everything is drawn from a ChaCha8 stream keyed by (seed, dataset, split, index), so a scene is a
//! pure function of those and the configuration.

use candle_core::{Device, Tensor};
use image::{imageops, GrayImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::discovery::DatasetName;
use crate::error::{DataError, Result};
use crate::labelled::{LabelledImages, Split};
use crate::normalise::Normalisation;

/// Scene parameters; every field has a documented default, so a spec sets only what it changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SceneConfig {
    /// Side of the square canvas in pixels.
    pub canvas: usize,
    /// Inclusive range of the pasted item's side in pixels (the source items are 28x28).
    pub item_size: [usize; 2],
    /// Range of the HSV saturation of the item's tint.
    pub tint_saturation: [f32; 2],
    /// Range of the HSV value (brightness) of the item's tint.
    pub tint_value: [f32; 2],
    pub background: BackgroundConfig,
    /// Seed of every random choice (with the dataset, split and image index).
    pub seed: u64,
}

impl Default for SceneConfig {
    fn default() -> Self {
        SceneConfig {
            canvas: 64,
            item_size: [28, 44],
            tint_saturation: [0.55, 1.0],
            tint_value: [0.8, 1.0],
            background: BackgroundConfig::default(),
            seed: 0,
        }
    }
}

/// The background: gradient between two random colours, a smooth texture and grain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackgroundConfig {
    /// Range of the HSV value of the gradient's two end colours.
    pub value: [f32; 2],
    /// Range of the HSV saturation of the gradient's two end colours.
    pub saturation: [f32; 2],
    /// Amplitude of the smooth value-noise texture added to every channel.
    pub texture_amplitude: f32,
    /// Cells per side of the value-noise grid (more cells: finer texture).
    pub texture_cells: usize,
    /// Amplitude of independent per-pixel, per-channel noise.
    pub grain: f32,
}

impl Default for BackgroundConfig {
    fn default() -> Self {
        BackgroundConfig {
            value: [0.15, 0.65],
            saturation: [0.2, 0.9],
            texture_amplitude: 0.12,
            texture_cells: 6,
            grain: 0.03,
        }
    }
}

impl SceneConfig {
    /// Checks the ranges; `field` paths match the spec's keys.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, reason: String| Err(DataError::Config { field: field.into(), reason });
        let [lo, hi] = self.item_size;
        if lo == 0 || lo > hi || hi > self.canvas {
            return bad(
                "scenes.item_size",
                format!("[{lo}, {hi}] must satisfy 1 <= min <= max <= canvas ({})", self.canvas),
            );
        }
        for (field, [a, b]) in [
            ("scenes.tint_saturation", self.tint_saturation),
            ("scenes.tint_value", self.tint_value),
            ("scenes.background.value", self.background.value),
            ("scenes.background.saturation", self.background.saturation),
        ] {
            if !(0.0..=1.0).contains(&a) || !(0.0..=1.0).contains(&b) || a > b {
                return bad(field, format!("[{a}, {b}] must be an increasing range inside [0, 1]"));
            }
        }
        if self.background.texture_cells == 0 {
            return bad("scenes.background.texture_cells", "must be at least 1".into());
        }
        Ok(())
    }
}

/// An axis-aligned box in pixel coordinates, `x0..x1` by `y0..y1` (end exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BBox {
    pub x0: usize,
    pub y0: usize,
    pub x1: usize,
    pub y1: usize,
}

impl BBox {
    /// The tight box of the `true` cells of a row-major `side x side` mask; `None` if empty.
    pub fn of_mask(mask: &[bool], side: usize) -> Option<BBox> {
        let mut b: Option<BBox> = None;
        for (i, _) in mask.iter().enumerate().filter(|(_, &m)| m) {
            let (x, y) = (i % side, i / side);
            let e = b.get_or_insert(BBox { x0: x, y0: y, x1: x + 1, y1: y + 1 });
            e.x0 = e.x0.min(x);
            e.y0 = e.y0.min(y);
            e.x1 = e.x1.max(x + 1);
            e.y1 = e.y1.max(y + 1);
        }
        b
    }

    pub fn width(&self) -> usize {
        self.x1 - self.x0
    }

    pub fn height(&self) -> usize {
        self.y1 - self.y0
    }
}

/// One generated scene.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    /// CHW, values in [0, 1].
    pub image: Vec<f32>,
    /// Row-major `canvas x canvas`: where the item has non-zero alpha.
    pub mask: Vec<bool>,
    /// Tight box of `mask` (`None` only for an all-zero item).
    pub bbox: Option<BBox>,
    pub label: usize,
    /// Top-left corner and side of the pasted (scaled) item.
    pub placement: (usize, usize, usize),
}

/// The ChaCha8 stream of one scene. Distinct datasets and splits get disjoint streams.
fn scene_rng(seed: u64, dataset: DatasetName, split: Split, index: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let tag = (dataset as u64) << 1 | split as u64;
    rng.set_stream(tag << 48 | index as u64);
    rng
}

/// HSV (all in [0, 1]) to RGB.
fn hsv(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h6 = (h.fract() * 6.0).min(5.999_999);
    let (i, f) = (h6.floor() as u32, h6.fract());
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match i {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

fn uniform(rng: &mut ChaCha8Rng, [lo, hi]: [f32; 2]) -> f32 {
    if lo == hi {
        lo
    } else {
        rng.random_range(lo..hi)
    }
}

/// The background of a scene, CHW in [0, 1].
fn background(cfg: &SceneConfig, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let (n, bg) = (cfg.canvas, &cfg.background);
    let mut colour = || hsv(rng.random(), uniform(rng, bg.saturation), uniform(rng, bg.value));
    let (c0, c1) = (colour(), colour());
    let angle: f32 = rng.random_range(0.0..std::f32::consts::TAU);
    let (dx, dy) = (angle.cos(), angle.sin());
    let cells = bg.texture_cells;
    let grid: Vec<f32> = (0..(cells + 1) * (cells + 1)).map(|_| rng.random_range(-1.0..1.0)).collect();
    let smooth = |t: f32| t * t * (3.0 - 2.0 * t);
    let half = (n as f32 - 1.0) / 2.0;
    let mut out = vec![0.0; 3 * n * n];
    for y in 0..n {
        for x in 0..n {
            // Gradient position in [0, 1] along the random direction.
            let proj = ((x as f32 - half) * dx + (y as f32 - half) * dy) / (half.max(1.0) * std::f32::consts::SQRT_2);
            let t = (0.5 + 0.5 * proj).clamp(0.0, 1.0);
            // Smooth value noise: bilinear interpolation of the grid with smoothstep weights.
            let (gx, gy) = (x as f32 / n as f32 * cells as f32, y as f32 / n as f32 * cells as f32);
            let (ix, iy) = (gx as usize, gy as usize);
            let (fx, fy) = (smooth(gx - ix as f32), smooth(gy - iy as f32));
            let g = |i: usize, j: usize| grid[j * (cells + 1) + i];
            let top = g(ix, iy) * (1.0 - fx) + g(ix + 1, iy) * fx;
            let bottom = g(ix, iy + 1) * (1.0 - fx) + g(ix + 1, iy + 1) * fx;
            let texture = bg.texture_amplitude * (top * (1.0 - fy) + bottom * fy);
            for c in 0..3 {
                let grain = if bg.grain > 0.0 { bg.grain * rng.random_range(-1.0f32..1.0) } else { 0.0 };
                let v = c0[c] * (1.0 - t) + c1[c] * t + texture + grain;
                out[c * n * n + y * n + x] = v.clamp(0.0, 1.0);
            }
        }
    }
    out
}

/// Scales a square item to `side x side` (bilinear, via the `image` crate; identity at 28).
fn scale_item(item: &[u8], src_side: usize, side: usize) -> Vec<u8> {
    if side == src_side {
        return item.to_vec();
    }
    let img = GrayImage::from_raw(src_side as u32, src_side as u32, item.to_vec()).expect("item is square");
    imageops::resize(&img, side as u32, side as u32, imageops::FilterType::Triangle).into_raw()
}

/// Generates scene `index` of `split` from its `src_side x src_side` item.
pub fn generate(
    cfg: &SceneConfig,
    dataset: DatasetName,
    split: Split,
    index: usize,
    item: &[u8],
    src_side: usize,
    label: usize,
) -> Scene {
    let mut rng = scene_rng(cfg.seed, dataset, split, index);
    let n = cfg.canvas;
    let mut image = background(cfg, &mut rng);
    let side = rng.random_range(cfg.item_size[0]..=cfg.item_size[1]);
    let (x0, y0) = (rng.random_range(0..=n - side), rng.random_range(0..=n - side));
    let tint = hsv(rng.random(), uniform(&mut rng, cfg.tint_saturation), uniform(&mut rng, cfg.tint_value));
    let scaled = scale_item(item, src_side, side);
    let mut mask = vec![false; n * n];
    for (j, row) in scaled.chunks_exact(side).enumerate() {
        for (i, &v) in row.iter().enumerate().filter(|(_, &v)| v > 0) {
            let (x, y) = (x0 + i, y0 + j);
            let alpha = v as f32 / 255.0;
            mask[y * n + x] = true;
            for (c, &tc) in tint.iter().enumerate() {
                let p = &mut image[c * n * n + y * n + x];
                *p = *p * (1.0 - alpha) + tc * alpha;
            }
        }
    }
    let bbox = BBox::of_mask(&mask, n);
    Scene { image, mask, bbox, label, placement: (x0, y0, side) }
}

/// A split of an MNIST-format dataset rendered as scenes on demand.
pub struct SceneSet {
    pub source: LabelledImages,
    pub dataset: DatasetName,
    pub split: Split,
    pub config: SceneConfig,
}

impl SceneSet {
    pub fn new(source: LabelledImages, dataset: DatasetName, split: Split, config: SceneConfig) -> Result<SceneSet> {
        config.validate()?;
        if source.rows != source.cols {
            return Err(DataError::WrongShape {
                path: source.files.images.clone(),
                expected: "square images",
                shape: vec![source.len(), source.rows, source.cols],
            });
        }
        Ok(SceneSet { source, dataset, split, config })
    }

    pub fn len(&self) -> usize {
        self.source.len()
    }

    pub fn is_empty(&self) -> bool {
        self.source.is_empty()
    }

    pub fn scene(&self, index: usize) -> Scene {
        let s = &self.source;
        generate(&self.config, self.dataset, self.split, index, s.image(index), s.rows, s.label(index))
    }

    /// Scenes `indices`, generated in parallel, in order.
    pub fn scenes(&self, indices: &[usize]) -> Vec<Scene> {
        indices.par_iter().map(|&i| self.scene(i)).collect()
    }

    /// A batch as tensors: normalised images `(B, 3, S, S)` f32 and labels `(B,)` u32.
    pub fn batch(&self, indices: &[usize], norm: &Normalisation, device: &Device) -> Result<(Tensor, Tensor)> {
        let n = self.config.canvas;
        let scenes = self.scenes(indices);
        let mut pixels = Vec::with_capacity(indices.len() * 3 * n * n);
        for s in &scenes {
            let start = pixels.len();
            pixels.extend_from_slice(&s.image);
            norm.apply(&mut pixels[start..]);
        }
        let labels: Vec<u32> = scenes.iter().map(|s| s.label as u32).collect();
        let images = Tensor::from_vec(pixels, (indices.len(), 3, n, n), device)?;
        let labels = Tensor::from_vec(labels, indices.len(), device)?;
        Ok((images, labels))
    }
}

/// Pixel and object statistics of a set of scenes, measured in one pass.
#[derive(Debug, Clone, PartialEq)]
pub struct SceneStats {
    pub scenes: usize,
    /// Per-channel mean and standard deviation of the pixels in [0, 1].
    pub mean: [f64; 3],
    pub std: [f64; 3],
    /// Mean fraction of the canvas inside the item mask, and inside its box.
    pub object_fraction: f64,
    pub box_fraction: f64,
    /// Mean side of the pasted item, pixels.
    pub item_side: f64,
}

impl SceneStats {
    /// Measures scenes `indices` of `set`, generating them in parallel chunks of `chunk`;
    /// `on_chunk` receives the number of scenes done in each chunk (for progress bars).
    pub fn measure(set: &SceneSet, indices: &[usize], chunk: usize, mut on_chunk: impl FnMut(usize)) -> SceneStats {
        let plane = set.config.canvas * set.config.canvas;
        let (mut sum, mut sq) = ([0f64; 3], [0f64; 3]);
        let (mut object, mut boxed, mut side) = (0f64, 0f64, 0f64);
        for ids in indices.chunks(chunk.max(1)) {
            for scene in set.scenes(ids) {
                for (c, channel) in scene.image.chunks_exact(plane).enumerate() {
                    for &v in channel {
                        sum[c] += v as f64;
                        sq[c] += v as f64 * v as f64;
                    }
                }
                object += scene.mask.iter().filter(|&&m| m).count() as f64 / plane as f64;
                boxed += scene.bbox.map_or(0.0, |b| (b.width() * b.height()) as f64 / plane as f64);
                side += scene.placement.2 as f64;
            }
            on_chunk(ids.len());
        }
        let (n, px) = (indices.len().max(1) as f64, (indices.len().max(1) * plane) as f64);
        let mean = sum.map(|s| s / px);
        let std = [0, 1, 2].map(|c| (sq[c] / px - mean[c] * mean[c]).max(0.0).sqrt());
        SceneStats {
            scenes: indices.len(),
            mean,
            std,
            object_fraction: object / n,
            box_fraction: boxed / n,
            item_side: side / n,
        }
    }

    /// The normalisation that maps these scenes to zero mean and unit variance per channel.
    pub fn normalisation(&self) -> Normalisation {
        Normalisation { mean: self.mean.map(|v| v as f32), std: self.std.map(|v| v as f32) }
    }
}

#[cfg(test)]
mod tests;
