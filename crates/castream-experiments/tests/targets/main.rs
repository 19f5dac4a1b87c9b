//! Quick targets end to end on the real datasets: one test binary (each would otherwise link the
//! whole workspace again).

mod ca_targets;
mod data_card;
mod provenance;
