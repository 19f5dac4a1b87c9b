//! `data-card`: class counts per split, statistics of the generated scenes, and a picture grid of
//! scenes with their ground-truth boxes, and the shipped backbones' learning curves. Proof that data, runner, polars and plotters work end to
//! end, and the place where the quick profile's scene statistics are measured.

use anyhow::Result;
use castream_data::batching::batch_indices;
use castream_data::discovery::{DatasetName, Locator};
use castream_data::labelled::{hex, Split};
use castream_data::scenes::{SceneSet, SceneStats};
use castream_report::columns;
use sha2::{Digest, Sha256};

use super::RunContext;
use crate::spec::Profile;
use castream_data::progress;
use castream_report::charts::{Chart, GroupedBars};
use castream_report::colourmap::ColourMap;
use castream_report::grid::{Grid, Tile};
use castream_report::record::DataRecord;
use castream_report::tables::Table;

/// Scenes shown in the grid unless the spec's `images` says otherwise.
const DEFAULT_GRID_IMAGES: usize = 32;
/// Unseen-class (MNIST) scenes shown under the Fashion-MNIST ones.
const UNSEEN_IMAGES: usize = 8;
const GRID_COLUMNS: usize = 8;

pub fn run(ctx: &mut RunContext) -> Result<()> {
    match ctx.profile {
        Profile::Quick => quick(ctx),
        Profile::Paper => paper(ctx),
    }
}

/// Class counts of one dataset split, as rows (dataset, split, class_id, class, count).
#[derive(Default)]
struct CountRows {
    dataset: Vec<String>,
    split: Vec<String>,
    class_id: Vec<u32>,
    class: Vec<String>,
    count: Vec<u32>,
}

impl CountRows {
    fn push(&mut self, dataset: &str, split: &str, classes: &[String], counts: &[usize]) {
        for (i, (name, &c)) in classes.iter().zip(counts).enumerate() {
            self.dataset.push(dataset.into());
            self.split.push(split.into());
            self.class_id.push(i as u32);
            self.class.push(name.clone());
            self.count.push(c as u32);
        }
    }

    fn table(self) -> Result<Table> {
        let frame = columns!(
            "dataset" => self.dataset,
            "split" => self.split,
            "class_id" => self.class_id,
            "class" => self.class,
            "count" => self.count,
        )?;
        Ok(Table::new("class_counts", "Images per class and split", frame))
    }
}

fn quick(ctx: &mut RunContext) -> Result<()> {
    let s = ctx.settings;
    ctx.record.seeds.insert("seed".into(), s.seed);
    ctx.record.seeds.insert("scenes.seed".into(), s.scenes.seed);
    let mut counts = CountRows::default();
    let mut splits = Vec::new();
    for (name, location) in [(DatasetName::FashionMnist, &s.data.fashion_mnist), (DatasetName::Mnist, &s.data.mnist)] {
        let located = Locator::from_environment(name).locate(name, location)?;
        let classes: Vec<String> = name.class_names().iter().map(|c| c.to_string()).collect();
        let mut series = Vec::new();
        for split in [Split::Train, Split::Test] {
            let data = located.load(split)?;
            ctx.record.read_data(DataRecord {
                dataset: name.display_name().into(),
                split: split.name().into(),
                images: data.len(),
                sha256: data.sha256.clone(),
                origin: serde_json::to_value(&located.origin)?,
            });
            let c = data.class_counts();
            counts.push(name.display_name(), split.name(), &classes, &c);
            series.push((split.name().to_string(), c.iter().map(|&v| v as f64).collect()));
            splits.push((name, split, data));
        }
        GroupedBars {
            title: &format!("{}: images per class", name.display_name()),
            y_label: "images",
            categories: &classes,
            series: &series,
            intervals: None,
        }
        .write(&ctx.out.join(format!("class_counts_{}", slug(name))))?;
    }
    let fashion_test =
        splits.iter().find(|(n, sp, _)| *n == DatasetName::FashionMnist && *sp == Split::Test).map_or(0, |x| x.2.len());
    let shown = super::image_count(ctx, DEFAULT_GRID_IMAGES, fashion_test, "Fashion-MNIST test")?;
    counts
        .table()?
        .note("Counts read from the IDX label files; run.json records each file's SHA-256.")
        .write(ctx.out)?;

    let mut stats = StatRows::default();
    let mut sets = Vec::new();
    for (name, split, data) in splits {
        let set = SceneSet::new(data, name, split, s.scenes.clone())?;
        stats.measure(&set, s.batch_size);
        sets.push(set);
    }
    let mut table = stats.table()?;
    table.decimals = 4;
    table
        .note(format!(
            "Every scene of every split, {}x{} canvas, items {}-{} px, scene seed {}.",
            s.scenes.canvas, s.scenes.canvas, s.scenes.item_size[0], s.scenes.item_size[1], s.scenes.seed
        ))
        .note("mean/std: per-channel pixel statistics in [0, 1] (the Fashion-MNIST train row is the `normalisation` for quick-profile models).")
        .note("object: fraction of pixels inside the item mask; box: fraction inside its box; side: pasted item side in pixels.")
        .write(ctx.out)?;

    let pick = |set: &SceneSet, n: usize| -> Result<Vec<usize>> {
        let order = batch_indices(set.len(), set.len().max(1), Some(s.seed))?;
        Ok(order.into_iter().flatten().take(n).collect())
    };
    let find = |name, split| sets.iter().find(|x| x.dataset == name && x.split == split).expect("loaded above");
    let (fashion, digits) = (find(DatasetName::FashionMnist, Split::Test), find(DatasetName::Mnist, Split::Test));
    let (fashion_idx, digit_idx) = (pick(fashion, shown)?, pick(digits, UNSEEN_IMAGES)?);
    let mut hasher = Sha256::new();
    for (tag, ids) in [("fashion-mnist/test", &fashion_idx), ("mnist/test", &digit_idx)] {
        ids.iter().for_each(|i| hasher.update(format!("{tag}/{i}\n")));
    }
    ctx.record.image_list_sha256 = Some(hex(&hasher.finalize()));
    let tiles = |set: &SceneSet, ids: &[usize]| -> Vec<Tile> {
        set.scenes(ids)
            .into_iter()
            .zip(ids)
            .map(|(scene, i)| {
                let caption = format!("#{i} {}", set.dataset.class_names()[scene.label]);
                Tile::image(scene.image, set.config.canvas, caption, scene.bbox.into_iter().collect())
            })
            .collect()
    };
    Grid {
        title: format!("Fashion-MNIST scenes with ground-truth boxes (seed {})", s.scenes.seed),
        columns: GRID_COLUMNS,
        scale: 3,
        rows: vec![
            (
                format!("Fashion-MNIST test scenes ({} of {})", fashion_idx.len(), fashion.len()),
                tiles(fashion, &fashion_idx),
            ),
            ("MNIST digit scenes (classes unseen in training, for figure4)".into(), tiles(digits, &digit_idx)),
        ],
        colour_map: ColourMap::default(),
    }
    .write_png(&ctx.out.join("scenes.png"))?;
    super::backbone_curves::write(ctx)
}

fn slug(name: DatasetName) -> &'static str {
    match name {
        DatasetName::FashionMnist => "fashion-mnist",
        DatasetName::Mnist => "mnist",
    }
}

/// Pixel and object statistics of every scene of each split, as table rows.
#[derive(Default)]
struct StatRows {
    dataset: Vec<String>,
    split: Vec<String>,
    stats: Vec<SceneStats>,
}

impl StatRows {
    fn measure(&mut self, set: &SceneSet, chunk: usize) {
        let bar = progress::bar(set.len() as u64, format!("{} {} scenes", set.dataset, set.split.name()));
        let ids: Vec<usize> = (0..set.len()).collect();
        let stats = SceneStats::measure(set, &ids, chunk.max(256), |n| bar.inc(n as u64));
        bar.finish_and_clear();
        self.dataset.push(set.dataset.display_name().into());
        self.split.push(set.split.name().into());
        self.stats.push(stats);
    }

    fn table(self) -> Result<Table> {
        let col = |f: &dyn Fn(&SceneStats) -> f64| self.stats.iter().map(f).collect::<Vec<f64>>();
        let frame = columns!(
            "dataset" => &self.dataset, "split" => &self.split,
            "scenes" => self.stats.iter().map(|s| s.scenes as u32).collect::<Vec<_>>(),
            "mean_r" => col(&|s| s.mean[0]), "mean_g" => col(&|s| s.mean[1]), "mean_b" => col(&|s| s.mean[2]),
            "std_r" => col(&|s| s.std[0]), "std_g" => col(&|s| s.std[1]), "std_b" => col(&|s| s.std[2]),
            "object" => col(&|s| s.object_fraction), "box" => col(&|s| s.box_fraction), "side" => col(&|s| s.item_side),
        )?;
        Ok(Table::new("scene_stats", "Scene statistics", frame))
    }
}

/// Paper profile: the ImageNet-style set given in the spec (a `name,label` list or class folders).
fn paper(ctx: &mut RunContext) -> Result<()> {
    let s = ctx.settings;
    let set = ctx.test_images()?;
    let shown = super::image_count(ctx, DEFAULT_GRID_IMAGES, set.len(), &set.describe())?;
    let labels: Vec<usize> = (0..set.len()).map(|i| set.label(i)).collect();
    let classes = labels.iter().max().map_or(0, |m| m + 1);
    let mut counts = vec![0usize; classes];
    labels.iter().for_each(|&l| counts[l] += 1);
    let names: Vec<String> = (0..classes).map(|i| set.class_name(i)).collect();
    let mut rows = CountRows::default();
    rows.push("imagenet", "val", &names, &counts);
    rows.table()?.note(format!("{} images in {} classes.", set.len(), classes)).write(ctx.out)?;
    ctx.record.image_list_sha256 = Some(set.record().sha256);
    ctx.record.seeds.insert("seed".into(), s.seed);

    let order = batch_indices(set.len(), set.len(), Some(s.seed))?;
    let ids: Vec<usize> = order.into_iter().flatten().take(shown).collect();
    let side = set.side();
    let tiles = ids
        .iter()
        .map(|&i| {
            let caption = names[set.label(i)].chars().take(18).collect();
            Ok(Tile::image(set.rgb(i)?, side, caption, set.bbox(i).into_iter().collect()))
        })
        .collect::<Result<Vec<_>>>()?;
    Grid {
        title: "Evaluation images after the transform".into(),
        columns: GRID_COLUMNS,
        scale: 1,
        rows: vec![(format!("{} of {} images", ids.len(), set.len()), tiles)],
        colour_map: ColourMap::default(),
    }
    .write_png(&ctx.out.join("scenes.png"))
}
