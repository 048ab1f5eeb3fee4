//! [`StockLevels`]: units on hand and the reorder point of every item, per store and SKU
//! (an in-memory view, rebuilt from the log at start).

use keel_projections::{AggregateProjection, ApplyError, EventMeta, ViewMut};
use serde::{Deserialize, Serialize};

use crate::event::StockEvent;
use crate::id::{StockItemId, logged_item_id};
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
    /// Built with `default()`, so fields can be added without breaking callers.
    _private: (),
}

impl StockLevels {
    /// The projection's name, which also names its checkpoints and metrics.
    pub const NAME: &'static str = "inventory-stock-levels";
}

impl AggregateProjection for StockLevels {
    type Aggregate = StockItem;
    type Key = StockItemId;
    type Value = StockLevel;
    type Error = ApplyError;

    fn name(&self) -> &str {
        Self::NAME
    }

    fn apply(
        &self,
        view: &mut ViewMut<'_, StockItemId, StockLevel>,
        id: &str,
        event: &StockEvent,
        _meta: &EventMeta<'_>,
    ) -> Result<(), ApplyError> {
        view.upsert(logged_item_id(id)?, |level| {
            level.on_hand = event.on_hand_after(level.on_hand);
            if let StockEvent::ReorderPointSet { level: point } = event {
                level.reorder_point = Some(*point);
            }
        });
        Ok(())
    }
}
