//! Result tables: a polars DataFrame with a title and footer notes, written as CSV, Parquet and a
//! Markdown rendering. Tables that reproduce a published number carry, for each such metric, the
//! columns `<metric>_paper`, `<metric>` (ours) and `<metric>_diff` side by side.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use polars::prelude::*;

use castream_data::atomic;

/// The table of columns `name => values`, each a `Vec` of numbers, strings or options of them,
/// all of one length: what targets hand the report layer, so that polars stays inside it.
#[macro_export]
macro_rules! columns {
    ($($name:expr => $values:expr),+ $(,)?) => {
        $crate::tables::frame(vec![$($crate::tables::column($name, $values)),+])
    };
}

/// One named column for [`columns!`].
pub fn column<T, P: ?Sized>(name: &str, values: T) -> Column
where
    Series: NamedFrom<T, P>,
{
    Column::from(<Series as NamedFrom<T, P>>::new(name.into(), values))
}

/// A frame of columns, which must be of one length.
pub fn frame(columns: Vec<Column>) -> Result<DataFrame> {
    Ok(DataFrame::new_infer_height(columns)?)
}

pub struct Table {
    /// File stem of the outputs.
    pub name: String,
    pub title: String,
    pub frame: DataFrame,
    /// Lines printed under the Markdown table: provenance, image counts, variants used.
    pub notes: Vec<String>,
    /// Decimals shown for floating-point cells in Markdown (CSV and Parquet keep full precision).
    pub decimals: usize,
    /// What the Markdown shows instead of `frame` when set: a compact view of the same numbers
    /// (e.g. an interval folded into one cell), so wide tables stay readable.
    pub display: Option<DataFrame>,
}

impl Table {
    pub fn new(name: &str, title: &str, frame: DataFrame) -> Table {
        Table { name: name.into(), title: title.into(), frame, notes: Vec::new(), decimals: 2, display: None }
    }

    pub fn note(mut self, line: impl Into<String>) -> Table {
        self.notes.push(line.into());
        self
    }

    /// Puts the published values of `metric` beside ours: inserts `<metric>_paper` before and
    /// `<metric>_diff` (ours minus paper) after the `metric` column.
    pub fn with_paper(mut self, metric: &str, paper: &[Option<f64>]) -> Result<Table> {
        let ours = self.frame.column(metric)?.as_materialized_series().cast(&DataType::Float64)?;
        ensure!(paper.len() == ours.len(), "{metric}: {} paper values for {} rows", paper.len(), ours.len());
        let ours = ours.f64()?;
        let diff: Vec<Option<f64>> = ours.iter().zip(paper).map(|(o, p)| Some(o? - (*p)?)).collect();
        let at = self.frame.get_column_index(metric).expect("column exists");
        self.frame.insert_column(at, Column::new(format!("{metric}_paper").into(), paper.to_vec()))?;
        self.frame.insert_column(at + 2, Column::new(format!("{metric}_diff").into(), diff))?;
        Ok(self)
    }

    /// Writes `<name>.csv`, `<name>.parquet` and `<name>.md` into `dir`, each atomically.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        let path = |ext: &str| dir.join(format!("{}.{ext}", self.name));
        let mut frame = self.frame.clone();
        atomic::write_with(&path("csv"), |f| Ok(CsvWriter::new(f).finish(&mut frame)?))?;
        atomic::write_with(&path("parquet"), |f| Ok(ParquetWriter::new(f).finish(&mut frame).map(|_| ())?))?;
        atomic::write(&path("md"), self.markdown()?.as_bytes())?;
        Ok(["csv", "parquet", "md"].map(path).to_vec())
    }

    /// The Markdown rendering: a heading, a pipe table, and the notes.
    pub fn markdown(&self) -> Result<String> {
        let mut out = format!("## {}\n\n", self.title);
        let frame = self.display.as_ref().unwrap_or(&self.frame);
        let headers: Vec<String> = frame.get_column_names().iter().map(|n| header(n)).collect();
        writeln!(out, "| {} |", headers.join(" | "))?;
        let align: Vec<&str> =
            frame.columns().iter().map(|c| if c.dtype().is_primitive_numeric() { "---:" } else { ":---" }).collect();
        writeln!(out, "|{}|", align.join("|"))?;
        for i in 0..frame.height() {
            let row = frame.get(i).context("row index in range")?;
            let cells: Vec<String> = row.iter().map(|v| cell(v, self.decimals)).collect();
            writeln!(out, "| {} |", cells.join(" | "))?;
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for n in &self.notes {
                writeln!(out, "- {n}")?;
            }
        }
        Ok(out)
    }
}

fn header(name: &str) -> String {
    if let Some(m) = name.strip_suffix("_paper") {
        format!("{m} (paper)")
    } else if let Some(m) = name.strip_suffix("_diff") {
        format!("{m} Δ")
    } else {
        name.to_string()
    }
}

fn cell(value: &AnyValue, decimals: usize) -> String {
    match value {
        AnyValue::Null => "–".into(),
        AnyValue::Float64(v) => format!("{v:.decimals$}"),
        AnyValue::Float32(v) => format!("{v:.decimals$}"),
        v => v.get_str().map(|s| s.replace('|', "\\|")).unwrap_or_else(|| v.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        let frame = df!(
            "method" => ["Grad-CAM", "Score-CAM"],
            "AD" => [12.5f64, 7.25],
            "n" => [10i64, 10],
        )
        .unwrap();
        Table::new("t", "Demo", frame).note("quick profile, 10 images")
    }

    #[test]
    fn paper_columns_sit_beside_ours_with_the_difference() {
        let t = table().with_paper("AD", &[Some(13.04), None]).unwrap();
        let names: Vec<String> = t.frame.get_column_names().iter().map(|s| s.to_string()).collect();
        assert_eq!(names, ["method", "AD_paper", "AD", "AD_diff", "n"]);
        let diff: Vec<Option<f64>> = t.frame.column("AD_diff").unwrap().f64().unwrap().iter().collect();
        assert!((diff[0].unwrap() - (12.5 - 13.04)).abs() < 1e-12);
        assert_eq!(diff[1], None);
        assert!(table().with_paper("AD", &[Some(1.0)]).is_err());
    }

    #[test]
    fn markdown_renders_headers_cells_and_notes() {
        let md = table().with_paper("AD", &[Some(13.04), None]).unwrap().markdown().unwrap();
        let expected = "## Demo\n\n\
            | method | AD (paper) | AD | AD Δ | n |\n\
            |:---|---:|---:|---:|---:|\n\
            | Grad-CAM | 13.04 | 12.50 | -0.54 | 10 |\n\
            | Score-CAM | – | 7.25 | – | 10 |\n\
            \n- quick profile, 10 images\n";
        assert_eq!(md, expected);
    }

    #[test]
    fn csv_parquet_and_markdown_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let t = table();
        let files = t.write(dir.path()).unwrap();
        assert_eq!(files.len(), 3);
        let csv = std::fs::read_to_string(dir.path().join("t.csv")).unwrap();
        assert_eq!(csv, "method,AD,n\nGrad-CAM,12.5,10\nScore-CAM,7.25,10\n");
        let back = ParquetReader::new(std::fs::File::open(dir.path().join("t.parquet")).unwrap()).finish().unwrap();
        assert!(back.equals(&t.frame));
    }
}
