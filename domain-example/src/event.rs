//! [`StockEvent`]: what happened to one stock item, in the past tense. These are stored in the
//! log forever; change their shape only with an upcaster.

use serde::{Deserialize, Serialize};

/// An event of a [`StockItem`](crate::StockItem). Serialized externally tagged, so the variant
/// name is the event type in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StockEvent {
    /// A delivery was booked into stock.
    ShipmentReceived {
        /// Units delivered.
        quantity: u64,
        /// The delivery's reference, if it had one.
        shipment_id: Option<String>,
    },
    /// Units were sold.
    SaleRecorded {
        /// Units sold.
        quantity: u64,
    },
    /// The stock count was corrected.
    StockAdjusted {
        /// Units added (positive) or removed (negative).
        delta: i64,
        /// Why, for audit.
        reason: String,
    },
    /// The reorder point changed.
    ReorderPointSet {
        /// The new reorder point.
        level: u64,
    },
    /// Stock fell to or below the reorder point (it was above it, or there was no reorder
    /// point, before the command that caused this event).
    LowStockReached {
        /// Units on hand after the command.
        on_hand: u64,
        /// The reorder point in force.
        reorder_point: u64,
    },
}

impl StockEvent {
    /// The event type as stored in the log (the variant name).
    pub fn event_type(&self) -> &'static str {
        match self {
            StockEvent::ShipmentReceived { .. } => "ShipmentReceived",
            StockEvent::SaleRecorded { .. } => "SaleRecorded",
            StockEvent::StockAdjusted { .. } => "StockAdjusted",
            StockEvent::ReorderPointSet { .. } => "ReorderPointSet",
            StockEvent::LowStockReached { .. } => "LowStockReached",
        }
    }

    /// Units on hand after this event, from `on_hand` before it: shipments add, sales take
    /// away (saturating, as the aggregate does), adjustments add their delta; the other events
    /// leave stock alone.
    pub(crate) fn on_hand_after(&self, on_hand: u64) -> u64 {
        match self {
            StockEvent::ShipmentReceived { quantity, .. } => on_hand.saturating_add(*quantity),
            StockEvent::SaleRecorded { quantity } => on_hand.saturating_sub(*quantity),
            StockEvent::StockAdjusted { delta, .. } => on_hand.saturating_add_signed(*delta),
            StockEvent::ReorderPointSet { .. } | StockEvent::LowStockReached { .. } => on_hand,
        }
    }
}
