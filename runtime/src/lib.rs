//! keel: an embeddable event-sourcing runtime. Every live aggregate instance is a ractor
//! actor; its events are durable in a Kafka-shaped log before a command is answered.
//!
//! # Layout
//!
//! | file | concept |
//! |---|---|
//! | `aggregate.rs` | [`Aggregate`]: the domain seam — `handle` decides, `apply` evolves |
//! | `envelope.rs` | [`EventEnvelope`], [`SnapshotEnvelope`], [`Upcasters`]: stored formats |
//! | `log.rs` | the log model and storage seams: [`EventLog`], [`SnapshotStore`], [`CheckpointStore`] |
//! | `log/memory.rs` | [`MemoryLog`]: for tests |
//! | `log/embedded.rs` | [`EmbeddedLog`]: the durable default, group-committed |
//! | `log/kafka.rs` (+ `log/kafka/`) | `KafkaLog`, `KafkaConfig` (feature `kafka`): topics, idempotent and transactional producers, readers |
//! | `ownership.rs` | `KafkaOwnership` (feature `kafka`): partition ownership through the consumer group |
//! | `runtime.rs` | [`Runtime`], [`RuntimeBuilder`]: start, ownership, shutdown |
//! | `config.rs` | [`RuntimeConfig`], [`SnapshotPolicy`]: limits and timers with their defaults |
//! | `handle.rs` | [`AggregateHandle`]: the typed command API |
//! | `shard.rs` | the shard actor per partition: get-or-spawn, passivation, recovery |
//! | `partition.rs` (+ `partition/uncovered.rs`) | the recovery index, tail and checkpoint of one partition |
//! | `instance.rs` (+ `instance/activation.rs`) | the aggregate actor: activation, one command at a time, snapshots |
//! | `dedup.rs` | the command ids an aggregate remembers, by count and by age |
//! | `testkit.rs` | [`TestFramework`]: given/when/then for aggregates, no runtime |
//! | `metrics.rs` | metric names |
//! | `error.rs` | [`CommandError`], [`StorageError`], [`DecodeError`], [`Error`] |
//!
//! The runtime's guarantees (ordering, durability, passivation, recovery) are written down in
//! `docs/runtime-semantics.md`.

mod aggregate;
mod config;
mod dedup;
mod envelope;
mod error;
mod handle;
mod instance;
pub mod log;
pub mod metrics;
#[cfg(feature = "kafka")]
mod ownership;
mod partition;
mod runtime;
mod shard;
mod shared;
mod testkit;
mod upcast;

pub use aggregate::Aggregate;
pub use config::{MAX_ID_BYTES_LIMIT, RuntimeConfig, SnapshotPolicy};
pub use envelope::{EventEnvelope, SnapshotEnvelope};
pub use error::{CommandError, DecodeError, Error, StorageError};
pub use handle::{AggregateHandle, SendOptions};
pub use instance::Committed;
pub use log::MemoryLog;
pub use log::embedded::{EmbeddedLog, EmbeddedLogBuilder};
#[cfg(feature = "kafka")]
pub use log::kafka::{KafkaConfig, KafkaLog};
pub use log::{
    CheckpointStore, EventLog, LogBackend, LogRecord, Offset, Position, SnapshotStore,
    StoredRecord, aggregate_key, partition_for,
};
#[cfg(feature = "kafka")]
pub use ownership::KafkaOwnership;
pub use runtime::{MAX_TYPE_NAME_BYTES, Runtime, RuntimeBuilder};
pub use testkit::TestFramework;
pub use upcast::{UpcastFn, Upcasters};
