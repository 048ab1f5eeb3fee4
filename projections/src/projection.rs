//! The read-side seam: a [`Projection`] turns events into changes of a keyed view, and
//! [`AggregateEvents`] decodes the events of one [`Aggregate`] type for it.

use std::fmt::{self, Debug};
use std::hash::Hash;
use std::marker::PhantomData;

use keel::{Aggregate, DecodeError, EventEnvelope, Position, Upcasters};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::view::ViewMut;

/// A key of a view. Blanket-implemented; persisted views store it as msgpack.
pub trait ViewKey:
    Eq + Hash + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
}
impl<T> ViewKey for T where
    T: Eq + Hash + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
}

/// A value of a view. Blanket-implemented; persisted views store it as msgpack with named
/// fields.
pub trait ViewValue: Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<T> ViewValue for T where T: Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{}

/// A read model: how each event changes a view of `Key → Value` entries.
///
/// `apply` must be deterministic (no clock, no randomness, no I/O): replaying the log into an
/// empty view must give the same view, which is how views are rebuilt and how they are tested.
/// Its changes to the view are atomic per event: when it returns an error, none of the changes
/// it made through `view` are kept.
///
/// The view is identified by [`name`](Projection::name) and [`version`](Projection::version):
/// bump the version when `apply` changes meaning, and the new version is built beside the old
/// one from the start of the log (see [`SwitchableView`](crate::SwitchableView)).
pub trait Projection: Send + Sync + 'static {
    /// The key of the view's entries.
    type Key: ViewKey;
    /// The value of the view's entries.
    type Value: ViewValue;
    /// Why an event cannot be applied. [`ApplyError`] fits most projections.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The projection's name: names its checkpoints, metrics and persisted file.
    fn name(&self) -> &str;

    /// The version of the projection's logic. Default = 1.
    fn version(&self) -> u32 {
        1
    }

    /// Whether events of `aggregate_type` concern this projection. Events it does not accept
    /// are passed over without being decoded (their offsets still count as processed).
    /// Default = every type.
    fn accepts(&self, aggregate_type: &str) -> bool {
        let _ = aggregate_type;
        true
    }

    /// Applies one event, stored at `position`, to the view.
    fn apply(
        &self,
        view: &mut ViewMut<'_, Self::Key, Self::Value>,
        event: &EventEnvelope,
        position: Position,
    ) -> Result<(), Self::Error>;
}

/// What a projection does with a poison event: one that cannot be decoded, or whose handler
/// returns an error (or panics). Neither policy ignores it silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PoisonPolicy {
    /// The projection stops at the event: its status and every query waiting on it report
    /// [`ProjectionError::Poisoned`](crate::ProjectionError::Poisoned) with the partition and
    /// offset. Events before it stay applied; a persisted view does not checkpoint past it, so
    /// a restart meets it again. The default.
    #[default]
    Stop,
    /// The event is passed over: it is counted in the status and in the
    /// `keel_projection_poison_skipped_total` counter, and logged as a warning with its
    /// partition and offset.
    SkipAndCount,
}

/// The error most projections return: the event did not decode, or it does not fit the view.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApplyError {
    /// The event's payload did not decode as the aggregate's event type.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The event decoded but cannot be applied to the view (an invariant of the view broke).
    #[error("{0}")]
    Invalid(String),
}

/// Decodes the events of aggregate type `A` out of envelopes, upcasting old versions.
///
/// Build it once (it holds `A`'s upcasters) and keep it in the projection.
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
        let location = EventLocation {
            aggregate_type: &envelope.aggregate_type,
            aggregate_id: &envelope.aggregate_id,
            position,
        };
        envelope
            .decode_event::<A>(&self.upcasters, &location)
            .map(Some)
    }
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
