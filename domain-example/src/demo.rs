//! The parts of the `inventory` binary (not of the library).
//!
//! | file | part |
//! |---|---|
//! | `demo/options.rs` | what to do: storage, simulation and query options |
//! | `demo/output.rs` | stdout that tolerates a closed pipe; `1,234,567` |
//! | `demo/counters.rs` | what the tills have done so far, for the progress line and the report |
//! | `demo/backend.rs` | opening the log (embedded in `--data-dir`, or Kafka), starting the runtime (on Kafka: in the consumer group), counting the log's events |
//! | `demo/simulation.rs` | the simulated stores: tills sending shipments, sales, adjustments |
//! | `demo/progress.rs` | the live progress line |
//! | `demo/report.rs` | the final summary: tables, or one JSON object |
//! | `demo/query.rs` | `inventory query`: one item's stock and history |

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
mod counters;
mod options;
mod output;
mod progress;
mod query;
mod report;
mod simulation;

pub(crate) use options::{QueryOptions, SimulateOptions, Storage};
pub(crate) use query::query;
pub(crate) use simulation::simulate;
