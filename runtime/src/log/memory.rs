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
    records: Mutex<Vec<StoredRecord>>,
    /// The end offset, stored after every append before `appended` wakes long-polling
    /// readers (one lock, where a `watch` channel takes eight).
    end: AtomicU64,
    appended: Notify,
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
                    records: Mutex::new(Vec::new()),
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
            .flat_map(|p| lock(&p.records).clone())
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
            let first = stored.len() as Offset;
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
            let end = stored.len() as Offset;
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
            let stored = lock(&part.records);
            let start = (from as usize).min(stored.len());
            let stop = start.saturating_add(max).min(stored.len());
            Ok(stored[start..stop].to_vec())
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
