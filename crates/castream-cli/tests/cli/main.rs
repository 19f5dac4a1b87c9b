//! The `castream` binary and its library, end to end: one test binary (each would otherwise link
//! the whole workspace again).

mod architecture;
mod common;
mod errors;
mod explain;
mod gpu;
mod paper_profile;
mod shards;
