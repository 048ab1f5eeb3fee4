//! [`StockItem`]: the aggregate of one SKU in one store — units on hand and its reorder point.
//!
//! Rules:
//! - shipments and sales are at least 1 unit; a sale never takes stock below zero
//!   ([`StockError::Oversold`]);
//! - an adjustment is non-zero, has a reason, and never takes stock below zero;
//! - a shipment id is accepted once (among the item's [`RECENT_SHIPMENTS`] most recent ones);
//! - when a command takes the item from above its reorder point (or from having none) to at
//!   or below it, the command also emits [`StockEvent::LowStockReached`].

use std::collections::VecDeque;

use keel::Aggregate;
use serde::{Deserialize, Serialize};

use crate::command::StockCommand;
use crate::error::StockError;
use crate::event::StockEvent;

/// How many recent shipment ids an item remembers to reject a delivery booked twice. Bounded
/// so the state (and its snapshots) stays small however many deliveries an item receives.
pub const RECENT_SHIPMENTS: usize = 64;

/// One SKU in one store. Its aggregate id is a [`StockItemId`](crate::StockItemId) in its
/// string form, `"{store}:{sku}"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockItem {
    on_hand: u64,
    reorder_point: Option<u64>,
    received_total: u64,
    sold_total: u64,
    recent_shipments: VecDeque<String>,
}

impl StockItem {
    /// Units on hand.
    pub fn on_hand(&self) -> u64 {
        self.on_hand
    }

    /// The reorder point, if one was set.
    pub fn reorder_point(&self) -> Option<u64> {
        self.reorder_point
    }

    /// Whether stock is at or below the reorder point.
    pub fn is_low(&self) -> bool {
        is_low(self.on_hand, self.reorder_point)
    }

    /// Units received over the item's life.
    pub fn received_total(&self) -> u64 {
        self.received_total
    }

    /// Units sold over the item's life.
    pub fn sold_total(&self) -> u64 {
        self.sold_total
    }

    /// Appends [`StockEvent::LowStockReached`] to `events` when the stock level and reorder
    /// point after them cross from "not low" to "low".
    fn with_low_stock_check(
        &self,
        mut events: Vec<StockEvent>,
        on_hand: u64,
        reorder_point: Option<u64>,
    ) -> Vec<StockEvent> {
        if let Some(reorder_point) = reorder_point
            && !self.is_low()
            && on_hand <= reorder_point
        {
            events.push(StockEvent::LowStockReached {
                on_hand,
                reorder_point,
            });
        }
        events
    }
}

fn is_low(on_hand: u64, reorder_point: Option<u64>) -> bool {
    reorder_point.is_some_and(|level| on_hand <= level)
}

impl Aggregate for StockItem {
    const TYPE: &'static str = "StockItem";

    type Command = StockCommand;
    type Event = StockEvent;
    type Error = StockError;

    fn handle(&self, command: StockCommand) -> Result<Vec<StockEvent>, StockError> {
        match command {
            StockCommand::ReceiveShipment {
                quantity,
                shipment_id,
            } => {
                if quantity == 0 {
                    return Err(StockError::ZeroQuantity);
                }
                if let Some(id) = &shipment_id {
                    if id.trim().is_empty() {
                        return Err(StockError::EmptyShipmentId);
                    }
                    if self.recent_shipments.contains(id) {
                        return Err(StockError::DuplicateShipment {
                            shipment_id: id.clone(),
                        });
                    }
                }
                self.on_hand
                    .checked_add(quantity)
                    .ok_or(StockError::TooMuchStock)?;
                Ok(vec![StockEvent::ShipmentReceived {
                    quantity,
                    shipment_id,
                }])
            }
            StockCommand::RecordSale { quantity } => {
                if quantity == 0 {
                    return Err(StockError::ZeroQuantity);
                }
                let on_hand = self
                    .on_hand
                    .checked_sub(quantity)
                    .ok_or(StockError::Oversold {
                        requested: quantity,
                        on_hand: self.on_hand,
                    })?;
                let events = vec![StockEvent::SaleRecorded { quantity }];
                Ok(self.with_low_stock_check(events, on_hand, self.reorder_point))
            }
            StockCommand::AdjustStock { delta, reason } => {
                if delta == 0 {
                    return Err(StockError::ZeroAdjustment);
                }
                if reason.trim().is_empty() {
                    return Err(StockError::MissingReason);
                }
                let on_hand = if delta > 0 {
                    self.on_hand
                        .checked_add(delta.unsigned_abs())
                        .ok_or(StockError::TooMuchStock)?
                } else {
                    self.on_hand.checked_sub(delta.unsigned_abs()).ok_or(
                        StockError::NegativeStock {
                            removed: delta.unsigned_abs(),
                            on_hand: self.on_hand,
                        },
                    )?
                };
                let events = vec![StockEvent::StockAdjusted { delta, reason }];
                Ok(self.with_low_stock_check(events, on_hand, self.reorder_point))
            }
            StockCommand::SetReorderPoint { level } => {
                if self.reorder_point == Some(level) {
                    // Already in force: nothing happened, so nothing is recorded.
                    return Ok(vec![]);
                }
                let events = vec![StockEvent::ReorderPointSet { level }];
                Ok(self.with_low_stock_check(events, self.on_hand, Some(level)))
            }
        }
    }

    fn apply(&mut self, event: &StockEvent) {
        // Events are facts: arithmetic saturates rather than panics, although `handle` never
        // emits an event that would overflow.
        match event {
            StockEvent::ShipmentReceived {
                quantity,
                shipment_id,
            } => {
                self.on_hand = self.on_hand.saturating_add(*quantity);
                self.received_total = self.received_total.saturating_add(*quantity);
                if let Some(id) = shipment_id {
                    if self.recent_shipments.len() == RECENT_SHIPMENTS {
                        self.recent_shipments.pop_front();
                    }
                    self.recent_shipments.push_back(id.clone());
                }
            }
            StockEvent::SaleRecorded { quantity } => {
                self.on_hand = self.on_hand.saturating_sub(*quantity);
                self.sold_total = self.sold_total.saturating_add(*quantity);
            }
            StockEvent::StockAdjusted { delta, .. } => {
                self.on_hand = self.on_hand.saturating_add_signed(*delta);
            }
            StockEvent::ReorderPointSet { level } => self.reorder_point = Some(*level),
            StockEvent::LowStockReached { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use keel::TestFramework;

    use super::*;
    use StockEvent::*;

    type StockTest = TestFramework<StockItem>;

    fn received(quantity: u64) -> StockEvent {
        ShipmentReceived {
            quantity,
            shipment_id: None,
        }
    }

    fn received_as(quantity: u64, id: &str) -> StockEvent {
        ShipmentReceived {
            quantity,
            shipment_id: Some(id.into()),
        }
    }

    fn shipment(quantity: u64, id: &str) -> StockCommand {
        StockCommand::ReceiveShipment {
            quantity,
            shipment_id: Some(id.into()),
        }
    }

    // ReceiveShipment

    #[test]
    fn a_shipment_adds_to_stock() {
        let item = StockTest::new()
            .given_no_previous_events()
            .when(StockCommand::receive(12))
            .then_expect_events(vec![received(12)]);
        assert_eq!(item.on_hand(), 12);
        assert_eq!(item.received_total(), 12);
    }

    #[test]
    fn a_shipment_keeps_its_reference() {
        StockTest::new()
            .given(vec![received(3)])
            .when(shipment(5, "ship-7"))
            .then_expect_events(vec![received_as(5, "ship-7")]);
    }

    #[test]
    fn an_empty_shipment_is_rejected() {
        StockTest::new()
            .when(StockCommand::receive(0))
            .then_error(StockError::ZeroQuantity);
    }

    #[test]
    fn a_blank_shipment_reference_is_rejected() {
        StockTest::new()
            .when(shipment(5, "  "))
            .then_error(StockError::EmptyShipmentId);
    }

    #[test]
    fn a_shipment_cannot_be_received_twice() {
        StockTest::new()
            .given(vec![received_as(5, "ship-7"), received(1)])
            .when(shipment(5, "ship-7"))
            .then_error(StockError::DuplicateShipment {
                shipment_id: "ship-7".into(),
            });
    }

    #[test]
    fn only_recent_shipment_ids_are_remembered() {
        let old = (0..RECENT_SHIPMENTS).map(|i| received_as(1, &format!("ship-{i}")));
        StockTest::new()
            .given(old.chain([received_as(1, "ship-new")]))
            .when(shipment(2, "ship-0"))
            .then_expect_events(vec![received_as(2, "ship-0")]);
    }

    #[test]
    fn a_shipment_that_overflows_the_count_is_rejected() {
        StockTest::new()
            .given(vec![received(u64::MAX)])
            .when(StockCommand::receive(1))
            .then_error(StockError::TooMuchStock);
    }

    #[test]
    fn a_shipment_does_not_raise_a_low_stock_alert() {
        let item = StockTest::new()
            .given(vec![ReorderPointSet { level: 10 }])
            .when(StockCommand::receive(4))
            .then_expect_events(vec![received(4)]);
        assert!(item.is_low(), "still low, but the alert was raised before");
    }

    // RecordSale

    #[test]
    fn a_sale_takes_from_stock() {
        let item = StockTest::new()
            .given(vec![received(10)])
            .when(StockCommand::sell(4))
            .then_expect_events(vec![SaleRecorded { quantity: 4 }]);
        assert_eq!(item.on_hand(), 6);
        assert_eq!(item.sold_total(), 4);
    }

    #[test]
    fn selling_everything_on_hand_is_allowed() {
        let item = StockTest::new()
            .given(vec![received(3)])
            .when(StockCommand::sell(3))
            .then_expect_events(vec![SaleRecorded { quantity: 3 }]);
        assert_eq!(item.on_hand(), 0);
    }

    #[test]
    fn an_oversell_is_rejected() {
        StockTest::new()
            .given(vec![received(3), SaleRecorded { quantity: 1 }])
            .when(StockCommand::sell(5))
            .then_error(StockError::Oversold {
                requested: 5,
                on_hand: 2,
            });
    }

    #[test]
    fn a_sale_with_no_stock_is_rejected() {
        StockTest::new()
            .given_no_previous_events()
            .when(StockCommand::sell(1))
            .then_error(StockError::Oversold {
                requested: 1,
                on_hand: 0,
            });
    }

    #[test]
    fn a_sale_of_nothing_is_rejected() {
        StockTest::new()
            .given(vec![received(3)])
            .when(StockCommand::sell(0))
            .then_error(StockError::ZeroQuantity);
    }

    // AdjustStock

    #[test]
    fn an_adjustment_adds_or_removes_stock_with_its_reason() {
        let item = StockTest::new()
            .given(vec![received(10)])
            .when(StockCommand::adjust(-3, "damaged in transit"))
            .then_expect_events(vec![StockAdjusted {
                delta: -3,
                reason: "damaged in transit".into(),
            }]);
        assert_eq!(item.on_hand(), 7);
        let item = StockTest::new()
            .given(vec![received(10)])
            .when(StockCommand::adjust(2, "stocktake"))
            .then_expect_events(vec![StockAdjusted {
                delta: 2,
                reason: "stocktake".into(),
            }]);
        assert_eq!(item.on_hand(), 12);
        assert_eq!(item.received_total(), 10, "adjustments are not receipts");
    }

    #[test]
    fn an_adjustment_cannot_make_stock_negative() {
        StockTest::new()
            .given(vec![received(2)])
            .when(StockCommand::adjust(-3, "stocktake"))
            .then_error(StockError::NegativeStock {
                removed: 3,
                on_hand: 2,
            });
    }

    #[test]
    fn an_adjustment_needs_a_reason() {
        StockTest::new()
            .given(vec![received(2)])
            .when(StockCommand::adjust(-1, ""))
            .then_error(StockError::MissingReason);
        StockTest::new()
            .given(vec![received(2)])
            .when(StockCommand::adjust(1, " \t"))
            .then_error(StockError::MissingReason);
    }

    #[test]
    fn a_zero_adjustment_is_rejected() {
        StockTest::new()
            .given(vec![received(2)])
            .when(StockCommand::adjust(0, "stocktake"))
            .then_error(StockError::ZeroAdjustment);
    }

    #[test]
    fn an_adjustment_that_overflows_the_count_is_rejected() {
        StockTest::new()
            .given(vec![received(u64::MAX - 1)])
            .when(StockCommand::adjust(2, "found a pallet"))
            .then_error(StockError::TooMuchStock);
    }

    // SetReorderPoint

    #[test]
    fn a_reorder_point_is_set() {
        let item = StockTest::new()
            .given(vec![received(20)])
            .when(StockCommand::reorder_at(5))
            .then_expect_events(vec![ReorderPointSet { level: 5 }]);
        assert_eq!(item.reorder_point(), Some(5));
        assert!(!item.is_low());
    }

    #[test]
    fn setting_the_same_reorder_point_again_records_nothing() {
        StockTest::new()
            .given(vec![received(20), ReorderPointSet { level: 5 }])
            .when(StockCommand::reorder_at(5))
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_reorder_point_above_stock_raises_low_stock() {
        StockTest::new()
            .given(vec![received(4)])
            .when(StockCommand::reorder_at(4))
            .then_expect_events(vec![
                ReorderPointSet { level: 4 },
                LowStockReached {
                    on_hand: 4,
                    reorder_point: 4,
                },
            ]);
    }

    #[test]
    fn lowering_a_reorder_point_while_already_low_raises_nothing_new() {
        StockTest::new()
            .given(vec![
                received(2),
                ReorderPointSet { level: 5 },
                LowStockReached {
                    on_hand: 2,
                    reorder_point: 5,
                },
            ])
            .when(StockCommand::reorder_at(3))
            .then_expect_events(vec![ReorderPointSet { level: 3 }]);
    }

    // Low-stock crossing

    #[test]
    fn a_sale_that_reaches_the_reorder_point_raises_low_stock() {
        let item = StockTest::new()
            .given(vec![received(10), ReorderPointSet { level: 4 }])
            .when(StockCommand::sell(6))
            .then_expect_events(vec![
                SaleRecorded { quantity: 6 },
                LowStockReached {
                    on_hand: 4,
                    reorder_point: 4,
                },
            ]);
        assert!(item.is_low());
    }

    #[test]
    fn a_sale_that_stays_above_the_reorder_point_raises_nothing() {
        StockTest::new()
            .given(vec![received(10), ReorderPointSet { level: 4 }])
            .when(StockCommand::sell(5))
            .then_expect_events(vec![SaleRecorded { quantity: 5 }]);
    }

    #[test]
    fn a_sale_while_already_low_raises_nothing_new() {
        StockTest::new()
            .given(vec![
                received(10),
                ReorderPointSet { level: 4 },
                SaleRecorded { quantity: 7 },
                LowStockReached {
                    on_hand: 3,
                    reorder_point: 4,
                },
            ])
            .when(StockCommand::sell(1))
            .then_expect_events(vec![SaleRecorded { quantity: 1 }]);
    }

    #[test]
    fn low_stock_is_raised_again_after_a_restock() {
        StockTest::new()
            .given(vec![
                received(5),
                ReorderPointSet { level: 4 },
                SaleRecorded { quantity: 2 },
                LowStockReached {
                    on_hand: 3,
                    reorder_point: 4,
                },
                received(10),
            ])
            .when(StockCommand::sell(9))
            .then_expect_events(vec![
                SaleRecorded { quantity: 9 },
                LowStockReached {
                    on_hand: 4,
                    reorder_point: 4,
                },
            ]);
    }

    #[test]
    fn an_adjustment_down_to_the_reorder_point_raises_low_stock() {
        StockTest::new()
            .given(vec![received(10), ReorderPointSet { level: 2 }])
            .when(StockCommand::adjust(-9, "water damage"))
            .then_expect_events(vec![
                StockAdjusted {
                    delta: -9,
                    reason: "water damage".into(),
                },
                LowStockReached {
                    on_hand: 1,
                    reorder_point: 2,
                },
            ]);
    }

    #[test]
    fn without_a_reorder_point_stock_is_never_low() {
        let item = StockTest::new()
            .given(vec![received(1)])
            .when(StockCommand::sell(1))
            .then_expect_events(vec![SaleRecorded { quantity: 1 }]);
        assert!(!item.is_low());
    }

    #[test]
    fn events_round_trip_through_the_stored_encoding() {
        let events = vec![
            received_as(5, "s"),
            SaleRecorded { quantity: 1 },
            StockAdjusted {
                delta: -1,
                reason: "r".into(),
            },
            ReorderPointSet { level: 2 },
            LowStockReached {
                on_hand: 3,
                reorder_point: 2,
            },
        ];
        for event in events {
            let bytes = rmp_serde::to_vec_named(&event).expect("encodes");
            let back: StockEvent = rmp_serde::from_slice(&bytes).expect("decodes");
            assert_eq!(back, event);
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn command() -> impl Strategy<Value = StockCommand> {
            prop_oneof![
                (0u64..30).prop_map(StockCommand::receive),
                (0u64..12).prop_map(StockCommand::sell),
                (-10i64..10, prop_oneof![Just(""), Just("stocktake")])
                    .prop_map(|(delta, reason)| StockCommand::adjust(delta, reason)),
                (0u64..15).prop_map(StockCommand::reorder_at),
            ]
        }

        proptest! {
            /// For any command sequence: stock never goes negative, it always equals what came
            /// in minus what went out, and LowStockReached is emitted exactly when an item
            /// crosses from "not low" to "low".
            #[test]
            fn stock_is_conserved_and_low_stock_fires_on_each_crossing(
                commands in proptest::collection::vec(command(), 0..80)
            ) {
                let mut item = StockItem::default();
                let mut adjusted: i128 = 0;
                for command in commands {
                    let was_low = item.is_low();
                    // A rejection emits nothing (`handle` cannot change the state).
                    if let Ok(events) = item.handle(command) {
                        for event in &events {
                            if let StockEvent::StockAdjusted { delta, .. } = event {
                                adjusted += i128::from(*delta);
                            }
                            item.apply(event);
                        }
                        let alerts = events
                            .iter()
                            .filter(|e| matches!(e, StockEvent::LowStockReached { .. }))
                            .count();
                        prop_assert_eq!(alerts, usize::from(!was_low && item.is_low()));
                    }
                    prop_assert_eq!(
                        i128::from(item.on_hand()),
                        i128::from(item.received_total()) - i128::from(item.sold_total())
                            + adjusted
                    );
                }
            }
        }
    }
}
