//! Recognition: per-image correctness of a GAP network and of CA models on the same backbone.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use castream_data::progress;
use castream_data::images::EvalImages;
use castream_data::Normalisation;
use castream_stream::CaModel;

/// Per-image correctness (1 or 0) on the images `ids` of the GAP network and of each CA model,
/// which must all share one backbone: the backbone runs once per batch.
pub fn correctness(
    models: &[&CaModel],
    set: &dyn EvalImages,
    ids: &[usize],
    norm: &Normalisation,
    batch: usize,
    device: &Device,
    label: &str,
) -> Result<(Vec<f64>, Vec<Vec<f64>>)> {
    let first = models.first().context("no model to evaluate")?;
    let (mut gap, mut ca) = (Vec::new(), vec![Vec::new(); models.len()]);
    let hits = |logits: &Tensor, y: &Tensor| -> Result<Vec<f64>> {
        Ok(logits.argmax(1)?.eq(y)?.to_dtype(DType::U8)?.to_vec1::<u8>()?.into_iter().map(f64::from).collect())
    };
    let bar = progress::bar(ids.len() as u64, format!("{label}: evaluating"));
    for chunk in ids.chunks(batch.max(1)) {
        let (x, y) = set.batch(chunk, norm, device)?;
        let features = first.backbone.net.stages(&x, false)?;
        gap.extend(hits(&first.backbone.net.head(&features[4])?, &y)?);
        for (m, out) in models.iter().zip(&mut ca) {
            out.extend(hits(&m.logits_from_features(&features)?.0, &y)?);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok((gap, ca))
}
