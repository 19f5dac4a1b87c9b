//! Checks of a profile's settings that the TOML types cannot express, before any work: value
//! ranges, list entries that do not fit together, keys the spec's target does not read. Errors
//! name the file, the line, the key, the valid values and the fix.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use castream_cam::{Method, PoolingKind};
use castream_data::valid::OutOfRange;
use castream_metrics::Metric;
use toml::Spanned;

use super::{Profile, Settings, Target};

/// Where settings came from, for messages.
pub struct Place<'a> {
    pub path: &'a Path,
    pub text: &'a str,
    pub profile: Profile,
}

impl Place<'_> {
    /// `file:line: [profile] key` for a value at byte `offset` (0 when it was not in the file).
    fn at(&self, offset: usize, key: &str) -> String {
        let line = self.text.get(..offset).map_or(1, |t| t.matches('\n').count() + 1);
        if offset == 0 {
            format!("{}: [{}] {key}", self.path.display(), self.profile)
        } else {
            format!("{}:{line}: [{}] {key}", self.path.display(), self.profile)
        }
    }
}

impl Place<'_> {
    /// Byte offset of the value of the dotted `key` in this profile's table (0 when the file does
    /// not set it: a default), found in the file's syntax tree whether the key is written in a
    /// `[quick.stream.train]` table, dotted or in an inline table.
    fn offset_of(&self, key: &str) -> usize {
        let Ok(root) = toml::de::DeTable::parse(self.text) else { return 0 };
        let mut table = root.get_ref();
        let mut offset = 0;
        for part in std::iter::once(self.profile.key()).chain(key.split('.')) {
            let Some((_, value)) = table.iter().find(|(k, _)| k.get_ref() == part) else { return 0 };
            offset = value.span().start;
            match value.get_ref().as_table() {
                Some(t) => table = t,
                None => break,
            }
        }
        offset
    }

    /// `file:line: [profile] key = value: out of range; valid: …. Fix: …` for a value a type's
    /// `validate()` refused.
    fn out_of_range(&self, e: &OutOfRange) -> anyhow::Error {
        let leaf = e.key.rsplit('.').next().unwrap_or(&e.key);
        anyhow!(
            "{} = {}: out of range; valid: {}. Fix: e.g. {leaf} = {}",
            self.at(self.offset_of(&e.key), &e.key),
            e.value,
            e.valid,
            e.example
        )
    }
}

pub fn settings(s: &Settings, target: Target, place: &Place) -> Result<()> {
    s.scenes.validate().with_context(|| format!("{}: in [{}]", place.path.display(), place.profile))?;
    s.validate().map_err(|e| place.out_of_range(&e))?;
    if s.batch_size == 0 {
        bail!("{}: must be at least 1; Fix: e.g. batch_size = 64", place.at(0, "batch_size"));
    }
    let layer = *s.layer.get_ref();
    if !(1..=4).contains(&layer) {
        bail!(
            "{} = {layer}: not a stage; valid: 1, 2, 3 or 4 (F_4, the last stage, is the paper's). Fix: layer = 4",
            place.at(s.layer.span().start, "layer")
        );
    }
    if target == Target::Interpretability {
        interpretability(s, place)
    } else {
        only_for_interpretability(s, target, place)
    }
}

fn interpretability(s: &Settings, place: &Place) -> Result<()> {
    if s.methods.is_empty() && s.attention.is_empty() && s.baselines.is_empty() {
        bail!(
            "{}: lists no saliency source; Fix: list methods (one of {}), attention or baselines",
            place.at(0, "methods"),
            Method::keys()
        );
    }
    if s.metrics.is_empty() {
        bail!("{}: lists no metric; Fix: list some of {}", place.at(0, "metrics"), Metric::keys());
    }
    if s.poolings.is_empty() {
        bail!("{}: lists no pooling; Fix: poolings = [\"gap\", \"ca\"]", place.at(0, "poolings"));
    }
    for m in &s.methods {
        let method = *m.get_ref();
        if !s.poolings.iter().any(|&p| method.applies_to(p)) {
            let valid: Vec<&str> = Method::ALL
                .into_iter()
                .filter(|m| s.poolings.iter().any(|&p| m.applies_to(p)))
                .map(Method::key)
                .collect();
            bail!(
                "{} = \"{}\": applies to none of poolings = [{}] ({}); valid here: {}. Fix: remove it or add the pooling it needs",
                place.at(m.span().start, "methods"),
                method.key(),
                keys(&s.poolings),
                needs(method),
                valid.join(", ")
            );
        }
        if method == Method::Cam && *s.layer.get_ref() != 4 {
            bail!(
                "{} = \"cam\": CAM reads the classifier's weights, so it explains layer 4 only (layer = {}). Fix: use \
                 grad-cam, which equals CAM at layer 4, or set layer = 4",
                place.at(m.span().start, "methods"),
                s.layer.get_ref()
            );
        }
    }
    if !s.attention.is_empty() && !s.poolings.contains(&PoolingKind::Ca) {
        bail!("{}: raw attention exists only in the CA model; Fix: add \"ca\" to poolings", place.at(0, "attention"));
    }
    duplicates(&s.methods, "methods", place)?;
    duplicates(&s.metrics, "metrics", place)
}

fn duplicates<T: PartialEq + Copy + Into<&'static str>>(list: &[Spanned<T>], key: &str, place: &Place) -> Result<()> {
    for (i, a) in list.iter().enumerate() {
        if list[..i].iter().any(|b| b.get_ref() == a.get_ref()) {
            bail!("{} = \"{}\": listed twice; Fix: remove one", place.at(a.span().start, key), (*a.get_ref()).into());
        }
    }
    Ok(())
}

fn keys(poolings: &[PoolingKind]) -> String {
    poolings.iter().map(|p| format!("\"{}\"", p.key())).collect::<Vec<_>>().join(", ")
}

fn needs(method: Method) -> &'static str {
    match method.info().needs {
        castream_cam::methods::Needs::Activations => "any network",
        castream_cam::methods::Needs::LinearGapHead => "it needs the GAP network's linear head: \"gap\"",
        castream_cam::methods::Needs::Attention => "it needs the CA model's attention: \"ca\"",
    }
}

/// The interpretability keys are read by `target = "interpretability"` only: elsewhere a value
/// there would be ignored silently.
fn only_for_interpretability(s: &Settings, target: Target, place: &Place) -> Result<()> {
    let d = Settings::default();
    let set = [
        ("poolings", s.poolings != d.poolings),
        ("methods", !s.methods.is_empty()),
        ("attention", !s.attention.is_empty()),
        ("baselines", !s.baselines.is_empty()),
        ("metrics", !s.metrics.is_empty()),
        ("layer", s.layer != d.layer),
        ("sanity", s.sanity),
        ("paper", s.paper.is_some()),
    ];
    if let Some((key, _)) = set.iter().find(|(_, is_set)| *is_set) {
        let target = serde_json::to_value(target).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        bail!(
            "{}: read only by target = \"interpretability\", not by target = \"{target}\"; Fix: remove it",
            place.at(0, key)
        );
    }
    Ok(())
}
