//! [`Counters`]: what the tills have done so far; read by the progress line and the report.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use inventory::StockError;
use keel::CommandError;

/// What the tills have done so far; read by the progress line and the report.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) commands: AtomicU64,
    pub(crate) committed: AtomicU64,
    pub(crate) events: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) failed: AtomicU64,
    /// Commands answered `NotOwner`: their item's partition had just moved to another
    /// process (Kafka only).
    pub(crate) not_owner: AtomicU64,
    /// Rejections by reason. A std `Mutex` is enough: it is taken only on a rejection, never
    /// across an `.await`.
    rejections: Mutex<BTreeMap<&'static str, u64>>,
    /// The first command failure that was not a rejection, for the report.
    first_failure: Mutex<Option<String>>,
}

impl Counters {
    pub(crate) fn reject(&self, error: &StockError) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        let reason = match error {
            StockError::ZeroQuantity => "zero quantity",
            StockError::Oversold { .. } => "oversold",
            StockError::ZeroAdjustment => "zero adjustment",
            StockError::MissingReason => "missing reason",
            StockError::NegativeStock { .. } => "negative stock",
            StockError::EmptyShipmentId => "empty shipment id",
            StockError::DuplicateShipment { .. } => "duplicate shipment",
            StockError::TooMuchStock => "too much stock",
        };
        if let Ok(mut rejections) = self.rejections.lock() {
            *rejections.entry(reason).or_default() += 1;
        }
    }

    pub(crate) fn fail(&self, error: &CommandError<StockError>) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first_failure.lock() {
            first.get_or_insert_with(|| error.to_string());
        }
    }

    pub(crate) fn rejections(&self) -> BTreeMap<String, u64> {
        self.rejections
            .lock()
            .map(|r| r.iter().map(|(k, v)| ((*k).to_string(), *v)).collect())
            .unwrap_or_default()
    }

    pub(crate) fn first_failure(&self) -> Option<String> {
        self.first_failure.lock().ok().and_then(|f| f.clone())
    }
}
