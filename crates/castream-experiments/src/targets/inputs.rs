//! What a spec needs before it can run: data where the spec says, shipped backbones, trained
//! streams (named with the recipe that trains them). `pending` is checked before every run and by
//! `list`; `streams_to_train` plans a sharded run's first jobs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use castream_cam::PoolingKind;
use castream_stream::StreamConfig;
use castream_zoo::quick::is_shipped;
use castream_zoo::stream_checkpoint::{self, StreamSource};
use castream_zoo::train_stream::StreamRecipe;
use castream_zoo::BackboneSpec;

use super::{table4, NotYetAvailable};
use crate::spec::{Profile, Settings, Spec, Target};

/// Why `spec` cannot run on `profile` now, if it cannot: a quick backbone that is not trained
/// yet; on the paper profile, data that is not where the spec says, or a trained stream the spec
/// does not list. Every missing thing is named, with its fix. Checked before a run and by `list`.
pub fn pending(spec: &Spec, profile: Profile, settings: &Settings, root: &Path) -> Result<Option<NotYetAvailable>> {
    missing_inputs(spec, profile, settings, root, true)
}

/// [`pending`], leaving out the trained streams unless `streams` (a sharded run trains them first).
pub fn missing_inputs(
    spec: &Spec,
    profile: Profile,
    settings: &Settings,
    root: &Path,
    streams: bool,
) -> Result<Option<NotYetAvailable>> {
    let mut needs = Vec::new();
    let place = |key: &str| format!("{} [{profile}.data.{key}]", spec.path.display());
    match profile {
        Profile::Quick => {
            for b in &settings.backbones {
                if let BackboneSpec::Shipped(name) = b {
                    if spec.target != Target::DataCard && !is_shipped(root, name)? {
                        needs.push(format!(
                            "the quick `{name}` backbone, which is not shipped (docs/backbones.md); train it with `cargo xtask train-backbones`"
                        ));
                    }
                }
            }
        }
        Profile::Paper => {
            let data = &settings.data;
            let (key, set) =
                if spec.target == Target::Figure4 { ("unseen", &data.unseen) } else { ("imagenet", &data.imagenet) };
            match set {
                None => needs.push(format!(
                    "{} (not set); Fix: add it with `root` (and `list`), docs/paper-profile.md",
                    place(key)
                )),
                Some(set) => needs.extend(set.missing(&place(key))),
            }
            let localises =
                settings.metrics.iter().any(|m| m.get_ref().group() == castream_metrics::metric::Group::Localisation);
            if localises && data.imagenet.as_ref().is_some_and(|s| s.boxes.is_none()) {
                needs.push(format!(
                    "object boxes for the localisation metrics: {} boxes = \"val_boxes.csv\" (`name,x0,y0,x1,y1` per object, \
                     scripts/imagenet-boxes.py writes it from ILSVRC's XML annotations)",
                    place("imagenet")
                ));
            }
            if spec.target != Target::DataCard && streams {
                for (backbone, config) in required_streams(spec, settings) {
                    if let BackboneSpec::Shipped(name) = &backbone {
                        needs.push(format!(
                            "a pretrained backbone: `{name}` is a quick-profile network; Fix: name an hf-hub model, e.g. \
                             {{ arch = \"resnet50\", hub = \"timm/resnet50.tv_in1k\" }}"
                        ));
                        continue;
                    }
                    let found = stream_checkpoint::find(root, &settings.streams, backbone, &config);
                    if found.matches.is_empty() {
                        let experiments = spec.path.parent().unwrap_or(Path::new("."));
                        needs.push(missing_stream(
                            experiments,
                            &settings.streams,
                            &found.unavailable,
                            backbone,
                            &config,
                        ));
                    }
                }
            }
        }
    }
    needs.dedup();
    Ok((!needs.is_empty()).then(|| NotYetAvailable { target: spec.name.clone(), needs: needs.join("; ") }))
}

/// Whether a spec evaluates a CA model: every target but an interpretability experiment of GAP
/// networks only (no `ca` pooling, no raw attention), which needs no stream at all.
pub fn uses_stream(spec: &Spec, s: &Settings) -> bool {
    spec.target != Target::Interpretability || s.poolings.contains(&PoolingKind::Ca) || !s.attention.is_empty()
}

/// The (backbone, stream configuration) pairs a spec evaluates.
pub(super) fn required_streams<'s>(spec: &Spec, s: &'s Settings) -> Vec<(&'s BackboneSpec, StreamConfig)> {
    if !uses_stream(spec, s) {
        return Vec::new();
    }
    let configs = match spec.target {
        Target::Table4 => table4::stream_configs(&s.stream.config),
        Target::Figure2 | Target::Figure3 | Target::Figure4 => {
            return s.backbones.first().map(|b| (b, s.stream.config.clone())).into_iter().collect()
        }
        _ => vec![s.stream.config.clone()],
    };
    s.backbones.iter().flat_map(|b| configs.iter().map(move |c| (b, c.clone()))).collect()
}

/// The recipe under `<experiments>/streams/` that trains a stream of `config` on `backbone`.
fn recipe_for(experiments: &Path, backbone: &BackboneSpec, config: &StreamConfig) -> Option<(PathBuf, StreamRecipe)> {
    castream_zoo::train_stream::recipes(&experiments.join("streams"))
        .into_iter()
        .find(|(_, r)| r.backbone.name() == backbone.name() && &r.stream == config)
}

/// The recipes of the paper profile's streams that `spec` needs and that are not trained yet
/// (the jobs a sharded run waits for); a missing stream that no recipe trains into a listed file
/// is refused with what to do.
pub fn streams_to_train(spec: &Spec, profile: Profile, settings: &Settings, root: &Path) -> Result<Vec<PathBuf>> {
    if profile != Profile::Paper {
        // The quick profile trains its streams itself (`reproduce --prepare`).
        return Ok(Vec::new());
    }
    let experiments = spec.path.parent().unwrap_or(Path::new("."));
    let mut recipes = Vec::new();
    for (backbone, config) in required_streams(spec, settings) {
        let found = stream_checkpoint::find(root, &settings.streams, backbone, &config);
        if !found.matches.is_empty() {
            continue;
        }
        match recipe_for(experiments, backbone, &config) {
            Some((file, r)) if settings.streams.contains(&StreamSource::File(r.output.clone())) => {
                if !recipes.contains(&file) {
                    recipes.push(file);
                }
            }
            _ => bail!("{}", missing_stream(experiments, &settings.streams, &found.unavailable, backbone, &config)),
        }
    }
    Ok(recipes)
}

/// What to do when no trained stream fits: the recipe under `<experiments>/streams/` that trains
/// it, if one does, and to list its output in `streams`.
pub(super) fn missing_stream(
    experiments: &Path,
    listed: &[StreamSource],
    unavailable: &[String],
    backbone: &BackboneSpec,
    config: &StreamConfig,
) -> String {
    let what = format!(
        "a CA-Stream trained on `{backbone}` (taps {:?}, {} head{})",
        config.taps,
        config.heads,
        if config.heads == 1 { "" } else { "s" }
    );
    // A hub stream that could not be fetched is named with the reason (a missing file is what
    // the recipe below writes).
    let hub: Vec<&String> = unavailable.iter().filter(|u| u.starts_with("hub:")).collect();
    let what = if hub.is_empty() {
        what
    } else {
        format!("{what} (listed but unavailable: {})", hub.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("; "))
    };
    match recipe_for(experiments, backbone, config) {
        Some((file, r)) if listed.contains(&StreamSource::File(r.output.clone())) => {
            format!("{what}: train it with `cargo xtask train-stream {}` (it writes {})", file.display(), r.output.display())
        }
        Some((file, r)) => format!(
            "{what}: train it with `cargo xtask train-stream {}` and list `{}` in the spec's `streams`",
            file.display(),
            r.output.display()
        ),
        None => format!("{what}: write a recipe (docs/paper-profile.md), train it with `cargo xtask train-stream <recipe>` and list its output in `streams`"),
    }
}
