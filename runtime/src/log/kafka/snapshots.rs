//! The snapshot cache: per partition, the latest snapshot of every key in the compacted
//! snapshots topic.
//!
//! Kafka cannot look a record up by key, so the first load from a partition reads that
//! partition of the snapshots topic to its end into a map; from then on this log's own
//! acknowledged writes keep the map current. Writes by another instance (a previous owner of
//! the partition) are picked up by [`KafkaLog::refresh_snapshots`](crate::KafkaLog), which
//! reads on from where the cache stopped.

use std::collections::HashMap;

use std::sync::atomic::Ordering;

use futures::future::BoxFuture;

use super::KafkaLog;
use crate::error::StorageError;
use crate::log::{Offset, SnapshotStore};

/// How many snapshot records one step of reading the snapshots topic asks for.
pub(super) const SNAPSHOT_READ_BATCH: usize = 1024;

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

impl KafkaLog {
    /// Reads the snapshots another instance wrote to `partition` since this log last read
    /// them. Call it when this instance (re)gains a partition; until a partition's snapshots
    /// are first loaded there is nothing to refresh.
    pub async fn refresh_snapshots(&self, partition: u32) -> Result<(), StorageError> {
        self.check_partition(partition)?;
        let mut cache = self.snapshots[partition as usize].lock().await;
        if let Some(cached) = cache.as_mut() {
            self.catch_up_snapshots(partition, cached).await?;
        }
        Ok(())
    }

    /// Reads `partition` of the snapshots topic from where `cached` stopped to its current end.
    pub(super) async fn catch_up_snapshots(
        &self,
        partition: u32,
        cached: &mut PartitionSnapshots,
    ) -> Result<(), StorageError> {
        let topic = &self.snapshots_topic;
        let acked_end = self.snapshots_acked_end[partition as usize].load(Ordering::Acquire);
        let end = self.high_watermark(topic, partition).await?.max(acked_end);
        while cached.read_to < end {
            let records = self
                .read_topic(
                    topic,
                    partition,
                    cached.read_to,
                    SNAPSHOT_READ_BATCH,
                    self.config.request_timeout,
                    end,
                )
                .await?;
            if records.is_empty() && self.transactions.is_some() {
                // Offsets without a committed record (commit markers) end the partition; the
                // reader returns nothing once every committed record below `end` was read.
                break;
            }
            if records.is_empty() {
                return Err(StorageError::io(
                    self.at(
                        "loading snapshots from",
                        topic,
                        partition,
                        Some(cached.read_to),
                    ),
                    std::io::Error::other(format!(
                        "no records within {:?}, though the partition ends at offset {end}",
                        self.config.request_timeout
                    )),
                ));
            }
            for record in records {
                cached.read_to = record.position.offset + 1;
                cached.record(record.key, record.position.offset, record.value);
            }
        }
        Ok(())
    }
}

impl SnapshotStore for KafkaLog {
    fn save_snapshot(
        &self,
        partition: u32,
        key: String,
        value: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            self.check_partition(partition)?;
            let topic = &self.snapshots_topic;
            let size = key.len() + value.len();
            if size > self.config.max_snapshot_bytes {
                return Err(StorageError::TooLarge {
                    context: format!(
                        "{} (snapshot of {key})",
                        self.at("writing to", topic, partition, None)
                    ),
                    size,
                    limit: self.config.max_snapshot_bytes,
                    setting: "KafkaConfig::max_snapshot_bytes",
                });
            }
            let offset = match &self.transactions {
                Some(txn) => {
                    let records = vec![(key.clone(), value.clone())];
                    self.append_transactional(txn, topic, partition, records)
                        .await?
                }
                None => {
                    let producer = self.producer();
                    let delivery = self
                        .enqueue(&producer, topic, partition, &key, &value)
                        .await?;
                    self.delivered(&producer, delivery, topic, partition, || {
                        format!("snapshot of {key}")
                    })
                    .await?
                }
            };
            self.snapshots_acked_end[partition as usize].fetch_max(offset + 1, Ordering::AcqRel);
            if let Some(cached) = self.snapshots[partition as usize].lock().await.as_mut() {
                cached.record(key, offset, value);
            }
            Ok(())
        })
    }

    fn load_snapshot(
        &self,
        partition: u32,
        key: String,
    ) -> BoxFuture<'_, Result<Option<Vec<u8>>, StorageError>> {
        Box::pin(async move {
            self.check_partition(partition)?;
            let mut cache = self.snapshots[partition as usize].lock().await;
            let cached = match cache.as_mut() {
                Some(cached) => cached,
                None => {
                    let mut loaded = PartitionSnapshots::default();
                    self.catch_up_snapshots(partition, &mut loaded).await?;
                    cache.insert(loaded)
                }
            };
            Ok(cached.latest.get(&key).map(|(_, value)| value.clone()))
        })
    }
}
