//! The fjall side of an [`EmbeddedLog`](super::EmbeddedLog): its keyspaces, the partition
//! count recorded in them, where each partition ends, and reads of stored segments.

use std::path::{Path, PathBuf};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::EmbeddedLogBuilder;
use super::acked_ends::ACKED_ENDS_FILE;
use super::keys::{event_key, parse_event_key};
use super::segment::decode_segment;
use crate::error::StorageError;
use crate::log::{Offset, Position, StoredRecord};

/// The `meta` key holding the partition count.
const META_PARTITIONS: &[u8] = b"partitions";

/// The fjall handles, shared by readers and the writer thread.
#[derive(Clone)]
pub(super) struct Store {
    pub(super) path: PathBuf,
    pub(super) db: Database,
    pub(super) events: Keyspace,
    pub(super) snapshots: Keyspace,
    pub(super) checkpoints: Keyspace,
    /// The partition count: written once, when the store is created.
    meta: Keyspace,
}

impl Store {
    pub(super) fn open(path: &Path) -> Result<Store, StorageError> {
        let context = || format!("opening the embedded store {}", path.display());
        let db = Database::builder(path)
            .open()
            .map_err(|e| StorageError::io(context(), e))?;
        let keyspace = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(|e| StorageError::io(format!("{} (keyspace {name})", context()), e))
        };
        Ok(Store {
            path: path.to_path_buf(),
            events: keyspace("events")?,
            snapshots: keyspace("snapshots")?,
            checkpoints: keyspace("checkpoints")?,
            meta: keyspace("meta")?,
            db,
        })
    }

    /// Writes the store's memtables out to its tables and waits until fjall has deleted the
    /// journals they made obsolete, so the next open reads at most the active journal:
    /// entries already in tables, which it skips. fjall seals that journal only once it
    /// passes 64 MB (at a flush; it offers no call to seal it sooner), so a reopen after a
    /// clean close reads up to that much, however long the log. Called by a clean close only.
    pub(super) fn flush_write_buffers(&self) -> Result<(), StorageError> {
        for (name, keyspace) in [
            ("events", &self.events),
            ("snapshots", &self.snapshots),
            ("checkpoints", &self.checkpoints),
            ("meta", &self.meta),
        ] {
            self.flush_keyspace(name, keyspace)?;
        }
        // The journal clean-up runs on fjall's worker right after the flush; a bounded wait
        // (a journal left behind only makes the next open slower, never wrong).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.db.journal_count() > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        Ok(())
    }

    fn flush_keyspace(&self, name: &str, keyspace: &Keyspace) -> Result<(), StorageError> {
        keyspace.rotate_memtable_and_wait().map_err(|e| {
            StorageError::io(
                format!("{}: flushing keyspace {name}", self.path.display()),
                e,
            )
        })
    }

    /// The stored partition count, checked against the requested one; a new store records it.
    pub(super) fn partition_count(
        &self,
        dir: &Path,
        requested: Option<u32>,
        acked: Option<&[Offset]>,
    ) -> Result<u32, StorageError> {
        let meta = &self.meta;
        let stored = meta.get(META_PARTITIONS).map_err(|e| {
            StorageError::io(format!("{}: partition count", self.path.display()), e)
        })?;
        let partitions = match stored {
            Some(value) => {
                let bytes: [u8; 4] =
                    value
                        .as_ref()
                        .try_into()
                        .map_err(|_| StorageError::Corrupt {
                            context: format!("{}: partition count", self.path.display()),
                            detail: format!("expected 4 bytes, found {}", value.len()),
                        })?;
                let stored = u32::from_be_bytes(bytes);
                if let Some(requested) = requested
                    && requested != stored
                {
                    return Err(StorageError::io(
                        format!("opening {}", dir.display()),
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidInput,
                            format!(
                                "the log was created with {stored} partitions, not {requested}; \
                                 the partition count cannot change"
                            ),
                        ),
                    ));
                }
                stored
            }
            None => {
                if acked.is_some() || self.events.first_key_value().is_some() {
                    return Err(StorageError::Corrupt {
                        context: self.path.display().to_string(),
                        detail: "the store has records but no partition count".to_owned(),
                    });
                }
                let partitions = requested.unwrap_or(EmbeddedLogBuilder::DEFAULT_PARTITIONS);
                if partitions == 0 {
                    return Err(StorageError::io(
                        format!("creating {}", dir.display()),
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidInput,
                            "a log needs at least one partition",
                        ),
                    ));
                }
                let mut write = self.db.batch().durability(Some(PersistMode::SyncAll));
                write.insert(meta, META_PARTITIONS, partitions.to_be_bytes().to_vec());
                write.commit().map_err(|e| {
                    StorageError::io(
                        format!("{}: recording the partition count", dir.display()),
                        e,
                    )
                })?;
                // Out of the memtable at once: fjall deletes a journal only once every
                // keyspace has flushed what it holds, so a meta write left in memory would
                // keep every journal (up to fjall's 512 MiB cap) for the next open to replay.
                self.flush_keyspace("meta", meta)?;
                partitions
            }
        };
        if let Some(acked) = acked
            && acked.len() != partitions as usize
        {
            return Err(StorageError::Corrupt {
                context: dir.join(ACKED_ENDS_FILE).display().to_string(),
                detail: format!(
                    "{} partitions recorded, the store has {partitions}",
                    acked.len()
                ),
            });
        }
        Ok(partitions)
    }

    /// The offset after the last stored record of `partition`: the end of its last segment.
    pub(super) fn stored_end(&self, partition: u32) -> Result<Offset, StorageError> {
        let Some(last) = self.events.prefix(partition.to_be_bytes()).next_back() else {
            return Ok(0);
        };
        let (key, value) = last.into_inner().map_err(|e| {
            StorageError::io(
                format!(
                    "{}: finding the end of partition {partition}",
                    self.path.display()
                ),
                e,
            )
        })?;
        let corrupt = |detail: String| StorageError::Corrupt {
            context: format!("{}, partition {partition}", self.path.display()),
            detail,
        };
        let (_, start) = parse_event_key(&key)
            .ok_or_else(|| corrupt(format!("malformed event key {:?}", key.as_ref())))?;
        let records = decode_segment(&value)
            .ok_or_else(|| corrupt(format!("malformed segment at offset {start}")))?;
        Ok(start + records.len() as Offset)
    }

    /// The records of `partition` in `[from, stop)`, all of which must be stored.
    pub(super) fn read(
        &self,
        partition: u32,
        from: Offset,
        stop: Offset,
    ) -> Result<Vec<StoredRecord>, StorageError> {
        let at = |offset: Offset| {
            format!(
                "{}, partition {partition}, offset {offset}",
                self.path.display()
            )
        };
        let mut out = Vec::with_capacity((stop - from).min(4096) as usize);
        let mut expected = from;
        // The segment holding `from` is the last one starting at or before it; every later
        // one must start where the previous one ended.
        let holding = self
            .events
            .range(event_key(partition, 0)..=event_key(partition, from))
            .next_back();
        let later = self
            .events
            .range(event_key(partition, from + 1)..event_key(partition, stop));
        for (n, entry) in holding.into_iter().chain(later).enumerate() {
            let (key, value) = entry
                .into_inner()
                .map_err(|e| StorageError::io(format!("reading {}", at(expected)), e))?;
            let start = parse_event_key(&key).map(|(_, start)| start);
            let records = decode_segment(&value);
            let holds_expected = match (start, &records) {
                (Some(start), Some(records)) if n == 0 => {
                    start <= expected && expected - start < records.len() as Offset
                }
                (Some(start), Some(_)) => start == expected,
                _ => false,
            };
            let (Some(start), Some(records), true) = (start, records, holds_expected) else {
                return Err(StorageError::Corrupt {
                    context: at(expected),
                    detail: format!(
                        "missing or malformed record (found the segment {:?} instead)",
                        key.as_ref()
                    ),
                });
            };
            let skip = (expected - start) as usize;
            for (record_key, value) in records.into_iter().skip(skip) {
                if expected == stop {
                    break;
                }
                let key = std::str::from_utf8(record_key).map_err(|_| StorageError::Corrupt {
                    context: at(expected),
                    detail: "malformed record key".to_owned(),
                })?;
                out.push(StoredRecord {
                    position: Position {
                        partition,
                        offset: expected,
                    },
                    key: key.to_owned(),
                    value: value.to_vec(),
                });
                expected += 1;
            }
            if expected == stop {
                break;
            }
        }
        if expected != stop {
            return Err(StorageError::Corrupt {
                context: at(expected),
                detail: format!("acknowledged records {expected}..{stop} are missing"),
            });
        }
        Ok(out)
    }
}
