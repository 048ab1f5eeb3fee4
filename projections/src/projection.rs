//! The read-side seam: a [`Projection`] turns stored events into changes of a keyed view,
//! and a [`PoisonPolicy`] says what happens to an event it cannot apply.
//!
//! Most projections follow one aggregate type and implement
//! [`AggregateProjection`](crate::AggregateProjection) instead, which gets its events decoded.

use keel::envelope::DecodeError;
use keel::envelope::EventEnvelope;
use keel::log::Position;

use crate::entry::{ViewKey, ViewValue};
use crate::view::ViewMut;

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
