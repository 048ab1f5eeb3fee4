//! Metric names, recorded through the `metrics` facade (install any recorder to collect them).

use metrics::{Key, Label, Level, Metadata};

/// Commands handled, labelled `aggregate` and `outcome` (committed, rejected, deduplicated, failed).
pub const COMMANDS: &str = "keel_commands_total";
/// Command latency in seconds, from send to reply, labelled `aggregate`.
pub const COMMAND_LATENCY: &str = "keel_command_latency_seconds";
/// Live aggregate actors in this process.
pub const LIVE_ACTORS: &str = "keel_live_actors";
/// Activations, labelled `aggregate` and `from_snapshot`.
pub const ACTIVATIONS: &str = "keel_activations_total";
/// Events replayed by activations, labelled `aggregate`.
pub const EVENTS_REPLAYED: &str = "keel_events_replayed_total";
/// Events an activation needed that the partition's in-memory tail did not hold (read from
/// the log instead), labelled `aggregate`.
pub const TAIL_MISSES: &str = "keel_tail_misses_total";
/// Passivations, labelled `reason` (idle, capacity, shutdown).
pub const PASSIVATIONS: &str = "keel_passivations_total";
/// Snapshots written, labelled `aggregate`.
pub const SNAPSHOTS: &str = "keel_snapshots_total";
/// Aggregates that hold a partition's checkpoint back and that settling cannot load,
/// labelled `reason` (`unregistered`: no handle of their type asked for yet; `unloadable`:
/// their activation failed), counted once per aggregate.
pub const SETTLE_SKIPPED: &str = "keel_settle_skipped_total";
/// Commands refused because of overload, labelled `limit`.
pub const OVERLOADED: &str = "keel_overloaded_total";

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// How a command ended, for the `outcome` label of [`COMMANDS`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome {
    Committed = 0,
    Rejected = 1,
    Deduplicated = 2,
    Failed = 3,
}

/// The command metrics of one aggregate type, their keys built once: the `metrics!` macros
/// build a label vector on every call when a label value is not a literal, which the command
/// path would pay per command. The recorder is still looked up on every use, so one installed
/// later is seen.
pub(crate) struct CommandMetrics {
    latency: Key,
    /// Indexed by [`Outcome`].
    commands: [Key; 4],
}

impl CommandMetrics {
    pub(crate) fn new(aggregate: &'static str) -> Self {
        let commands = ["committed", "rejected", "deduplicated", "failed"].map(|outcome| {
            Key::from_parts(
                COMMANDS,
                vec![
                    Label::from_static_parts("aggregate", aggregate),
                    Label::from_static_parts("outcome", outcome),
                ],
            )
        });
        CommandMetrics {
            latency: Key::from_parts(
                COMMAND_LATENCY,
                vec![Label::from_static_parts("aggregate", aggregate)],
            ),
            commands,
        }
    }

    /// Records a command's latency, from send to reply.
    pub(crate) fn latency(&self, seconds: f64) {
        metrics::with_recorder(|r| {
            r.register_histogram(&self.latency, &METADATA)
                .record(seconds)
        });
    }

    /// Counts a handled command.
    pub(crate) fn command(&self, outcome: Outcome) {
        let key = &self.commands[outcome as usize];
        metrics::with_recorder(|r| r.register_counter(key, &METADATA).increment(1));
    }
}
