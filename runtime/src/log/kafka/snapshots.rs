//! The snapshot cache: per partition, the latest snapshot of every key in the compacted
//! snapshots topic.
//!
//! Kafka cannot look a record up by key, so the first load from a partition reads that
//! partition of the snapshots topic to its end into a map; from then on this log's own
//! acknowledged writes keep the map current. Writes by another instance (a previous owner of
//! the partition) are picked up by [`KafkaLog::refresh_snapshots`](crate::KafkaLog), which
//! reads on from where the cache stopped.

use std::collections::HashMap;

use crate::log::Offset;

/// The cached snapshots of one partition.
#[derive(Default)]
pub(super) struct PartitionSnapshots {
    /// Key → (offset of the snapshot record, value).
    pub(super) latest: HashMap<String, (Offset, Vec<u8>)>,
    /// The offset up to which the topic has been read into `latest`.
    pub(super) read_to: Offset,
}

impl PartitionSnapshots {
    /// Records the snapshot at `offset`, unless a later one of the same key is already known
    /// (acknowledgements of concurrent writes may be applied out of order).
    pub(super) fn record(&mut self, key: String, offset: Offset, value: Vec<u8>) {
        match self.latest.get(&key) {
            Some((known, _)) if *known > offset => {}
            _ => {
                self.latest.insert(key, (offset, value));
            }
        }
    }
}
