//! keel: an embeddable event-sourcing runtime.

mod aggregate;
mod envelope;
mod error;
mod log;

pub use aggregate::Aggregate;
pub use envelope::{EventEnvelope, SnapshotEnvelope, UpcastFn, Upcasters};
pub use error::{CommandError, DecodeError, Error, StorageError};
pub use log::memory::MemoryLog;
pub use log::{
    CheckpointStore, EventLog, LogBackend, LogRecord, Offset, Position, SnapshotStore,
    StoredRecord, aggregate_key, partition_for,
};
