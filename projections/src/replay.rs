//! [`replay`]: a projection applied to a sequence of records in one go, into an empty
//! in-memory view — the reference a running view must equal.

use std::collections::HashMap;

use keel::log::StoredRecord;

use crate::apply::{Outcome, apply_record};
use crate::entry::{ViewKey, ViewValue};
use crate::error::ProjectionError;
use crate::projection::Projection;
use crate::view::store::ViewBase;

struct MapBase<'a, K, V>(&'a mut HashMap<K, V>);

impl<K: ViewKey, V: ViewValue> ViewBase<K, V> for MapBase<'_, K, V> {
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
        let mut base = MapBase(&mut view);
        if let Outcome::Poison(reason) = apply_record(projection, &mut base, record)? {
            return Err(ProjectionError::Poisoned {
                projection: label,
                partition: record.position.partition,
                offset: record.position.offset,
                reason,
            });
        }
    }
    Ok(view)
}
