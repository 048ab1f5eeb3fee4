//! [`ViewHandle`]: the typed, cheap-clone query handle of one running projection.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

use keel::log::Position;
use ractor::ActorRef;

use crate::actor::ProjectionMsg;
use crate::entry::{ViewKey, ViewValue};
use crate::error::ProjectionError;
use crate::status::{ProjectionState, ProjectionStatus, Shared};
use crate::view::store::ViewReader;

/// Queries one projection's view and follows its progress.
///
/// Cheap to clone (an `Arc`). The projection runs while any clone is alive: dropping the last
/// one stops its actor.
///
/// Reads see every batch the projection has applied so far; they do not wait for anything.
/// To read your own writes, [`wait_for`](ViewHandle::wait_for) the position a command
/// returned first. Reads of a persisted view read its file (usually from the page cache).
pub struct ViewHandle<K, V> {
    inner: Arc<HandleInner<K, V>>,
}

struct HandleInner<K, V> {
    reader: ViewReader<K, V>,
    shared: Arc<Shared>,
    actor: ActorRef<ProjectionMsg>,
}

impl<K, V> Drop for HandleInner<K, V> {
    fn drop(&mut self) {
        // The last handle is gone: nobody can query the view any more, so stop writing it.
        self.actor.stop(Some("every handle dropped".into()));
    }
}

impl<K, V> Clone for ViewHandle<K, V> {
    fn clone(&self) -> Self {
        ViewHandle {
            inner: self.inner.clone(),
        }
    }
}

impl<K, V> std::fmt::Debug for ViewHandle<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewHandle")
            .field("projection", &self.inner.shared.label)
            .finish()
    }
}

impl<K: ViewKey, V: ViewValue> ViewHandle<K, V> {
    pub(crate) fn new(
        reader: ViewReader<K, V>,
        shared: Arc<Shared>,
        actor: ActorRef<ProjectionMsg>,
    ) -> Self {
        ViewHandle {
            inner: Arc::new(HandleInner {
                reader,
                shared,
                actor,
            }),
        }
    }

    /// The projection's name.
    pub fn name(&self) -> &str {
        &self.inner.shared.name
    }

    /// The projection's version.
    pub fn version(&self) -> u32 {
        self.inner.shared.version
    }

    /// The entry of `key`, if any.
    pub fn get(&self, key: &K) -> Result<Option<V>, ProjectionError> {
        self.inner.reader.get(key)
    }

    /// Every entry for which `filter` is true, in no particular order.
    pub fn scan(
        &self,
        mut filter: impl FnMut(&K, &V) -> bool,
    ) -> Result<Vec<(K, V)>, ProjectionError> {
        let mut found = Vec::new();
        self.inner.reader.for_each(&mut |k, v| {
            if filter(k, v) {
                found.push((k.clone(), v.clone()));
            }
        })?;
        Ok(found)
    }

    /// Every entry.
    pub fn all(&self) -> Result<Vec<(K, V)>, ProjectionError> {
        self.scan(|_, _| true)
    }

    /// The `n` entries with the highest `by(key, value)`, highest first. Ties are broken
    /// arbitrarily.
    pub fn top_n<O: Ord>(
        &self,
        n: usize,
        mut by: impl FnMut(&K, &V) -> O,
    ) -> Result<Vec<(K, V)>, ProjectionError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        // A min-heap of the best n so far: O(len · log n) and n entries of memory. The
        // sequence number keeps the heap from comparing keys or values.
        let mut heap: BinaryHeap<Reverse<(O, usize)>> = BinaryHeap::with_capacity(n + 1);
        let mut kept: Vec<Option<(K, V)>> = Vec::new();
        self.inner.reader.for_each(&mut |k, v| {
            let rank = by(k, v);
            if heap.len() == n {
                match heap.peek() {
                    Some(Reverse((lowest, _))) if rank <= *lowest => return,
                    _ => {}
                }
                if let Some(Reverse((_, slot))) = heap.pop() {
                    kept[slot] = None;
                }
            }
            kept.push(Some((k.clone(), v.clone())));
            heap.push(Reverse((rank, kept.len() - 1)));
        })?;
        let mut ranked = heap.into_sorted_vec(); // ascending by Reverse, so highest rank first
        Ok(ranked
            .drain(..)
            .filter_map(|Reverse((_, slot))| kept[slot].take())
            .collect())
    }

    /// The number of entries.
    pub fn len(&self) -> Result<usize, ProjectionError> {
        self.inner.reader.len()
    }

    /// Whether the view has no entries.
    pub fn is_empty(&self) -> Result<bool, ProjectionError> {
        Ok(self.len()? == 0)
    }

    /// The projection's progress, as of its last batch.
    pub fn status(&self) -> ProjectionStatus {
        self.inner.shared.status.borrow().clone()
    }

    /// Resolves once the view has applied the event at `position` — typically the position a
    /// command returned, so a query after this sees the command's effect (read your writes).
    ///
    /// Fails with [`ProjectionError::Timeout`] after `timeout`, with the projection's error if
    /// it stopped before getting there, and with [`ProjectionError::Config`] for a partition
    /// the log does not have.
    pub async fn wait_for(
        &self,
        position: Position,
        timeout: Duration,
    ) -> Result<(), ProjectionError> {
        let shared = &self.inner.shared;
        if position.partition >= shared.backend.partition_count() {
            return Err(ProjectionError::Config(format!(
                "position {position}: the log has {} partitions",
                shared.backend.partition_count()
            )));
        }
        let mut status = shared.status.subscribe();
        let waited = tokio::time::timeout(
            timeout,
            status.wait_for(|s| {
                s.has_reached(position) || !matches!(s.state, ProjectionState::Running)
            }),
        )
        .await;
        let status = match waited {
            Err(_elapsed) => {
                return Err(ProjectionError::Timeout {
                    projection: shared.label.clone(),
                    position,
                    waited: timeout,
                });
            }
            // The sender lives in `shared`, which we hold: it cannot be dropped.
            Ok(Err(_closed)) => return Err(ProjectionError::NotRunning(shared.label.clone())),
            Ok(Ok(status)) => status.clone(),
        };
        if status.has_reached(position) {
            return Ok(());
        }
        match status.state {
            ProjectionState::Failed(e) => Err(e),
            _ => Err(ProjectionError::NotRunning(shared.label.clone())),
        }
    }

    /// Resolves once the view has applied every event that was in the log when called.
    pub async fn caught_up(&self, timeout: Duration) -> Result<(), ProjectionError> {
        let shared = &self.inner.shared;
        let deadline = tokio::time::Instant::now() + timeout;
        for partition in 0..shared.backend.partition_count() {
            let end = shared
                .backend
                .end_offset(partition)
                .await
                .map_err(|source| ProjectionError::Log {
                    projection: shared.label.clone(),
                    source,
                })?;
            if end == 0 {
                continue;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.wait_for(
                Position {
                    partition,
                    offset: end - 1,
                },
                left,
            )
            .await?;
        }
        Ok(())
    }

    /// The number of events in the log the view has not applied yet, measured now. The same
    /// number is published every `lag_interval` as the `keel_projection_lag` gauge (label
    /// `projection = "name@vN"`) and in [`status`](ViewHandle::status).
    pub async fn lag(&self) -> Result<u64, ProjectionError> {
        self.inner.shared.measure_lag().await
    }

    /// Stops the projection now (other clones keep answering queries from what was applied).
    pub fn stop(&self) {
        self.inner.actor.stop(Some("stopped by its handle".into()));
    }

    /// Stops the projection and waits (up to `timeout`) until its actor has finished, so a
    /// persisted view's file is released once every other clone of this handle is dropped
    /// too. The last batch it was applying is committed or rolled back, never half-written.
    pub async fn shutdown(self, timeout: Duration) -> Result<(), ProjectionError> {
        self.inner
            .actor
            .stop_and_wait(Some("shut down by its handle".into()), Some(timeout))
            .await
            .or_else(|e| {
                // Stopping an actor that has already stopped (after a failure) is not an error.
                if self.inner.actor.get_status() == ractor::ActorStatus::Stopped {
                    Ok(())
                } else {
                    Err(ProjectionError::NotRunning(format!(
                        "{}: {e}",
                        self.inner.shared.label
                    )))
                }
            })
    }
}
