//! [`StockLevels`]: units on hand and the reorder point of every item, per store and SKU
//! (an in-memory view, rebuilt from the log at start).

use keel::{Aggregate, EventEnvelope, Position};
use keel_projections::{AggregateEvents, ApplyError, Projection, ViewMut};
use serde::{Deserialize, Serialize};

use crate::event::StockEvent;
use crate::id::StockItemId;
use crate::stock_item::StockItem;

/// One entry of the stock levels view.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLevel {
    /// Units on hand.
    pub on_hand: u64,
    /// The reorder point, if one was set.
    pub reorder_point: Option<u64>,
}

impl StockLevel {
    /// Whether stock is at or below the reorder point.
    pub fn is_low(&self) -> bool {
        self.reorder_point
            .is_some_and(|level| self.on_hand <= level)
    }
}

/// The projection behind the stock levels view: `StockItemId → StockLevel`, an entry for every
/// item that has any event.
#[derive(Debug, Clone, Default)]
pub struct StockLevels {
    events: AggregateEvents<StockItem>,
}

impl StockLevels {
    /// The projection's name, which also names its checkpoints and metrics.
    pub const NAME: &'static str = "inventory-stock-levels";
}

impl Projection for StockLevels {
    type Key = StockItemId;
    type Value = StockLevel;
    type Error = ApplyError;

    fn name(&self) -> &str {
        Self::NAME
    }

    fn accepts(&self, aggregate_type: &str) -> bool {
        aggregate_type == StockItem::TYPE
    }

    fn apply(
        &self,
        view: &mut ViewMut<'_, StockItemId, StockLevel>,
        envelope: &EventEnvelope,
        position: Position,
    ) -> Result<(), ApplyError> {
        let Some(event) = self.events.decode(envelope, position)? else {
            return Ok(());
        };
        let id = item_id(envelope)?;
        view.upsert(id, |level| match event {
            StockEvent::ShipmentReceived { quantity, .. } => {
                level.on_hand = level.on_hand.saturating_add(quantity);
            }
            StockEvent::SaleRecorded { quantity } => {
                level.on_hand = level.on_hand.saturating_sub(quantity);
            }
            StockEvent::StockAdjusted { delta, .. } => {
                level.on_hand = level.on_hand.saturating_add_signed(delta);
            }
            StockEvent::ReorderPointSet { level: point } => level.reorder_point = Some(point),
            StockEvent::LowStockReached { .. } => {}
        });
        Ok(())
    }
}

/// The [`StockItemId`] of the aggregate an envelope belongs to.
pub(crate) fn item_id(envelope: &EventEnvelope) -> Result<StockItemId, ApplyError> {
    envelope.aggregate_id.parse().map_err(|e| {
        ApplyError::Invalid(format!(
            "stock item id {:?} in the log is invalid: {e}",
            envelope.aggregate_id
        ))
    })
}
