//! Views: where a projection's `Key → Value` entries live.
//!
//! - [`memory`]: a `DashMap`, rebuilt from the start of the log every time the projection
//!   starts. Nothing is written to disk.
//! - [`persisted`]: a fjall database per projection version. Each batch of events is applied in one
//!   atomic write batch that also moves the partition's checkpoint, so a crash (even `kill -9`)
//!   loses either the whole batch or nothing, and an event at or below the checkpoint is
//!   never applied again.
//!
//! Both sit behind the seam in [`store`]: `ViewStore`, which the projection actor writes
//! through, and `ReadView`, which query handles read through.
//!
//! A projection changes the view through [`ViewMut`], which buffers one event's changes and
//! hands them to the store only when `apply` succeeds, so a failing event leaves no trace.

use crate::entry::{ViewKey, ViewValue};
use crate::error::ProjectionError;

pub(crate) mod memory;
pub(crate) mod persisted;
pub(crate) mod store;

use store::ViewBase;

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
