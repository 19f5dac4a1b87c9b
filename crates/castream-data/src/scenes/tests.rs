use super::*;

/// A 28x28 item with a hand-made non-zero pattern (a ring plus a bar) and zero background.
fn item() -> Vec<u8> {
    let mut v = vec![0u8; 28 * 28];
    for y in 0..28 {
        for x in 0..28 {
            let (dx, dy) = (x as f32 - 13.5, y as f32 - 13.5);
            let r = (dx * dx + dy * dy).sqrt();
            if (6.0..10.0).contains(&r) || (x == 20 && y > 3 && y < 25) {
                v[y * 28 + x] = (40 + (x * 7 + y * 3) % 200) as u8;
            }
        }
    }
    v
}

fn gen(cfg: &SceneConfig, index: usize) -> Scene {
    generate(cfg, DatasetName::FashionMnist, Split::Train, index, &item(), 28, 3)
}

#[test]
fn same_inputs_give_identical_scenes_and_other_indices_differ() {
    let cfg = SceneConfig::default();
    assert_eq!(gen(&cfg, 5), gen(&cfg, 5));
    assert_ne!(gen(&cfg, 5).image, gen(&cfg, 6).image);
    let other_seed = SceneConfig { seed: 1, ..cfg.clone() };
    assert_ne!(gen(&cfg, 5).image, gen(&other_seed, 5).image);
    let test_split = generate(&cfg, DatasetName::FashionMnist, Split::Test, 5, &item(), 28, 3);
    assert_ne!(gen(&cfg, 5).image, test_split.image);
    assert!(gen(&cfg, 5).image.iter().all(|v| (0.0..=1.0).contains(v)));
}

#[test]
fn at_scale_one_the_mask_is_exactly_the_shifted_nonzero_pixels_of_the_item() {
    let cfg = SceneConfig { item_size: [28, 28], ..SceneConfig::default() };
    let src = item();
    for index in 0..20 {
        let s = gen(&cfg, index);
        let (x0, y0, side) = s.placement;
        assert_eq!(side, 28);
        let mut expected = vec![false; 64 * 64];
        for y in 0..28 {
            for x in 0..28 {
                expected[(y0 + y) * 64 + x0 + x] = src[y * 28 + x] > 0;
            }
        }
        assert_eq!(s.mask, expected, "scene {index}");
        // Tight box by brute force over the item's non-zero pixels.
        let nz: Vec<(usize, usize)> =
            (0..28 * 28).filter(|&i| src[i] > 0).map(|i| (x0 + i % 28, y0 + i / 28)).collect();
        let bbox = s.bbox.unwrap();
        assert_eq!(bbox.x0, nz.iter().map(|p| p.0).min().unwrap());
        assert_eq!(bbox.x1, nz.iter().map(|p| p.0).max().unwrap() + 1);
        assert_eq!(bbox.y0, nz.iter().map(|p| p.1).min().unwrap());
        assert_eq!(bbox.y1, nz.iter().map(|p| p.1).max().unwrap() + 1);
    }
}

#[test]
fn pixels_outside_the_mask_are_untouched_background() {
    // Re-draw the background from the same stream: outside the mask the scene equals it exactly,
    // and inside it the item changes the pixel wherever the tint differs from the background.
    let cfg = SceneConfig::default();
    for index in 0..10 {
        let s = gen(&cfg, index);
        let bg = background(&cfg, &mut scene_rng(cfg.seed, DatasetName::FashionMnist, Split::Train, index));
        let plane = 64 * 64;
        for p in 0..plane {
            let same = (0..3).all(|c| s.image[c * plane + p] == bg[c * plane + p]);
            if !s.mask[p] {
                assert!(same, "scene {index}: pixel {p} outside the mask differs from the background");
            }
        }
        assert_eq!(s.bbox, BBox::of_mask(&s.mask, 64));
        let (x0, y0, side) = s.placement;
        let b = s.bbox.unwrap();
        assert!(b.x0 >= x0 && b.y0 >= y0 && b.x1 <= x0 + side && b.y1 <= y0 + side);
    }
}

#[test]
fn scaled_items_stay_inside_the_canvas_with_the_configured_size() {
    let cfg = SceneConfig { item_size: [30, 50], ..SceneConfig::default() };
    for index in 0..50 {
        let (x0, y0, side) = gen(&cfg, index).placement;
        assert!((30..=50).contains(&side));
        assert!(x0 + side <= 64 && y0 + side <= 64);
    }
}

#[test]
fn box_of_mask_by_hand() {
    let mut mask = vec![false; 16];
    mask[5] = true; // (1, 1)
    mask[14] = true; // (2, 3)
    assert_eq!(BBox::of_mask(&mask, 4), Some(BBox { x0: 1, y0: 1, x1: 3, y1: 4 }));
    assert_eq!(BBox::of_mask(&[false; 16], 4), None);
}

#[test]
fn scene_stats_match_a_direct_computation() {
    let items: Vec<u8> = (0..3).flat_map(|_| item()).collect();
    let source = LabelledImages {
        images: items,
        labels: vec![0, 1, 2],
        rows: 28,
        cols: 28,
        classes: 3,
        sha256: String::new(),
        files: crate::labelled::SplitFiles { images: "i".into(), labels: "l".into() },
    };
    let set = SceneSet::new(source, DatasetName::FashionMnist, Split::Test, SceneConfig::default()).unwrap();
    let stats = SceneStats::measure(&set, &[0, 2], 1, |_| {});
    let scenes = [set.scene(0), set.scene(2)];
    let red: Vec<f64> = scenes.iter().flat_map(|s| s.image[..64 * 64].iter().map(|&v| v as f64)).collect();
    let mean = red.iter().sum::<f64>() / red.len() as f64;
    let var = red.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / red.len() as f64;
    assert!((stats.mean[0] - mean).abs() < 1e-9 && (stats.std[0] - var.sqrt()).abs() < 1e-6);
    let side = (scenes[0].placement.2 + scenes[1].placement.2) as f64 / 2.0;
    assert_eq!(stats.item_side, side);
    assert_eq!(stats.scenes, 2);
}

#[test]
fn hsv_primaries() {
    assert_eq!(hsv(0.0, 1.0, 1.0), [1.0, 0.0, 0.0]);
    assert_eq!(hsv(1.0 / 3.0, 1.0, 1.0), [0.0, 1.0, 0.0]);
    assert_eq!(hsv(2.0 / 3.0, 1.0, 0.5), [0.0, 0.0, 0.5]);
    assert_eq!(hsv(0.3, 0.0, 0.7), [0.7, 0.7, 0.7]);
}

#[test]
fn invalid_ranges_name_the_field() {
    let cfg = SceneConfig { item_size: [40, 80], ..SceneConfig::default() };
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("scenes.item_size"), "{err}");
    let cfg = SceneConfig { tint_value: [0.9, 0.2], ..SceneConfig::default() };
    assert!(cfg.validate().unwrap_err().to_string().contains("scenes.tint_value"));
}
