//! [`AggregateEvents`]: decodes the events of one [`Aggregate`] type out of envelopes,
//! upcasting old versions, with errors that name the aggregate, partition and offset.

use std::fmt::{self, Debug};
use std::marker::PhantomData;

use keel::Aggregate;
use keel::envelope::DecodeError;
use keel::envelope::EventEnvelope;
use keel::log::Position;
use keel::log::StoredRecord;
use keel::upcast::Upcasters;

/// Decodes the events of aggregate type `A` out of envelopes, upcasting old versions.
///
/// Build it once (it holds `A`'s upcasters) and keep it. An
/// [`AggregateProjection`](crate::AggregateProjection) does not need one: the runtime decodes
/// for it.
pub struct AggregateEvents<A: Aggregate> {
    upcasters: Upcasters,
    aggregate: PhantomData<fn() -> A>,
}

impl<A: Aggregate> AggregateEvents<A> {
    /// A decoder with `A::upcasters()`.
    pub fn new() -> Self {
        AggregateEvents {
            upcasters: A::upcasters(),
            aggregate: PhantomData,
        }
    }

    /// Whether `envelope` is an event of `A`.
    pub fn matches(&self, envelope: &EventEnvelope) -> bool {
        envelope.aggregate_type == A::TYPE
    }

    /// The event in `envelope` when it is one of `A`'s, `None` when it belongs to another
    /// aggregate type, or an error naming the aggregate, partition and offset when its payload
    /// does not decode.
    pub fn decode(
        &self,
        envelope: &EventEnvelope,
        position: Position,
    ) -> Result<Option<A::Event>, DecodeError> {
        if !self.matches(envelope) {
            return Ok(None);
        }
        decode_with::<A>(&self.upcasters, envelope, position).map(Some)
    }
}

/// Decodes `envelope`'s payload as an event of `A` with `upcasters`; the error names the
/// aggregate, partition and offset.
pub(crate) fn decode_with<A: Aggregate>(
    upcasters: &Upcasters,
    envelope: &EventEnvelope,
    position: Position,
) -> Result<A::Event, DecodeError> {
    let location = EventLocation {
        aggregate_type: &envelope.aggregate_type,
        aggregate_id: &envelope.aggregate_id,
        position,
    };
    envelope.decode_event::<A>(upcasters, &location)
}

impl<A: Aggregate> Default for AggregateEvents<A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: Aggregate> Clone for AggregateEvents<A> {
    fn clone(&self) -> Self {
        AggregateEvents {
            upcasters: self.upcasters.clone(),
            aggregate: PhantomData,
        }
    }
}

impl<A: Aggregate> Debug for AggregateEvents<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AggregateEvents")
            .field("aggregate", &A::TYPE)
            .finish()
    }
}

/// Where an event sits, for error messages: "aggregate T/id, partition p, offset o".
struct EventLocation<'a> {
    aggregate_type: &'a str,
    aggregate_id: &'a str,
    position: Position,
}

impl fmt::Display for EventLocation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "aggregate {}/{}, partition {}, offset {}",
            self.aggregate_type, self.aggregate_id, self.position.partition, self.position.offset
        )
    }
}

/// Decodes the envelope of a record read from the log; the error names the record's aggregate
/// key, partition and offset.
pub(crate) fn decode_envelope(record: &StoredRecord) -> Result<EventEnvelope, DecodeError> {
    EventEnvelope::decode(&record.value, &RecordLocation(record))
}

/// "aggregate T/id, partition p, offset o" of a record, before its envelope is decoded.
struct RecordLocation<'a>(&'a StoredRecord);

impl fmt::Display for RecordLocation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "aggregate {}, partition {}, offset {}",
            self.0.key, self.0.position.partition, self.0.position.offset
        )
    }
}
