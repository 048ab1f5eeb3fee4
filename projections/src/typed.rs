//! [`AggregateProjection`]: a projection over the decoded events of one [`Aggregate`] type.
//!
//! The runtime does the rest: it passes over other aggregate types without decoding them,
//! decodes and upcasts the payload (a failure is a poison event located by aggregate,
//! partition and offset, handled by the [`PoisonPolicy`](crate::PoisonPolicy)), and hands
//! `apply` the aggregate id and the event's [`EventMeta`]. Every `AggregateProjection` is a
//! [`Projection`], so it starts, replays and rebuilds like any other.

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

use keel::Aggregate;
use keel::envelope::DecodeError;
use keel::envelope::EventEnvelope;
use keel::log::Position;
use keel::upcast::Upcasters;

use crate::decode::decode_with;
use crate::entry::{ViewKey, ViewValue};
use crate::projection::Projection;
use crate::view::ViewMut;

/// What the log says about an event besides its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventMeta<'a> {
    /// The aggregate's sequence number of the event: 1, 2, 3… without gaps.
    pub seq: u64,
    /// Where the event is stored.
    pub position: Position,
    /// When it was committed, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The id of the command that caused it, when the caller gave one.
    pub command_id: Option<&'a str>,
}

/// A read model over the events of one aggregate type: how each of its events changes a view
/// of `Key → Value` entries.
///
/// The rules of [`Projection`] hold: `apply` is deterministic, its changes are atomic per
/// event, and [`name`](AggregateProjection::name) and
/// [`version`](AggregateProjection::version) identify the view.
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Default, Serialize, Deserialize)]
/// # struct Counter;
/// # #[derive(Debug, Clone, Serialize, Deserialize)]
/// # enum Counted { Added { n: u64 } }
/// # #[derive(Debug, thiserror::Error)]
/// # #[error("never")]
/// # struct Never;
/// # impl keel::Aggregate for Counter {
/// #     const TYPE: &'static str = "Counter";
/// #     type Command = u64;
/// #     type Event = Counted;
/// #     type Error = Never;
/// #     fn handle(&self, n: u64) -> Result<Vec<Counted>, Never> { Ok(vec![Counted::Added { n }]) }
/// #     fn apply(&mut self, _: &Counted) {}
/// # }
/// use keel_projections::{AggregateProjection, ApplyError, EventMeta, ViewMut};
///
/// /// The total added per counter.
/// struct Totals;
///
/// impl AggregateProjection for Totals {
///     type Aggregate = Counter;
///     type Key = String;
///     type Value = u64;
///     type Error = ApplyError;
///
///     fn name(&self) -> &str {
///         "totals"
///     }
///
///     fn apply(
///         &self,
///         view: &mut ViewMut<'_, String, u64>,
///         id: &str,
///         event: &Counted,
///         _meta: &EventMeta<'_>,
///     ) -> Result<(), ApplyError> {
///         let Counted::Added { n } = event;
///         view.upsert(id.to_string(), |total| *total += n);
///         Ok(())
///     }
/// }
/// ```
pub trait AggregateProjection: Send + Sync + 'static {
    /// The aggregate type whose events the projection follows.
    type Aggregate: Aggregate;
    /// The key of the view's entries.
    type Key: ViewKey;
    /// The value of the view's entries.
    type Value: ViewValue;
    /// Why an event cannot be applied. [`ApplyError`](crate::ApplyError) fits most projections.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The projection's name: names its checkpoints, metrics and persisted file.
    fn name(&self) -> &str;

    /// The version of the projection's logic. Default = 1.
    fn version(&self) -> u32 {
        1
    }

    /// Whether events of `event_type` (the event enum's variant name) concern this projection.
    /// Those it does not accept are passed over without being decoded. Default = every type.
    fn accepts_event(&self, event_type: &str) -> bool {
        let _ = event_type;
        true
    }

    /// Applies one event of the aggregate with id `id` to the view.
    fn apply(
        &self,
        view: &mut ViewMut<'_, Self::Key, Self::Value>,
        id: &str,
        event: &<Self::Aggregate as Aggregate>::Event,
        meta: &EventMeta<'_>,
    ) -> Result<(), Self::Error>;
}

/// Why an [`AggregateProjection`] could not apply an event: its payload did not decode, or the
/// projection's own error. Displays as the inner error.
#[derive(Debug, thiserror::Error)]
pub enum TypedError<E> {
    /// The payload did not decode (or upcast) as the aggregate's event type.
    #[error(transparent)]
    Decode(DecodeError),
    /// The projection's `apply` failed.
    #[error(transparent)]
    Apply(E),
}

impl<P: AggregateProjection> Projection for P {
    type Key = P::Key;
    type Value = P::Value;
    type Error = TypedError<P::Error>;

    fn name(&self) -> &str {
        AggregateProjection::name(self)
    }

    fn version(&self) -> u32 {
        AggregateProjection::version(self)
    }

    fn accepts(&self, aggregate_type: &str) -> bool {
        aggregate_type == P::Aggregate::TYPE
    }

    fn apply(
        &self,
        view: &mut ViewMut<'_, P::Key, P::Value>,
        envelope: &EventEnvelope,
        position: Position,
    ) -> Result<(), Self::Error> {
        if envelope.aggregate_type != P::Aggregate::TYPE
            || !self.accepts_event(&envelope.event_type)
        {
            return Ok(());
        }
        let upcasters = upcasters_of::<P::Aggregate>();
        let event = decode_with::<P::Aggregate>(upcasters, envelope, position)
            .map_err(TypedError::Decode)?;
        let meta = EventMeta {
            seq: envelope.seq,
            position,
            timestamp_ms: envelope.timestamp_ms,
            command_id: envelope.command_id.as_deref(),
        };
        AggregateProjection::apply(self, view, &envelope.aggregate_id, &event, &meta)
            .map_err(TypedError::Apply)
    }
}

/// `A::upcasters()`, built once per aggregate type for the life of the process.
fn upcasters_of<A: Aggregate>() -> &'static Upcasters {
    static BUILT: OnceLock<RwLock<HashMap<TypeId, &'static Upcasters>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let id = TypeId::of::<A>();
    if let Some(upcasters) = built.read().unwrap_or_else(|e| e.into_inner()).get(&id) {
        return upcasters;
    }
    let mut built = built.write().unwrap_or_else(|e| e.into_inner());
    built
        .entry(id)
        .or_insert_with(|| Box::leak(Box::new(A::upcasters())))
}
