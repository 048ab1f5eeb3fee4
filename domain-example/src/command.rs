//! [`StockCommand`]: what a store asks of one stock item, in the imperative.

/// A command to one [`StockItem`](crate::StockItem). Quantities are counts of units; zero is
/// rejected, and unsigned types make negative quantities unrepresentable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StockCommand {
    /// Book a delivery into stock.
    ReceiveShipment {
        /// Units delivered; at least 1.
        quantity: u64,
        /// The delivery's reference, if it has one. A shipment id seen among the item's
        /// recent shipments is rejected, so a delivery cannot be booked twice.
        shipment_id: Option<String>,
    },
    /// Book units sold at the till. Selling more than is on hand is rejected.
    RecordSale {
        /// Units sold; at least 1.
        quantity: u64,
    },
    /// Correct the stock count after a stocktake, damage, theft…; the reason is kept for audit.
    AdjustStock {
        /// Units added (positive) or removed (negative); not zero, and stock cannot go below 0.
        delta: i64,
        /// Why; required and not blank.
        reason: String,
    },
    /// Raise a low-stock alert whenever stock is at or below `level`.
    SetReorderPoint {
        /// The stock level at or below which the item needs reordering.
        level: u64,
    },
}

impl StockCommand {
    /// A shipment without a reference.
    pub fn receive(quantity: u64) -> Self {
        StockCommand::ReceiveShipment {
            quantity,
            shipment_id: None,
        }
    }

    /// A sale.
    pub fn sell(quantity: u64) -> Self {
        StockCommand::RecordSale { quantity }
    }

    /// An adjustment with its reason.
    pub fn adjust(delta: i64, reason: impl Into<String>) -> Self {
        StockCommand::AdjustStock {
            delta,
            reason: reason.into(),
        }
    }

    /// A new reorder point.
    pub fn reorder_at(level: u64) -> Self {
        StockCommand::SetReorderPoint { level }
    }
}
