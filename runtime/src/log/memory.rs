//! [`MemoryLog`]: the whole log in process memory, for tests. Nothing is durable.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use futures::future::BoxFuture;
use tokio::sync::Notify;

use crate::error::StorageError;
use crate::log::{
    CheckpointStore, EventLog, LogBackend, LogRecord, Offset, Position, SnapshotStore, StoredRecord,
};

/// An in-memory log with the same semantics as the durable backends, minus durability.
///
/// It can be told to fail the next appends ([`MemoryLog::fail_next_appends`]) to exercise
/// the runtime's failure handling.
pub struct MemoryLog {
    partitions: Vec<MemoryPartition>,
    snapshots: DashMap<String, Vec<u8>>,
    checkpoints: DashMap<(String, u32), Offset>,
    failing_appends: AtomicU32,
    lost_acks: AtomicU32,
}

struct MemoryPartition {
    records: Mutex<Records>,
    /// The end offset, stored after every append before `appended` wakes long-polling
    /// readers (one lock, where a `watch` channel takes eight).
    end: AtomicU64,
    appended: Notify,
}

/// How many records one chunk of a partition holds.
const CHUNK: usize = 4096;

/// A partition's records in chunks of [`CHUNK`], so a growing log never copies what it
/// holds (one `Vec` would move every record each time it doubles).
#[derive(Default)]
struct Records {
    chunks: Vec<Vec<StoredRecord>>,
    len: usize,
}

impl Records {
    fn push(&mut self, record: StoredRecord) {
        if self.len.is_multiple_of(CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        if let Some(chunk) = self.chunks.last_mut() {
            chunk.push(record);
            self.len += 1;
        }
    }

    /// Up to `max` records from offset `from` on.
    fn slice(&self, from: usize, max: usize) -> Vec<StoredRecord> {
        let stop = from.saturating_add(max).min(self.len);
        (from.min(stop)..stop)
            .map(|offset| self.chunks[offset / CHUNK][offset % CHUNK].clone())
            .collect()
    }
}

impl MemoryPartition {
    /// Waits up to `wait` for the end to pass `from`.
    async fn wait_past(&self, from: Offset, wait: Duration) {
        if wait.is_zero() || self.end.load(Ordering::Acquire) > from {
            return;
        }
        let _ = tokio::time::timeout(wait, async {
            loop {
                let appended = self.appended.notified();
                tokio::pin!(appended);
                appended.as_mut().enable();
                if self.end.load(Ordering::Acquire) > from {
                    return;
                }
                appended.await;
            }
        })
        .await;
    }
}

impl MemoryLog {
    /// A log with `partitions` partitions (at least one).
    pub fn new(partitions: u32) -> Self {
        let partitions = partitions.max(1);
        MemoryLog {
            partitions: (0..partitions)
                .map(|_| MemoryPartition {
                    records: Mutex::new(Records::default()),
                    end: AtomicU64::new(0),
                    appended: Notify::new(),
                })
                .collect(),
            snapshots: DashMap::new(),
            checkpoints: DashMap::new(),
            failing_appends: AtomicU32::new(0),
            lost_acks: AtomicU32::new(0),
        }
    }

    /// Makes the next `count` appends fail with a storage error (and append nothing).
    pub fn fail_next_appends(&self, count: u32) {
        self.failing_appends.store(count, Ordering::SeqCst);
    }

    /// Makes the next `count` appends write their records but answer with an error, like an
    /// acknowledgement lost on the way back.
    pub fn lose_next_acks(&self, count: u32) {
        self.lost_acks.store(count, Ordering::SeqCst);
    }

    /// Every record of every partition, for assertions in tests.
    pub fn all_records(&self) -> Vec<StoredRecord> {
        self.partitions
            .iter()
            .flat_map(|p| {
                let records = lock(&p.records);
                records.slice(0, records.len)
            })
            .collect()
    }

    /// How many snapshots are stored per key, for assertions in tests.
    pub fn snapshot_keys(&self) -> HashMap<String, usize> {
        self.snapshots
            .iter()
            .map(|e| (e.key().clone(), e.value().len()))
            .collect()
    }

    fn partition(&self, partition: u32) -> Result<&MemoryPartition, StorageError> {
        self.partitions
            .get(partition as usize)
            .ok_or_else(|| StorageError::NoSuchPartition {
                context: "memory log".into(),
                partition,
                count: self.partitions.len() as u32,
            })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the Vec half-written (push is atomic with
    // respect to unwinding), so a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl EventLog for MemoryLog {
    fn partition_count(&self) -> u32 {
        self.partitions.len() as u32
    }

    fn append(
        &self,
        partition: u32,
        records: Vec<LogRecord>,
    ) -> BoxFuture<'_, Result<Offset, StorageError>> {
        Box::pin(async move {
            let part = self.partition(partition)?;
            if self
                .failing_appends
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(StorageError::io(
                    format!("memory log append to partition {partition}"),
                    std::io::Error::other("injected failure"),
                ));
            }
            let mut stored = lock(&part.records);
            let first = stored.len as Offset;
            for (i, record) in records.into_iter().enumerate() {
                stored.push(StoredRecord {
                    position: Position {
                        partition,
                        offset: first + i as Offset,
                    },
                    key: record.key,
                    value: record.value,
                });
            }
            let end = stored.len as Offset;
            drop(stored);
            part.end.fetch_max(end, Ordering::Release);
            part.appended.notify_waiters();
            if self
                .lost_acks
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(StorageError::io(
                    format!("memory log append to partition {partition}"),
                    std::io::Error::other("injected lost acknowledgement"),
                ));
            }
            Ok(first)
        })
    }

    fn read(
        &self,
        partition: u32,
        from: Offset,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<StoredRecord>, StorageError>> {
        Box::pin(async move {
            let part = self.partition(partition)?;
            part.wait_past(from, wait).await;
            let from = usize::try_from(from).unwrap_or(usize::MAX);
            Ok(lock(&part.records).slice(from, max))
        })
    }

    fn end_offset(&self, partition: u32) -> BoxFuture<'_, Result<Offset, StorageError>> {
        Box::pin(async move { Ok(self.partition(partition)?.end.load(Ordering::Acquire)) })
    }
}

impl SnapshotStore for MemoryLog {
    fn save_snapshot(
        &self,
        _partition: u32,
        key: String,
        value: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        self.snapshots.insert(key, value);
        Box::pin(async { Ok(()) })
    }

    fn load_snapshot(
        &self,
        _partition: u32,
        key: String,
    ) -> BoxFuture<'_, Result<Option<Vec<u8>>, StorageError>> {
        let value = self.snapshots.get(&key).map(|v| v.clone());
        Box::pin(async move { Ok(value) })
    }
}

impl CheckpointStore for MemoryLog {
    fn load_checkpoint(
        &self,
        group: String,
        partition: u32,
    ) -> BoxFuture<'_, Result<Option<Offset>, StorageError>> {
        let value = self.checkpoints.get(&(group, partition)).map(|v| *v);
        Box::pin(async move { Ok(value) })
    }

    fn commit_checkpoint(
        &self,
        group: String,
        partition: u32,
        offset: Offset,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        self.checkpoints.insert((group, partition), offset);
        Box::pin(async { Ok(()) })
    }
}

impl LogBackend for MemoryLog {
    fn describe(&self) -> String {
        format!("memory({} partitions)", self.partitions.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_cross_chunks_in_order() {
        let log = MemoryLog::new(1);
        for batch in 0..(3 * CHUNK / 100 + 1) {
            let records = (0..100)
                .map(|i| LogRecord {
                    key: format!("k{}", batch * 100 + i),
                    value: vec![1],
                })
                .collect();
            log.append(0, records).await.expect("append");
        }
        let end = log.end_offset(0).await.expect("end");
        assert_eq!(end as usize, (3 * CHUNK / 100 + 1) * 100);
        for from in [
            0,
            CHUNK - 3,
            2 * CHUNK - 1,
            end as usize - 2,
            end as usize + 5,
        ] {
            let read = log
                .read(0, from as Offset, 10, Duration::ZERO)
                .await
                .expect("read");
            let expected: Vec<usize> = (from..(from + 10).min(end as usize)).collect();
            let got: Vec<usize> = read.iter().map(|r| r.position.offset as usize).collect();
            assert_eq!(got, expected, "from {from}");
            for r in &read {
                assert_eq!(r.key, format!("k{}", r.position.offset));
            }
        }
    }
}
