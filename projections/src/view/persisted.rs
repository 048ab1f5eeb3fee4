//! [`PersistedStore`]: a view in its own fjall database, the directory
//! `{dir}/{name}-v{version}/` — the same embedded store as `EmbeddedLog`, in a separate
//! database so a view can be dropped or rebuilt without touching the log.
//!
//! Keyspaces: `view` (msgpack key → msgpack value with named fields) and `checkpoints`
//! (partition, big-endian u32 → offset of the last event processed, big-endian u64).
//!
//! A batch of events is applied against an overlay of the batch's own writes (so `apply`
//! reads what earlier events of the batch wrote), then written as **one atomic fjall batch**
//! holding the view changes and the new checkpoint, journalled with `PersistMode::SyncAll`:
//! once the commit returns both are on disk; if the process dies before, recovery drops the
//! torn batch and neither is. Records at or below the checkpoint are passed over, so reading
//! them again after a restart cannot apply them twice. One actor is the only writer of a
//! database (fjall's lock file keeps a second process out), so the overlay cannot go stale.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use keel::envelope::DecodeError;
use keel::log::{Offset, StoredRecord};

use super::store::{ApplyRecord, ReadView, ViewBase, ViewReader, ViewStore, apply_from};
use crate::entry::{ViewKey, ViewValue};
use crate::error::ProjectionError;

/// A view persisted in a fjall database.
pub(crate) struct PersistedStore<K, V> {
    db: Database,
    view: Keyspace,
    checkpoints: Keyspace,
    path: PathBuf,
    entries: PhantomData<fn() -> (K, V)>,
}

impl<K: ViewKey, V: ViewValue> PersistedStore<K, V> {
    /// Opens (or creates) the database of projection `name` at `version` under `dir`.
    pub(crate) fn open(dir: &Path, name: &str, version: u32) -> Result<Self, ProjectionError> {
        let file: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = dir.join(format!("{file}-v{version}"));
        let context = || format!("opening {}", path.display());
        let db = Database::builder(&path)
            .open()
            .map_err(|e| ProjectionError::store(context(), e))?;
        let keyspace = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(|e| ProjectionError::store(format!("{} (keyspace {name})", context()), e))
        };
        Ok(PersistedStore {
            view: keyspace("view")?,
            checkpoints: keyspace("checkpoints")?,
            db,
            path,
            entries: PhantomData,
        })
    }

    fn err(
        &self,
        what: &str,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> ProjectionError {
        ProjectionError::store(format!("{}: {what}", self.path.display()), e)
    }

    fn checkpoint(&self, partition: u32) -> Result<Option<Offset>, ProjectionError> {
        let Some(value) = self
            .checkpoints
            .get(partition.to_be_bytes())
            .map_err(|e| self.err("checkpoint", e))?
        else {
            return Ok(None);
        };
        let bytes: [u8; 8] = value.as_ref().try_into().map_err(|_| {
            ProjectionError::Decode(DecodeError {
                what: "checkpoint".into(),
                location: format!("{}, partition {partition}", self.path.display()),
                reason: format!("expected 8 bytes, found {}", value.len()),
            })
        })?;
        Ok(Some(u64::from_be_bytes(bytes)))
    }
}

fn encode_key<K: ViewKey>(key: &K) -> Vec<u8> {
    // Keys are compared as bytes, so they must encode the same way every time; rmp-serde's
    // compact encoding of strings, integers, tuples and structs is deterministic.
    rmp_serde::to_vec(key).unwrap_or_default()
}

fn decode_value<V: ViewValue>(bytes: &[u8], path: &Path) -> Result<V, ProjectionError> {
    rmp_serde::from_slice(bytes).map_err(|e| {
        ProjectionError::Decode(DecodeError {
            what: "view value".into(),
            location: path.display().to_string(),
            reason: e.to_string(),
        })
    })
}

/// The view during one batch: the stored entries under the batch's own writes.
struct Overlay<'s, K, V> {
    store: &'s PersistedStore<K, V>,
    /// Encoded key → encoded value, or `None` for a removal.
    writes: HashMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<K: ViewKey, V: ViewValue> ViewBase<K, V> for Overlay<'_, K, V> {
    fn load(&self, key: &K) -> Result<Option<V>, ProjectionError> {
        let key = encode_key(key);
        match self.writes.get(&key) {
            Some(Some(bytes)) => decode_value(bytes, &self.store.path).map(Some),
            Some(None) => Ok(None),
            None => {
                let found = self
                    .store
                    .view
                    .get(&key)
                    .map_err(|e| self.store.err("get", e))?;
                found
                    .map(|v| decode_value(&v, &self.store.path))
                    .transpose()
            }
        }
    }

    fn store(&mut self, key: K, value: Option<V>) -> Result<(), ProjectionError> {
        let value = value
            .map(|value| rmp_serde::to_vec_named(&value))
            .transpose()
            .map_err(|e| self.store.err("encoding a value", e))?;
        self.writes.insert(encode_key(&key), value);
        Ok(())
    }
}

impl<K: ViewKey, V: ViewValue> ViewStore<K, V> for PersistedStore<K, V> {
    fn blocking(&self) -> bool {
        true
    }

    fn next_offsets(&self, partitions: u32) -> Result<Vec<Offset>, ProjectionError> {
        (0..partitions)
            .map(|p| Ok(self.checkpoint(p)?.map_or(0, |c| c + 1)))
            .collect()
    }

    fn write_batch(
        &self,
        partition: u32,
        records: &[StoredRecord],
        apply: &mut ApplyRecord<'_, K, V>,
    ) -> Result<(Offset, bool), ProjectionError> {
        let mut next = self.checkpoint(partition)?.map_or(0, |c| c + 1);
        let mut overlay = Overlay {
            store: self,
            writes: HashMap::new(),
        };
        let start = next;
        let halted = apply_from(records, &mut next, &mut overlay, apply)?;
        if next > start {
            let last = next - 1;
            let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
            for (key, value) in overlay.writes {
                match value {
                    Some(value) => batch.insert(&self.view, key, value),
                    None => batch.remove(&self.view, key),
                }
            }
            batch.insert(
                &self.checkpoints,
                partition.to_be_bytes(),
                last.to_be_bytes(),
            );
            batch.commit().map_err(|e| self.err("commit", e))?;
        }
        Ok((next, halted))
    }

    fn reader(self: &Arc<Self>) -> ViewReader<K, V> {
        self.clone()
    }
}

impl<K: ViewKey, V: ViewValue> ReadView<K, V> for PersistedStore<K, V> {
    fn get(&self, key: &K) -> Result<Option<V>, ProjectionError> {
        let found = self
            .view
            .get(encode_key(key))
            .map_err(|e| self.err("get", e))?;
        found.map(|v| decode_value(&v, &self.path)).transpose()
    }

    fn for_each(&self, f: &mut dyn FnMut(&K, &V)) -> Result<(), ProjectionError> {
        for entry in self.view.iter() {
            let (k, v) = entry.into_inner().map_err(|e| self.err("scan", e))?;
            let key: K = rmp_serde::from_slice(&k).map_err(|e| DecodeError {
                what: "view key".into(),
                location: self.path.display().to_string(),
                reason: e.to_string(),
            })?;
            let value = decode_value(&v, &self.path)?;
            f(&key, &value);
        }
        Ok(())
    }

    fn len(&self) -> Result<usize, ProjectionError> {
        self.view.len().map_err(|e| self.err("len", e))
    }
}
