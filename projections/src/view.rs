//! Views: where a projection's `Key → Value` entries live.
//!
//! - [`memory`]: a `DashMap`, rebuilt from the start of the log every time the projection
//!   starts. Nothing is written to disk.
//! - [`persisted`]: a fjall database per projection version. Each batch of events is applied in one
//!   atomic write batch that also moves the partition's checkpoint, so a crash (even `kill -9`)
//!   loses either the whole batch or nothing, and an event at or below the checkpoint is
//!   never applied again.
//!
//! Both sit behind [`ViewStore`], the seam the projection actor writes through, and are read
//! through [`ViewReader`] by query handles.
//!
//! A projection changes the view through [`ViewMut`], which buffers one event's changes and
//! hands them to the store only when `apply` succeeds, so a failing event leaves no trace.

use std::sync::Arc;

use dashmap::DashMap;
use keel::{Offset, StoredRecord};

use crate::error::ProjectionError;
use crate::projection::{ViewKey, ViewValue};

pub(crate) mod memory;
pub(crate) mod persisted;

/// The view as one event's `apply` sees it: reads see the event's own earlier writes; the
/// writes reach the view only if `apply` returns `Ok`.
pub struct ViewMut<'a, K, V> {
    base: &'a dyn ViewBase<K, V>,
    pending: Vec<(K, Option<V>)>,
    failure: Option<ProjectionError>,
}

impl<K: ViewKey, V: ViewValue> ViewMut<'_, K, V> {
    /// The entry of `key`, if any.
    pub fn get(&mut self, key: &K) -> Option<V> {
        if let Some((_, value)) = self.pending.iter().rev().find(|(k, _)| k == key) {
            return value.clone();
        }
        match self.base.load(key) {
            Ok(value) => value,
            Err(e) => {
                // A store that cannot be read is not the event's fault: remember the failure so
                // the actor stops with a storage error rather than counting a poison event.
                self.failure.get_or_insert(e);
                None
            }
        }
    }

    /// Sets the entry of `key`.
    pub fn insert(&mut self, key: K, value: V) {
        self.pending.push((key, Some(value)));
    }

    /// Removes the entry of `key`.
    pub fn remove(&mut self, key: &K) {
        self.pending.push((key.clone(), None));
    }

    /// Replaces the entry of `key` with `f(current)`; `None` removes it.
    pub fn update(&mut self, key: K, f: impl FnOnce(Option<V>) -> Option<V>) {
        let next = f(self.get(&key));
        self.pending.push((key, next));
    }

    /// Changes the entry of `key` in place, starting from `V::default()` when there is none.
    pub fn upsert(&mut self, key: K, f: impl FnOnce(&mut V))
    where
        V: Default,
    {
        let mut value = self.get(&key).unwrap_or_default();
        f(&mut value);
        self.pending.push((key, Some(value)));
    }
}

/// Runs `apply` against `base` and writes its changes through if it succeeds. The outer error
/// is the store's (fatal for the projection); the inner one is the projection's own.
pub(crate) fn apply_atomically<K: ViewKey, V: ViewValue, E>(
    base: &mut dyn ViewBase<K, V>,
    apply: impl FnOnce(&mut ViewMut<'_, K, V>) -> Result<(), E>,
) -> Result<Result<(), E>, ProjectionError> {
    let mut view = ViewMut {
        base: &*base,
        pending: Vec::new(),
        failure: None,
    };
    let outcome = apply(&mut view);
    let ViewMut {
        pending, failure, ..
    } = view;
    if let Some(e) = failure {
        return Err(e);
    }
    if outcome.is_ok() {
        for (key, value) in pending {
            base.store(key, value)?;
        }
    }
    Ok(outcome)
}

/// The view's entries as the store holds them, during one batch.
pub(crate) trait ViewBase<K, V> {
    /// The stored entry of `key`.
    fn load(&self, key: &K) -> Result<Option<V>, ProjectionError>;
    /// Sets (`Some`) or removes (`None`) the entry of `key`.
    fn store(&mut self, key: K, value: Option<V>) -> Result<(), ProjectionError>;
}

/// What the actor's per-record function tells the store.
pub(crate) enum Step {
    /// The record is processed (applied, or passed over): move on.
    Continue,
    /// Stop before this record; it is not processed.
    Halt,
}

/// The per-record function a batch runs: applies one record to the view.
pub(crate) type ApplyRecord<'f, K, V> =
    dyn FnMut(&mut dyn ViewBase<K, V>, &StoredRecord) -> Result<Step, ProjectionError> + 'f;

/// The seam between the projection actor and a view's storage.
pub(crate) trait ViewStore<K: ViewKey, V: ViewValue>: Send + Sync + 'static {
    /// Whether writing blocks the thread (file I/O, fsync): the actor then writes on the
    /// blocking pool so it does not stall the async workers.
    fn blocking(&self) -> bool;

    /// The offset to read next, per partition: one past the checkpoint.
    fn next_offsets(&self, partitions: u32) -> Result<Vec<Offset>, ProjectionError>;

    /// Runs `apply` on `records` (all of `partition`, in offset order) until it halts, as one
    /// unit together with the partition's checkpoint. Records at or below the checkpoint are
    /// passed over without calling `apply`. Returns the partition's next offset afterwards and
    /// whether `apply` halted.
    fn write_batch(
        &self,
        partition: u32,
        records: &[StoredRecord],
        apply: &mut ApplyRecord<'_, K, V>,
    ) -> Result<(Offset, bool), ProjectionError>;

    /// A reader for queries.
    fn reader(self: &Arc<Self>) -> ViewReader<K, V>;
}

/// Read access to a view, for query handles.
pub(crate) enum ViewReader<K, V> {
    Memory(Arc<DashMap<K, V>>),
    Persisted(Arc<persisted::PersistedStore<K, V>>),
}

impl<K, V> Clone for ViewReader<K, V> {
    fn clone(&self) -> Self {
        match self {
            ViewReader::Memory(map) => ViewReader::Memory(map.clone()),
            ViewReader::Persisted(store) => ViewReader::Persisted(store.clone()),
        }
    }
}

impl<K: ViewKey, V: ViewValue> ViewReader<K, V> {
    pub(crate) fn get(&self, key: &K) -> Result<Option<V>, ProjectionError> {
        match self {
            ViewReader::Memory(map) => Ok(map.get(key).map(|e| e.value().clone())),
            ViewReader::Persisted(store) => store.get(key),
        }
    }

    /// Visits every entry, in no particular order.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&K, &V)) -> Result<(), ProjectionError> {
        match self {
            ViewReader::Memory(map) => {
                for entry in map.iter() {
                    f(entry.key(), entry.value());
                }
                Ok(())
            }
            ViewReader::Persisted(store) => store.for_each(f),
        }
    }

    pub(crate) fn len(&self) -> Result<usize, ProjectionError> {
        match self {
            ViewReader::Memory(map) => Ok(map.len()),
            ViewReader::Persisted(store) => store.len(),
        }
    }
}
