//! Executing the commands queued for one aggregate as one batch. Each command is decided in
//! turn on the state its predecessors left (one at a time, as if alone); the events of all of
//! them are appended as one unit (one fsync, one produce), and each caller gets its own
//! outcome once that append is durable. A rejection appends nothing for that command only. A
//! failed append fails every command decided on the batch's unwritten state, and the actor
//! restarts from the log, so nothing of the batch stays applied.

use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use tracing::debug;

use super::guard::{decode_guarded, panic_message, unwind_to_err};
use super::live::AggregateArgs;
use super::live::{Live, RECENT_OUTCOMES, SnapshotError, snapshot};
use crate::aggregate::Aggregate;
use crate::dedup::{Remembered, now_ms};
use crate::envelope::{EventEnvelope, EventEnvelopeRef, encode_event};
use crate::error::{CommandError, DecodeError, StorageError, short};
use crate::log::{LogRecord, Offset, Position, at};

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

/// The retryable answer to a command its actor never ran: it is restarting from the log.
pub(crate) fn restarting<E: std::error::Error>(key: &str) -> CommandError<E> {
    CommandError::Unavailable {
        aggregate: short(key).into_owned(),
        reason: "its actor is restarting after a failed command".into(),
    }
}

/// What a caller is answered.
pub(super) type Outcome<A> =
    Result<Committed<<A as Aggregate>::Event>, CommandError<<A as Aggregate>::Error>>;

/// The outcomes of one batch, in order; one fits inline (see [`Batch`](super::inbox::Batch)).
pub(super) type Outcomes<A> = SmallVec<[Outcome<A>; 1]>;

/// How one command of a batch was decided.
enum Decision<A: Aggregate> {
    /// Answered without the batch's append: a rejection, a remembered outcome, a failure.
    Answered(Outcome<A>),
    /// Its events are records `records` of the batch's append; `seq` is the aggregate's
    /// sequence number after them.
    Appends {
        events: Vec<A::Event>,
        seq: u64,
        records: Range<usize>,
        command_id: Option<String>,
    },
    /// It caused no event; remembered (and kept by a snapshot) when it has an id.
    NoEvents {
        seq: u64,
        command_id: Option<String>,
    },
    /// It carries the id of command `.0` of this batch, decided before it.
    SameAs(usize),
}

impl<A: Aggregate> Decision<A> {
    fn command_id(&self) -> Option<&str> {
        match self {
            Decision::Appends { command_id, .. } | Decision::NoEvents { command_id, .. } => {
                command_id.as_deref()
            }
            _ => None,
        }
    }
}

/// What deciding the batch produced: a decision per command and the records to append.
struct Decided<A: Aggregate> {
    decisions: SmallVec<[Decision<A>; 1]>,
    records: Vec<LogRecord>,
    /// The first decision made on state the batch has not written yet (after the first
    /// command that appends): from there on, nothing stands if the append fails.
    speculative_from: usize,
}

/// Runs `batch` (commands with their optional ids, in arrival order) and returns each one's
/// outcome, in the same order.
pub(super) async fn execute_batch<A: Aggregate>(
    live: &mut Live<A>,
    args: &AggregateArgs,
    batch: impl ExactSizeIterator<Item = (A::Command, Option<String>)>,
) -> Outcomes<A> {
    let timestamp_ms = now_ms();
    let Decided {
        decisions,
        records,
        speculative_from,
    } = decide_all(live, args, batch, timestamp_ms).await;
    let key = &args.key;
    let storage_error = |source: StorageError| CommandError::Storage {
        aggregate: short(key).into_owned(),
        source,
    };

    // The append: one unit for the whole batch.
    let first = if records.is_empty() {
        Ok(0)
    } else {
        append(live, args, records).await
    };
    let first = match first {
        Ok(first) => first,
        Err(source) => {
            return decisions
                .into_iter()
                .enumerate()
                .map(|(i, decision)| match decision {
                    Decision::Answered(outcome) if i < speculative_from => outcome,
                    Decision::NoEvents {
                        seq,
                        command_id: None,
                    } if i < speculative_from => Ok(Committed {
                        events: Vec::new(),
                        seq,
                        position: None,
                        deduplicated: false,
                    }),
                    _ => Err(storage_error(source.clone())),
                })
                .collect();
        }
    };

    // Durable: remember what the commands with an id did, in order.
    let mut needs_snapshot = false;
    for decision in &decisions {
        let remembered = match decision {
            Decision::Appends {
                events,
                seq,
                records,
                command_id: Some(id),
            } => {
                if live.recent_events.len() >= RECENT_OUTCOMES {
                    live.recent_events.pop_front();
                }
                live.recent_events.push_back((id.clone(), events.clone()));
                Remembered {
                    command_id: id.clone(),
                    seq: *seq,
                    events: records.len() as u64,
                    first_offset: Some(first + records.start as Offset),
                    position: Some(position(args, first, records)),
                    timestamp_ms,
                }
            }
            Decision::NoEvents {
                seq,
                command_id: Some(id),
            } => {
                needs_snapshot = true;
                Remembered {
                    command_id: id.clone(),
                    seq: *seq,
                    events: 0,
                    first_offset: None,
                    position: None,
                    timestamp_ms,
                }
            }
            _ => continue,
        };
        live.recent.remember(remembered);
    }
    // No event carries the id of a command that caused none, so only a snapshot keeps it
    // across passivation and crashes: written before the answer.
    let snapshot_failure = if needs_snapshot {
        snapshot(live, args)
            .await
            .err()
            .map(|failure| match failure {
                SnapshotError::Storage(source) => source,
                SnapshotError::Encode(reason) => StorageError::io(
                    format!(
                        "writing the snapshot that keeps the command ids of {}",
                        short(key)
                    ),
                    std::io::Error::other(reason),
                ),
            })
    } else {
        None
    };

    let mut outcomes = Outcomes::<A>::with_capacity(decisions.len());
    for decision in decisions {
        let outcome = match decision {
            Decision::Answered(outcome) => outcome,
            Decision::Appends {
                events,
                seq,
                records,
                ..
            } => Ok(Committed {
                events,
                seq,
                position: Some(position(args, first, &records)),
                deduplicated: false,
            }),
            Decision::NoEvents { seq, command_id } => match (&snapshot_failure, command_id) {
                (Some(source), Some(_)) => Err(storage_error(source.clone())),
                _ => Ok(Committed {
                    events: Vec::new(),
                    seq,
                    position: None,
                    deduplicated: false,
                }),
            },
            Decision::SameAs(earlier) => match &outcomes[earlier] {
                Ok(done) => Ok(Committed {
                    deduplicated: true,
                    ..done.clone()
                }),
                // Only the snapshot that keeps a no-event command's id can have failed.
                Err(CommandError::Storage { source, .. }) => Err(storage_error(source.clone())),
                Err(_) => Err(restarting(key)),
            },
        };
        outcomes.push(outcome);
    }
    outcomes
}

/// Where the last of `records` landed, when the batch's first record is at `first`.
fn position(args: &AggregateArgs, first: Offset, records: &Range<usize>) -> Position {
    Position {
        partition: args.partition.partition,
        offset: first + records.end as Offset - 1,
    }
}

/// Decides every command of the batch in turn, applying each one's events before the next
/// is decided. Stops deciding at a panic in `handle` or `apply` (the state is no longer
/// trusted): the commands after it are answered as retryable.
async fn decide_all<A: Aggregate>(
    live: &mut Live<A>,
    args: &AggregateArgs,
    batch: impl ExactSizeIterator<Item = (A::Command, Option<String>)>,
    timestamp_ms: i64,
) -> Decided<A> {
    let key = &args.key;
    let mut decided = Decided {
        decisions: SmallVec::with_capacity(batch.len()),
        records: Vec::new(),
        speculative_from: usize::MAX,
    };
    let mut halted = false;
    for (command, command_id) in batch {
        if halted {
            decided
                .decisions
                .push(Decision::Answered(Err(restarting(key))));
            continue;
        }
        let decision = decide(live, args, command, command_id, &mut decided, timestamp_ms).await;
        match &decision {
            Decision::Answered(Err(CommandError::Panicked { .. })) => halted = true,
            Decision::Appends { .. } => {
                decided.speculative_from = decided.speculative_from.min(decided.decisions.len());
                halted = live.broken;
            }
            _ => {}
        }
        decided.decisions.push(decision);
    }
    decided
}

/// Decides one command on the current (possibly not yet written) state.
async fn decide<A: Aggregate>(
    live: &mut Live<A>,
    args: &AggregateArgs,
    command: A::Command,
    command_id: Option<String>,
    decided: &mut Decided<A>,
    timestamp_ms: i64,
) -> Decision<A> {
    let key = &args.key;
    if let Some(id) = &command_id {
        if let Some(earlier) = decided
            .decisions
            .iter()
            .rposition(|d| d.command_id() == Some(id))
        {
            debug!(command_id = %short(id), "duplicate command id within one batch");
            return Decision::SameAs(earlier);
        }
        if let Some(done) = live.recent.get(id) {
            debug!(command_id = %short(id), "duplicate command id; returning the original outcome");
            let done = done.clone();
            if let Some((_, events)) = live.recent_events.iter().find(|(seen, _)| seen == id) {
                return Decision::Answered(Ok(Committed {
                    events: events.clone(),
                    seq: done.seq,
                    position: done.position,
                    deduplicated: true,
                }));
            }
            return Decision::Answered(remembered_outcome::<A>(args, &done).await);
        }
    }
    let events = match catch_unwind(AssertUnwindSafe(|| live.state.handle(command))) {
        Ok(Ok(events)) => events,
        Ok(Err(rejection)) => return Decision::Answered(Err(CommandError::Rejected(rejection))),
        Err(panic) => {
            return Decision::Answered(Err(CommandError::Panicked {
                aggregate: short(key).into_owned(),
                message: format!("in handle: {}", panic_message(panic)),
            }));
        }
    };
    if events.is_empty() {
        return Decision::NoEvents {
            seq: live.seq,
            command_id,
        };
    }
    let start = decided.records.len();
    for (i, event) in events.iter().enumerate() {
        let encoded = unwind_to_err("encoding the event", || {
            encode_event::<A>(event, &args.upcasters, &mut live.scratch)
        });
        let (event_type, event_version, payload) = match encoded {
            Ok(encoded) => encoded,
            Err(reason) => {
                // Nothing of this command is appended or applied.
                decided.records.truncate(start);
                return Decision::Answered(Err(CommandError::Corrupt {
                    aggregate: short(key).into_owned(),
                    source: DecodeError {
                        what: "new event (encoding)".into(),
                        location: short(key).into_owned(),
                        reason,
                    },
                }));
            }
        };
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
        decided.records.push(LogRecord {
            key: key.clone(),
            value: envelope.encode(),
        });
    }
    // Evolve now, so the next command of the batch is decided on this one's outcome; if the
    // batch's append fails the actor restarts from the log and this state is dropped.
    let applied = catch_unwind(AssertUnwindSafe(|| {
        for event in &events {
            live.state.apply(event);
        }
    }));
    if let Err(panic) = applied {
        // The events are still appended, and the caller learns that the command committed
        // (a retry without an id would apply it twice). The state is not to be trusted, so
        // the actor restarts from the log, which has the events and their command id.
        tracing::error!(
            aggregate = %short(key),
            panic = %panic_message(panic),
            "apply panicked; the events are appended and the actor restarts from the log"
        );
        live.broken = true;
    }
    live.seq += events.len() as u64;
    Decision::Appends {
        seq: live.seq,
        records: start..decided.records.len(),
        events,
        command_id,
    }
}

/// Appends the batch's records as one unit and records them in the partition's index.
async fn append<A: Aggregate>(
    live: &mut Live<A>,
    args: &AggregateArgs,
    records: Vec<LogRecord>,
) -> Result<Offset, StorageError> {
    let key = &args.key;
    let partition = args.partition.partition;
    let count = records.len() as u64;
    // The values the tail keeps once the append is acknowledged (committed, with
    // transactions): copied now, because the append consumes the records.
    let tail_values: SmallVec<[Arc<[u8]>; 1]> = if args.partition.tail_enabled() {
        records.iter().map(|r| Arc::from(&r.value[..])).collect()
    } else {
        SmallVec::new()
    };
    // Until the append is recorded, the checkpoint cannot pass the end known now. If the
    // append fails (it may still have been written: a lost acknowledgement), the key stays
    // uncertain from there and its next activation scans for the records, so a retry with
    // the same command id finds them.
    let in_flight = args.partition.begin_append(key);
    let first = args.shared.backend.append(partition, records).await?;
    in_flight.commit(first..first + count, tail_values);
    live.unsnapshotted += count;
    live.last_offset = Some(first + count - 1);
    Ok(first)
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
