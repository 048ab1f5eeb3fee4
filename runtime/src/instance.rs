//! The aggregate actor: one per live aggregate instance. It activates (snapshot + the events
//! after it), then serves commands one at a time: decide, evolve, append and await
//! durability, reply. Commands that queue up while it works are taken together and run as one
//! batch (`instance/execute.rs`): still decided one at a time, in order, but appended as one
//! unit. It is stopped by draining (see [`crate::shard`]), which lets every command already in
//! its mailbox finish, and snapshots on the way out. Activation is in
//! `instance/activation.rs`.

use std::sync::atomic::Ordering;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;
use tracing::{Instrument, info_span, warn};

mod activation;
mod execute;
mod guard;
mod live;

pub use execute::Committed;
use execute::{execute_batch, restarting};
pub(crate) use live::AggregateArgs;
use live::{ActivationFailure, Live, snapshot};

use crate::aggregate::Aggregate;
use crate::error::{CommandError, short};
use crate::metrics::Outcome;
use crate::shared::InFlightPermit;

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
    /// Runs the commands buffered so far as one batch: sent by the actor to itself when it
    /// buffers a command, so it arrives after every message already in the mailbox.
    Flush,
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
    /// Commands taken from the mailbox and not yet run: the next batch.
    pending: Vec<Pending<A>>,
    /// A `Flush` is in the mailbox.
    flush_queued: bool,
}

/// A command waiting for its batch, with what answering it needs.
struct Pending<A: Aggregate> {
    command: A::Command,
    command_id: Option<String>,
    reply: Reply<A>,
    /// The runtime-wide in-flight permit, held until the command has been answered.
    _permit: InFlightPermit,
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
            pending: Vec::new(),
            flush_queued: false,
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
            // Boxed, like the batches and snapshots: an actor's task is sized by its largest
            // future and every live aggregate has one, so the large steps are on the heap
            // only while they run.
            state.phase = match Box::pin(activation::activate::<A>(&state.args)).await {
                Ok(live) => Phase::Live(Box::new(live)),
                Err(failure) => {
                    // Answer this and every queued command with the failure, then stop; the
                    // next command after that tries a fresh activation.
                    stop(&myself, &state.args);
                    Phase::Failed(failure)
                }
            };
        }
        match message {
            AggregateMsg::Command {
                command,
                command_id,
                reply,
                _permit,
            } => {
                state.pending.push(Pending {
                    command,
                    command_id,
                    reply,
                    _permit,
                });
                if !wait_for_more(&myself, state) {
                    Box::pin(flush(&myself, state)).await;
                }
            }
            AggregateMsg::Flush => {
                state.flush_queued = false;
                Box::pin(flush(&myself, state)).await;
            }
            AggregateMsg::Compact => {
                Box::pin(flush(&myself, state)).await;
                if let Phase::Live(live) = &mut state.phase
                    && live.unsnapshotted > 0
                    && let Err(e) = Box::pin(snapshot(live, &state.args)).await
                {
                    warn!(aggregate = %short(&state.args.key), error = %e, "snapshot failed");
                }
                stop(&myself, &state.args);
            }
            AggregateMsg::Query { query, _permit } => {
                // In line with the commands: it sees every command sent before it.
                Box::pin(flush(&myself, state)).await;
                match &state.phase {
                    Phase::Live(live) => query(Ok((&live.state, live.seq))),
                    Phase::Failed(failure) => query(Err(failure.to_error(&state.args.key))),
                    _ => query(Err(restarting(&state.args.key))),
                }
            }
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
            && let Err(e) = Box::pin(snapshot(live, &state.args)).await
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

/// Whether to keep the commands buffered so far for a larger batch: only while more
/// messages are already on their way into the mailbox and the batch has room. A `Flush` sent
/// to itself (behind those messages) makes sure the batch runs; when it cannot be sent (the
/// actor is draining) the batch runs now. A lone command runs at once, with no added latency.
fn wait_for_more<A: Aggregate>(
    myself: &ActorRef<AggregateMsg<A>>,
    state: &mut AggregateState<A>,
) -> bool {
    if !matches!(state.phase, Phase::Live(_))
        || state.pending.len() >= state.args.shared.config.mailbox_capacity
        || state.args.queued.load(Ordering::Relaxed) == 0
    {
        return false;
    }
    if state.flush_queued {
        return true;
    }
    state.args.queued.fetch_add(1, Ordering::Relaxed);
    if myself.send_message(AggregateMsg::Flush).is_ok() {
        state.flush_queued = true;
        true
    } else {
        state.args.queued.fetch_sub(1, Ordering::Relaxed);
        false
    }
}

/// Runs the buffered commands as one batch and answers each caller.
async fn flush<A: Aggregate>(myself: &ActorRef<AggregateMsg<A>>, state: &mut AggregateState<A>) {
    let AggregateState {
        args,
        phase,
        pending,
        ..
    } = state;
    if pending.is_empty() {
        return;
    }
    let live = match phase {
        Phase::Live(live) => live,
        Phase::Failed(failure) => {
            for p in pending.drain(..) {
                let _ = p.reply.send(Err(failure.to_error(&args.key)));
            }
            return;
        }
        // Draining after a failure: these commands were never applied; they fail with a
        // retryable error and the next attempt activates afresh.
        Phase::Poisoned | Phase::Unloaded => {
            for p in pending.drain(..) {
                let _ = p.reply.send(Err(restarting(&args.key)));
            }
            return;
        }
    };
    let span = info_span!(
        "commands",
        aggregate = A::TYPE,
        id = %short(&args.id),
        count = pending.len(),
    );
    // Drained, not taken: the buffer keeps its room for the next batch.
    let mut answers = Vec::with_capacity(pending.len());
    let batch = pending.drain(..).map(|p| {
        answers.push((p.reply, p._permit));
        (p.command, p.command_id)
    });
    let outcomes = execute_batch(live, args, batch).instrument(span).await;
    let mut poisoned = live.broken;
    for outcome in &outcomes {
        args.metrics.command(match outcome {
            Ok(c) if c.deduplicated => Outcome::Deduplicated,
            Ok(_) => Outcome::Committed,
            Err(CommandError::Rejected(_)) => Outcome::Rejected,
            Err(_) => Outcome::Failed,
        });
        poisoned |= matches!(
            outcome,
            Err(CommandError::Storage { .. } | CommandError::Panicked { .. })
        );
    }
    if poisoned {
        // Drained before the answers, so a retry sent on an answer finds the mailbox closed
        // and waits for a fresh activation instead of failing here.
        stop(myself, args);
    }
    for ((reply, _permit), outcome) in answers.into_iter().zip(outcomes) {
        let _ = reply.send(outcome);
    }
    if poisoned {
        state.phase = Phase::Poisoned;
    } else if live.unsnapshotted >= args.shared.config.snapshots.every_events
        && let Err(e) = snapshot(live, args).await
    {
        warn!(aggregate = %short(&args.key), error = %e, "snapshot failed; will retry");
    }
}
