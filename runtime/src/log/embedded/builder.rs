//! [`EmbeddedLogBuilder`]: the options of an [`EmbeddedLog`], and opening its directory —
//! lock, acknowledged ends, manifests, store, partition count — before the writer starts.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::EmbeddedLog;
use super::acked_ends::{ACKED_ENDS_FILE, read_acked_ends};
use super::lock::lock_dir;
use super::manifest::verify_manifests;
use super::store::Store;
use super::writer::Writer;
use crate::error::StorageError;
use crate::log::Offset;

/// The fjall database's directory inside the log's directory.
const STORE_DIR: &str = "store";

/// Options for [`EmbeddedLog`]; start with [`EmbeddedLog::builder`].
#[derive(Debug, Clone)]
pub struct EmbeddedLogBuilder {
    dir: PathBuf,
    partitions: Option<u32>,
    max_batch_records: usize,
    queue_capacity: usize,
    acked_ends_interval: Duration,
}

impl EmbeddedLogBuilder {
    /// The partition count of a new store when the builder is not given one.
    pub const DEFAULT_PARTITIONS: u32 = 8;
    /// The default cap on records written by one group commit.
    pub const DEFAULT_MAX_BATCH_RECORDS: usize = 4096;
    /// The default number of write requests that may wait for the writer before callers wait.
    pub const DEFAULT_QUEUE_CAPACITY: usize = 16_384;
    /// The default longest time between two rewrites of the `acked-ends` file.
    pub const DEFAULT_ACKED_ENDS_INTERVAL: Duration = Duration::from_secs(1);

    /// Options for the log in `dir` (created if missing).
    pub fn new(dir: impl AsRef<Path>) -> Self {
        EmbeddedLogBuilder {
            dir: dir.as_ref().to_path_buf(),
            partitions: None,
            max_batch_records: Self::DEFAULT_MAX_BATCH_RECORDS,
            queue_capacity: Self::DEFAULT_QUEUE_CAPACITY,
            acked_ends_interval: Self::DEFAULT_ACKED_ENDS_INTERVAL,
        }
    }

    /// The partition count. A new store is created with it; an existing store must have been
    /// created with it, or opening fails. Default = unset: an existing store's own count, or
    /// [`Self::DEFAULT_PARTITIONS`] for a new one.
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = Some(partitions);
        self
    }

    /// The most records (plus snapshots and checkpoints) one group commit writes. One append is
    /// never split, so a larger append is written alone. Default = [`Self::DEFAULT_MAX_BATCH_RECORDS`].
    pub fn max_batch_records(mut self, max: usize) -> Self {
        self.max_batch_records = max.max(1);
        self
    }

    /// How many write requests may queue for the writer; beyond that, writers wait for room.
    /// Default = [`Self::DEFAULT_QUEUE_CAPACITY`].
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity.max(1);
        self
    }

    /// The longest time between rewrites of the `acked-ends` file, which lets opening detect
    /// lost acknowledged records. Each rewrite costs a small
    /// fsync on the writer thread. Default = [`Self::DEFAULT_ACKED_ENDS_INTERVAL`].
    pub fn acked_ends_interval(mut self, interval: Duration) -> Self {
        self.acked_ends_interval = interval;
        self
    }

    /// Opens (or creates) the log. Fails if another process or `EmbeddedLog` has the directory
    /// open, if the stored partition count differs from [`partitions`](Self::partitions), or if
    /// the store is damaged.
    pub fn open(self) -> Result<EmbeddedLog, StorageError> {
        let dir = self.dir;
        std::fs::create_dir_all(&dir)
            .map_err(|e| StorageError::io(format!("creating {}", dir.display()), e))?;
        let lock = lock_dir(&dir)?;
        let acked_path = dir.join(ACKED_ENDS_FILE);
        let acked = read_acked_ends(&acked_path)?;

        let store_path = dir.join(STORE_DIR);
        verify_manifests(&store_path)?;
        let store = Store::open(&store_path)?;
        let partitions = store.partition_count(&dir, self.partitions, acked.as_deref())?;
        let mut next = Vec::with_capacity(partitions as usize);
        for partition in 0..partitions {
            next.push(store.stored_end(partition)?);
        }
        if let Some(acked) = &acked {
            for (partition, (&end, &acked_end)) in next.iter().zip(acked).enumerate() {
                if end < acked_end {
                    return Err(StorageError::Corrupt {
                        context: format!("{}, partition {partition}", store.path.display()),
                        detail: format!(
                            "the partition ends at offset {end} but offsets up to {acked_end} \
                             were acknowledged (recorded in {}); acknowledged records are \
                             missing, refusing to open",
                            acked_path.display()
                        ),
                    });
                }
            }
        }

        let ends: Arc<[watch::Sender<Offset>]> =
            next.iter().map(|&end| watch::channel(end).0).collect();
        let (requests, receiver) = mpsc::channel(self.queue_capacity);
        let writer = Writer {
            store: store.clone(),
            ends: ends.clone(),
            next,
            max_batch_records: self.max_batch_records,
            acked_path,
            acked_written: acked,
            acked_ends_interval: self.acked_ends_interval,
            last_acked_write: Instant::now(),
            first_failure: None,
        };
        let writer = std::thread::Builder::new()
            .name("keel-embedded-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(|e| {
                StorageError::io(
                    format!("starting the writer thread for {}", dir.display()),
                    e,
                )
            })?;
        tracing::debug!(dir = %dir.display(), partitions, "embedded log opened");
        Ok(EmbeddedLog {
            dir,
            store,
            ends,
            requests: Some(requests),
            writer: Some(writer),
            _lock: lock,
        })
    }
}
