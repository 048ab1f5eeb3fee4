//! keel-projections: the read side of keel.
//!
//! A projection turns events from the log into a keyed view (`Key → Value`). Most follow one
//! aggregate type and implement [`AggregateProjection`]: they get that type's events decoded
//! (and upcast), with the aggregate id and the event's [`EventMeta`]; a [`Projection`] sees the
//! raw stored envelopes of every type. [`ProjectionRunner`] starts either kind: a projection
//! actor reads every partition of the events log from its checkpoint and applies the events
//! in order, in batches; queries go through a typed, cheap-clone [`ViewHandle`]: get, scan,
//! top-N, read-your-writes ([`ViewHandle::wait_for`]) and lag.
//!
//! Views are either in memory (rebuilt from the log at every start) or persisted in an embedded
//! fjall database, where each batch's changes and the checkpoint commit as one atomic write: every event
//! is applied exactly once, across crashes. A poison event stops the projection or is skipped
//! and counted, per [`PoisonPolicy`] — never ignored silently. [`History`](history::History) serves one
//! aggregate's audit trail and past states from the log; [`SwitchableView`] swaps in a
//! rebuilt version of a view once it has caught up.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use keel::envelope::EventEnvelope;
//! use keel::log::{EventLog, LogBackend, LogRecord, MemoryLog, Position};
//! use keel_projections::{ApplyError, Projection, ProjectionRunner, ViewMut};
//!
//! /// Events per aggregate type.
//! struct EventsPerType;
//!
//! impl Projection for EventsPerType {
//!     type Key = String;
//!     type Value = u64;
//!     type Error = ApplyError;
//!
//!     fn name(&self) -> &str {
//!         "events-per-type"
//!     }
//!
//!     fn apply(
//!         &self,
//!         view: &mut ViewMut<'_, String, u64>,
//!         event: &EventEnvelope,
//!         _position: Position,
//!     ) -> Result<(), ApplyError> {
//!         view.upsert(event.aggregate_type.clone(), |count| *count += 1);
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let log = Arc::new(MemoryLog::new(4));
//! let backend: Arc<dyn LogBackend> = log.clone();
//! let view = ProjectionRunner::new(backend)
//!     .start_in_memory(EventsPerType)
//!     .await?;
//!
//! let envelope = EventEnvelope {
//!     aggregate_type: "StockItem".into(),
//!     aggregate_id: "s1".into(),
//!     seq: 1,
//!     event_type: "Created".into(),
//!     event_version: 1,
//!     command_id: None,
//!     timestamp_ms: 0,
//!     payload: Vec::new(),
//! };
//! let record = LogRecord { key: envelope.key(), value: envelope.encode() };
//! let offset = log.append(2, vec![record]).await?;
//!
//! // Read your write: wait until the view has applied the event, then query. With the
//! // runtime, the position is `Committed::position` of the command's reply.
//! view.wait_for(Position { partition: 2, offset }, Duration::from_secs(5)).await?;
//! assert_eq!(view.get(&"StockItem".to_string())?, Some(1));
//! assert_eq!(view.lag().await?, 0);
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! | file | concept |
//! |---|---|
//! | `entry.rs` | [`ViewKey`], [`ViewValue`]: what view entries are made of |
//! | `decode.rs` | [`AggregateEvents`](decode::AggregateEvents): typed decoding and upcasting of envelopes, errors located by aggregate, partition and offset |
//! | `view.rs` | [`ViewMut`] (one event's atomic changes) |
//! | `view/store.rs` | the storage seam of views: written by the actor, read by queries |
//! | `view/memory.rs` | in-memory views (`DashMap`) |
//! | `view/persisted.rs` | persisted views (fjall; changes and checkpoint in one atomic batch) |
//! | `projection.rs` | [`Projection`] (the raw seam), [`PoisonPolicy`], [`ApplyError`] |
//! | `typed.rs` | [`AggregateProjection`] (the typed seam), [`EventMeta`], [`TypedError`] |
//! | `apply.rs` | one record through one projection: filter, decode, apply atomically, poison |
//! | `status.rs` | [`ProjectionStatus`](status::ProjectionStatus), [`ProjectionState`](status::ProjectionState) |
//! | `actor.rs` | the projection actor and its per-partition reading tasks; ordering guarantees |
//! | `query.rs` | [`ViewHandle`]: queries, `wait_for`, lag |
//! | `runner.rs` | [`ProjectionRunner`]: settings, and starting a view in memory or persisted |
//! | `rebuild.rs` | [`SwitchableView`]: rebuild a new version beside the old, then switch |
//! | `replay.rs` | [`replay`]: a projection over given records into an empty view, for checks and tests |
//! | `history.rs` | [`History`](history::History): an aggregate's events and past states, from the log |
//! | `error.rs` | [`ProjectionError`] |
//!
//! Each file uses only files above it in this table (and `error.rs`).
//!
//! # Metrics
//!
//! Through the `metrics` facade, each labelled `projection = "name@vN"`:
//! `keel_projection_lag` (gauge, events behind the log's end),
//! `keel_projection_events_applied_total` and `keel_projection_poison_skipped_total`
//! (counters).

mod actor;
mod apply;
pub mod decode;
mod entry;
mod error;
pub mod history;
mod projection;
mod query;
mod rebuild;
mod replay;
mod runner;
pub mod status;
mod typed;
mod view;

pub use entry::{ViewKey, ViewValue};
pub use error::ProjectionError;
pub use projection::{ApplyError, PoisonPolicy, Projection};
pub use query::ViewHandle;
pub use rebuild::SwitchableView;
pub use replay::replay;
pub use runner::ProjectionRunner;
pub use typed::{AggregateProjection, EventMeta, TypedError};
pub use view::ViewMut;
