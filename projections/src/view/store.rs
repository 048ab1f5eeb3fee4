//! The storage seam of views: [`ViewStore`] (what the projection actor writes through),
//! [`ViewBase`] (the entries during one batch) and [`ReadView`] (what query handles read).

use std::sync::Arc;

use keel::log::{Offset, StoredRecord};

use crate::entry::{ViewKey, ViewValue};
use crate::error::ProjectionError;

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

/// Runs `apply` on `records` (one partition's, in offset order) from offset `next` on, until it
/// halts, moving `next` past each record processed; records below `next` are passed over.
/// Returns whether `apply` halted.
pub(crate) fn apply_from<K, V>(
    records: &[StoredRecord],
    next: &mut Offset,
    base: &mut dyn ViewBase<K, V>,
    apply: &mut ApplyRecord<'_, K, V>,
) -> Result<bool, ProjectionError> {
    for record in records {
        if record.position.offset < *next {
            continue;
        }
        match apply(base, record)? {
            Step::Continue => *next = record.position.offset + 1,
            Step::Halt => return Ok(true),
        }
    }
    Ok(false)
}

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
pub(crate) trait ReadView<K, V>: Send + Sync {
    /// The entry of `key`, if any.
    fn get(&self, key: &K) -> Result<Option<V>, ProjectionError>;

    /// Visits every entry, in no particular order.
    fn for_each(&self, f: &mut dyn FnMut(&K, &V)) -> Result<(), ProjectionError>;

    /// The number of entries.
    fn len(&self) -> Result<usize, ProjectionError>;
}

/// A shared reader of one view.
pub(crate) type ViewReader<K, V> = Arc<dyn ReadView<K, V>>;
