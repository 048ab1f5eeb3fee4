//! keel: an embeddable event-sourcing runtime. Every live aggregate instance is a ractor
//! actor; its events are durable in a Kafka-shaped log before a command is answered.
//!
//! # Layout
//!
//! | file | concept |
//! |---|---|
//! | `aggregate.rs` | [`Aggregate`]: the domain seam — `handle` decides, `apply` evolves |
//! | `upcast.rs` | [`Upcasters`](upcast::Upcasters): lifting old event versions to the current one |
//! | `envelope.rs` | [`EventEnvelope`](envelope::EventEnvelope), [`SnapshotEnvelope`](envelope::SnapshotEnvelope): the stored formats |
//! | `testkit.rs` | [`TestFramework`]: given/when/then for aggregates, no runtime |
//! | `runtime.rs` | [`Runtime`], [`RuntimeBuilder`]: start, ownership, shutdown |
//! | `config.rs` | [`RuntimeConfig`](config::RuntimeConfig), [`SnapshotPolicy`](config::SnapshotPolicy): limits and timers with their defaults |
//! | `handle.rs` | [`AggregateHandle`]: the typed command API |
//! | `ownership.rs` | `KafkaOwnership` (feature `kafka`): partition ownership through the consumer group |
//! | `shared.rs` | the state the runtime core shares: live actors, shards and their messages, admission, passivation |
//! | `pause.rs` | noticing a pause of this process; the runtime's own writes held back after one |
//! | `shard.rs` | the shard actor per partition: get-or-spawn, passivation, recovery |
//! | `instance.rs` | the aggregate actor: its messages, activation on the first one, batching what queues up, passivation |
//! | `instance/execute.rs` | [`Committed`]; a batch of queued commands: decided in order, appended as one unit, answered one by one |
//! | `instance/inbox.rs` | an actor's queued commands with their replies and deadlines; one wake-up per burst |
//! | `instance/live.rs` | a live aggregate's state and arguments; writing its snapshot |
//! | `instance/guard.rs` | panics in application code (upcasters, serde) as errors |
//! | `instance/activation.rs` | activation: the snapshot, then the events after it |
//! | `partition.rs` | the recovery index, tail and checkpoint of one partition |
//! | `partition/reader.rs` | the partition's one reader of the log, its passes shared by activations |
//! | `partition/uncovered.rs` | the per-key offsets no snapshot covers yet |
//! | `dedup.rs` | the command ids an aggregate remembers, by count and by age |
//! | `log.rs` | the log model and storage seams: [`EventLog`](log::EventLog), [`SnapshotStore`](log::SnapshotStore), [`CheckpointStore`](log::CheckpointStore) |
//! | `log/testing.rs` | `Intercept`, `CountingReads` (feature `test-support`): test backends made of another one |
//! | `log/memory.rs` | [`MemoryLog`](log::MemoryLog): for tests |
//! | `log/embedded.rs` | [`EmbeddedLog`]: the durable default, group-committed |
//! | `log/embedded/builder.rs` | [`EmbeddedLogBuilder`](log::EmbeddedLogBuilder): options, and opening a directory |
//! | `log/embedded/writer.rs` | the writer thread: group commits and their answers |
//! | `log/embedded/store.rs` | the fjall keyspaces: partition count, stored ends, reads |
//! | `log/embedded/segment.rs` | segments: many records in one store value |
//! | `log/embedded/keys.rs` | the store's key codecs |
//! | `log/embedded/acked_ends.rs` | the `acked-ends` file: acknowledged ends across restarts |
//! | `log/embedded/lock.rs` | the lock file against a second opener |
//! | `log/embedded/manifest.rs` | checking fjall's manifests before fjall reads them |
//! | `log/kafka.rs` | `KafkaLog` (feature `kafka`): the facade, events reads and appends |
//! | `log/kafka/config.rs` | `KafkaConfig`: options with their defaults |
//! | `log/kafka/producer.rs` | the append path: idempotent and transactional producers |
//! | `log/kafka/transactions.rs` | the transactional producer, fenced through the consumer group (KIP-447), group-committed |
//! | `log/kafka/reader.rs` | reading a partition: pooled assigned consumers, high watermarks |
//! | `log/kafka/snapshots.rs` | the snapshot cache over the compacted snapshots topic |
//! | `log/kafka/checkpoints.rs` | checkpoints as consumer-group offsets |
//! | `log/kafka/clients.rs` | the librdkafka properties of every client |
//! | `log/kafka/topics.rs` | creating and checking topics, the settings keel relies on |
//! | `log/kafka/diagnose.rs` | explaining a failure to reach the brokers |
//! | `log/kafka/redact.rs` | secrets kept out of errors and logs |
//! | `metrics.rs` | metric names |
//! | `error.rs` | [`CommandError`], [`Error`], [`StorageError`](log::StorageError) (also in `keel::log`), [`DecodeError`](envelope::DecodeError) (also in `keel::envelope`) |
//!
//! The runtime's guarantees (ordering, durability, passivation, recovery) are written down in
//! `docs/runtime-semantics.md`.

mod aggregate;
pub mod config;
mod dedup;
pub mod envelope;
mod error;
mod handle;
mod instance;
pub mod log;
pub mod metrics;
#[cfg(feature = "kafka")]
mod ownership;
mod partition;
mod pause;
mod runtime;
mod shard;
mod shared;
mod testkit;
pub mod upcast;

pub use aggregate::Aggregate;
pub use error::{CommandError, Error};
pub use handle::{AggregateHandle, SendOptions};
pub use instance::Committed;
pub use log::embedded::EmbeddedLog;
#[cfg(feature = "kafka")]
pub use log::kafka::{KafkaConfig, KafkaLog};
#[cfg(feature = "kafka")]
pub use ownership::KafkaOwnership;
pub use runtime::{Runtime, RuntimeBuilder};
pub use testkit::TestFramework;
