//! The aggregate actor: one per live aggregate instance. It activates (snapshot + the events
//! after it), then serves commands one at a time: decide, append and await durability,
//! evolve, reply. It is stopped by draining (see [`crate::shard`]), which lets every command
//! already in its mailbox finish, and snapshots on the way out. Activation is in
//! `instance/activation.rs`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::{Instrument, debug, info_span, warn};

mod activation;
mod guard;
mod live;

use guard::{decode_guarded, panic_message, unwind_to_err};
pub(crate) use live::AggregateArgs;
use live::{ActivationFailure, Live, RECENT_OUTCOMES, SnapshotError, snapshot};

use crate::aggregate::Aggregate;
use crate::dedup::{Remembered, now_ms};
use crate::envelope::{EventEnvelope, EventEnvelopeRef, encode_event};
use crate::error::{CommandError, DecodeError, StorageError, short};
use crate::log::{LogRecord, Position, at};
use crate::metrics::Outcome;
use crate::shared::InFlightPermit;

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
            state.phase = match activation::activate::<A>(&state.args).await {
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
                let poisoned = live.broken
                    || matches!(
                        result,
                        Err(CommandError::Storage { .. } | CommandError::Panicked { .. })
                    );
                if poisoned {
                    // Drained before the answer, so a retry sent on the answer finds the
                    // mailbox closed and waits for a fresh activation instead of failing here.
                    stop(&myself, &state.args);
                }
                let _ = reply.send(result);
                if poisoned {
                    state.phase = Phase::Poisoned;
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
    CommandError::Unavailable {
        aggregate: short(key).into_owned(),
        reason: "its actor is restarting after a failed command".into(),
    }
}

async fn execute<A: Aggregate>(
    live: &mut Live<A>,
    args: &AggregateArgs,
    command: A::Command,
    command_id: Option<String>,
) -> Result<Committed<A::Event>, CommandError<A::Error>> {
    if let Some(id) = &command_id
        && let Some(done) = live.recent.get(id)
    {
        debug!(command_id = %short(id), "duplicate command id; returning the original outcome");
        let done = done.clone();
        if let Some((_, events)) = live.recent_events.iter().find(|(seen, _)| seen == id) {
            return Ok(Committed {
                events: events.clone(),
                seq: done.seq,
                position: done.position,
                deduplicated: true,
            });
        }
        return remembered_outcome::<A>(args, &done).await;
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
        // Remembered too: a retry must get this outcome even if the state has moved on. No
        // event carries the id, so only a snapshot keeps it across passivation and crashes:
        // written before the answer.
        if let Some(id) = command_id {
            let id_for_error = id.clone();
            live.recent.remember(Remembered {
                command_id: id,
                seq: live.seq,
                events: 0,
                first_offset: None,
                position: None,
                timestamp_ms: now_ms(),
            });
            if let Err(failure) = snapshot(live, args).await {
                let source = match failure {
                    SnapshotError::Storage(source) => source,
                    SnapshotError::Encode(reason) => StorageError::io(
                        format!(
                            "writing the snapshot that keeps command id {} of {}",
                            short(&id_for_error),
                            short(key)
                        ),
                        std::io::Error::other(reason),
                    ),
                };
                return Err(CommandError::Storage {
                    aggregate: short(key).into_owned(),
                    source,
                });
            }
        }
        return Ok(Committed {
            events,
            seq: live.seq,
            position: None,
            deduplicated: false,
        });
    }
    let timestamp_ms = now_ms();
    let mut records = Vec::with_capacity(events.len());
    for (i, event) in events.iter().enumerate() {
        let (event_type, event_version, payload) = unwind_to_err("encoding the event", || {
            encode_event::<A>(event, &args.upcasters, &mut live.scratch)
        })
        .map_err(|reason| CommandError::Corrupt {
            aggregate: short(key).into_owned(),
            source: DecodeError {
                what: "new event (encoding)".into(),
                location: short(key).into_owned(),
                reason,
            },
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
        // The events are durable: the caller must learn that the command committed (a
        // retry without an id would apply it twice). The state is not to be trusted, so the
        // actor restarts from the log, which has the events and their command id.
        tracing::error!(
            aggregate = %short(key),
            panic = %panic_message(panic),
            "apply panicked after the events were committed; restarting from the log"
        );
        live.broken = true;
    }
    live.seq += count;
    live.unsnapshotted += count;
    let position = Position {
        partition,
        offset: first + count - 1,
    };
    live.last_offset = Some(position.offset);
    if let Some(id) = command_id {
        if live.recent_events.len() >= RECENT_OUTCOMES {
            live.recent_events.pop_front();
        }
        live.recent_events.push_back((id.clone(), events.clone()));
        live.recent.remember(Remembered {
            command_id: id,
            seq: live.seq,
            events: count,
            first_offset: Some(first),
            position: Some(position),
            timestamp_ms,
        });
    }
    Ok(Committed {
        events,
        seq: live.seq,
        position: Some(position),
        deduplicated: false,
    })
}

/// The outcome of an earlier command with the same id: its events read back from the log.
async fn remembered_outcome<A: Aggregate>(
    args: &AggregateArgs,
    done: &Remembered,
) -> Result<Committed<A::Event>, CommandError<A::Error>> {
    let mut events = Vec::with_capacity(done.events as usize);
    if let (Some(first), Some(last)) = (done.first_offset, done.position) {
        let partition = args.partition.partition;
        let first_seq = done.seq + 1 - done.events;
        let mut from = first;
        while from <= last.offset && (events.len() as u64) < done.events {
            let max = (last.offset - from + 1) as usize;
            let records = args
                .shared
                .backend
                .read(partition, from, max.min(4096), std::time::Duration::ZERO)
                .await
                .map_err(|source| CommandError::Storage {
                    aggregate: short(&args.key).into_owned(),
                    source,
                })?;
            let Some(end) = records.last() else { break };
            from = end.position.offset + 1;
            for record in records.iter().filter(|r| r.key == args.key) {
                let location = at(&args.key, record.position);
                let corrupt = |source| CommandError::Corrupt {
                    aggregate: short(&args.key).into_owned(),
                    source,
                };
                let envelope = EventEnvelope::decode(&record.value, &location).map_err(corrupt)?;
                if (first_seq..=done.seq).contains(&envelope.seq) {
                    events.push(
                        decode_guarded::<A>(&envelope, &args.upcasters, &location)
                            .map_err(corrupt)?,
                    );
                }
            }
        }
        if events.len() as u64 != done.events {
            return Err(CommandError::Corrupt {
                aggregate: short(&args.key).into_owned(),
                source: DecodeError {
                    what: format!("the events of command {}", short(&done.command_id)),
                    location: at(&args.key, last),
                    reason: format!(
                        "{} of its {} events are in the log",
                        events.len(),
                        done.events
                    ),
                },
            });
        }
    }
    Ok(Committed {
        events,
        seq: done.seq,
        position: done.position,
        deduplicated: true,
    })
}
