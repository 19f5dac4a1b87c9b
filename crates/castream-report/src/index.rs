//! `results/<profile>/README.md`, written by `reproduce all`: one line per published target with
//! its headline (the verdicts on the paper's claims it tests) and links to its tables and charts,
//! then every claim with its verdict, gathered from the targets' `*_ca_vs_gap` tables.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use castream_data::atomic;
use polars::prelude::*;

use crate::claims::Verdict;

/// A published target.
pub struct Entry {
    pub name: String,
    pub title: String,
    /// Its results folder.
    pub dir: PathBuf,
}

/// One claim as a `*_ca_vs_gap` table states it.
struct Claim {
    table: String,
    backbone: String,
    method: String,
    metric: String,
    paper: f64,
    ours: f64,
    low: f64,
    high: f64,
    /// Each stream seed's own difference (empty with one seed).
    per_seed: String,
    verdict: String,
}

/// The claims of every `*_ca_vs_gap.parquet` of `dir` that carry the paper's change.
fn claims(dir: &Path) -> Result<Vec<Claim>> {
    let mut out = Vec::new();
    for file in files(dir, "_ca_vs_gap.parquet")? {
        // The index is a summary: a table it cannot read is named and left out.
        let read =
            std::fs::File::open(&file).map_err(anyhow::Error::from).and_then(|f| Ok(ParquetReader::new(f).finish()?));
        let frame = match read {
            Ok(frame) => frame,
            Err(e) => {
                eprintln!("warning: results index: {} does not read ({e}); its claims are left out", file.display());
                continue;
            }
        };
        if frame.column("claim").is_err() {
            continue;
        }
        let text = |c: &str| -> Result<Vec<Option<String>>> {
            Ok(frame.column(c)?.str()?.iter().map(|v| v.map(str::to_string)).collect())
        };
        let number = |c: &str| -> Result<Vec<Option<f64>>> { Ok(frame.column(c)?.f64()?.iter().collect()) };
        let (backbone, method, metric, verdict) = (text("backbone")?, text("method")?, text("metric")?, text("claim")?);
        let (paper, ours, low, high) =
            (number("ca_minus_gap_paper")?, number("ca_minus_gap")?, number("low")?, number("high")?);
        let per_seed = if frame.column("per_seed").is_ok() { text("per_seed")? } else { vec![None; frame.height()] };
        let table = file.file_name().unwrap_or_default().to_string_lossy().trim_end_matches(".parquet").to_string();
        for i in 0..frame.height() {
            let (Some(verdict), Some(paper)) = (verdict[i].clone(), paper[i]) else { continue };
            out.push(Claim {
                table: table.clone(),
                backbone: backbone[i].clone().unwrap_or_default(),
                method: method[i].clone().unwrap_or_default(),
                metric: metric[i].clone().unwrap_or_default(),
                paper,
                ours: ours[i].unwrap_or(f64::NAN),
                low: low[i].unwrap_or(f64::NAN),
                high: high[i].unwrap_or(f64::NAN),
                per_seed: per_seed[i].clone().unwrap_or_default(),
                verdict,
            });
        }
    }
    Ok(out)
}

/// The files of `dir` whose names end with `suffix`, sorted.
fn files(dir: &Path, suffix: &str) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().ends_with(suffix)))
        .collect();
    out.sort();
    Ok(out)
}

/// `n reproduced, n contradicted, n inconclusive`.
fn counts(claims: &[&Claim]) -> String {
    Verdict::ALL
        .iter()
        .map(|v| format!("{} {v}", claims.iter().filter(|c| c.verdict == v.label()).count()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes `<profile_dir>/README.md` for the published `entries` (atomically; the same results
/// give the same bytes).
pub fn write(profile_dir: &Path, profile: &str, entries: &[Entry]) -> Result<PathBuf> {
    let mut md = format!(
        "# Results: the {profile} profile\n\nWritten by `cargo xtask reproduce all{}`. Each target's folder holds \
         its tables (CSV, Parquet, Markdown), charts and `run.json` (how it was made). A claim of the paper \
         is **reproduced** when our 95% paired interval of CA − GAP excludes 0 on the side of the paper's \
         change, **contradicted** when it excludes 0 on the other side, **inconclusive** when it contains 0 \
         (docs/results.md, Claims).\n\n| target | what | the paper's claims tested | tables and charts |\n|---|---|---|---|\n",
        if profile == "quick" { String::new() } else { format!(" --profile {profile}") }
    );
    let mut all = Vec::new();
    for entry in entries {
        let claims = claims(&entry.dir)?;
        let headline = if claims.is_empty() { "–".to_string() } else { counts(&claims.iter().collect::<Vec<_>>()) };
        let folder = entry.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let links: Vec<String> = files(&entry.dir, ".md")?
            .iter()
            .chain(&files(&entry.dir, ".png")?)
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .map(|f| format!("[{f}]({folder}/{f})"))
            .collect();
        writeln!(md, "| `{}` | {} | {headline} | {} |", entry.name, entry.title, links.join(" · "))?;
        all.extend(claims);
    }
    if !all.is_empty() {
        writeln!(md, "\n## The paper's claims\n\nOver all targets: {}.\n", counts(&all.iter().collect::<Vec<_>>()))?;
        md.push_str(
            "The interval covers images and stream seeds; per seed: each seed's own difference (docs/results.md).\n\n",
        );
        md.push_str(
            "| table | backbone | method | metric | paper's CA − GAP | ours [95% interval] | per seed | verdict |\n",
        );
        md.push_str("|---|---|---|---|---:|---:|---:|---|\n");
        for c in &all {
            let per_seed = if c.per_seed.is_empty() { "–" } else { &c.per_seed };
            writeln!(
                md,
                "| {} | {} | {} | {} | {:+.2} | {:+.2} [{:+.2}, {:+.2}] | {per_seed} | {} |",
                c.table, c.backbone, c.method, c.metric, c.paper, c.ours, c.low, c.high, c.verdict
            )?;
        }
    }
    let path = profile_dir.join("README.md");
    atomic::write(&path, md.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::Table;

    #[test]
    fn the_index_lists_every_target_and_every_claim_with_its_verdict() {
        let root = tempfile::tempdir().unwrap();
        let t2 = root.path().join("table2");
        std::fs::create_dir_all(&t2).unwrap();
        let frame = crate::columns!(
            "backbone" => ["r", "r"], "method" => ["Grad-CAM", "Score-CAM"], "metric" => ["AD↓", "I↑"],
            "ca_minus_gap_paper" => [Some(-0.5), None], "ca_minus_gap" => [-1.0, 0.8], "low" => [-2.0, 0.3],
            "high" => [-0.1, 1.2], "verdict" => ["x", "y"], "claim" => [Some("reproduced"), None],
            "per_seed" => ["-0.90, -1.10", "+0.80, +0.80"],
        )
        .unwrap();
        Table::new("table2_ca_vs_gap", "t", frame).write(&t2).unwrap();
        let fig = root.path().join("figure1");
        std::fs::create_dir_all(&fig).unwrap();
        std::fs::write(fig.join("figure1.png"), b"png").unwrap();
        let entries = [
            Entry { name: "figure1".into(), title: "Figure 1".into(), dir: fig },
            Entry { name: "table2".into(), title: "Table 2".into(), dir: t2 },
        ];
        let md = std::fs::read_to_string(write(root.path(), "quick", &entries).unwrap()).unwrap();
        assert!(md.contains("| `figure1` | Figure 1 | – | [figure1.png](figure1/figure1.png) |"), "{md}");
        assert!(md.contains("| `table2` | Table 2 | 1 reproduced, 0 contradicted, 0 inconclusive | [table2_ca_vs_gap.md](table2/table2_ca_vs_gap.md) |"), "{md}");
        // Only rows with the paper's change are claims.
        assert!(
            md.contains(
                "| table2_ca_vs_gap | r | Grad-CAM | AD↓ | -0.50 | -1.00 [-2.00, -0.10] | -0.90, -1.10 | reproduced |"
            ),
            "{md}"
        );
        assert!(!md.contains("Score-CAM"), "{md}");
        // The same results give the same bytes.
        assert_eq!(md, std::fs::read_to_string(write(root.path(), "quick", &entries).unwrap()).unwrap());
    }
}
