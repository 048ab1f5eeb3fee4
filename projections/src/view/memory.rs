//! [`MemoryStore`]: a view in a `DashMap`, rebuilt from the start of the log at every start.

use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use keel::log::{Offset, StoredRecord};

use super::store::{ApplyRecord, ReadView, ViewBase, ViewReader, ViewStore, apply_from};
use crate::entry::{ViewKey, ViewValue};
use crate::error::ProjectionError;

/// A view held in memory. Queries read the map while the actor writes it; each entry changes
/// atomically, and the projection's position is published only after a whole batch.
pub(crate) struct MemoryStore<K, V> {
    map: Arc<DashMap<K, V>>,
    /// The next offset per partition. Only the actor writes it (once per batch); a std mutex
    /// because it is never held across an await.
    next: Mutex<Vec<Offset>>,
}

impl<K: ViewKey, V: ViewValue> MemoryStore<K, V> {
    pub(crate) fn new() -> Self {
        MemoryStore {
            map: Arc::new(DashMap::new()),
            next: Mutex::new(Vec::new()),
        }
    }
}

struct MapBase<'a, K, V>(&'a DashMap<K, V>);

impl<K: ViewKey, V: ViewValue> ViewBase<K, V> for MapBase<'_, K, V> {
    fn load(&self, key: &K) -> Result<Option<V>, ProjectionError> {
        Ok(self.0.get(key).map(|e| e.value().clone()))
    }

    fn store(&mut self, key: K, value: Option<V>) -> Result<(), ProjectionError> {
        match value {
            Some(value) => {
                self.0.insert(key, value);
            }
            None => {
                self.0.remove(&key);
            }
        }
        Ok(())
    }
}

impl<K: ViewKey, V: ViewValue> ViewStore<K, V> for MemoryStore<K, V> {
    fn blocking(&self) -> bool {
        false
    }

    fn next_offsets(&self, partitions: u32) -> Result<Vec<Offset>, ProjectionError> {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        next.resize(partitions as usize, 0);
        Ok(next.clone())
    }

    fn write_batch(
        &self,
        partition: u32,
        records: &[StoredRecord],
        apply: &mut ApplyRecord<'_, K, V>,
    ) -> Result<(Offset, bool), ProjectionError> {
        let mut next_offsets = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let slot = next_offsets
            .get_mut(partition as usize)
            .ok_or_else(|| ProjectionError::Config(format!("no partition {partition}")))?;
        let halted = apply_from(records, slot, &mut MapBase(&self.map), apply)?;
        Ok((*slot, halted))
    }

    fn reader(self: &Arc<Self>) -> ViewReader<K, V> {
        self.map.clone()
    }
}

impl<K: ViewKey, V: ViewValue> ReadView<K, V> for DashMap<K, V> {
    fn get(&self, key: &K) -> Result<Option<V>, ProjectionError> {
        Ok(DashMap::get(self, key).map(|e| e.value().clone()))
    }

    fn for_each(&self, f: &mut dyn FnMut(&K, &V)) -> Result<(), ProjectionError> {
        for entry in self.iter() {
            f(entry.key(), entry.value());
        }
        Ok(())
    }

    fn len(&self) -> Result<usize, ProjectionError> {
        Ok(DashMap::len(self))
    }
}
