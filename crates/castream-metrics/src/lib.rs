//! Interpretability metrics (METHOD.md §5) and the statistics every table cell carries.

pub mod bootstrap;
