//! One stored record through one projection: the step the projection actor and [`replay`]
//! share — pass over other aggregate types, decode the envelope, apply it atomically, and
//! turn a decoding failure, an error or a panic into a poison event's reason.
//!
//! [`replay`]: crate::replay

use std::panic::AssertUnwindSafe;

use keel::log::StoredRecord;

use crate::decode::decode_envelope;
use crate::error::ProjectionError;
use crate::projection::Projection;
use crate::view::apply_atomically;
use crate::view::store::ViewBase;

/// What became of one record.
pub(crate) enum Outcome {
    /// The projection applied it.
    Applied,
    /// Its aggregate type does not concern the projection: passed over, not decoded.
    Passed,
    /// A poison event: it did not decode, or the projection failed or panicked on it. None
    /// of its changes were kept.
    Poison(String),
}

/// Applies `record` to `base` with `projection`. The error is the store's (fatal for the
/// projection); a poison event is an [`Outcome::Poison`].
pub(crate) fn apply_record<P: Projection>(
    projection: &P,
    base: &mut dyn ViewBase<P::Key, P::Value>,
    record: &StoredRecord,
) -> Result<Outcome, ProjectionError> {
    let aggregate_type = record.key.split('/').next().unwrap_or_default();
    if !projection.accepts(aggregate_type) {
        return Ok(Outcome::Passed);
    }
    let envelope = match decode_envelope(record) {
        Ok(envelope) => envelope,
        Err(e) => return Ok(Outcome::Poison(e.to_string())),
    };
    let applied = std::panic::catch_unwind(AssertUnwindSafe(|| {
        apply_atomically(base, |view| {
            projection.apply(view, &envelope, record.position)
        })
    }));
    Ok(match applied {
        Ok(Ok(Ok(()))) => Outcome::Applied,
        Ok(Err(store_failure)) => return Err(store_failure),
        Ok(Ok(Err(e))) => Outcome::Poison(error_chain(&e)),
        Err(panic) => Outcome::Poison(format!("handler panicked: {}", panic_message(&panic))),
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".into()
    }
}
