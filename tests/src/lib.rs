//! Shared helpers for keel integration tests.

pub mod broker;
pub mod tally;

use std::time::Duration;

/// Polls `check` every 50 ms until it holds; panics naming `what` after 90 s. The deadline only
/// turns a hang into a failure — nothing here depends on timing.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
