//! [`SwitchableView`]: serve one version of a view while the next is rebuilt beside it, then
//! switch.
//!
//! A new version of a projection (same name, higher [`version`](crate::Projection::version))
//! has its own checkpoints and, when persisted, its own file, so it replays the log from the
//! start without disturbing the old one, which keeps serving. Once the new one has caught up
//! with the log's end, [`SwitchableView::switch_when_caught_up`] makes it the one queries see
//! and hands back the old handle; dropping that stops the old projection.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::entry::{ViewKey, ViewValue};
use crate::error::ProjectionError;
use crate::query::ViewHandle;

/// A view whose projection can be replaced by a rebuilt version without interrupting queries.
pub struct SwitchableView<K, V> {
    current: Arc<RwLock<ViewHandle<K, V>>>,
}

impl<K, V> Clone for SwitchableView<K, V> {
    fn clone(&self) -> Self {
        SwitchableView {
            current: self.current.clone(),
        }
    }
}

impl<K, V> std::fmt::Debug for SwitchableView<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwitchableView").finish_non_exhaustive()
    }
}

impl<K: ViewKey, V: ViewValue> SwitchableView<K, V> {
    /// Serves `handle` until a switch.
    pub fn new(handle: ViewHandle<K, V>) -> Self {
        SwitchableView {
            current: Arc::new(RwLock::new(handle)),
        }
    }

    /// The handle queries go to now. Query it for one consistent answer; call again for the
    /// next, so a switch is picked up.
    pub fn current(&self) -> ViewHandle<K, V> {
        // A std lock: held only to clone an Arc, never across an await.
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until `next` has applied every event that was in the log when called, then
    /// serves it instead of the current handle, which is returned (drop it to stop the old
    /// projection). On timeout or failure of `next`, nothing changes and the error says why.
    pub async fn switch_when_caught_up(
        &self,
        next: ViewHandle<K, V>,
        timeout: Duration,
    ) -> Result<ViewHandle<K, V>, ProjectionError> {
        next.caught_up(timeout).await?;
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let old = std::mem::replace(&mut *current, next);
        tracing::info!(
            from = %format!("{}@v{}", old.name(), old.version()),
            to = %format!("{}@v{}", current.name(), current.version()),
            "switched view"
        );
        Ok(old)
    }
}
