//! Experiments declared in TOML: the spec schema and its validation (`spec`), the runner that
//! publishes `results/<profile>/<name>/` atomically with its `run.json` (`runner`), the shard
//! records a sharded run leaves for its merge (`shards`), and the
//! targets (`targets`), each a short declaration over the model zoo (castream-zoo), the
//! evaluation engine (castream-eval) and the report layer (castream-report).

pub mod paper;
pub mod runner;
pub mod shards;
pub mod spec;
pub mod targets;
