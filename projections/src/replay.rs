//! [`replay`]: a projection applied to a sequence of records in one go, into an empty
//! in-memory view — the reference a running view must equal.

use std::collections::HashMap;

use keel::StoredRecord;

use crate::error::ProjectionError;
use crate::projection::Projection;
use crate::view::{ViewBase, apply_atomically};

struct MapBase<'a, K, V>(&'a mut HashMap<K, V>);

impl<K: crate::ViewKey, V: crate::ViewValue> ViewBase<K, V> for MapBase<'_, K, V> {
    fn load(&self, key: &K) -> Result<Option<V>, ProjectionError> {
        Ok(self.0.get(key).cloned())
    }

    fn store(&mut self, key: K, value: Option<V>) -> Result<(), ProjectionError> {
        match value {
            Some(value) => self.0.insert(key, value),
            None => self.0.remove(&key),
        };
        Ok(())
    }
}

/// Applies `records` (e.g. every record of the log, partition by partition) to an empty view
/// with `projection`, synchronously, and returns the view. Stops at the first poison event
/// with [`ProjectionError::Poisoned`].
///
/// Use it to check a running view against a fresh replay, or to build a view in a test.
pub fn replay<'r, P: Projection>(
    projection: &P,
    records: impl IntoIterator<Item = &'r StoredRecord>,
) -> Result<HashMap<P::Key, P::Value>, ProjectionError> {
    let label = format!("{}@v{}", projection.name(), projection.version());
    let mut view = HashMap::new();
    for record in records {
        let position = record.position;
        let aggregate_type = record.key.split('/').next().unwrap_or_default();
        if !projection.accepts(aggregate_type) {
            continue;
        }
        let poisoned = |reason: String| ProjectionError::Poisoned {
            projection: label.clone(),
            partition: position.partition,
            offset: position.offset,
            reason,
        };
        let at = format!(
            "aggregate {}, partition {}, offset {}",
            record.key, position.partition, position.offset
        );
        let envelope =
            keel::EventEnvelope::decode(&record.value, &at).map_err(|e| poisoned(e.to_string()))?;
        let mut base = MapBase(&mut view);
        apply_atomically(&mut base, |v| projection.apply(v, &envelope, position))?
            .map_err(|e| poisoned(e.to_string()))?;
    }
    Ok(view)
}
