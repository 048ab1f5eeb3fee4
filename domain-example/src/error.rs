//! [`StockError`]: why a stock item rejects a command. Every rejection appends nothing.

/// Why a [`StockItem`](crate::StockItem) rejected a command. The messages are meant for the
/// person at the till or the warehouse door.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StockError {
    /// A shipment or sale of zero units. Send the real quantity.
    #[error("the quantity must be at least 1")]
    ZeroQuantity,
    /// A sale of more units than are on hand. Sell at most `on_hand`.
    #[error("cannot sell {requested} units: only {on_hand} on hand")]
    Oversold {
        /// Units the sale asked for.
        requested: u64,
        /// Units on hand.
        on_hand: u64,
    },
    /// An adjustment of zero units changes nothing.
    #[error("an adjustment must add or remove at least 1 unit")]
    ZeroAdjustment,
    /// An adjustment without a reason; stock corrections must say why, for audit.
    #[error("an adjustment needs a reason")]
    MissingReason,
    /// An adjustment that would leave negative stock.
    #[error("cannot remove {removed} units: only {on_hand} on hand")]
    NegativeStock {
        /// Units the adjustment removes.
        removed: u64,
        /// Units on hand.
        on_hand: u64,
    },
    /// A shipment with an empty reference. Leave the reference out instead.
    #[error("a shipment id must not be empty")]
    EmptyShipmentId,
    /// This delivery was already booked.
    #[error("shipment {shipment_id:?} was already received")]
    DuplicateShipment {
        /// The repeated reference.
        shipment_id: String,
    },
    /// The stock count would exceed what can be counted (`u64::MAX` units).
    #[error("stock would exceed {max} units", max = u64::MAX)]
    TooMuchStock,
}
