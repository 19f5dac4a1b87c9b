//! Localisation metrics of a single saliency map against the object's box or mask: pointing game,
//! energy inside the object, and IoU of the binarised map with the box. Maps are row-major `h x w`
//! slices at the input resolution; `h` is implied by `map.len() / w`.
//!
//! # Panics
//! Every function panics if the map is not a whole number of rows of width `w` (or, for masks, if mask
//! and map differ in length): a shape mismatch is a caller bug, not a data condition.

use castream_data::scenes::BBox;

/// Binarisation threshold of [`box_iou`], as a fraction of the map's maximum. Half the peak is our
/// choice (the paper gives none): CAM's 20% and Grad-CAM's 15% were for drawing one tight box around
/// the largest component, and on a pixel-set IoU they reward maps that spill over the whole image.
pub const DEFAULT_IOU_THRESHOLD: f64 = 0.5;

fn check(map: &[f32], w: usize) {
    assert!(
        map.len().checked_rem(w) == Some(0),
        "localisation: a map of {} values is not whole rows of width {w}",
        map.len()
    );
}

fn in_box(i: usize, w: usize, bbox: &BBox) -> bool {
    let (x, y) = (i % w, i / w);
    (bbox.x0..bbox.x1).contains(&x) && (bbox.y0..bbox.y1).contains(&y)
}

/// The pointing-game tolerance for a `side x side` input: 15 pixels at 224, scaled with the side.
pub fn pointing_tolerance(side: usize) -> f64 {
    15.0 * side as f64 / 224.0
}

/// Whether the map's maximum (the first one in row-major order on ties) lies within Euclidean distance
/// `tolerance` pixels of the box (distance 0 inside it). An empty map or box never hits.
pub fn pointing_hit(map: &[f32], w: usize, bbox: &BBox, tolerance: f64) -> bool {
    check(map, w);
    if map.is_empty() || bbox.width() == 0 || bbox.height() == 0 {
        return false;
    }
    let peak = (1..map.len()).fold(0, |best, i| if map[i] > map[best] { i } else { best });
    let (x, y) = (peak % w, peak / w);
    let gap = |v: usize, lo: usize, hi: usize| lo.saturating_sub(v).max(v.saturating_sub(hi - 1)) as f64;
    gap(x, bbox.x0, bbox.x1).hypot(gap(y, bbox.y0, bbox.y1)) <= tolerance
}

/// Fraction of the saliency mass (negative values counted as 0) inside `mask`; 0 for a map without
/// positive mass.
pub fn energy_in_mask(map: &[f32], mask: &[bool]) -> f64 {
    assert_eq!(map.len(), mask.len(), "energy: map and mask differ in size");
    let (mut inside, mut total) = (0.0f64, 0.0f64);
    for (&v, &m) in map.iter().zip(mask) {
        let v = v.max(0.0) as f64;
        total += v;
        if m {
            inside += v;
        }
    }
    if total > 0.0 {
        inside / total
    } else {
        0.0
    }
}

/// Fraction of the saliency mass (negative values counted as 0) inside the box; 0 for a map without
/// positive mass.
pub fn energy_in_box(map: &[f32], w: usize, bbox: &BBox) -> f64 {
    check(map, w);
    let mask: Vec<bool> = (0..map.len()).map(|i| in_box(i, w, bbox)).collect();
    energy_in_mask(map, &mask)
}

/// IoU between the pixels where `map >= threshold * max(map)` and the box's pixels inside the image. A
/// map without a positive maximum selects nothing and scores 0.
pub fn box_iou(map: &[f32], w: usize, bbox: &BBox, threshold: f64) -> f64 {
    check(map, w);
    let max = map.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    if max.is_nan() || max <= 0.0 {
        return 0.0;
    }
    let cut = threshold * max as f64;
    let (mut inter, mut union) = (0usize, 0usize);
    for (i, &v) in map.iter().enumerate() {
        let (selected, boxed) = (v as f64 >= cut, in_box(i, w, bbox));
        inter += (selected && boxed) as usize;
        union += (selected || boxed) as usize;
    }
    if union == 0 {
        0.0
    } else {
        inter as f64 / union as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: BBox = BBox { x0: 1, y0: 1, x1: 3, y1: 3 };

    fn peak_at(x: usize, y: usize) -> Vec<f32> {
        let mut m = vec![0.1; 36];
        m[y * 6 + x] = 1.0;
        m
    }

    #[test]
    fn pointing_inside_near_and_far() {
        assert!(pointing_hit(&peak_at(2, 2), 6, &B, 0.0));
        // (5, 0) to the nearest box pixel (2, 1): sqrt(3² + 1²) = 3.162.
        assert!(!pointing_hit(&peak_at(5, 0), 6, &B, 3.1));
        assert!(pointing_hit(&peak_at(5, 0), 6, &B, 3.2));
        // (0, 4) to (1, 2): sqrt(1 + 4) = 2.236.
        assert!(!pointing_hit(&peak_at(0, 4), 6, &B, 2.2) && pointing_hit(&peak_at(0, 4), 6, &B, 2.3));
        // Tied maxima: the first in row-major order (outside) decides.
        let mut tie = peak_at(0, 0);
        tie[2 * 6 + 2] = 1.0;
        assert!(!pointing_hit(&tie, 6, &B, 0.0));
        assert_eq!((pointing_tolerance(224), pointing_tolerance(112)), (15.0, 7.5));
    }

    #[test]
    #[should_panic(expected = "whole rows")]
    fn ragged_maps_panic() {
        pointing_hit(&[0.0; 7], 3, &B, 1.0);
    }

    #[test]
    fn energy_counts_positive_mass_inside() {
        // 3x3; the box covers columns 1..3 of rows 0..2: 2 + 3 + 5 + 6 = 16 of 1 + ... + 8 = 36 (-9 is 0).
        let map = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, -9.0];
        let bbox = BBox { x0: 1, y0: 0, x1: 3, y1: 2 };
        assert!((energy_in_box(&map, 3, &bbox) - 16.0 / 36.0).abs() < 1e-12);
        let mask = [true, false, false, false, false, false, false, true, true];
        assert!((energy_in_mask(&map, &mask) - 9.0 / 36.0).abs() < 1e-12);
        assert_eq!(energy_in_box(&[0.0; 9], 3, &bbox), 0.0);
    }

    #[test]
    fn iou_of_a_thresholded_map_with_the_box() {
        // 4x4, box = the 2x2 block at (1..3, 1..3). Pixels >= 0.5 * 0.8: the 3 marked values.
        #[rustfmt::skip]
        let map = [
            0.0, 0.0, 0.0, 0.0,
            0.0, 0.8, 0.45, 0.0,
            0.0, 0.1, 0.0, 0.5,
            0.0, 0.0, 0.0, 0.0,
        ];
        // Selected: (1,1), (2,1), (3,2); inside the box: 2. Union: 4 box + 1 outside = 5.
        assert!((box_iou(&map, 4, &B, 0.5) - 2.0 / 5.0).abs() < 1e-12);
        // Threshold 0.9: only the peak, inside the box: 1 / 4.
        assert!((box_iou(&map, 4, &B, 0.9) - 0.25).abs() < 1e-12);
        assert_eq!(box_iou(&[0.0; 16], 4, &B, DEFAULT_IOU_THRESHOLD), 0.0);
        // A box reaching past the image is clipped to it: 2x2 visible pixels, all selected.
        let wide = BBox { x0: 2, y0: 2, x1: 9, y1: 9 };
        let corner: Vec<f32> = (0..16).map(|i| if i % 4 >= 2 && i / 4 >= 2 { 1.0 } else { 0.0 }).collect();
        assert_eq!(box_iou(&corner, 4, &wide, 0.5), 1.0);
    }
}
