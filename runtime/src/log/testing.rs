//! [`Intercept`]: test backends that wrap another backend and change one or two calls —
//! hold appends at a gate, fail one checkpoint — without forwarding the other calls of the
//! four storage traits by hand; and [`CountingReads`], one made that way. Feature
//! `test-support`.
//!
//! ```
//! # use std::sync::atomic::{AtomicUsize, Ordering};
//! # use futures::future::BoxFuture;
//! use keel::log::testing::Intercept;
//! use keel::log::{EventLog, LogBackend, LogRecord, MemoryLog, Offset, StorageError};
//!
//! struct CountingAppends {
//!     inner: MemoryLog,
//!     appends: AtomicUsize,
//! }
//!
//! impl Intercept for CountingAppends {
//!     fn inner(&self) -> &dyn LogBackend {
//!         &self.inner
//!     }
//!     fn append(
//!         &self,
//!         partition: u32,
//!         records: Vec<LogRecord>,
//!     ) -> BoxFuture<'_, Result<Offset, StorageError>> {
//!         self.appends.fetch_add(1, Ordering::SeqCst);
//!         self.inner.append(partition, records)
//!     }
//! }
//! // `CountingAppends` is now a `LogBackend`.
//! ```

use std::time::Duration;

use futures::future::BoxFuture;

use super::{
    CheckpointStore, EventLog, LogBackend, LogRecord, Offset, SnapshotStore, StoredRecord,
};
use crate::error::StorageError;

/// A backend made of another one: every method forwards to [`inner`](Self::inner) unless
/// overridden, and every `Intercept` is a [`LogBackend`].
///
/// [`LogBackend::close`] is not forwarded (it keeps the trait's default, which does nothing):
/// the wrapped backend is closed by whoever owns it.
pub trait Intercept: Send + Sync + 'static {
    /// The backend the calls go to.
    fn inner(&self) -> &dyn LogBackend;

    /// See [`LogBackend::describe`]. Default = the inner backend's.
    fn describe(&self) -> String {
        self.inner().describe()
    }

    /// See [`LogBackend::remote_reads`]. Default = the inner backend's.
    fn remote_reads(&self) -> bool {
        self.inner().remote_reads()
    }

    /// See [`EventLog::partition_count`].
    fn partition_count(&self) -> u32 {
        self.inner().partition_count()
    }

    /// See [`EventLog::append`].
    fn append(
        &self,
        partition: u32,
        records: Vec<LogRecord>,
    ) -> BoxFuture<'_, Result<Offset, StorageError>> {
        self.inner().append(partition, records)
    }

    /// See [`EventLog::read`].
    fn read(
        &self,
        partition: u32,
        from: Offset,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<StoredRecord>, StorageError>> {
        self.inner().read(partition, from, max, wait)
    }

    /// See [`EventLog::end_offset`].
    fn end_offset(&self, partition: u32) -> BoxFuture<'_, Result<Offset, StorageError>> {
        self.inner().end_offset(partition)
    }

    /// See [`SnapshotStore::save_snapshot`].
    fn save_snapshot(
        &self,
        partition: u32,
        key: String,
        value: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        self.inner().save_snapshot(partition, key, value)
    }

    /// See [`SnapshotStore::load_snapshot`].
    fn load_snapshot(
        &self,
        partition: u32,
        key: String,
    ) -> BoxFuture<'_, Result<Option<Vec<u8>>, StorageError>> {
        self.inner().load_snapshot(partition, key)
    }

    /// See [`CheckpointStore::load_checkpoint`].
    fn load_checkpoint(
        &self,
        group: String,
        partition: u32,
    ) -> BoxFuture<'_, Result<Option<Offset>, StorageError>> {
        self.inner().load_checkpoint(group, partition)
    }

    /// See [`CheckpointStore::commit_checkpoint`].
    fn commit_checkpoint(
        &self,
        group: String,
        partition: u32,
        offset: Offset,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        self.inner().commit_checkpoint(group, partition, offset)
    }
}

impl<T: Intercept> EventLog for T {
    fn partition_count(&self) -> u32 {
        Intercept::partition_count(self)
    }
    fn append(
        &self,
        partition: u32,
        records: Vec<LogRecord>,
    ) -> BoxFuture<'_, Result<Offset, StorageError>> {
        Intercept::append(self, partition, records)
    }
    fn read(
        &self,
        partition: u32,
        from: Offset,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<StoredRecord>, StorageError>> {
        Intercept::read(self, partition, from, max, wait)
    }
    fn end_offset(&self, partition: u32) -> BoxFuture<'_, Result<Offset, StorageError>> {
        Intercept::end_offset(self, partition)
    }
}

impl<T: Intercept> SnapshotStore for T {
    fn save_snapshot(
        &self,
        partition: u32,
        key: String,
        value: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        Intercept::save_snapshot(self, partition, key, value)
    }
    fn load_snapshot(
        &self,
        partition: u32,
        key: String,
    ) -> BoxFuture<'_, Result<Option<Vec<u8>>, StorageError>> {
        Intercept::load_snapshot(self, partition, key)
    }
}

impl<T: Intercept> CheckpointStore for T {
    fn load_checkpoint(
        &self,
        group: String,
        partition: u32,
    ) -> BoxFuture<'_, Result<Option<Offset>, StorageError>> {
        Intercept::load_checkpoint(self, group, partition)
    }
    fn commit_checkpoint(
        &self,
        group: String,
        partition: u32,
        offset: Offset,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        Intercept::commit_checkpoint(self, group, partition, offset)
    }
}

impl<T: Intercept> LogBackend for T {
    fn describe(&self) -> String {
        Intercept::describe(self)
    }

    fn remote_reads(&self) -> bool {
        Intercept::remote_reads(self)
    }
}

/// A backend that counts the reads of its events ([`EventLog::read`] calls): how tests see
/// whether activations were served from memory or from the log.
pub struct CountingReads {
    inner: std::sync::Arc<dyn LogBackend>,
    reads: std::sync::atomic::AtomicU64,
    remote: bool,
}

impl CountingReads {
    /// Counts the reads of `inner`.
    pub fn new(inner: std::sync::Arc<dyn LogBackend>) -> Self {
        let remote = inner.remote_reads();
        CountingReads {
            inner,
            reads: std::sync::atomic::AtomicU64::new(0),
            remote,
        }
    }

    /// Says its reads are remote ([`LogBackend::remote_reads`]) whatever the inner backend
    /// says: an in-process log standing for a broker.
    pub fn as_remote(mut self) -> Self {
        self.remote = true;
        self
    }

    /// The reads since the last call.
    pub fn take_reads(&self) -> u64 {
        self.reads.swap(0, std::sync::atomic::Ordering::SeqCst)
    }
}

impl Intercept for CountingReads {
    fn inner(&self) -> &dyn LogBackend {
        &*self.inner
    }

    fn remote_reads(&self) -> bool {
        self.remote
    }

    fn read(
        &self,
        partition: u32,
        from: Offset,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<StoredRecord>, StorageError>> {
        self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.read(partition, from, max, wait)
    }
}
