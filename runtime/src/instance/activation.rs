//! Activation: an aggregate's latest snapshot, then the events after it — from the
//! partition's tail, one shared read of the log, or a scan — folded into a live state.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use tracing::{Instrument, debug, info_span, warn};

use super::guard::{decode_guarded, panic_message, unwind_to_err};
use super::live::{ActivationFailure, AggregateArgs, Live, own_snapshot};
use crate::aggregate::Aggregate;
use crate::dedup::{DedupLimits, DedupWindow};
use crate::envelope::{EventEnvelope, SnapshotEnvelope};
use crate::error::{DecodeError, short};
use crate::log::{Offset, Position, at};
use crate::metrics as m;
use crate::partition::Replay;

/// Loads the aggregate: its snapshot (if it decodes), then the events after it.
pub(super) async fn activate<A: Aggregate>(
    args: &AggregateArgs,
) -> Result<Live<A>, ActivationFailure> {
    let shared = &args.shared;
    let _permit = shared
        .activations
        .acquire()
        .await
        .map_err(|_| ActivationFailure::ShuttingDown)?;
    let started = Instant::now();
    let span = info_span!(
        "activation",
        aggregate = A::TYPE,
        id = %short(&args.id),
        from_snapshot = tracing::field::Empty,
        replayed = tracing::field::Empty
    );
    let partition = args.partition.partition;
    let key = &args.key;
    async {
        let mut live = Live::<A> {
            state: A::default(),
            seq: 0,
            last_offset: None,
            unsnapshotted: 0,
            recent: DedupWindow::new(DedupLimits::of(&shared.config)),
            recent_events: std::collections::VecDeque::new(),
            scratch: Vec::new(),
            broken: false,
        };
        let stored = shared
            .backend
            .load_snapshot(partition, key.clone())
            .await
            .map_err(ActivationFailure::Storage)?;
        let mut from_snapshot = false;
        let mut unusable_snapshot = false;
        if let Some(bytes) = stored {
            match restore::<A>(&bytes, key, DedupLimits::of(&shared.config)) {
                Ok((state, env, recent)) => {
                    live.state = state;
                    live.seq = env.seq;
                    live.last_offset = env.covered_offset;
                    live.recent = recent;
                    from_snapshot = true;
                }
                Err((reason, recent)) => {
                    warn!(
                        aggregate = %short(key),
                        %reason,
                        "snapshot cannot be used; rebuilding from the full history"
                    );
                    // A window that still decodes (the state's version changed, say) keeps
                    // the ids of commands without events, which no replay can give back.
                    if let Some(recent) = recent {
                        live.recent = *recent;
                    }
                    unusable_snapshot = true;
                }
            }
        }
        // Without any snapshot, every event of the key is at or above the partition's
        // checkpoint, so the recovery index has them all. An unusable snapshot may cover
        // events below the checkpoint: only a scan of the partition finds those.
        if let Some(floor) = args.partition.uncertain_floor(key) {
            find_failed_appends(args, floor).await?;
        }
        let replayed = if unusable_snapshot {
            replay_range(&mut live, args, 0, None).await?
        } else {
            match args.partition.replay_after(key, live.last_offset) {
                Replay::Offsets(offsets) => replay_offsets(&mut live, args, &offsets).await?,
                Replay::Scan { from, to } => replay_range(&mut live, args, from, Some(to)).await?,
            }
        };
        tracing::Span::current().record("from_snapshot", from_snapshot);
        tracing::Span::current().record("replayed", replayed);
        metrics::counter!(m::ACTIVATIONS, "aggregate" => A::TYPE, "from_snapshot" => if from_snapshot { "true" } else { "false" }).increment(1);
        metrics::counter!(m::EVENTS_REPLAYED, "aggregate" => A::TYPE).increment(replayed);
        debug!(elapsed = ?started.elapsed(), "activated");
        let policy = shared.config.snapshots;
        if policy.after_long_replay
            && replayed > policy.every_events
            && let Err(e) = own_snapshot(&mut live, args).await
        {
            warn!(aggregate = %short(key), error = %e, "snapshot after replay failed");
        }
        Ok(live)
    }
    .instrument(span)
    .await
}

/// A decoded snapshot: the state, its envelope and its command window.
type Restored<A> = (A, SnapshotEnvelope, DedupWindow);

/// Why a snapshot cannot be used, and its command window if that alone decodes.
type Unusable = (String, Option<Box<DedupWindow>>);

/// Decodes a snapshot. It is usable only whole: a state without its command window would
/// forget which commands were applied, so a window that does not decode makes the
/// snapshot unusable too (the replay of the whole history rebuilds both).
fn restore<A: Aggregate>(
    bytes: &[u8],
    key: &str,
    limits: DedupLimits,
) -> Result<Restored<A>, Unusable> {
    let env = SnapshotEnvelope::decode(bytes, &format!("snapshot of {}", short(key)))
        .map_err(|e| (e.to_string(), None))?;
    let recent = unwind_to_err("decoding the command window", || {
        DedupWindow::decode(&env.recent_commands, limits)
    })
    .map_err(|e| (format!("its command window does not decode: {e}"), None))?;
    if env.state_version != A::STATE_VERSION {
        let reason = format!(
            "snapshot state version {} but this build writes {}",
            env.state_version,
            A::STATE_VERSION
        );
        return Err((reason, Some(Box::new(recent))));
    }
    let state = unwind_to_err("decoding the state", || {
        rmp_serde::from_slice::<A>(&env.state).map_err(|e| e.to_string())
    });
    match state {
        Ok(state) => Ok((state, env, recent)),
        Err(reason) => Err((reason, Some(Box::new(recent)))),
    }
}

/// Replays the events at `offsets` (ascending): from the partition's tail, and what it does
/// not hold from one shared sequential read of the log (never one read per event).
async fn replay_offsets<A: Aggregate>(
    live: &mut Live<A>,
    args: &AggregateArgs,
    offsets: &[Offset],
) -> Result<u64, ActivationFailure> {
    if offsets.is_empty() {
        return Ok(0);
    }
    let partition = args.partition.partition;
    let cached = args.partition.tail_values(offsets);
    let missing: Vec<Offset> = offsets
        .iter()
        .zip(&cached)
        .filter(|(_, value)| value.is_none())
        .map(|(offset, _)| *offset)
        .collect();
    let mut fetched = if missing.is_empty() {
        Vec::new()
    } else {
        metrics::counter!(m::TAIL_MISSES, "aggregate" => A::TYPE).increment(missing.len() as u64);
        args.partition
            .reader
            .read_missing(&args.shared.backend, missing)
            .await
            .map_err(ActivationFailure::Storage)?
    }
    .into_iter()
    .peekable();
    let mut replayed = 0;
    for (&offset, value) in offsets.iter().zip(cached) {
        let position = Position { partition, offset };
        match value {
            Some(value) => replayed += apply_record(live, args, &value, position)?,
            None => {
                let Some(record) = fetched.next_if(|r| r.position.offset == offset) else {
                    return Err(ActivationFailure::Corrupt(DecodeError {
                        what: "event".into(),
                        location: at(&args.key, position),
                        reason: "the recovery index names an offset the log does not return".into(),
                    }));
                };
                if record.key != args.key {
                    return Err(ActivationFailure::Corrupt(DecodeError {
                        what: "event".into(),
                        location: at(&args.key, position),
                        reason: format!("the log has key {:?} at this offset", short(&record.key)),
                    }));
                }
                replayed += apply_record(live, args, &record.value, position)?;
            }
        }
    }
    Ok(replayed)
}

/// Scans the partition from `floor` for records of this aggregate that a failed append wrote
/// after all, and adds them to the recovery index.
async fn find_failed_appends(args: &AggregateArgs, floor: Offset) -> Result<(), ActivationFailure> {
    let partition = args.partition.partition;
    let backend = &args.shared.backend;
    let end = backend
        .end_offset(partition)
        .await
        .map_err(ActivationFailure::Storage)?;
    let mut from = floor;
    let mut found: Vec<(Offset, Vec<u8>)> = Vec::new();
    while from < end {
        let records = backend
            .read(partition, from, 4096, std::time::Duration::ZERO)
            .await
            .map_err(ActivationFailure::Storage)?;
        let Some(last) = records.last() else { break };
        from = last.position.offset + 1;
        found.extend(
            records
                .into_iter()
                .filter(|r| r.key == args.key)
                .map(|r| (r.position.offset, r.value)),
        );
    }
    if !found.is_empty() {
        let offsets: Vec<Offset> = found.iter().map(|(offset, _)| *offset).collect();
        warn!(aggregate = %short(&args.key), ?offsets, "records of a failed append are in the log");
    }
    args.partition.record_found(&args.key, found);
    args.partition.resolve_uncertain(&args.key);
    Ok(())
}

/// Replays the events of the aggregate from `from` to `to` (inclusive; the partition's end
/// when `None`) by scanning the partition: from 0 when its snapshot cannot be used, over its
/// span when the recovery index does not list its offsets. The partition's reader does the
/// scan, shared with every other activation scanning at the same time.
async fn replay_range<A: Aggregate>(
    live: &mut Live<A>,
    args: &AggregateArgs,
    from: Offset,
    to: Option<Offset>,
) -> Result<u64, ActivationFailure> {
    let partition = args.partition.partition;
    let end = match to {
        Some(to) => to + 1,
        None => args
            .shared
            .backend
            .end_offset(partition)
            .await
            .map_err(ActivationFailure::Storage)?,
    };
    let records = args
        .partition
        .reader
        .scan_key(&args.shared.backend, &args.key, from..end)
        .await
        .map_err(ActivationFailure::Storage)?;
    let mut replayed = 0;
    for record in &records {
        replayed += apply_record(live, args, &record.value, record.position)?;
    }
    Ok(replayed)
}

/// Applies one stored event; returns 1 if applied, 0 if it was a duplicate.
fn apply_record<A: Aggregate>(
    live: &mut Live<A>,
    args: &AggregateArgs,
    bytes: &[u8],
    position: Position,
) -> Result<u64, ActivationFailure> {
    let location = at(&args.key, position);
    let envelope = EventEnvelope::decode(bytes, &location).map_err(ActivationFailure::Corrupt)?;
    if envelope.seq <= live.seq {
        warn!(aggregate = %short(&args.key), seq = envelope.seq, %position, "duplicate event in the log; skipped");
        return Ok(0);
    }
    if envelope.seq != live.seq + 1 {
        return Err(ActivationFailure::Corrupt(DecodeError {
            what: format!("event seq {}", envelope.seq),
            location,
            reason: format!("sequence gap: expected seq {}", live.seq + 1),
        }));
    }
    let event = decode_guarded::<A>(&envelope, &args.upcasters, &location)
        .map_err(ActivationFailure::Corrupt)?;
    catch_unwind(AssertUnwindSafe(|| live.state.apply(&event))).map_err(|panic| {
        ActivationFailure::Corrupt(DecodeError {
            what: format!("event {} (apply panicked)", envelope.event_type),
            location: location.clone(),
            reason: panic_message(panic),
        })
    })?;
    live.seq = envelope.seq;
    live.last_offset = Some(position.offset);
    live.unsnapshotted += 1;
    if let Some(id) = &envelope.command_id {
        live.recent
            .replayed(id, live.seq, position, envelope.timestamp_ms);
    }
    Ok(1)
}
