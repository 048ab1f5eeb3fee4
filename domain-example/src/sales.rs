//! [`SalesTotals`]: units sold per store and SKU, with a total per store (a view persisted in
//! the embedded store, resumed from its checkpoint at start).

use keel::{Aggregate, EventEnvelope, Position};
use keel_projections::{AggregateEvents, ApplyError, Projection, ViewMut};
use serde::{Deserialize, Serialize};

use crate::event::StockEvent;
use crate::id::StockItemId;
use crate::stock_item::StockItem;
use crate::stock_levels::item_id;

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
    events: AggregateEvents<StockItem>,
}

impl SalesTotals {
    /// The projection's name, which also names its checkpoints, metrics and directory.
    pub const NAME: &'static str = "inventory-sales";
}

impl Projection for SalesTotals {
    type Key = SalesKey;
    type Value = Sales;
    type Error = ApplyError;

    fn name(&self) -> &str {
        Self::NAME
    }

    fn accepts(&self, aggregate_type: &str) -> bool {
        aggregate_type == StockItem::TYPE
    }

    fn apply(
        &self,
        view: &mut ViewMut<'_, SalesKey, Sales>,
        envelope: &EventEnvelope,
        position: Position,
    ) -> Result<(), ApplyError> {
        // Only sales concern this view: skip decoding the rest.
        if envelope.event_type != "SaleRecorded" {
            return Ok(());
        }
        let Some(StockEvent::SaleRecorded { quantity }) = self.events.decode(envelope, position)?
        else {
            return Ok(());
        };
        let id = item_id(envelope)?;
        let add = |sales: &mut Sales| {
            sales.units = sales.units.saturating_add(quantity);
            sales.sales = sales.sales.saturating_add(1);
        };
        view.upsert(SalesKey::Store(id.store().to_string()), add);
        view.upsert(SalesKey::Item(id), add);
        Ok(())
    }
}
