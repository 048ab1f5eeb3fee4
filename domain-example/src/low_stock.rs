//! [`LowStockAlerts`]: the items at or below their reorder point (an in-memory view, rebuilt
//! from the log at start).
//!
//! An alert is raised by [`StockEvent::LowStockReached`], which the aggregate emits exactly when
//! an item crosses to at or below its reorder point. While it is raised the alert follows the
//! item's stock; it is cleared as soon as stock is back above the reorder point (a shipment, an
//! adjustment up, or a lower reorder point). Items that are not low have no entry, so the view
//! stays as small as the list of things to reorder.

use keel::{Aggregate, EventEnvelope, Position};
use keel_projections::{AggregateEvents, ApplyError, Projection, ViewMut};
use serde::{Deserialize, Serialize};

use crate::event::StockEvent;
use crate::id::StockItemId;
use crate::stock_item::StockItem;
use crate::stock_levels::item_id;

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
    events: AggregateEvents<StockItem>,
}

impl LowStockAlerts {
    /// The projection's name, which also names its checkpoints and metrics.
    pub const NAME: &'static str = "inventory-low-stock";
}

impl Projection for LowStockAlerts {
    type Key = StockItemId;
    type Value = LowStockAlert;
    type Error = ApplyError;

    fn name(&self) -> &str {
        Self::NAME
    }

    fn accepts(&self, aggregate_type: &str) -> bool {
        aggregate_type == StockItem::TYPE
    }

    fn apply(
        &self,
        view: &mut ViewMut<'_, StockItemId, LowStockAlert>,
        envelope: &EventEnvelope,
        position: Position,
    ) -> Result<(), ApplyError> {
        let Some(event) = self.events.decode(envelope, position)? else {
            return Ok(());
        };
        let id = item_id(envelope)?;
        if let StockEvent::LowStockReached {
            on_hand,
            reorder_point,
        } = event
        {
            view.insert(
                id,
                LowStockAlert {
                    on_hand,
                    reorder_point,
                    since_ms: envelope.timestamp_ms,
                },
            );
            return Ok(());
        }
        // Only a raised alert needs following; an item that is not low becomes low only
        // through a LowStockReached event.
        view.update(id, |alert| {
            let mut alert = alert?;
            match event {
                StockEvent::ShipmentReceived { quantity, .. } => {
                    alert.on_hand = alert.on_hand.saturating_add(quantity);
                }
                StockEvent::SaleRecorded { quantity } => {
                    alert.on_hand = alert.on_hand.saturating_sub(quantity);
                }
                StockEvent::StockAdjusted { delta, .. } => {
                    alert.on_hand = alert.on_hand.saturating_add_signed(delta);
                }
                StockEvent::ReorderPointSet { level } => alert.reorder_point = level,
                StockEvent::LowStockReached { .. } => {}
            }
            (alert.on_hand <= alert.reorder_point).then_some(alert)
        });
        Ok(())
    }
}
