//! Saliency overlays: a colour map (jet by default, as pytorch-grad-cam's `show_cam_on_image`)
//! blended on the image.

/// The jet colour map (dark blue, blue, cyan, yellow, red, dark red) of a value in [0, 1]: MATLAB's
/// piecewise-linear definition, knots at 1/8, 3/8, 5/8, 7/8.
pub fn jet(v: f32) -> [f32; 3] {
    let v = v.clamp(0.0, 1.0);
    let ramp = |centre: f32| (1.5 - (4.0 * v - centre).abs()).clamp(0.0, 1.0);
    [ramp(3.0), ramp(2.0), ramp(1.0)]
}

/// A row-major map with values in [0, 1] as a CHW image in the colour map `colour` (e.g. [`jet`]).
pub fn heatmap(map: &[f32], colour: impl Fn(f32) -> [f32; 3]) -> Vec<f32> {
    let plane = map.len();
    let mut rgb = vec![0.0; 3 * plane];
    for (i, &v) in map.iter().enumerate() {
        let [r, g, b] = colour(v);
        (rgb[i], rgb[plane + i], rgb[2 * plane + i]) = (r, g, b);
    }
    rgb
}

/// The CHW image `rgb` (values in [0, 1]) under the colour map of `map`: `image_weight * rgb +
/// (1 - image_weight) * colour(map)`, per pixel.
pub fn blend(rgb: &[f32], map: &[f32], image_weight: f32, colour: impl Fn(f32) -> [f32; 3]) -> Vec<f32> {
    assert_eq!(rgb.len(), 3 * map.len(), "the image must be CHW with the map's height and width");
    heatmap(map, colour)
        .iter()
        .zip(rgb)
        .map(|(h, x)| image_weight * x.clamp(0.0, 1.0) + (1.0 - image_weight) * h)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jet_has_its_colours_at_the_knots() {
        assert_eq!(jet(0.0), [0.0, 0.0, 0.5]);
        assert_eq!(jet(0.125), [0.0, 0.0, 1.0]);
        assert_eq!(jet(0.375), [0.0, 1.0, 1.0]);
        assert_eq!(jet(0.625), [1.0, 1.0, 0.0]);
        assert_eq!(jet(0.875), [1.0, 0.0, 0.0]);
        assert_eq!(jet(1.0), [0.5, 0.0, 0.0]);
        assert_eq!(jet(-3.0), jet(0.0));
    }

    #[test]
    fn blend_mixes_image_and_colour_per_pixel() {
        // Two pixels: map 1 (dark red) over white, map 0 (dark blue) over black.
        let rgb = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0];
        let got = blend(&rgb, &[1.0, 0.0], 0.5, jet);
        assert_eq!(got, vec![0.75, 0.0, 0.5, 0.0, 0.5, 0.25]);
    }
}
