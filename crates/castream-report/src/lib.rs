//! The report layer: what a run writes. Tables (`tables`: DataFrame → CSV, Parquet, Markdown with
//! paper / ours / Δ columns), charts and picture grids (`charts`, `curves`, `forest`, `grid`, plotters with a
//! bundled font; saliency in a `colourmap`), interpretability scorecards with intervals and paired comparisons (`scorecard`), the
//! sanity table (`sanity`), the verdict on each of the paper's claims (`claims`), the results
//! index (`index`) and the run record `run.json` (`record`). Only this crate links polars
//! and plotters.

pub mod charts;
pub mod claims;
pub mod colourmap;
pub mod curves;
pub mod diagram;
pub mod forest;
pub mod grid;
pub mod index;
pub mod overlay;
pub mod record;
pub mod sanity;
pub mod scorecard;
pub mod tables;
