//! The aggregate actor: one per live aggregate instance. It activates (snapshot + the events
//! after it), then serves commands one at a time: decide, append and await durability,
//! evolve, reply. It is stopped by draining (see [`crate::shard`]), which lets every command
//! already in its mailbox finish, and snapshots on the way out.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::{Instrument, debug, info_span, warn};

use crate::aggregate::Aggregate;
use crate::envelope::{EventEnvelope, EventEnvelopeRef, SnapshotEnvelope, Upcasters, encode_event};
use crate::error::{CommandError, DecodeError, StorageError, at, short};
use crate::log::{LogRecord, Offset, Position};
use crate::metrics::{self as m, CommandMetrics, Outcome};
use crate::partition::PartitionState;
use crate::runtime::{InFlightPermit, Shared};

/// The outcome of a committed command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Committed<E> {
    /// The events the command caused, now durable (empty when it caused none).
    pub events: Vec<E>,
    /// The aggregate's sequence number after the command.
    pub seq: u64,
    /// The log position of the command's last event; `None` when it caused no event. A view
    /// that has passed this position shows the command's effect.
    pub position: Option<Position>,
    /// True when this is the remembered outcome of an earlier command with the same id:
    /// nothing was appended this time.
    pub deduplicated: bool,
}

pub(crate) type Reply<A> = oneshot::Sender<
    Result<Committed<<A as Aggregate>::Event>, CommandError<<A as Aggregate>::Error>>,
>;

/// A read-only function run by the actor on its state (and sequence number).
pub(crate) type QueryFn<A> =
    Box<dyn FnOnce(Result<(&A, u64), CommandError<<A as Aggregate>::Error>>) + Send>;

/// Messages of an aggregate actor. Users never see them: they use
/// [`AggregateHandle`](crate::AggregateHandle).
pub(crate) enum AggregateMsg<A: Aggregate> {
    Command {
        command: A::Command,
        command_id: Option<String>,
        reply: Reply<A>,
        /// The runtime-wide in-flight permit, released when the command is answered.
        _permit: InFlightPermit,
    },
    /// Loads, snapshots if anything is uncovered, and passivates: sent by the shard to
    /// aggregates that hold the partition's checkpoint back (after a crash).
    Compact,
    /// Runs a read-only function on the state, in line with the commands.
    Query {
        query: QueryFn<A>,
        _permit: InFlightPermit,
    },
}

pub(crate) struct AggregateActor<A: Aggregate>(std::marker::PhantomData<fn() -> A>);

impl<A: Aggregate> AggregateActor<A> {
    pub(crate) fn new() -> Self {
        AggregateActor(std::marker::PhantomData)
    }
}

pub(crate) struct AggregateArgs {
    pub(crate) key: String,
    pub(crate) id: String,
    pub(crate) shared: Arc<Shared>,
    pub(crate) partition: Arc<PartitionState>,
    pub(crate) queued: Arc<AtomicUsize>,
    pub(crate) upcasters: Arc<Upcasters>,
    pub(crate) metrics: Arc<CommandMetrics>,
}

pub(crate) struct AggregateState<A: Aggregate> {
    args: AggregateArgs,
    phase: Phase<A>,
}

enum Phase<A: Aggregate> {
    /// Spawned; the history is loaded when the first command arrives, so the shard never
    /// waits on I/O and commands queue in the mailbox meanwhile.
    Unloaded,
    Live(Box<Live<A>>),
    /// Activation failed; every queued command gets this error while the actor drains.
    Failed(ActivationFailure),
    /// The log may be ahead of memory (failed append, panic): stop without snapshotting.
    Poisoned,
}

#[derive(Clone)]
enum ActivationFailure {
    Storage(StorageError),
    Corrupt(DecodeError),
}

impl ActivationFailure {
    fn to_error<E: std::error::Error>(&self, key: &str) -> CommandError<E> {
        match self {
            ActivationFailure::Storage(source) => CommandError::Storage {
                aggregate: short(key).into_owned(),
                source: source.clone(),
            },
            ActivationFailure::Corrupt(source) => CommandError::Corrupt {
                aggregate: short(key).into_owned(),
                source: source.clone(),
            },
        }
    }
}

struct Live<A: Aggregate> {
    state: A,
    seq: u64,
    last_offset: Option<Offset>,
    /// Events applied since the last snapshot written (or loaded).
    unsnapshotted: u64,
    recent: VecDeque<RecentCommand<A::Event>>,
    /// Reused to encode event payloads, so a command does not allocate one per event.
    scratch: Vec<u8>,
}

/// A remembered command outcome: the idempotency window, kept in snapshots.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound = "E: Serialize + serde::de::DeserializeOwned")]
struct RecentCommand<E> {
    command_id: String,
    seq: u64,
    position: Option<Position>,
    events: Vec<E>,
}

impl<A: Aggregate> Actor for AggregateActor<A> {
    type Msg = AggregateMsg<A>;
    type State = AggregateState<A>;
    type Arguments = AggregateArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: AggregateArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(AggregateState {
            args,
            phase: Phase::Unloaded,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.args.queued.fetch_sub(1, Ordering::Relaxed);
        if matches!(state.phase, Phase::Unloaded) {
            state.phase = match activate::<A>(&state.args).await {
                Ok(live) => Phase::Live(Box::new(live)),
                Err(failure) => {
                    // Answer this and every queued command with the failure, then stop; the
                    // next command after that tries a fresh activation.
                    stop(&myself, &state.args);
                    Phase::Failed(failure)
                }
            };
        }
        // The in-flight permit is held until the command has been answered.
        let (command, command_id, reply, _in_flight) = match message {
            AggregateMsg::Command {
                command,
                command_id,
                reply,
                _permit,
            } => (command, command_id, reply, _permit),
            AggregateMsg::Compact => {
                if let Phase::Live(live) = &mut state.phase
                    && live.unsnapshotted > 0
                    && let Err(e) = snapshot(live, &state.args).await
                {
                    warn!(aggregate = %short(&state.args.key), error = %e, "snapshot failed");
                }
                stop(&myself, &state.args);
                return Ok(());
            }
            AggregateMsg::Query { query, _permit } => {
                match &state.phase {
                    Phase::Live(live) => query(Ok((&live.state, live.seq))),
                    Phase::Failed(failure) => query(Err(failure.to_error(&state.args.key))),
                    _ => query(Err(restarting(&state.args.key))),
                }
                return Ok(());
            }
        };
        match &mut state.phase {
            Phase::Live(live) => {
                let span = info_span!(
                    "command",
                    aggregate = A::TYPE,
                    id = %short(&state.args.id),
                    command_id = command_id.as_deref().unwrap_or(""),
                );
                let result = execute(live, &state.args, command, command_id)
                    .instrument(span)
                    .await;
                state.args.metrics.command(match &result {
                    Ok(c) if c.deduplicated => Outcome::Deduplicated,
                    Ok(_) => Outcome::Committed,
                    Err(CommandError::Rejected(_)) => Outcome::Rejected,
                    Err(_) => Outcome::Failed,
                });
                let poisoned = matches!(
                    result,
                    Err(CommandError::Storage { .. } | CommandError::Panicked { .. })
                );
                let _ = reply.send(result);
                if poisoned {
                    state.phase = Phase::Poisoned;
                    stop(&myself, &state.args);
                } else if live.unsnapshotted >= state.args.shared.config.snapshots.every_events
                    && let Err(e) = snapshot(live, &state.args).await
                {
                    warn!(aggregate = %short(&state.args.key), error = %e, "snapshot failed; will retry");
                }
            }
            Phase::Failed(failure) => {
                let _ = reply.send(Err(failure.to_error(&state.args.key)));
            }
            Phase::Poisoned => {
                // Draining after a failure: these commands were never applied; they fail
                // with a retryable error and the next attempt activates afresh.
                let _ = reply.send(Err(restarting(&state.args.key)));
            }
            Phase::Unloaded => unreachable!("activation always leaves Unloaded"),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let shared = &state.args.shared;
        if let Phase::Live(live) = &mut state.phase
            && live.unsnapshotted > 0
            && shared.config.snapshots.on_passivation
            && let Err(e) = snapshot(live, &state.args).await
        {
            warn!(aggregate = %short(&state.args.key), error = %e, "snapshot on passivation failed");
        }
        shared.unregister(&state.args.key, myself.get_id());
        Ok(())
    }
}

/// Takes the actor out of the registry and drains it: commands already admitted are
/// served, later sends fail and are re-routed by the handle to a fresh activation.
fn stop<A: Aggregate>(myself: &ActorRef<AggregateMsg<A>>, args: &AggregateArgs) {
    args.shared.unregister(&args.key, myself.get_id());
    let _ = myself.drain();
}

fn restarting<E: std::error::Error>(key: &str) -> CommandError<E> {
    CommandError::Storage {
        aggregate: short(key).into_owned(),
        source: StorageError::Closed("aggregate restarting after a failed command".into()),
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

async fn execute<A: Aggregate>(
    live: &mut Live<A>,
    args: &AggregateArgs,
    command: A::Command,
    command_id: Option<String>,
) -> Result<Committed<A::Event>, CommandError<A::Error>> {
    if let Some(id) = &command_id
        && let Some(done) = live.recent.iter().find(|r| &r.command_id == id)
    {
        debug!(command_id = %id, "duplicate command id; returning the original outcome");
        return Ok(Committed {
            events: done.events.clone(),
            seq: done.seq,
            position: done.position,
            deduplicated: true,
        });
    }
    let key = &args.key;
    let events = match catch_unwind(AssertUnwindSafe(|| live.state.handle(command))) {
        Ok(Ok(events)) => events,
        Ok(Err(rejection)) => return Err(CommandError::Rejected(rejection)),
        Err(panic) => {
            return Err(CommandError::Panicked {
                aggregate: short(key).into_owned(),
                message: format!("in handle: {}", panic_message(panic)),
            });
        }
    };
    if events.is_empty() {
        // Remembered too: a retry must get this outcome even if the state has moved on.
        if let Some(id) = command_id {
            remember(
                &mut live.recent,
                args.shared.config.dedup_window,
                RecentCommand {
                    command_id: id,
                    seq: live.seq,
                    position: None,
                    events: Vec::new(),
                },
            );
        }
        return Ok(Committed {
            events,
            seq: live.seq,
            position: None,
            deduplicated: false,
        });
    }
    let timestamp_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let mut records = Vec::with_capacity(events.len());
    for (i, event) in events.iter().enumerate() {
        let (event_type, event_version, payload) =
            encode_event::<A>(event, &args.upcasters, &mut live.scratch).map_err(|reason| {
                CommandError::Corrupt {
                    aggregate: short(key).into_owned(),
                    source: DecodeError {
                        what: "new event (encoding)".into(),
                        location: short(key).into_owned(),
                        reason,
                    },
                }
            })?;
        let envelope = EventEnvelopeRef {
            aggregate_type: A::TYPE,
            aggregate_id: &args.id,
            seq: live.seq + 1 + i as u64,
            event_type,
            event_version,
            command_id: command_id.as_deref(),
            timestamp_ms,
            payload,
        };
        records.push(LogRecord {
            key: key.clone(),
            value: envelope.encode(),
        });
    }
    let partition = args.partition.partition;
    let count = records.len() as u64;
    // The values the tail keeps once the append is acknowledged (committed, with
    // transactions): copied now, because the append consumes the records.
    let tail_values: Vec<Arc<[u8]>> = if args.partition.tail_enabled() {
        records.iter().map(|r| Arc::from(&r.value[..])).collect()
    } else {
        Vec::new()
    };
    // Whatever this append writes lands at or above the end known now.
    // Until the append is recorded, the key is "uncertain" from the end known now: the
    // checkpoint cannot pass the records while they are in flight, and if the append fails
    // (it may still have been written: a lost acknowledgement), the next activation scans for
    // them, so a retry with the same command id finds them.
    args.partition.begin_append(key);
    let first = args
        .shared
        .backend
        .append(partition, records)
        .await
        .map_err(|source| CommandError::Storage {
            aggregate: short(key).into_owned(),
            source,
        })?;
    // Durable from here on: evolve the state.
    let applied = catch_unwind(AssertUnwindSafe(|| {
        for event in &events {
            live.state.apply(event);
        }
    }));
    args.partition
        .commit_append(key, first..first + count, tail_values);
    if let Err(panic) = applied {
        return Err(CommandError::Panicked {
            aggregate: short(key).into_owned(),
            message: format!(
                "in apply, after the events were committed: {}",
                panic_message(panic)
            ),
        });
    }
    live.seq += count;
    live.unsnapshotted += count;
    let position = Position {
        partition,
        offset: first + count - 1,
    };
    live.last_offset = Some(position.offset);
    if let Some(id) = command_id {
        remember(
            &mut live.recent,
            args.shared.config.dedup_window,
            RecentCommand {
                command_id: id,
                seq: live.seq,
                position: Some(position),
                events: events.clone(),
            },
        );
    }
    Ok(Committed {
        events,
        seq: live.seq,
        position: Some(position),
        deduplicated: false,
    })
}

fn remember<E>(recent: &mut VecDeque<RecentCommand<E>>, window: usize, entry: RecentCommand<E>) {
    if window == 0 {
        return;
    }
    while recent.len() >= window {
        recent.pop_front();
    }
    recent.push_back(entry);
}

/// Loads the aggregate: its snapshot (if it decodes), then the events after it.
async fn activate<A: Aggregate>(args: &AggregateArgs) -> Result<Live<A>, ActivationFailure> {
    let shared = &args.shared;
    let _permit =
        shared.activations.acquire().await.map_err(|_| {
            ActivationFailure::Storage(StorageError::Closed("runtime stopped".into()))
        })?;
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
            recent: VecDeque::new(),
            scratch: Vec::new(),
        };
        let stored = shared
            .backend
            .load_snapshot(partition, key.clone())
            .await
            .map_err(ActivationFailure::Storage)?;
        let mut from_snapshot = false;
        let mut unusable_snapshot = false;
        if let Some(bytes) = stored {
            match restore::<A>(&bytes, key) {
                Ok((state, env, recent)) => {
                    live.state = state;
                    live.seq = env.seq;
                    live.last_offset = env.covered_offset;
                    live.recent = recent;
                    from_snapshot = true;
                }
                Err(reason) => {
                    warn!(
                        aggregate = %short(key),
                        %reason,
                        "snapshot cannot be used; rebuilding from the full history"
                    );
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
            replay_full(&mut live, args).await?
        } else {
            let offsets = args.partition.offsets_after(key, live.last_offset);
            replay_offsets(&mut live, args, &offsets).await?
        };
        tracing::Span::current().record("from_snapshot", from_snapshot);
        tracing::Span::current().record("replayed", replayed);
        metrics::counter!(m::ACTIVATIONS, "aggregate" => A::TYPE, "from_snapshot" => if from_snapshot { "true" } else { "false" }).increment(1);
        metrics::counter!(m::EVENTS_REPLAYED, "aggregate" => A::TYPE).increment(replayed);
        debug!(elapsed = ?started.elapsed(), "activated");
        let policy = shared.config.snapshots;
        if policy.after_long_replay
            && replayed > policy.every_events
            && let Err(e) = snapshot(&mut live, args).await
        {
            warn!(aggregate = %short(key), error = %e, "snapshot after replay failed");
        }
        Ok(live)
    }
    .instrument(span)
    .await
}

/// A decoded snapshot: the state, its envelope and its command window.
type Restored<A> = (
    A,
    SnapshotEnvelope,
    VecDeque<RecentCommand<<A as Aggregate>::Event>>,
);

fn restore<A: Aggregate>(bytes: &[u8], key: &str) -> Result<Restored<A>, String> {
    let env = SnapshotEnvelope::decode(bytes, &format!("snapshot of {}", short(key)))
        .map_err(|e| e.to_string())?;
    if env.state_version != A::STATE_VERSION {
        return Err(format!(
            "snapshot state version {} but this build writes {}",
            env.state_version,
            A::STATE_VERSION
        ));
    }
    let state: A = rmp_serde::from_slice(&env.state).map_err(|e| e.to_string())?;
    let recent = rmp_serde::from_slice(&env.recent_commands).unwrap_or_else(|e| {
        warn!(aggregate = %short(key), error = %e, "snapshot's command window unreadable; starting empty");
        VecDeque::new()
    });
    Ok((state, env, recent))
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

/// Replays every event of the aggregate from the start of its partition: the fallback when
/// its snapshot cannot be used.
async fn replay_full<A: Aggregate>(
    live: &mut Live<A>,
    args: &AggregateArgs,
) -> Result<u64, ActivationFailure> {
    let partition = args.partition.partition;
    let end = args
        .shared
        .backend
        .end_offset(partition)
        .await
        .map_err(ActivationFailure::Storage)?;
    let mut from = 0;
    let mut replayed = 0;
    while from < end {
        let records = args
            .shared
            .backend
            .read(partition, from, 4096, std::time::Duration::ZERO)
            .await
            .map_err(ActivationFailure::Storage)?;
        let Some(last) = records.last() else { break };
        from = last.position.offset + 1;
        for record in records.iter().filter(|r| r.key == args.key) {
            replayed += apply_record(live, args, &record.value, record.position)?;
        }
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
    let event = envelope
        .decode_event::<A>(&args.upcasters, &location)
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
    if let Some(id) = envelope.command_id {
        match live.recent.back_mut() {
            Some(last) if last.command_id == id => {
                last.events.push(event);
                last.seq = live.seq;
                last.position = Some(position);
            }
            _ => remember(
                &mut live.recent,
                args.shared.config.dedup_window,
                RecentCommand {
                    command_id: id,
                    seq: live.seq,
                    position: Some(position),
                    events: vec![event],
                },
            ),
        }
    }
    Ok(1)
}

/// Writes a snapshot of the live state and marks its events covered in the recovery index.
async fn snapshot<A: Aggregate>(live: &mut Live<A>, args: &AggregateArgs) -> Result<(), String> {
    let state = rmp_serde::to_vec_named(&live.state).map_err(|e| e.to_string())?;
    let recent = rmp_serde::to_vec_named(&live.recent).map_err(|e| e.to_string())?;
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
        .await
        .map_err(|e| e.to_string())?;
    if let Some(offset) = live.last_offset {
        args.partition.covered(&args.key, offset);
    }
    live.unsnapshotted = 0;
    metrics::counter!(m::SNAPSHOTS, "aggregate" => A::TYPE).increment(1);
    Ok(())
}
