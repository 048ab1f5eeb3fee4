//! [`LowStockAlerts`]: the items at or below their reorder point (an in-memory view, rebuilt
//! from the log at start).
//!
//! An alert is raised by [`StockEvent::LowStockReached`], which the aggregate emits exactly when
//! an item crosses to at or below its reorder point. While it is raised the alert follows the
//! item's stock; it is cleared as soon as stock is back above the reorder point (a shipment, an
//! adjustment up, or a lower reorder point). Items that are not low have no entry, so the view
//! stays as small as the list of things to reorder.

use keel_projections::{AggregateProjection, ApplyError, EventMeta, ViewMut};
use serde::{Deserialize, Serialize};

use crate::event::StockEvent;
use crate::id::{StockItemId, logged_item_id};
use crate::stock_item::StockItem;

/// An item that needs reordering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LowStockAlert {
    /// Units on hand now.
    pub on_hand: u64,
    /// The reorder point in force.
    pub reorder_point: u64,
    /// When the alert was raised (ms since the Unix epoch, the commit time of its event).
    pub since_ms: i64,
}

/// The projection behind the low-stock alerts view: `StockItemId → LowStockAlert`, one entry per
/// item at or below its reorder point.
#[derive(Debug, Clone, Default)]
pub struct LowStockAlerts {
    /// Built with `default()`, so fields can be added without breaking callers.
    _private: (),
}

impl LowStockAlerts {
    /// The projection's name, which also names its checkpoints and metrics.
    pub const NAME: &'static str = "inventory-low-stock";
}

impl AggregateProjection for LowStockAlerts {
    type Aggregate = StockItem;
    type Key = StockItemId;
    type Value = LowStockAlert;
    type Error = ApplyError;

    fn name(&self) -> &str {
        Self::NAME
    }

    fn apply(
        &self,
        view: &mut ViewMut<'_, StockItemId, LowStockAlert>,
        id: &str,
        event: &StockEvent,
        meta: &EventMeta<'_>,
    ) -> Result<(), ApplyError> {
        let id = logged_item_id(id)?;
        if let StockEvent::LowStockReached {
            on_hand,
            reorder_point,
        } = *event
        {
            view.insert(
                id,
                LowStockAlert {
                    on_hand,
                    reorder_point,
                    since_ms: meta.timestamp_ms,
                },
            );
            return Ok(());
        }
        // Only a raised alert needs following; an item that is not low becomes low only
        // through a LowStockReached event.
        view.update(id, |alert| {
            let mut alert = alert?;
            alert.on_hand = event.on_hand_after(alert.on_hand);
            if let StockEvent::ReorderPointSet { level } = event {
                alert.reorder_point = *level;
            }
            (alert.on_hand <= alert.reorder_point).then_some(alert)
        });
        Ok(())
    }
}
