//! Scoring one batch of maps by every metric a cell asks for, each group computing what it needs
//! once: the confidences on the explanation image (AD, AG, AI and ADCC's drop), the causal curves
//! (insertion; deletion and AOPC), the ROAD imputations, the source's maps of perturbed images
//! (max-sensitivity) and of the explanation image (coherency), and the object boxes.

use anyhow::{ensure, Context, Result};
use candle_core::Tensor;
use castream_cam::Subject;
use castream_metrics::adcc::{adcc, coherency, complexity};
use castream_metrics::causal::{aopc, auc, causal_curves, CausalMode};
use castream_metrics::confidence::{class_probabilities, confidence, explanation_images, Confidence};
use castream_metrics::localisation::{box_iou, energy_in_box, pointing_hit, pointing_tolerance, DEFAULT_IOU_THRESHOLD};
use castream_metrics::metric::{Group, Metric, PerImage};
use castream_metrics::road::{fractions, road_probabilities, RoadOrder};
use castream_metrics::sensitivity::max_sensitivity;

use super::{Evaluation, Salt, Source};

/// Appends `values` to `metric`'s column if the cell computes it.
fn put(out: &mut PerImage, metric: Metric, values: impl IntoIterator<Item = f64>) {
    if let Some(dst) = out.get_mut(&metric) {
        dst.extend(values);
    }
}

impl Evaluation<'_> {
    /// Scores the images `ids` given `source`'s maps `(B, h, w)` of them, appending to `out`.
    pub(super) fn score_batch(
        &self,
        subject: &Subject,
        source: Source,
        maps: &Tensor,
        ids: &[usize],
        out: &mut PerImage,
    ) -> Result<()> {
        let norm = subject.normalisation;
        let (x, y) = self.set.batch(ids, &norm, &self.device)?;
        let classes = self.protocol.class.resolve(subject, &x, &y.to_vec1()?)?;
        let (_, _, h, w) = x.dims4()?;
        // Exactly the upsampling `explain` applies, so cached and fresh maps score the same.
        let maps = castream_cam::upsample(maps, h, w)?;
        // The source's maps of other inputs, for the same images and classes.
        let mut reexplain = |input: &Tensor| -> Result<Tensor> {
            Ok(castream_cam::upsample(&self.batch_maps(subject, source, input, &classes, ids)?, h, w)?)
        };
        let groups: Vec<Group> = out.keys().map(|m| m.group()).collect();
        let wants = |group: Group| groups.contains(&group);
        let (adcc_wanted, localisation_wanted) = (wants(Group::Adcc), wants(Group::Localisation));
        // The explanation image x·S and the drops, shared by the confidences and ADCC.
        let explained = if wants(Group::Confidence) || adcc_wanted {
            let explained = explanation_images(&x, &maps, &norm)?;
            let y = class_probabilities(&subject.logits(&x)?, &classes)?;
            let o = class_probabilities(&subject.logits(&explained)?, &classes)?;
            let Confidence { drop, gain, increase } = confidence(&y, &o);
            put(out, Metric::AverageGain, gain);
            put(out, Metric::AverageIncrease, increase);
            put(out, Metric::AverageDrop, drop.iter().copied());
            Some((explained, drop))
        } else {
            None
        };
        self.causal(subject, &x, &maps, &classes, out)?;
        if wants(Group::Road) {
            self.road(subject, &x, &maps, &classes, ids, out)?;
        }
        if wants(Group::Robustness) {
            let seeds: Vec<u64> = ids.iter().map(|&i| self.image_seed(i, Salt::Sensitivity)).collect();
            let scoring = &self.protocol.scoring;
            let options = (scoring.sensitivity_radius, scoring.sensitivity_samples);
            put(out, Metric::MaxSensitivity, max_sensitivity(&mut reexplain, &x, &maps, &norm, options, &seeds)?);
        }
        if !adcc_wanted && !localisation_wanted {
            return Ok(());
        }
        let flat: Vec<Vec<f32>> = maps.flatten_from(1)?.to_vec2()?;
        if let (true, Some((explained, drops))) = (adcc_wanted, &explained) {
            let again: Vec<Vec<f32>> = reexplain(explained)?.flatten_from(1)?.to_vec2()?;
            let terms: Vec<(f64, f64, f64)> = flat
                .iter()
                .zip(&again)
                .zip(drops)
                .map(|((a, b), &d)| (coherency(a, b), complexity(a), d / 100.0))
                .collect();
            put(out, Metric::Coherency, terms.iter().map(|t| 100.0 * t.0));
            put(out, Metric::Complexity, terms.iter().map(|t| 100.0 * t.1));
            put(out, Metric::Adcc, terms.iter().map(|&(c, x, d)| 100.0 * adcc(c, x, d)));
        }
        if localisation_wanted {
            ensure!(h == w, "localisation needs square images, got {h}x{w}");
            for (map, &i) in flat.iter().zip(ids) {
                let bbox = self.set.bbox(i).with_context(|| {
                    format!(
                        "image #{i} of {} has no object box; localisation metrics need one per image",
                        self.set.describe()
                    )
                })?;
                put(
                    out,
                    Metric::Pointing,
                    [if pointing_hit(map, w, &bbox, pointing_tolerance(w)) { 100.0 } else { 0.0 }],
                );
                put(out, Metric::Energy, [100.0 * energy_in_box(map, w, &bbox)]);
                put(out, Metric::Iou, [100.0 * box_iou(map, w, &bbox, DEFAULT_IOU_THRESHOLD)]);
            }
        }
        Ok(())
    }

    /// Insertion (AUC), deletion (AUC and AOPC): each curve computed once, if any of its metrics is wanted.
    fn causal(&self, subject: &Subject, x: &Tensor, maps: &Tensor, classes: &[u32], out: &mut PerImage) -> Result<()> {
        /// A metric and how it summarises a curve.
        type Summary = (Metric, fn(&[f64]) -> f64);
        let summaries: [(CausalMode, &[Summary]); 2] = [
            (CausalMode::Insertion, &[(Metric::Insertion, auc)]),
            (CausalMode::Deletion, &[(Metric::Deletion, auc), (Metric::Aopc, aopc)]),
        ];
        for (mode, summaries) in summaries {
            if !summaries.iter().any(|(m, _)| out.contains_key(m)) {
                continue;
            }
            let mut score = |b: &Tensor| subject.logits(b);
            let (variant, blur) = (self.protocol.causal.variant(), self.protocol.blur);
            let curves = causal_curves(&mut score, x, maps, classes, mode, variant, blur, self.batch_size)?;
            for &(metric, summary) in summaries {
                put(out, metric, curves.iter().map(|c| 100.0 * summary(c)));
            }
        }
        Ok(())
    }

    /// ROAD: the mean class probability over the removal fractions, most and least relevant first,
    /// and half their difference (pytorch-grad-cam's `ROADCombined`).
    fn road(
        &self,
        subject: &Subject,
        x: &Tensor,
        maps: &Tensor,
        classes: &[u32],
        ids: &[usize],
        out: &mut PerImage,
    ) -> Result<()> {
        let scoring = &self.protocol.scoring;
        let percents = fractions(scoring.road_step);
        let seeds: Vec<u64> = ids.iter().map(|&i| self.image_seed(i, Salt::Road)).collect();
        let mean = |order| -> Result<Vec<f64>> {
            let mut score = |b: &Tensor| subject.logits(b);
            let probs = road_probabilities(
                &mut score,
                x,
                maps,
                classes,
                &percents,
                order,
                scoring.road_noise,
                &seeds,
                self.batch_size,
            )?;
            Ok(probs.iter().map(|p| 100.0 * p.iter().sum::<f64>() / p.len() as f64).collect())
        };
        // Each order only where a wanted metric reads it: it is the costliest of the metrics.
        let combined = out.contains_key(&Metric::Road);
        let morf = if combined || out.contains_key(&Metric::RoadMorf) {
            Some(mean(RoadOrder::MostRelevantFirst)?)
        } else {
            None
        };
        let lerf = if combined || out.contains_key(&Metric::RoadLerf) {
            Some(mean(RoadOrder::LeastRelevantFirst)?)
        } else {
            None
        };
        if let (Some(morf), Some(lerf)) = (&morf, &lerf) {
            put(out, Metric::Road, morf.iter().zip(lerf).map(|(m, l)| (l - m) / 2.0));
        }
        put(out, Metric::RoadMorf, morf.into_iter().flatten());
        put(out, Metric::RoadLerf, lerf.into_iter().flatten());
        Ok(())
    }
}
