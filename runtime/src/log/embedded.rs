//! [`EmbeddedLog`]: the default, durable, single-process backend, on the fjall LSM store.
//!
//! # Durability
//!
//! Every write (appends, snapshots, checkpoints) goes through one writer thread. It takes
//! everything queued (up to [`EmbeddedLogBuilder::max_batch_records`]), writes it as one atomic
//! fjall batch, fsyncs the journal once (`PersistMode::SyncAll`), and only then publishes the new
//! end offsets to readers and answers the callers. So when an `append` resolves, its records are
//! on disk; a record that was never acknowledged is never returned by `read`. A failed fsync
//! fails the whole batch, and fjall refuses every later write (it cannot know what reached the
//! disk), so the log fails closed instead of acknowledging on top of a hole.
//!
//! # Segments
//!
//! A group commit stores the records it appends to one partition as one fjall value, a
//! *segment* keyed by the partition and the offset of its first record (a new segment starts
//! once one holds [`segment::SEGMENT_TARGET_BYTES`]), so a commit of a thousand one-record appends is a
//! handful of inserts rather than a thousand. A read seeks the last segment starting at or
//! before `from` and slices it; every later segment must start where the previous one ended,
//! so a missing or malformed segment is an error naming the offset, never a gap. Segments are
//! written inside the commit's atomic batch, so an append is still all-or-nothing whichever
//! segments its records land in. Values written before segments existed (one record each) read
//! as one-record segments.
//!
//! Measured with `baseline/embedded_append/1024` of the commands bench (1024 tasks each
//! appending one 180-byte record at a time, 8 partitions, 2 cores, a busy machine): about
//! 110 K records/s with one fjall entry per record, about 370 K/s with segments. With 1 task
//! the rate is one fsync per append either way (~3.5–4.5 K/s).
//!
//! # Why fjall
//!
//! Measured on the development machine (2 cores, ext4 on a virtual disk, ~200-byte values,
//! one writer, every commit fsync'd; three runs on a busy machine, so ranges):
//!
//! | records per commit | fjall records/s | redb records/s |
//! |---|---|---|
//! | 1 | 266–476 | 257–292 |
//! | 64 | 16k–31k | 14.8k–17.7k |
//! | 1024 | 162k–210k | 125k–138k |
//!
//! fjall was ahead in every run: its commit is an append to a checksummed journal plus one fsync; redb's copy-on-write
//! B-tree commit writes more pages per commit. fjall also fits the shape: atomic batches across
//! keyspaces (events, snapshots and checkpoints of one group commit land together), a journal
//! that drops a torn final batch on recovery, and a lock file against a second opener.
//!
//! # Torn and corrupt tails
//!
//! fjall discards an incomplete or undecodable journal tail when it opens. After a crash that
//! tail is the batch that was being written and was never acknowledged. To tell that apart from
//! damage that removed acknowledged records, the writer also keeps the file `acked-ends`: the
//! end offset of every partition as of a recent group commit (rewritten atomically at most every
//! [`EmbeddedLogBuilder::acked_ends_interval`] and on close). Opening a store whose partitions
//! end before those offsets fails with [`StorageError::Corrupt`] naming the store and that file,
//! instead of silently serving a shorter log. A checksum failure inside the journal or a table
//! fails the open with fjall's error and the store's path.
//!
//! # Files
//!
//! ```text
//! DIR/keel.lock    held (flock) while an EmbeddedLog has DIR open
//! DIR/acked-ends   acknowledged end offsets per partition, see above
//! DIR/store/       the fjall database: keyspaces events, snapshots, checkpoints, meta
//! ```
//!
//! # Layout
//!
//! | file | concept |
//! |---|---|
//! | `embedded.rs` | [`EmbeddedLog`]: the facade, the storage traits, the request queue |
//! | `embedded/builder.rs` | [`EmbeddedLogBuilder`]: options, and opening a directory |
//! | `embedded/writer.rs` | the writer thread: group commits, answers, the first failure |
//! | `embedded/store.rs` | the fjall keyspaces: partition count, stored ends, reads |
//! | `embedded/segment.rs` | the segment codec: many records in one store value |
//! | `embedded/keys.rs` | the store's key codecs: events, snapshots, checkpoints |
//! | `embedded/acked_ends.rs` | the `acked-ends` file: acknowledged ends across restarts |
//! | `embedded/lock.rs` | the lock file against a second opener |
//! | `embedded/manifest.rs` | checking fjall's keyspace manifests before fjall reads them |

mod acked_ends;
mod builder;
mod keys;
mod lock;
mod manifest;
mod segment;
mod store;
#[cfg(test)]
mod tests;
mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::StorageError;
use crate::log::{
    CheckpointStore, EventLog, LogBackend, LogRecord, Offset, SnapshotStore, StoredRecord,
};

pub use builder::EmbeddedLogBuilder;
use keys::{checkpoint_key, snapshot_key};
use store::Store;
use writer::Request;

/// A durable, group-committed log in a local directory, on the fjall store: one writer thread
/// batches every queued append into one atomic write and one fsync, and answers only after it.
///
/// One process (and one `EmbeddedLog`) may have a directory open at a time. Dropping it stops
/// the writer thread after the requests already queued are written, and waits for it.
pub struct EmbeddedLog {
    dir: PathBuf,
    store: Store,
    ends: Arc<[watch::Sender<Offset>]>,
    requests: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    // Declared last so the lock is released only after the store is closed.
    _lock: File,
}

impl EmbeddedLog {
    /// Opens (or creates) the log in `dir` with `partitions` partitions and default options.
    pub fn open(dir: impl AsRef<Path>, partitions: u32) -> Result<EmbeddedLog, StorageError> {
        EmbeddedLogBuilder::new(dir).partitions(partitions).open()
    }

    /// Options for the log in `dir`; see [`EmbeddedLogBuilder`].
    pub fn builder(dir: impl AsRef<Path>) -> EmbeddedLogBuilder {
        EmbeddedLogBuilder::new(dir)
    }

    /// The directory the log lives in.
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    fn end(&self, partition: u32) -> Result<&watch::Sender<Offset>, StorageError> {
        self.ends
            .get(partition as usize)
            .ok_or_else(|| StorageError::NoSuchPartition {
                context: self.dir.display().to_string(),
                partition,
                count: self.ends.len() as u32,
            })
    }

    /// Queues `request` for the writer and waits for its answer.
    async fn submit<T>(
        &self,
        what: impl Fn() -> String,
        make: impl FnOnce(oneshot::Sender<Result<T, StorageError>>) -> Request,
    ) -> Result<T, StorageError> {
        let closed = || StorageError::Closed(format!("{}: {}", self.dir.display(), what()));
        let requests = self.requests.as_ref().ok_or_else(closed)?;
        let (reply, answer) = oneshot::channel();
        requests.send(make(reply)).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

impl Drop for EmbeddedLog {
    fn drop(&mut self) {
        // Closing the channel lets the writer finish what is queued, record the acknowledged
        // ends and exit; waiting for it means the store is released when `drop` returns, so
        // the directory can be reopened right away.
        self.requests = None;
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!(dir = %self.dir.display(), "embedded log writer thread panicked");
        }
    }
}

impl EventLog for EmbeddedLog {
    fn partition_count(&self) -> u32 {
        self.ends.len() as u32
    }

    fn append(
        &self,
        partition: u32,
        records: Vec<LogRecord>,
    ) -> BoxFuture<'_, Result<Offset, StorageError>> {
        Box::pin(async move {
            self.end(partition)?;
            self.submit(
                || format!("append to partition {partition}"),
                |reply| Request::Append {
                    partition,
                    records,
                    reply,
                },
            )
            .await
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
            let end = self.end(partition)?.subscribe();
            crate::log::wait_past(end.clone(), from, wait).await;
            // Only offsets below the published end are acknowledged; records the writer has
            // put in the store but not yet fsync'd are beyond it.
            let end = *end.borrow();
            let stop = end.min(from.saturating_add(max as Offset));
            if from >= stop {
                return Ok(Vec::new());
            }
            self.store.read(partition, from, stop)
        })
    }

    fn end_offset(&self, partition: u32) -> BoxFuture<'_, Result<Offset, StorageError>> {
        Box::pin(async move { Ok(*self.end(partition)?.borrow()) })
    }
}

impl SnapshotStore for EmbeddedLog {
    fn save_snapshot(
        &self,
        partition: u32,
        key: String,
        value: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            self.end(partition)?;
            self.submit(
                || format!("saving a snapshot in partition {partition}"),
                |reply| Request::Snapshot {
                    partition,
                    key,
                    value,
                    reply,
                },
            )
            .await
        })
    }

    fn load_snapshot(
        &self,
        partition: u32,
        key: String,
    ) -> BoxFuture<'_, Result<Option<Vec<u8>>, StorageError>> {
        Box::pin(async move {
            self.end(partition)?;
            self.store
                .snapshots
                .get(snapshot_key(partition, &key))
                .map(|value| value.map(|v| v.to_vec()))
                .map_err(|e| {
                    StorageError::io(
                        format!(
                            "{}: loading the snapshot of {} (partition {partition})",
                            self.store.path.display(),
                            crate::error::short(&key)
                        ),
                        e,
                    )
                })
        })
    }
}

impl CheckpointStore for EmbeddedLog {
    fn load_checkpoint(
        &self,
        group: String,
        partition: u32,
    ) -> BoxFuture<'_, Result<Option<Offset>, StorageError>> {
        Box::pin(async move {
            let context = || {
                format!(
                    "{}: checkpoint of group {group:?}, partition {partition}",
                    self.store.path.display()
                )
            };
            let Some(value) = self
                .store
                .checkpoints
                .get(checkpoint_key(&group, partition))
                .map_err(|e| StorageError::io(context(), e))?
            else {
                return Ok(None);
            };
            let bytes: [u8; 8] = value
                .as_ref()
                .try_into()
                .map_err(|_| StorageError::Corrupt {
                    context: context(),
                    detail: format!("expected 8 bytes, found {}", value.len()),
                })?;
            Ok(Some(Offset::from_be_bytes(bytes)))
        })
    }

    fn commit_checkpoint(
        &self,
        group: String,
        partition: u32,
        offset: Offset,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            self.end(partition)?;
            self.submit(
                || format!("committing a checkpoint for partition {partition}"),
                |reply| Request::Checkpoint {
                    group,
                    partition,
                    offset,
                    reply,
                },
            )
            .await
        })
    }
}

impl LogBackend for EmbeddedLog {
    fn describe(&self) -> String {
        format!("embedded:{}", self.dir.display())
    }

    /// Writes everything queued before it, records the acknowledged ends and stops accepting
    /// writes (they fail with [`StorageError::Closed`]); reads keep working until the log is
    /// dropped.
    fn close(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            match self
                .submit(|| "close".to_owned(), |reply| Request::Close { reply })
                .await
            {
                Err(StorageError::Closed(_)) => Ok(()),
                other => other,
            }
        })
    }
}
