//! The log model every backend shares: topics of partitions of offset-addressed, keyed records.
//!
//! keel stores three things, all Kafka-shaped:
//! - **events** ([`EventLog`]): key = aggregate key `"{TYPE}/{id}"`, value = an encoded
//!   [`EventEnvelope`](crate::envelope::EventEnvelope). A key always maps to the same partition
//!   ([`partition_for`]), so one aggregate's events are in one partition, in order.
//! - **snapshots** ([`SnapshotStore`]): the latest snapshot per aggregate key, co-partitioned
//!   with the events.
//! - **checkpoints** ([`CheckpointStore`]): a committed offset per (group, partition).
//!
//! Every backend gives the same guarantees; the conformance suite in `tests/` checks them:
//! - `append` is all-or-nothing per call, assigns consecutive offsets in call order, and its
//!   future resolves only once the records are durable *as the backend defines it*
//!   (fsync for [`EmbeddedLog`](crate::EmbeddedLog), broker ack for Kafka, nothing for
//!   [`MemoryLog`]).
//! - `read` returns records in offset order, never a record that was not acknowledged.
//! - `end_offset` is the offset the next append will get (Kafka's high watermark).

use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub use crate::error::StorageError;

pub(crate) mod embedded;
#[cfg(feature = "kafka")]
pub(crate) mod kafka;
mod memory;
#[cfg(feature = "test-support")]
pub mod testing;

pub use embedded::EmbeddedLogBuilder;
pub use memory::MemoryLog;

/// An offset within one partition.
pub type Offset = u64;

/// Where a record is in the log: its partition and offset.
///
/// A command's reply carries the position of its last event; a projection that has passed it
/// has seen the command's effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    /// The partition.
    pub partition: u32,
    /// The offset within the partition.
    pub offset: Offset,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.partition, self.offset)
    }
}

/// A record to append: key and encoded value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// The record key (the aggregate key for events and snapshots).
    pub key: String,
    /// The encoded value.
    pub value: Vec<u8>,
}

/// A record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Where the record is.
    pub position: Position,
    /// The record key.
    pub key: String,
    /// The encoded value.
    pub value: Vec<u8>,
}

/// The events topic: partitioned, append-only, offset-addressed.
pub trait EventLog: Send + Sync + 'static {
    /// The number of partitions; fixed for the life of the log.
    fn partition_count(&self) -> u32;

    /// Appends `records` to `partition`, in order, as one unit. Resolves with the offset of the
    /// first record once all of them are durable; on error none of them is acknowledged.
    fn append(
        &self,
        partition: u32,
        records: Vec<LogRecord>,
    ) -> BoxFuture<'_, Result<Offset, StorageError>>;

    /// Reads up to `max` records of `partition` starting at offset `from`. When none is
    /// available yet, waits up to `wait` for one (a long poll, like a Kafka fetch).
    fn read(
        &self,
        partition: u32,
        from: Offset,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<StoredRecord>, StorageError>>;

    /// The offset the next record appended to `partition` will get.
    fn end_offset(&self, partition: u32) -> BoxFuture<'_, Result<Offset, StorageError>>;
}

/// The snapshots topic: the latest snapshot value per aggregate key.
pub trait SnapshotStore: Send + Sync + 'static {
    /// Stores `value` as the latest snapshot of `key`; durable when the future resolves.
    fn save_snapshot(
        &self,
        partition: u32,
        key: String,
        value: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), StorageError>>;

    /// The latest snapshot of `key`, if any.
    fn load_snapshot(
        &self,
        partition: u32,
        key: String,
    ) -> BoxFuture<'_, Result<Option<Vec<u8>>, StorageError>>;
}

/// Committed offsets per consumer group and partition.
pub trait CheckpointStore: Send + Sync + 'static {
    /// The last offset committed for `group` on `partition`, if any.
    fn load_checkpoint(
        &self,
        group: String,
        partition: u32,
    ) -> BoxFuture<'_, Result<Option<Offset>, StorageError>>;

    /// Commits `offset` for `group` on `partition`; durable when the future resolves.
    fn commit_checkpoint(
        &self,
        group: String,
        partition: u32,
        offset: Offset,
    ) -> BoxFuture<'_, Result<(), StorageError>>;
}

/// A complete backend: events, snapshots and checkpoints.
pub trait LogBackend: EventLog + SnapshotStore + CheckpointStore {
    /// A short name for logs and errors ("memory", "embedded:/path", "kafka:host:port").
    fn describe(&self) -> String;

    /// Whether reading records back is a round trip to another process (a broker). The
    /// runtime keeps a partition's recent events in memory (its tail, see
    /// [`RuntimeConfig::tail_cache_bytes`](crate::config::RuntimeConfig::tail_cache_bytes)) by default
    /// only for such backends: from an in-process store a read costs about what the tail
    /// would save. Default = false.
    fn remote_reads(&self) -> bool {
        false
    }

    /// Flushes and releases the backend; called once by a graceful shutdown.
    fn close(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async { Ok(()) })
    }
}

/// The long poll of the in-process backends: waits up to `wait` until the published end of a
/// partition passes `from` (returns at once when it already has, or when `wait` is zero).
pub(crate) async fn wait_past(
    mut end: tokio::sync::watch::Receiver<Offset>,
    from: Offset,
    wait: Duration,
) {
    if *end.borrow_and_update() <= from && !wait.is_zero() {
        let _ = tokio::time::timeout(wait, end.wait_for(|end| *end > from)).await;
    }
}

/// The partition of `key` among `partitions`: Kafka's default partitioner (murmur2 of the key
/// bytes, sign bit cleared, modulo the count), so external Kafka producers agree with keel.
pub fn partition_for(key: &str, partitions: u32) -> u32 {
    debug_assert!(partitions > 0);
    (murmur2(key.as_bytes()) & 0x7fff_ffff) % partitions
}

/// The hasher of the maps the command path looks aggregate keys up in: foldhash, seeded per
/// map; several times faster than SipHash on keys this short, and still seeded against keys
/// crafted to collide.
pub(crate) type KeyHasher = foldhash::fast::RandomState;

/// The aggregate key of an aggregate instance: `"{TYPE}/{id}"`.
pub fn aggregate_key(aggregate_type: &str, id: &str) -> String {
    let mut key = String::with_capacity(aggregate_type.len() + 1 + id.len());
    key.push_str(aggregate_type);
    key.push('/');
    key.push_str(id);
    key
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), seed 0x9747b28c.
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut h: u32 = SEED ^ (length as u32);
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for chunk in chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// Where a record sits, for error messages.
pub(crate) fn at(key: &str, position: Position) -> String {
    format!(
        "aggregate {}, partition {}, offset {}",
        crate::error::short(key),
        position.partition,
        position.offset
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka_reference_values() {
        // The values of Kafka's own UtilsTest.testMurmur2.
        let cases: [(&str, i32); 6] = [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ];
        for (input, expected) in cases {
            assert_eq!(
                murmur2(input.as_bytes()) as i32,
                expected,
                "murmur2({input:?})"
            );
        }
    }

    #[test]
    fn a_key_always_maps_to_one_partition_in_range() {
        for i in 0..1000 {
            let key = aggregate_key("StockItem", &format!("store-{i}"));
            let p = partition_for(&key, 12);
            assert!(p < 12);
            assert_eq!(p, partition_for(&key, 12));
        }
    }
}
