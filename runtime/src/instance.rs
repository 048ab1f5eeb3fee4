//! The aggregate actor: one per live aggregate instance. It activates (snapshot + the events
//! after it), then serves commands one at a time: decide, evolve, append and await
//! durability, reply. Commands that queue up while it works are taken together and run as one
//! batch (`instance/execute.rs`): still decided one at a time, in order, but appended as one
//! unit. Commands wait in the actor's inbox (`instance/inbox.rs`), which keeps their deadlines;
//! the ractor mailbox carries the wake-ups, queries and the shard's messages. It is stopped by
//! draining (see [`crate::shard`]), which lets every command its inbox accepted finish, and
//! snapshots on the way out. Activation is in `instance/activation.rs`.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;
use tracing::{Instrument, info_span, warn};

mod activation;
mod execute;
mod guard;
mod inbox;
mod live;

pub use execute::Committed;
use execute::{execute_batch, restarting};
pub(crate) use inbox::{Deadline, Inbox, Queued, Refused, WATCHED_TICKS};
pub(crate) use live::AggregateArgs;
use live::{ActivationFailure, Live, own_snapshot};

use crate::aggregate::Aggregate;
use crate::error::{CommandError, short};
use crate::metrics::Outcome;
use crate::shared::{InFlightPermit, Mailbox};

pub(crate) type Reply<A> = oneshot::Sender<
    Result<Committed<<A as Aggregate>::Event>, CommandError<<A as Aggregate>::Error>>,
>;

/// A read-only function run by the actor on its state (and sequence number).
pub(crate) type QueryFn<A> =
    Box<dyn FnOnce(Result<(&A, u64), CommandError<<A as Aggregate>::Error>>) + Send>;

/// Messages of an aggregate actor. Users never see them: they use
/// [`AggregateHandle`](crate::AggregateHandle).
pub(crate) enum AggregateMsg<A: Aggregate> {
    /// Commands are in the inbox: run them all as the next batch. Sent by whoever queues a
    /// command when no wake is pending.
    Wake,
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
    inbox: Arc<Inbox<A>>,
    phase: Phase<A>,
}

enum Phase<A: Aggregate> {
    /// Spawned; the history is loaded when the first command arrives, so the shard never
    /// waits on I/O and commands queue in the inbox meanwhile.
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
    type Arguments = (AggregateArgs, Arc<Inbox<A>>);

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        (args, inbox): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(AggregateState {
            args,
            inbox,
            phase: Phase::Unloaded,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if matches!(state.phase, Phase::Unloaded) {
            // Boxed, like the batches and snapshots: an actor's task is sized by its largest
            // future and every live aggregate has one, so the large steps are on the heap
            // only while they run.
            state.phase = match Box::pin(activation::activate::<A>(&state.args)).await {
                Ok(live) => Phase::Live(Box::new(live)),
                Err(failure) => {
                    // Answer every queued command with the failure, then stop; the next
                    // command after that tries a fresh activation.
                    stop(&myself, state);
                    Phase::Failed(failure)
                }
            };
        }
        match message {
            AggregateMsg::Wake => Box::pin(run_inbox(&myself, state)).await,
            AggregateMsg::Compact => {
                Box::pin(run_inbox(&myself, state)).await;
                if let Phase::Live(live) = &mut state.phase
                    && live.unsnapshotted > 0
                    && let Err(e) = Box::pin(own_snapshot(live, &state.args)).await
                {
                    warn!(aggregate = %short(&state.args.key), error = %e, "snapshot failed");
                }
                stop(&myself, state);
                state.inbox.release();
            }
            AggregateMsg::Query { query, _permit } => match &state.phase {
                // In line with the commands: it sees every command answered before it was
                // sent.
                Phase::Live(live) => query(Ok((&live.state, live.seq))),
                Phase::Failed(failure) => query(Err(failure.to_error(&state.args.key))),
                _ => query(Err(restarting(&state.args.key))),
            },
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Commands still queued (the actor failed rather than drained) are answered, never
        // run; the retry activates afresh.
        let key = &state.args.key;
        state.inbox.refuse_all(|| restarting(key));
        let shared = &state.args.shared;
        if let Phase::Live(live) = &mut state.phase
            && live.unsnapshotted > 0
            && shared.config.snapshots.on_passivation
            && let Err(e) = Box::pin(own_snapshot(live, &state.args)).await
        {
            warn!(aggregate = %short(&state.args.key), error = %e, "snapshot on passivation failed");
        }
        shared.unregister(&state.args.key, myself.get_id());
        Ok(())
    }
}

/// Takes the actor out of the registry and drains it: the commands its inbox accepted are
/// served, later sends are refused and re-routed by the handle to a fresh activation.
fn stop<A: Aggregate>(myself: &ActorRef<AggregateMsg<A>>, state: &AggregateState<A>) {
    state
        .args
        .shared
        .unregister(&state.args.key, myself.get_id());
    state.inbox.close(&myself.get_cell());
    let _ = myself.drain();
}

/// Runs every command in the inbox as one batch and answers each caller.
async fn run_inbox<A: Aggregate>(
    myself: &ActorRef<AggregateMsg<A>>,
    state: &mut AggregateState<A>,
) {
    let mut batch = state.inbox.take(&state.args.key);
    let AggregateState { args, inbox, phase } = state;
    let live = match phase {
        Phase::Live(live) if !batch.is_empty() => live,
        _ => {
            // Nothing to run, or no state to run it on: the activation's failure, or (draining
            // after a failure, never applied) a retryable error; the next attempt activates
            // afresh.
            let refused = batch.drain(..).map(|_| {
                Err(match phase {
                    Phase::Failed(failure) => failure.to_error(&args.key),
                    _ => restarting(&args.key),
                })
            });
            let refused = refused.collect();
            inbox.finish(batch, refused);
            return;
        }
    };
    let span = info_span!(
        "commands",
        aggregate = A::TYPE,
        id = %short(&args.id),
        count = batch.len(),
    );
    let outcomes = execute_batch(live, args, batch.drain(..))
        .instrument(span)
        .await;
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
    let snapshot_due = !poisoned && live.unsnapshotted >= args.shared.config.snapshots.every_events;
    if poisoned {
        // Drained before the answers, so a retry sent on an answer finds the inbox closed
        // and waits for a fresh activation instead of failing here.
        state.phase = Phase::Poisoned;
        stop(myself, state);
        state.inbox.finish(batch, outcomes);
        return;
    }
    inbox.finish(batch, outcomes);
    if snapshot_due && let Err(e) = own_snapshot(live, args).await {
        warn!(aggregate = %short(&args.key), error = %e, "snapshot failed; will retry");
    }
}
