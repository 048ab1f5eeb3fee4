//! Metric names, recorded through the `metrics` facade (install any recorder to collect them).

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
/// Passivations, labelled `reason` (idle, capacity, shutdown).
pub const PASSIVATIONS: &str = "keel_passivations_total";
/// Snapshots written, labelled `aggregate`.
pub const SNAPSHOTS: &str = "keel_snapshots_total";
/// Commands refused because of overload, labelled `limit`.
pub const OVERLOADED: &str = "keel_overloaded_total";
