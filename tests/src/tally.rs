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

/// Sends `1` to tally `id` with `command_id` through whichever of `instances` owns it,
/// following `NotOwner` answers and retrying retryable errors (with the same command id, so
/// nothing is appended twice) while ownership moves, skipping instances that shut down;
/// panics after 90 s or on any other error.
pub async fn send_to_owner(
    instances: &[&keel::Runtime],
    id: &str,
    command_id: &str,
) -> keel::Committed<TallyEvent> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        for runtime in instances {
            match runtime
                .aggregate::<Tally>()
                .send_with(id, 1, keel::SendOptions::with_id(command_id))
                .await
            {
                Ok(done) => return done,
                // An instance that is shutting down serves nothing more: ask the others.
                Err(e)
                    if e.not_owner().is_some()
                        || e.is_retryable()
                        || matches!(e, keel::CommandError::ShuttingDown) =>
                {
                    continue;
                }
                Err(e) => panic!("command {command_id} to {id}: {e}"),
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no instance took {id}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
