//! `Tally`: a minimal aggregate for crash and fault tests — every command adds to a total.

use serde::{Deserialize, Serialize};

/// A running total.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    /// The sum of every `Added` amount.
    pub total: u64,
}

/// Tally's only event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TallyEvent {
    /// `amount` was added.
    Added {
        /// How much.
        amount: u64,
    },
}

/// A zero amount is rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("amount must be positive")]
pub struct ZeroAmount;

impl keel::Aggregate for Tally {
    const TYPE: &'static str = "Tally";
    type Command = u64;
    type Event = TallyEvent;
    type Error = ZeroAmount;

    fn handle(&self, amount: u64) -> Result<Vec<TallyEvent>, ZeroAmount> {
        if amount == 0 {
            return Err(ZeroAmount);
        }
        Ok(vec![TallyEvent::Added { amount }])
    }

    fn apply(&mut self, event: &TallyEvent) {
        let TallyEvent::Added { amount } = event;
        self.total += amount;
    }
}
