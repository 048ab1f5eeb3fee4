//! The writer thread of an [`EmbeddedLog`](super::EmbeddedLog): it owns the next offset of
//! every partition, takes everything queued as one group commit (one atomic fjall batch, one
//! fsync), then publishes the new ends and answers.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fjall::PersistMode;
use tokio::sync::{mpsc, oneshot, watch};

use super::acked_ends::write_acked_ends;
use super::keys::{checkpoint_key, event_key, snapshot_key};
use super::segment::SegmentWriter;
use super::store::Store;
use crate::error::StorageError;
use crate::log::{LogRecord, Offset};

/// A write queued for the writer thread, with the channel its answer goes to.
pub(super) enum Request {
    Append {
        partition: u32,
        records: Vec<LogRecord>,
        reply: oneshot::Sender<Result<Offset, StorageError>>,
    },
    Snapshot {
        partition: u32,
        key: String,
        value: Vec<u8>,
        reply: oneshot::Sender<Result<(), StorageError>>,
    },
    Checkpoint {
        group: String,
        partition: u32,
        offset: Offset,
        reply: oneshot::Sender<Result<(), StorageError>>,
    },
    Close {
        reply: oneshot::Sender<Result<(), StorageError>>,
    },
}

impl Request {
    /// How many store entries the request writes; a batch is capped by the sum.
    fn weight(&self) -> usize {
        match self {
            Request::Append { records, .. } => records.len(),
            Request::Snapshot { .. } | Request::Checkpoint { .. } => 1,
            Request::Close { .. } => 0,
        }
    }
}

/// The single writer: owns the next offset of every partition and group-commits requests.
pub(super) struct Writer {
    pub(super) store: Store,
    pub(super) ends: Arc<[watch::Sender<Offset>]>,
    /// The next offset per partition; advanced only after a commit is durable.
    pub(super) next: Vec<Offset>,
    pub(super) max_batch_records: usize,
    pub(super) acked_path: PathBuf,
    pub(super) acked_written: Option<Vec<Offset>>,
    pub(super) acked_ends_interval: Duration,
    pub(super) last_acked_write: Instant,
    /// The failure of the first commit that failed. fjall takes no write after a failed
    /// one (it answers "poisoned"), so every later failure names this cause: "no space
    /// left on device" rather than "poisoned".
    pub(super) first_failure: Option<Arc<fjall::Error>>,
}

/// A commit that failed because an earlier one did: the store takes no more writes until
/// it is reopened.
#[derive(Debug)]
struct AfterFailure {
    error: fjall::Error,
    first: Arc<fjall::Error>,
}

impl std::fmt::Display for AfterFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} — the store takes no writes until reopened, after an earlier commit failed: {}",
            self.error, self.first
        )
    }
}

impl std::error::Error for AfterFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.first)
    }
}

/// A request's answer, held until the batch it is in has been committed.
enum Pending {
    Append {
        partition: u32,
        first: Offset,
        reply: oneshot::Sender<Result<Offset, StorageError>>,
    },
    Done {
        what: String,
        reply: oneshot::Sender<Result<(), StorageError>>,
    },
}

impl Writer {
    pub(super) fn run(mut self, mut receiver: mpsc::Receiver<Request>) {
        let mut carried: Option<Request> = None;
        let mut close_reply = None;
        loop {
            let first = match carried.take() {
                Some(request) => request,
                None => match receiver.blocking_recv() {
                    Some(request) => request,
                    None => break,
                },
            };
            let mut weight = first.weight();
            let mut batch = vec![first];
            while weight < self.max_batch_records {
                if matches!(batch.last(), Some(Request::Close { .. })) {
                    break;
                }
                match receiver.try_recv() {
                    Ok(request) if weight + request.weight() > self.max_batch_records => {
                        carried = Some(request);
                        break;
                    }
                    Ok(request) => {
                        weight += request.weight();
                        batch.push(request);
                    }
                    Err(_) => break,
                }
            }
            if let Some(Request::Close { .. }) = batch.last()
                && let Some(Request::Close { reply }) = batch.pop()
            {
                close_reply = Some(reply);
            }
            if !batch.is_empty() {
                self.commit(batch);
            }
            if close_reply.is_some() {
                break;
            }
        }
        // Refuse what is still queued: after close (or drop) nothing more is acknowledged.
        receiver.close();
        let closed = || StorageError::Closed(self.store.path.display().to_string());
        for request in carried
            .into_iter()
            .chain(std::iter::from_fn(|| receiver.try_recv().ok()))
        {
            match request {
                Request::Append { reply, .. } => drop(reply.send(Err(closed()))),
                Request::Snapshot { reply, .. }
                | Request::Checkpoint { reply, .. }
                | Request::Close { reply } => drop(reply.send(Err(closed()))),
            }
        }
        let mut result = self.write_acked_ends(true);
        if close_reply.is_some() && result.is_ok() && self.first_failure.is_none() {
            result = self.store.flush_write_buffers();
        }
        if let Some(reply) = close_reply {
            let _ = reply.send(result);
        }
    }

    /// Writes `batch` as one atomic, fsync'd fjall batch, then publishes and answers.
    fn commit(&mut self, batch: Vec<Request>) {
        let started = Instant::now();
        let mut next = self.next.clone();
        let mut pending = Vec::with_capacity(batch.len());
        let mut write = self.store.db.batch().durability(Some(PersistMode::SyncAll));
        let mut records = 0usize;
        // The open segment of each partition this batch appends to.
        let mut segments: Vec<Option<SegmentWriter>> = Vec::new();
        segments.resize_with(next.len(), || None);
        for request in batch {
            match request {
                Request::Append {
                    partition,
                    records: appended,
                    reply,
                } => {
                    let offset = &mut next[partition as usize];
                    let first = *offset;
                    records += appended.len();
                    let segment = &mut segments[partition as usize];
                    for record in &appended {
                        if segment.as_ref().is_some_and(SegmentWriter::is_full) {
                            let full = segment.take().map(SegmentWriter::finish);
                            if let Some((start, value)) = full {
                                write.insert(
                                    &self.store.events,
                                    event_key(partition, start),
                                    value,
                                );
                            }
                        }
                        segment
                            .get_or_insert_with(|| SegmentWriter::new(*offset))
                            .push(record);
                        *offset += 1;
                    }
                    pending.push(Pending::Append {
                        partition,
                        first,
                        reply,
                    });
                }
                Request::Snapshot {
                    partition,
                    key,
                    value,
                    reply,
                } => {
                    write.insert(&self.store.snapshots, snapshot_key(partition, &key), value);
                    pending.push(Pending::Done {
                        what: format!(
                            "saving the snapshot of {} (partition {partition})",
                            crate::error::short(&key)
                        ),
                        reply,
                    });
                }
                Request::Checkpoint {
                    group,
                    partition,
                    offset,
                    reply,
                } => {
                    write.insert(
                        &self.store.checkpoints,
                        checkpoint_key(&group, partition),
                        offset.to_be_bytes().to_vec(),
                    );
                    pending.push(Pending::Done {
                        what: format!(
                            "committing offset {offset} for group {group:?}, partition {partition}"
                        ),
                        reply,
                    });
                }
                Request::Close { reply } => {
                    // `run` never puts a close inside a batch; answer it anyway.
                    pending.push(Pending::Done {
                        what: "close".to_owned(),
                        reply,
                    });
                }
            }
        }
        for (partition, segment) in segments.into_iter().enumerate() {
            if let Some((start, value)) = segment.map(SegmentWriter::finish) {
                write.insert(
                    &self.store.events,
                    event_key(partition as u32, start),
                    value,
                );
            }
        }
        let requests = pending.len();
        let result = if write.is_empty() {
            Ok(())
        } else {
            write.commit()
        };
        let latency = started.elapsed();
        tracing::debug!(
            requests,
            records,
            latency_us = latency.as_micros() as u64,
            ok = result.is_ok(),
            "embedded log group commit"
        );
        match result {
            Ok(()) => {
                for (partition, (&old, &new)) in self.next.iter().zip(&next).enumerate() {
                    if new != old {
                        self.ends[partition].send_replace(new);
                    }
                }
                self.next = next;
                for answer in pending {
                    match answer {
                        Pending::Append { first, reply, .. } => drop(reply.send(Ok(first))),
                        Pending::Done { reply, .. } => drop(reply.send(Ok(()))),
                    }
                }
                if let Err(e) = self.write_acked_ends(false) {
                    tracing::warn!(error = %e, "cannot record the acknowledged end offsets");
                }
            }
            Err(e) => {
                tracing::error!(
                    store = %self.store.path.display(),
                    error = %e,
                    requests,
                    "embedded log group commit failed"
                );
                let source: Arc<dyn std::error::Error + Send + Sync> = match &self.first_failure {
                    Some(first) => Arc::new(AfterFailure {
                        error: e,
                        first: first.clone(),
                    }),
                    None => {
                        let first = Arc::new(e);
                        self.first_failure = Some(first.clone());
                        first
                    }
                };
                let path = self.store.path.display();
                for answer in pending {
                    let context = match &answer {
                        Pending::Append {
                            partition, first, ..
                        } => format!("{path}: append to partition {partition} at offset {first}"),
                        Pending::Done { what, .. } => format!("{path}: {what}"),
                    };
                    let error = StorageError::Io {
                        context,
                        source: source.clone(),
                    };
                    match answer {
                        Pending::Append { reply, .. } => drop(reply.send(Err(error))),
                        Pending::Done { reply, .. } => drop(reply.send(Err(error))),
                    }
                }
            }
        }
    }

    /// Rewrites `acked-ends` when the ends moved and the interval has passed (or `force`).
    fn write_acked_ends(&mut self, force: bool) -> Result<(), StorageError> {
        if self.acked_written.as_ref() == Some(&self.next) {
            return Ok(());
        }
        if !force && self.last_acked_write.elapsed() < self.acked_ends_interval {
            return Ok(());
        }
        self.last_acked_write = Instant::now();
        write_acked_ends(&self.acked_path, &self.next)?;
        self.acked_written = Some(self.next.clone());
        Ok(())
    }
}
