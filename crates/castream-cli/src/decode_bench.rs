//! `castream bench --decode`: how fast image files become training and evaluation batches on this
//! machine (JPEG decode, random-resized crop or squash, normalisation, in parallel), the CPU side
//! that bounds stream training on ImageNet however fast the GPU is. Synthetic photo-like JPEGs of
//! ImageNet's typical size (500x375, quality 90) are written to a temporary folder and read back.

use anyhow::Result;
use castream_data::device::cpu;
use castream_data::image_folder::{EvalTransform, ImageEntry, ImageList};
use castream_data::train_transform::TrainTransform;
use castream_data::Normalisation;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Images decoded per timed call.
const BATCH: usize = 64;

pub fn run(runs: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let entries = (0..BATCH)
        .map(|i| {
            // Smooth colour fields with grain: JPEG work close to a photograph's.
            let (a, b) = (rng.random_range(0.0..6.0f32), rng.random_range(0.0..6.0f32));
            let img = image::RgbImage::from_fn(500, 375, |x, y| {
                let (u, v) = (x as f32 / 500.0, y as f32 / 375.0);
                let c = |p: f32| ((p.sin() * 0.5 + 0.5) * 220.0) as u8;
                image::Rgb(
                    [c(a * u + v), c(b * v - u), c(a * b * u * v)].map(|p| p.saturating_add(rng.random_range(0..24))),
                )
            });
            let path = dir.path().join(format!("{i}.JPEG"));
            let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut file, 90).encode_image(&img)?;
            Ok(ImageEntry { path, label: 0 })
        })
        .collect::<Result<Vec<_>>>()?;
    let list = ImageList { entries, classes: Vec::new() };
    let ids: Vec<usize> = (0..BATCH).collect();
    let seeds: Vec<u64> = (0..BATCH as u64).collect();
    let norm = Normalisation::IMAGENET;
    let threads = rayon::current_num_threads();
    println!(
        "Decoding {BATCH} JPEGs of 500x375 per call, {threads} threads, median of {runs} calls after a warm-up:\n"
    );
    println!("| transform | images/s | images/s per thread |\n|---|---:|---:|");
    let time = |label: &str, f: &dyn Fn() -> Result<()>| -> Result<()> {
        f()?;
        let mut t: Vec<f64> = (0..runs.max(1))
            .map(|_| {
                let start = std::time::Instant::now();
                f().map(|_| start.elapsed().as_secs_f64())
            })
            .collect::<Result<_>>()?;
        t.sort_by(f64::total_cmp);
        let rate = BATCH as f64 / t[t.len() / 2];
        println!("| {label} | {rate:.0} | {:.0} |", rate / threads as f64);
        Ok(())
    };
    let train = TrainTransform::default();
    time("random-resized crop 224 + flip (training)", &|| {
        list.load_train_batch(&ids, &train, &seeds, &norm, &cpu()).map(|_| ()).map_err(Into::into)
    })?;
    time("squash 224 (evaluation)", &|| {
        list.load_batch(&ids, EvalTransform::default(), &norm, &cpu()).map(|_| ()).map_err(Into::into)
    })?;
    Ok(())
}
