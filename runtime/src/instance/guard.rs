//! Turning panics in application code (upcasters, serde, `handle`, `apply`) into errors.

use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::aggregate::Aggregate;
use crate::envelope::EventEnvelope;
use crate::error::DecodeError;

use crate::upcast::Upcasters;

/// The text of a panic's payload.
pub(super) fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

/// Decodes (and upcasts) one event; a panic in an upcaster or in `Deserialize` is an error
/// naming where the event is, like any other undecodable event.
pub(super) fn decode_guarded<A: Aggregate>(
    envelope: &EventEnvelope,
    upcasters: &Upcasters,
    location: &str,
) -> Result<A::Event, DecodeError> {
    let location_display: &dyn std::fmt::Display = &location;
    catch_unwind(AssertUnwindSafe(|| {
        envelope.decode_event::<A>(upcasters, location_display)
    }))
    .unwrap_or_else(|panic| {
        Err(DecodeError {
            what: format!("event {} v{}", envelope.event_type, envelope.event_version),
            location: location.to_owned(),
            reason: format!("decoding panicked: {}", panic_message(panic)),
        })
    })
}

/// Runs `f`, turning a panic into an error: for serde code that is the application's.
pub(super) fn unwind_to_err<T>(
    what: &str,
    f: impl FnOnce() -> Result<T, String>,
) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|panic| Err(format!("{what} panicked: {}", panic_message(panic))))
}
