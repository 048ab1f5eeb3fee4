//! What a live aggregate actor holds ([`Live`]: state, sequence, dedup window), what it was
//! spawned with ([`AggregateArgs`]), why an activation failed, and writing its snapshot.

use std::sync::Arc;

use crate::aggregate::Aggregate;
use crate::dedup::DedupWindow;
use crate::envelope::SnapshotEnvelope;
use crate::error::{CommandError, DecodeError, StorageError, short};
use crate::log::Offset;
use crate::metrics::{self as m, CommandMetrics};
use crate::partition::PartitionState;
use crate::shared::Shared;
use crate::upcast::Upcasters;

use super::guard::unwind_to_err;

pub(crate) struct AggregateArgs {
    pub(crate) key: String,
    pub(crate) id: String,
    pub(crate) shared: Arc<Shared>,
    pub(crate) partition: Arc<PartitionState>,
    pub(crate) upcasters: Arc<Upcasters>,
    pub(crate) metrics: Arc<CommandMetrics>,
}

#[derive(Clone)]
pub(super) enum ActivationFailure {
    Storage(StorageError),
    Corrupt(DecodeError),
    /// The runtime stopped while the activation waited for its turn.
    ShuttingDown,
}

impl ActivationFailure {
    pub(super) fn to_error<E: std::error::Error>(&self, key: &str) -> CommandError<E> {
        match self {
            ActivationFailure::Storage(source) => CommandError::Storage {
                aggregate: short(key).into_owned(),
                source: source.clone(),
            },
            ActivationFailure::Corrupt(source) => CommandError::Corrupt {
                aggregate: short(key).into_owned(),
                source: source.clone(),
            },
            ActivationFailure::ShuttingDown => CommandError::ShuttingDown,
        }
    }
}

/// How many recent outcomes a live actor keeps the events of (see `Live::recent_events`).
pub(super) const RECENT_OUTCOMES: usize = 32;

pub(super) struct Live<A: Aggregate> {
    pub(super) state: A,
    pub(super) seq: u64,
    pub(super) last_offset: Option<Offset>,
    /// Events applied since the last snapshot written (or loaded).
    pub(super) unsnapshotted: u64,
    pub(super) recent: DedupWindow,
    /// The events of the last few commands with an id this actor committed, so a retry that
    /// comes while the actor is live (the usual case: a lost reply) is answered from memory;
    /// older outcomes are read back from the log.
    pub(super) recent_events: std::collections::VecDeque<(String, Vec<A::Event>)>,
    /// Reused to encode event payloads, so a command does not allocate one per event.
    pub(super) scratch: Vec<u8>,
    /// The state can no longer be trusted (a panic in `apply` after a commit): the actor
    /// stops without snapshotting and the next activation rebuilds from the log.
    pub(super) broken: bool,
}

/// Why a snapshot was not written.
#[derive(Debug, thiserror::Error)]
pub(super) enum SnapshotError {
    /// The state or the command window did not encode (the application's `Serialize` failed
    /// or panicked).
    #[error("cannot encode the snapshot: {0}")]
    Encode(String),
    /// The backend did not store it.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A snapshot the runtime takes on its own (after a long replay, every so many events, on
/// passivation, when settling), skipped while the runtime's own writes are held back after
/// a pause of this process (`Shared::writes_held`): its events stay uncovered, and a later
/// snapshot covers them.
pub(super) async fn own_snapshot<A: Aggregate>(
    live: &mut Live<A>,
    args: &AggregateArgs,
) -> Result<(), SnapshotError> {
    if args.shared.writes_held() {
        tracing::debug!(aggregate = %short(&args.key), "snapshot held back after a pause");
        return Ok(());
    }
    snapshot(live, args).await
}

/// Writes a snapshot of the live state and marks its events covered in the recovery index.
pub(super) async fn snapshot<A: Aggregate>(
    live: &mut Live<A>,
    args: &AggregateArgs,
) -> Result<(), SnapshotError> {
    let state = unwind_to_err("encoding the state", || {
        rmp_serde::to_vec_named(&live.state).map_err(|e| e.to_string())
    })
    .map_err(SnapshotError::Encode)?;
    let recent = live.recent.encode().map_err(SnapshotError::Encode)?;
    let envelope = SnapshotEnvelope {
        seq: live.seq,
        covered_offset: live.last_offset,
        state_version: A::STATE_VERSION,
        state,
        recent_commands: recent,
    };
    args.shared
        .backend
        .save_snapshot(
            args.partition.partition,
            args.key.clone(),
            envelope.encode(),
        )
        .await?;
    if let Some(offset) = live.last_offset {
        args.partition.covered(&args.key, offset);
    }
    live.unsnapshotted = 0;
    metrics::counter!(m::SNAPSHOTS, "aggregate" => A::TYPE).increment(1);
    Ok(())
}
