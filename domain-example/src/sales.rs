//! [`SalesTotals`]: units sold per store and SKU, with a total per store (a view persisted in
//! the embedded store, resumed from its checkpoint at start).

use keel_projections::{AggregateProjection, ApplyError, EventMeta, ViewMut};
use serde::{Deserialize, Serialize};

use crate::event::StockEvent;
use crate::id::{StockItemId, logged_item_id};
use crate::stock_item::StockItem;

/// What a sales entry totals: one item, or every item of one store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SalesKey {
    /// One SKU in one store.
    Item(StockItemId),
    /// Every SKU of one store.
    Store(String),
}

/// Sales of an item or a store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sales {
    /// Units sold.
    pub units: u64,
    /// Sales recorded (till transactions).
    pub sales: u64,
}

/// The projection behind the sales view: each [`StockEvent::SaleRecorded`] adds to its item's
/// entry and to its store's, in one atomic change.
#[derive(Debug, Clone, Default)]
pub struct SalesTotals {
    /// Built with `default()`, so fields can be added without breaking callers.
    _private: (),
}

impl SalesTotals {
    /// The projection's name, which also names its checkpoints, metrics and directory.
    pub const NAME: &'static str = "inventory-sales";
}

impl AggregateProjection for SalesTotals {
    type Aggregate = StockItem;
    type Key = SalesKey;
    type Value = Sales;
    type Error = ApplyError;

    fn name(&self) -> &str {
        Self::NAME
    }

    fn accepts_event(&self, event_type: &str) -> bool {
        // Only sales concern this view: the rest are not even decoded.
        event_type == "SaleRecorded"
    }

    fn apply(
        &self,
        view: &mut ViewMut<'_, SalesKey, Sales>,
        id: &str,
        event: &StockEvent,
        _meta: &EventMeta<'_>,
    ) -> Result<(), ApplyError> {
        let StockEvent::SaleRecorded { quantity } = *event else {
            return Ok(());
        };
        let id = logged_item_id(id)?;
        let add = |sales: &mut Sales| {
            sales.units = sales.units.saturating_add(quantity);
            sales.sales = sales.sales.saturating_add(1);
        };
        view.upsert(SalesKey::Store(id.store().to_string()), add);
        view.upsert(SalesKey::Item(id), add);
        Ok(())
    }
}
