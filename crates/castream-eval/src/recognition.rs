//! Recognition: per-image correctness of a GAP network and of CA models on the same backbone.

use anyhow::{Context, Result};
use candle_core::{DType, Tensor};
use castream_data::progress;
use castream_data::Normalisation;
use castream_stream::CaModel;

use crate::Evaluation;

impl Evaluation<'_> {
    /// Per-image correctness (1 or 0) on [`Evaluation::ids`] of the GAP network and of each CA
    /// model, which must all share one backbone: the backbone runs once per batch. `weights`
    /// identifies the models in the cell's identity (the backbone's SHA-256, then each stream's).
    pub fn correctness(
        &self,
        models: &[&CaModel],
        norm: &Normalisation,
        weights: &[String],
        label: &str,
    ) -> Result<(Vec<f64>, Vec<Vec<f64>>)> {
        let first = models.first().context("no model to evaluate")?;
        let images = serde_json::value::RawValue::from_string(self.set.identity())?;
        let inputs = ("recognition", weights, images);
        let hits = |logits: &Tensor, y: &Tensor| -> Result<Vec<f64>> {
            Ok(logits.argmax(1)?.eq(y)?.to_dtype(DType::U8)?.to_vec1::<u8>()?.into_iter().map(f64::from).collect())
        };
        let compute = |ids: &[usize]| -> Result<Vec<Vec<f64>>> {
            // Column 0: the GAP network; then one per CA model.
            let mut columns = vec![Vec::new(); 1 + models.len()];
            let bar = progress::bar(ids.len() as u64, format!("{label}: evaluating"));
            for chunk in ids.chunks(self.batch_size.max(1)) {
                let (x, y) = self.set.batch(chunk, norm, &self.device)?;
                let features = first.backbone.net.stages(&x, false)?;
                columns[0].extend(hits(&first.backbone.net.head(&features[4])?, &y)?);
                for (m, out) in models.iter().zip(&mut columns[1..]) {
                    out.extend(hits(&m.logits_from_features(&features)?.0, &y)?);
                }
                bar.inc(chunk.len() as u64);
            }
            bar.finish_and_clear();
            Ok(columns)
        };
        let mut columns =
            self.sharding.cell(&format!("{label}: recognition"), &inputs, self.ids, self.batch_size, compute)?;
        // An empty shard part has no columns at all.
        columns.resize(1 + models.len(), Vec::new());
        let ca = columns.split_off(1);
        Ok((columns.remove(0), ca))
    }
}
