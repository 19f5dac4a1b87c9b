use super::*;
use crate::device::cpu;
use image::Rgb;
use std::fs;
use tempfile::TempDir;

fn write_solid(path: &Path, w: u32, h: u32, colour: [u8; 3]) {
    RgbImage::from_pixel(w, h, Rgb(colour)).save(path).unwrap();
}

fn write_list(dir: &TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("list.txt");
    fs::write(&path, text).unwrap();
    path
}

fn expected(colour: [u8; 3], norm: &Normalisation) -> [f32; 3] {
    std::array::from_fn(|c| (f32::from(colour[c]) / 255.0 - norm.mean[c]) / norm.std[c])
}

/// Checks that every pixel of a CHW image equals `colour` after normalisation.
fn assert_solid(chw: &[f32], colour: [u8; 3], norm: &Normalisation) {
    let plane = chw.len() / 3;
    let want = expected(colour, norm);
    for (c, channel) in chw.chunks_exact(plane).enumerate() {
        for &v in channel {
            assert!((v - want[c]).abs() < 1e-6, "channel {c}: {v} != {}", want[c]);
        }
    }
}

#[test]
fn csv_comma_form_with_header_and_comments() {
    let dir = TempDir::new().unwrap();
    let list = write_list(
        &dir,
        "# ImageNet val\nname,label\n\nILSVRC2012_val_00000001.JPEG,65\n  # indented comment\nsub/b.png , 3\n",
    );
    let images = dir.path().join("images");
    let l = ImageList::from_csv(&list, &images, IMAGENET_CLASSES).unwrap();
    assert_eq!(
        l.entries,
        vec![
            ImageEntry { path: images.join("ILSVRC2012_val_00000001.JPEG"), label: 65 },
            ImageEntry { path: images.join("sub/b.png"), label: 3 },
        ]
    );
    assert!(l.classes.is_empty());
    assert_eq!(l.len(), 2);
    assert!(!l.is_empty());
}

#[test]
fn csv_whitespace_form() {
    let dir = TempDir::new().unwrap();
    let list = write_list(&dir, "a.JPEG 0\nb.JPEG\t999\n");
    let l = ImageList::from_csv(&list, Path::new("/root"), IMAGENET_CLASSES).unwrap();
    assert_eq!(l.entries[0], ImageEntry { path: "/root/a.JPEG".into(), label: 0 });
    assert_eq!(l.entries[1], ImageEntry { path: "/root/b.JPEG".into(), label: 999 });
}

#[test]
fn csv_bad_label_names_the_line() {
    let dir = TempDir::new().unwrap();
    let list = write_list(&dir, "# c\na.png,1\nb.png,foo\n");
    match ImageList::from_csv(&list, dir.path(), IMAGENET_CLASSES) {
        Err(DataError::List { path, line, reason }) => {
            assert_eq!(path, list);
            assert_eq!(line, 3);
            assert!(reason.contains("integer label") && reason.contains("`foo`"), "{reason}");
        }
        other => panic!("expected a List error, got {other:?}"),
    }
}

/// A label of 10^12 parses as an integer; it is refused on its line, before any per-class count
/// is allocated, with the valid range.
#[test]
fn csv_label_outside_the_classes_names_the_line_value_and_range() {
    let dir = TempDir::new().unwrap();
    let list = write_list(&dir, "a.png,1\nb.png,1000000000000\n");
    match ImageList::from_csv(&list, dir.path(), IMAGENET_CLASSES) {
        Err(e @ DataError::List { .. }) => {
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("{}:2: label 1000000000000", list.display())), "{msg}");
            assert!(msg.contains("valid: 0 to 999 (0..1000") && msg.contains("Fix:"), "{msg}");
        }
        other => panic!("expected a List error, got {other:?}"),
    }
    let list = write_list(&dir, "a.png,2\n");
    assert!(ImageList::from_csv(&list, dir.path(), 2).is_err());
    assert_eq!(ImageList::from_csv(&list, dir.path(), 3).unwrap().entries[0].label, 2);
}

#[test]
fn csv_line_without_label_is_an_error() {
    let dir = TempDir::new().unwrap();
    let list = write_list(&dir, "a.png,1\nlonely\n");
    match ImageList::from_csv(&list, dir.path(), IMAGENET_CLASSES) {
        Err(DataError::List { line, reason, .. }) => {
            assert_eq!(line, 2);
            assert!(reason.contains("`lonely`"), "{reason}");
        }
        other => panic!("expected a List error, got {other:?}"),
    }
}

#[test]
fn csv_empty_list_is_an_error() {
    let dir = TempDir::new().unwrap();
    let list = write_list(&dir, "# nothing\n\nname,label\n");
    assert!(matches!(ImageList::from_csv(&list, dir.path(), IMAGENET_CLASSES), Err(DataError::List { .. })));
}

#[test]
fn csv_missing_list_file_is_io_error() {
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("nope.csv");
    match ImageList::from_csv(&missing, dir.path(), IMAGENET_CLASSES) {
        Err(DataError::Io { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected an Io error, got {other:?}"),
    }
}

#[test]
fn class_folders_sorted_labels_and_names() {
    let dir = TempDir::new().unwrap();
    for class in ["kitchen", "bar", "office"] {
        fs::create_dir(dir.path().join(class)).unwrap();
    }
    write_solid(&dir.path().join("kitchen/b.png"), 4, 4, [0, 0, 0]);
    write_solid(&dir.path().join("kitchen/a.PNG"), 4, 4, [0, 0, 0]);
    write_solid(&dir.path().join("bar/x.jpg"), 4, 4, [0, 0, 0]);
    write_solid(&dir.path().join("office/y.JPEG"), 4, 4, [0, 0, 0]);
    fs::write(dir.path().join("office/notes.txt"), "ignored").unwrap();
    fs::write(dir.path().join("README"), "ignored").unwrap();

    let l = ImageList::from_class_folders(dir.path()).unwrap();
    assert_eq!(l.classes, vec!["bar", "kitchen", "office"]);
    let got: Vec<(PathBuf, usize)> =
        l.entries.iter().map(|e| (e.path.strip_prefix(dir.path()).unwrap().into(), e.label)).collect();
    assert_eq!(
        got,
        vec![
            ("bar/x.jpg".into(), 0),
            ("kitchen/a.PNG".into(), 1),
            ("kitchen/b.png".into(), 1),
            ("office/y.JPEG".into(), 2),
        ]
    );
}

#[test]
fn class_folders_empty_class_is_named() {
    let dir = TempDir::new().unwrap();
    fs::create_dir(dir.path().join("full")).unwrap();
    fs::create_dir(dir.path().join("hollow")).unwrap();
    write_solid(&dir.path().join("full/a.png"), 2, 2, [1, 2, 3]);
    fs::write(dir.path().join("hollow/readme.txt"), "x").unwrap();
    let err = ImageList::from_class_folders(dir.path()).unwrap_err();
    assert!(matches!(err, DataError::Config { .. }));
    assert!(err.to_string().contains("hollow"), "{err}");
}

#[test]
fn class_folders_missing_root_and_no_classes() {
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("absent");
    match ImageList::from_class_folders(&missing) {
        Err(DataError::Io { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected an Io error, got {other:?}"),
    }
    fs::write(dir.path().join("loose.png"), "x").unwrap();
    assert!(matches!(ImageList::from_class_folders(dir.path()), Err(DataError::Config { .. })));
}

#[test]
fn squash_gives_output_size_and_exact_normalised_pixels() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("solid.png");
    let colour = [200, 100, 30];
    write_solid(&path, 40, 20, colour);
    let t = EvalTransform::Squash { size: 8 };
    assert_eq!(t.output_size(), 8);
    let chw = load_image(&path, t, &Normalisation::IMAGENET).unwrap();
    assert_eq!(chw.len(), 3 * 8 * 8);
    assert_solid(&chw, colour, &Normalisation::IMAGENET);
}

#[test]
fn default_transform_is_authors_squash_224() {
    assert_eq!(EvalTransform::default(), EvalTransform::Squash { size: 224 });
    assert_eq!(EvalTransform::default().output_size(), 224);
}

#[test]
fn resize_center_crop_takes_the_centre() {
    let dir = TempDir::new().unwrap();
    let (side, centre) = ([255, 0, 0], [0, 255, 0]);
    let norm = Normalisation { mean: [0.5; 3], std: [0.25; 3] };

    // Wide image: left and right thirds differ from the centre.
    let wide = RgbImage::from_fn(300, 100, |x, _| Rgb(if (100..200).contains(&x) { centre } else { side }));
    let wide_path = dir.path().join("wide.png");
    wide.save(&wide_path).unwrap();
    // Tall image: top and bottom thirds differ from the centre.
    let tall = RgbImage::from_fn(90, 270, |_, y| Rgb(if (90..180).contains(&y) { centre } else { side }));
    let tall_path = dir.path().join("tall.png");
    tall.save(&tall_path).unwrap();

    let t = EvalTransform::ResizeCenterCrop { resize: 32, crop: 16 };
    assert_eq!(t.output_size(), 16);
    for path in [wide_path, tall_path] {
        let chw = load_image(&path, t, &norm).unwrap();
        assert_eq!(chw.len(), 3 * 16 * 16);
        assert_solid(&chw, centre, &norm);
    }
}

#[test]
fn invalid_transform_is_a_config_error() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("a.png");
    write_solid(&path, 4, 4, [0, 0, 0]);
    for t in [EvalTransform::Squash { size: 0 }, EvalTransform::ResizeCenterCrop { resize: 8, crop: 9 }] {
        assert!(matches!(load_image(&path, t, &Normalisation::IMAGENET), Err(DataError::Config { .. })));
    }
}

#[test]
fn corrupt_file_is_a_decode_error_naming_the_path() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("broken.png");
    fs::write(&path, [0x13u8, 0x37, 0xde, 0xad, 0xbe, 0xef, 0x00, 0x42, 0x99, 0x01]).unwrap();
    match load_image(&path, EvalTransform::default(), &Normalisation::IMAGENET) {
        Err(err @ DataError::Decode { .. }) => {
            assert!(err.to_string().contains(&path.display().to_string()), "{err}")
        }
        other => panic!("expected a Decode error, got {other:?}"),
    }
}

#[test]
fn missing_image_is_an_io_error() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("absent.jpg");
    match load_image(&path, EvalTransform::default(), &Normalisation::IMAGENET) {
        Err(DataError::Io { path: p, .. }) => assert_eq!(p, path),
        other => panic!("expected an Io error, got {other:?}"),
    }
}

#[test]
fn load_batch_preserves_order_shapes_and_labels() {
    let dir = TempDir::new().unwrap();
    let colours = [[10, 20, 30], [40, 50, 60], [70, 80, 90], [250, 0, 128]];
    let mut lines = String::new();
    for (i, colour) in colours.iter().enumerate() {
        write_solid(&dir.path().join(format!("{i}.png")), 12, 9, *colour);
        lines.push_str(&format!("{i}.png,{}\n", 10 + i));
    }
    let list_path = dir.path().join("list.csv");
    fs::write(&list_path, lines).unwrap();
    let list = ImageList::from_csv(&list_path, dir.path(), IMAGENET_CLASSES).unwrap();

    let norm = Normalisation::IMAGENET;
    let t = EvalTransform::Squash { size: 5 };
    let order = [3, 0, 2];
    let (images, labels) = list.load_batch(&order, t, &norm, &cpu()).unwrap();
    assert_eq!(images.dims(), &[3, 3, 5, 5]);
    assert_eq!(images.dtype(), candle_core::DType::F32);
    assert_eq!(labels.dtype(), candle_core::DType::U32);
    assert_eq!(labels.to_vec1::<u32>().unwrap(), vec![13, 10, 12]);
    for (b, &i) in order.iter().enumerate() {
        let chw = images.get(b).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_solid(&chw, colours[i], &norm);
    }
}

#[test]
fn load_batch_reports_first_failing_image_in_index_order() {
    let dir = TempDir::new().unwrap();
    write_solid(&dir.path().join("ok.png"), 4, 4, [1, 2, 3]);
    fs::write(dir.path().join("bad.png"), b"not an image").unwrap();
    let list = ImageList {
        entries: vec![
            ImageEntry { path: dir.path().join("ok.png"), label: 0 },
            ImageEntry { path: dir.path().join("missing.png"), label: 1 },
            ImageEntry { path: dir.path().join("bad.png"), label: 2 },
        ],
        classes: Vec::new(),
    };
    let t = EvalTransform::Squash { size: 4 };
    let norm = Normalisation::IMAGENET;
    for _ in 0..5 {
        let err = list.load_batch(&[0, 2, 1], t, &norm, &cpu()).unwrap_err();
        assert!(matches!(err, DataError::Decode { ref path, .. } if path.ends_with("bad.png")), "{err}");
        let err = list.load_batch(&[1, 2], t, &norm, &cpu()).unwrap_err();
        assert!(matches!(err, DataError::Io { ref path, .. } if path.ends_with("missing.png")), "{err}");
    }
    assert!(matches!(list.load_batch(&[0, 3], t, &norm, &cpu()), Err(DataError::Config { .. })));
}
