//! What the binary is asked to do: where the data lives, what to simulate, which item to show.

use std::path::PathBuf;
use std::time::Duration;

/// Where the log and the persisted views live.
#[derive(Debug, Clone)]
pub(crate) struct Storage {
    /// The embedded log (`DIR/log`) and the persisted views (`DIR/views`).
    pub(crate) data_dir: PathBuf,
    /// Kafka bootstrap servers; the log is then on Kafka instead of in `data_dir`.
    pub(crate) kafka: Option<String>,
}

/// What to simulate.
#[derive(Debug, Clone)]
pub(crate) struct SimulateOptions {
    pub(crate) storage: Storage,
    pub(crate) duration: Duration,
    pub(crate) stores: u32,
    pub(crate) skus: u32,
    pub(crate) concurrency: u32,
    pub(crate) seed: Option<u64>,
    pub(crate) json: bool,
}

/// Which item to show.
#[derive(Debug, Clone)]
pub(crate) struct QueryOptions {
    pub(crate) storage: Storage,
    pub(crate) store: String,
    pub(crate) sku: String,
    pub(crate) history: usize,
    pub(crate) json: bool,
}
