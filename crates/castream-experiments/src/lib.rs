//! The experiments runner: TOML specs in (`spec`), targets run under a profile (`targets`),
//! tables (`tables`, polars), charts and picture grids (`charts`, `grid`, plotters) and a run
//! record (`record`) out, published atomically (`castream_data::atomic`) by `runner`.

pub mod bench;
pub mod ca;
pub mod charts;
pub mod explain;
pub mod grid;
pub mod interpretability;
pub mod progress;
pub mod quick;
pub mod record;
pub mod runner;
pub mod saliency;
pub mod sanity;
pub mod scorecard;
pub mod spec;
pub mod tables;
pub mod targets;
