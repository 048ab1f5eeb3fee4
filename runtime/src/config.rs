//! [`RuntimeConfig`]: every limit and timer of the runtime, with documented defaults.

use std::time::Duration;

/// When to write snapshots. A snapshot bounds the replay of one aggregate's activation;
/// the partition checkpoint built from snapshots bounds a restart's recovery scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Snapshot after this many events since the last snapshot. Default = 100.
    pub every_events: u64,
    /// Snapshot when an actor is passivated with events since the last snapshot. Default = true.
    pub on_passivation: bool,
    /// Snapshot right after an activation that replayed more than `every_events` events.
    /// Default = true.
    pub after_long_replay: bool,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        SnapshotPolicy {
            every_events: 100,
            on_passivation: true,
            after_long_replay: true,
        }
    }
}

/// The runtime's limits and timers. Build one with [`RuntimeBuilder`](crate::RuntimeBuilder).
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The application id: instances with the same id share the work. Default = `"keel"`.
    pub app_id: String,
    /// An aggregate actor idle this long is passivated. Default = 60 s.
    pub idle_timeout: Duration,
    /// At most this many live aggregate actors in this process; beyond it the least recently
    /// used are passivated. Default = 10 000.
    pub max_live_actors: usize,
    /// At most this many commands queued for one aggregate; beyond it `Overloaded`.
    /// Default = 256.
    pub mailbox_capacity: usize,
    /// At most this many commands in flight in the whole runtime; beyond it `Overloaded`.
    /// Default = 65 536.
    pub max_in_flight: usize,
    /// At most this many aggregates loading their history at once. Default = 64.
    pub max_concurrent_activations: usize,
    /// When to snapshot. Default = [`SnapshotPolicy::default`].
    pub snapshots: SnapshotPolicy,
    /// The default timeout of a command, from send to reply. Default = 30 s.
    ///
    /// A command still queued at its deadline is answered `Timeout` and never runs; one
    /// already running is answered `Timeout` and may still commit. Timeouts of at least 16
    /// maintenance ticks (16 s at the defaults) are enforced by the shard's tick, so they
    /// can be answered up to one tick late and cost no timer per command; shorter ones are
    /// also timed in the caller and answered on time.
    pub command_timeout: Duration,
    /// Each aggregate remembers at least its last this many command ids for deduplication.
    /// Default = 128.
    pub dedup_window: usize,
    /// Each aggregate also remembers every command id younger than this (by the time its
    /// command committed), however many commands came since. Default = 10 min.
    pub dedup_retention: Duration,
    /// The hard cap on the command ids one aggregate remembers, whatever `dedup_window` and
    /// `dedup_retention` say: it bounds the window's memory and its snapshot's size (each id
    /// costs its bytes plus about 60). Default = 4 096.
    pub dedup_max_ids: usize,
    /// How often shards look for idle actors and commit their recovery checkpoint.
    /// Default = 1 s (and never more than half the idle timeout).
    pub maintenance_interval: Duration,
    /// A partition's recovery checkpoint is committed again after this long even when it has
    /// not moved, so a quiet partition's checkpoint never expires (Kafka drops a group's
    /// committed offsets `offsets.retention.minutes` — 7 days by default — after their last
    /// commit). Default = 1 h.
    pub checkpoint_refresh: Duration,
    /// The bytes of event values the runtime keeps in memory, over all its partitions, so
    /// that activations replay without reading the log (the partition *tails*: the events no
    /// snapshot covers yet, from the recovery scan and this instance's own appends). When
    /// full, a partition's lowest offsets are evicted first; an activation that needs evicted
    /// events reads them in one sequential pass per partition, shared by every activation
    /// waiting. 0 turns the tails off. Default (`None`) = 64 MiB on a backend whose reads are
    /// remote ([`LogBackend::remote_reads`](crate::log::LogBackend::remote_reads): Kafka),
    /// off on the in-process ones, where keeping the tail costs each append more than it
    /// saves an activation.
    pub tail_cache_bytes: Option<usize>,
    /// The longest aggregate id (and command id) accepted, in bytes; a longer or an empty
    /// one is refused with [`CommandError::InvalidId`](crate::CommandError::InvalidId)
    /// before anything is touched. At most [`MAX_ID_BYTES_LIMIT`], which keeps every key
    /// within every backend's limit (fjall: 65 535 bytes). Default = 4 KiB.
    pub max_id_bytes: usize,
}

/// The tail budget on a backend whose reads are remote, unless configured
/// ([`RuntimeConfig::tail_cache_bytes`]).
pub const DEFAULT_REMOTE_TAIL_BYTES: usize = 64 << 20;

/// The largest [`RuntimeConfig::max_id_bytes`] allowed: an aggregate key (type name, `/`,
/// id) plus a backend's own prefix stays below 65 535 bytes.
pub const MAX_ID_BYTES_LIMIT: usize = 60_000;

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            app_id: "keel".into(),
            idle_timeout: Duration::from_secs(60),
            max_live_actors: 10_000,
            mailbox_capacity: 256,
            max_in_flight: 65_536,
            max_concurrent_activations: 64,
            snapshots: SnapshotPolicy::default(),
            command_timeout: Duration::from_secs(30),
            dedup_window: 128,
            dedup_retention: Duration::from_secs(600),
            dedup_max_ids: 4096,
            maintenance_interval: Duration::from_secs(1),
            checkpoint_refresh: Duration::from_secs(3600),
            tail_cache_bytes: None,
            max_id_bytes: 4096,
        }
    }
}

impl RuntimeConfig {
    pub(crate) fn validate(&self) -> Result<(), crate::error::Error> {
        let positive = [
            ("max_live_actors", self.max_live_actors),
            ("mailbox_capacity", self.mailbox_capacity),
            ("max_in_flight", self.max_in_flight),
            (
                "max_concurrent_activations",
                self.max_concurrent_activations,
            ),
            (
                "snapshots.every_events",
                self.snapshots.every_events as usize,
            ),
            ("max_id_bytes", self.max_id_bytes),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(crate::error::Error::Config(format!(
                    "{name} must be at least 1"
                )));
            }
        }
        if self.idle_timeout.is_zero()
            || self.maintenance_interval.is_zero()
            || self.checkpoint_refresh.is_zero()
        {
            return Err(crate::error::Error::Config(
                "idle_timeout, maintenance_interval and checkpoint_refresh must be positive".into(),
            ));
        }
        if self.max_id_bytes > MAX_ID_BYTES_LIMIT {
            return Err(crate::error::Error::Config(format!(
                "max_id_bytes must be at most {MAX_ID_BYTES_LIMIT}"
            )));
        }
        if self.app_id.is_empty() {
            return Err(crate::error::Error::Config(
                "app_id must not be empty".into(),
            ));
        }
        Ok(())
    }

    /// Checks an aggregate id (or, with `what` = "command id", a command id) against the
    /// configured limits.
    /// The tail budget on `backend`: as configured, or the default for its kind of reads.
    pub(crate) fn tail_budget_for(&self, backend: &dyn crate::log::LogBackend) -> usize {
        self.tail_cache_bytes.unwrap_or(if backend.remote_reads() {
            DEFAULT_REMOTE_TAIL_BYTES
        } else {
            0
        })
    }

    pub(crate) fn check_id(&self, what: &str, id: &str) -> Result<(), String> {
        if id.is_empty() {
            return Err(format!("{what} is empty"));
        }
        if id.len() > self.max_id_bytes {
            return Err(format!(
                "{what} {} is longer than max_id_bytes ({})",
                crate::error::short(id),
                self.max_id_bytes
            ));
        }
        Ok(())
    }

    /// How often the shard's maintenance tick runs.
    pub(crate) fn tick(&self) -> Duration {
        self.maintenance_interval
            .min(self.idle_timeout / 2)
            .max(Duration::from_millis(1))
    }
}

/// The longest [`Aggregate::TYPE`](crate::Aggregate::TYPE) name accepted, in bytes.
pub const MAX_TYPE_NAME_BYTES: usize = 255;
