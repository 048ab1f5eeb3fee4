//! The parts of the `inventory` binary (not of the library).
//!
//! | file | part |
//! |---|---|
//! | `demo/backend.rs` | opening the log (embedded in `--data-dir`, or Kafka), starting the runtime (on Kafka: in the consumer group), counting the log's events |
//! | `demo/simulation.rs` | the simulated stores: tills sending shipments, sales, adjustments |
//! | `demo/progress.rs` | the live progress line |
//! | `demo/report.rs` | the final summary: tables, or one JSON object |
//! | `demo/query.rs` | `inventory query`: one item's stock and history |

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// `writeln!` into a `String`, where writing cannot fail.
macro_rules! outln {
    ($out:expr) => {
        $out.push('\n')
    };
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

mod backend;
mod progress;
mod query;
mod report;
mod simulation;

pub(crate) use query::query;
pub(crate) use simulation::simulate;

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

/// Writes `text` to stdout. A closed stdout (`inventory | head`) is not an error: the reader
/// has seen what it wanted.
pub(crate) fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
