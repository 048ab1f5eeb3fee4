//! [`History`]: one aggregate's events (its audit trail) and its state as of a sequence number
//! or a time, read straight from the log.
//!
//! The log is indexed by offset, not by key, so a history query reads the aggregate's whole
//! partition up to its current end and keeps the records with the aggregate's key: its cost
//! grows with the partition, not with the aggregate. It is meant for audits and support
//! tools, not for a hot path; a projection keyed by aggregate serves frequent lookups better.

use std::sync::Arc;

use keel::Aggregate;
use keel::envelope::EventEnvelope;
use keel::log::Position;
use keel::log::{LogBackend, aggregate_key, partition_for};

use crate::decode::{AggregateEvents, decode_envelope};
use crate::error::ProjectionError;

/// Reads aggregate histories from a log backend. Cheap to clone.
#[derive(Clone)]
pub struct History {
    backend: Arc<dyn LogBackend>,
    batch_size: usize,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History")
            .field("backend", &self.backend.describe())
            .finish()
    }
}

/// One event of an aggregate's history.
#[derive(Debug, Clone)]
pub struct HistoryEntry<E> {
    /// Where the event is in the log.
    pub position: Position,
    /// The stored envelope: sequence number, time, command id, type and version.
    pub envelope: EventEnvelope,
    /// The decoded (and upcast) event.
    pub event: E,
}

/// An aggregate's state as of some point of its history.
#[derive(Debug, Clone)]
pub struct StateAt<A> {
    /// The state after folding the events up to that point.
    pub state: A,
    /// The sequence number of the last event folded; 0 when none was.
    pub seq: u64,
    /// The position of the last event folded.
    pub position: Option<Position>,
}

impl History {
    /// Reads histories from `backend`.
    pub fn new(backend: Arc<dyn LogBackend>) -> Self {
        History {
            backend,
            batch_size: 4096,
        }
    }

    /// The stored envelopes of aggregate `aggregate_type`/`id`, in order, while `keep_going`
    /// holds for them.
    async fn envelopes_while(
        &self,
        aggregate_type: &str,
        id: &str,
        mut keep_going: impl FnMut(&EventEnvelope) -> bool,
    ) -> Result<Vec<(Position, EventEnvelope)>, ProjectionError> {
        let key = aggregate_key(aggregate_type, id);
        let partition = partition_for(&key, self.backend.partition_count());
        let log_error = |source| ProjectionError::Log {
            projection: format!("history of {key}"),
            source,
        };
        let end = self
            .backend
            .end_offset(partition)
            .await
            .map_err(log_error)?;
        let mut found = Vec::new();
        let mut from = 0;
        while from < end {
            let records = self
                .backend
                .read(partition, from, self.batch_size, std::time::Duration::ZERO)
                .await
                .map_err(log_error)?;
            let Some(last) = records.last() else { break };
            from = last.position.offset + 1;
            for record in records.into_iter().filter(|r| r.key == key) {
                if record.position.offset >= end {
                    break;
                }
                let envelope = decode_envelope(&record)?;
                if !keep_going(&envelope) {
                    return Ok(found);
                }
                found.push((record.position, envelope));
            }
        }
        Ok(found)
    }

    /// Every stored envelope of aggregate `aggregate_type`/`id`, in order: its audit trail
    /// without decoding the payloads.
    pub async fn envelopes(
        &self,
        aggregate_type: &str,
        id: &str,
    ) -> Result<Vec<(Position, EventEnvelope)>, ProjectionError> {
        self.envelopes_while(aggregate_type, id, |_| true).await
    }

    /// Every event of aggregate `A` with `id`, in order, decoded and upcast.
    pub async fn events<A: Aggregate>(
        &self,
        id: &str,
    ) -> Result<Vec<HistoryEntry<A::Event>>, ProjectionError> {
        let decoder = AggregateEvents::<A>::new();
        let envelopes = self.envelopes_while(A::TYPE, id, |_| true).await?;
        envelopes
            .into_iter()
            .filter_map(|(position, envelope)| {
                decoder
                    .decode(&envelope, position)
                    .map(|event| {
                        event.map(|event| HistoryEntry {
                            position,
                            envelope,
                            event,
                        })
                    })
                    .transpose()
            })
            .map(|entry| entry.map_err(ProjectionError::from))
            .collect()
    }

    /// The state of aggregate `A` with `id` after its events up to and including `seq`.
    pub async fn state_at_seq<A: Aggregate>(
        &self,
        id: &str,
        seq: u64,
    ) -> Result<StateAt<A>, ProjectionError> {
        self.fold::<A>(id, |envelope| envelope.seq <= seq).await
    }

    /// The state of aggregate `A` with `id` after its events committed at or before
    /// `timestamp_ms` (milliseconds since the Unix epoch).
    pub async fn state_at_time<A: Aggregate>(
        &self,
        id: &str,
        timestamp_ms: i64,
    ) -> Result<StateAt<A>, ProjectionError> {
        self.fold::<A>(id, |envelope| envelope.timestamp_ms <= timestamp_ms)
            .await
    }

    async fn fold<A: Aggregate>(
        &self,
        id: &str,
        keep_going: impl FnMut(&EventEnvelope) -> bool,
    ) -> Result<StateAt<A>, ProjectionError> {
        let decoder = AggregateEvents::<A>::new();
        let mut at = StateAt {
            state: A::default(),
            seq: 0,
            position: None,
        };
        for (position, envelope) in self.envelopes_while(A::TYPE, id, keep_going).await? {
            if let Some(event) = decoder.decode(&envelope, position)? {
                at.state.apply(&event);
                at.seq = envelope.seq;
                at.position = Some(position);
            }
        }
        Ok(at)
    }
}
