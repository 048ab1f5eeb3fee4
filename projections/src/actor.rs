//! The projection actor: the single writer of one projection's view.
//!
//! # Shape
//!
//! One ractor actor per projection, fed by one reading task per partition:
//!
//! - **A reading task per partition** long-polls its partition (`EventLog::read`) from the
//!   view's checkpoint and sends batches of up to `batch_size` records to the actor, in offset
//!   order. One task per partition means a quiet partition's long poll never delays a busy
//!   one, and reading overlaps with applying. Each task holds at most `prefetch` batches in
//!   flight (a semaphore permit travels with each batch and is released once it is applied),
//!   so a replay from the start of a long log cannot outrun the writer and fill memory.
//! - **One actor applies everything**, batch by batch. A view entry is often fed by
//!   aggregates in several partitions (sales per store, summed over SKUs on different
//!   partitions), so applying partitions concurrently would race on shared entries; one
//!   writer keeps `apply` sequential and makes each batch one atomic store write.
//!
//! # Ordering and guarantees
//!
//! - Within a partition, events are applied in offset order, each exactly once per view
//!   (a persisted view's checkpoint moves in the same atomic write as the batch's changes).
//!   Across partitions there is no order, as in Kafka.
//! - The status (next offset per partition) is published after a batch is applied — after the
//!   commit for a persisted view — so `wait_for` never reports an event that a crash could
//!   still take back.
//! - A poison event is handled by the projection's [`PoisonPolicy`]; under `Stop`, the batch's
//!   events before it are kept and the actor stops.
//! - A failing read is retried with backoff (logged); a failing view store stops the actor.

use std::sync::Arc;
use std::time::Duration;

use keel::log::Position;
use keel::log::{Offset, StoredRecord};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::apply::{Outcome, apply_record};
use crate::error::ProjectionError;
use crate::projection::{PoisonPolicy, Projection};
use crate::status::{ProjectionState, Shared};
use crate::view::store::{Step, ViewStore};

/// How a projection reads and applies; see `ProjectionRunner` for the defaults.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) batch_size: usize,
    pub(crate) prefetch: usize,
    pub(crate) poll_wait: Duration,
    pub(crate) poison_policy: PoisonPolicy,
    pub(crate) lag_interval: Duration,
}

/// The actor's messages. Not generic, so handles can hold an `ActorRef` without knowing the
/// projection's type.
pub(crate) enum ProjectionMsg {
    /// Records read from one partition, in offset order.
    Fetched {
        partition: u32,
        records: Vec<StoredRecord>,
        /// Released once the records are applied: the reading task's backpressure.
        permit: OwnedSemaphorePermit,
    },
}

pub(crate) struct ProjectionActor<P, S> {
    entries: std::marker::PhantomData<fn() -> (P, S)>,
}

impl<P, S> ProjectionActor<P, S> {
    pub(crate) fn new() -> Self {
        ProjectionActor {
            entries: std::marker::PhantomData,
        }
    }
}

pub(crate) struct ActorArgs<P, S> {
    pub(crate) projection: Arc<P>,
    pub(crate) store: Arc<S>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) settings: Settings,
}

pub(crate) struct ActorState<P, S> {
    projection: Arc<P>,
    /// Taken in `post_stop`, so a persisted view's file is closed by the time anyone waiting
    /// for the actor to stop is told it has.
    store: Option<Arc<S>>,
    shared: Arc<Shared>,
    settings: Settings,
    /// The reading tasks and the lag ticker; aborted when the actor stops.
    tasks: Vec<JoinHandle<()>>,
}

impl<P, S> Actor for ProjectionActor<P, S>
where
    P: Projection,
    S: ViewStore<P::Key, P::Value>,
{
    type Msg = ProjectionMsg;
    type State = ActorState<P, S>;
    type Arguments = ActorArgs<P, S>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let ActorArgs {
            projection,
            store,
            shared,
            settings,
        } = args;
        let partitions = shared.backend.partition_count();
        let next = store.next_offsets(partitions)?;
        shared.status.send_modify(|s| s.next_offsets = next.clone());
        let mut tasks = Vec::with_capacity(next.len() + 1);
        for (partition, from) in next.into_iter().enumerate() {
            tasks.push(tokio::spawn(read_partition(
                shared.clone(),
                myself.clone(),
                partition as u32,
                from,
                settings.clone(),
            )));
        }
        tasks.push(tokio::spawn(measure_lag(
            shared.clone(),
            settings.lag_interval,
        )));
        tracing::info!(projection = %shared.label, partitions, "projection started");
        Ok(ActorState {
            projection,
            store: Some(store),
            shared,
            settings,
            tasks,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        for task in &state.tasks {
            task.abort();
        }
        state.store = None;
        state.shared.status.send_modify(|s| {
            if matches!(s.state, ProjectionState::Running) {
                s.state = ProjectionState::Stopped;
            }
        });
        tracing::info!(projection = %state.shared.label, "projection stopped");
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let ProjectionMsg::Fetched {
            partition,
            records,
            permit,
        } = message;
        let Some(store) = state.store.clone() else {
            return Ok(());
        };
        let batch = Batch {
            projection: state.projection.clone(),
            store: store.clone(),
            label: state.shared.label.clone(),
            policy: state.settings.poison_policy,
            partition,
            records,
        };
        let outcome = if store.blocking() {
            match tokio::task::spawn_blocking(move || batch.run()).await {
                Ok(outcome) => outcome,
                Err(e) => BatchOutcome::failed(ProjectionError::store(
                    format!("{}: batch writer", state.shared.label),
                    e,
                )),
            }
        } else {
            batch.run()
        };
        drop(permit);
        publish(&state.shared, partition, &outcome);
        if let Some(error) = outcome.error {
            tracing::error!(projection = %state.shared.label, error = %error, "projection stopped");
            state
                .shared
                .status
                .send_modify(|s| s.state = ProjectionState::Failed(error));
            myself.stop(Some("failed".into()));
        }
        Ok(())
    }
}

fn publish(shared: &Shared, partition: u32, outcome: &BatchOutcome) {
    let label = shared.label.clone();
    if outcome.applied > 0 {
        metrics::counter!("keel_projection_events_applied_total", "projection" => label.clone())
            .increment(outcome.applied);
    }
    if outcome.skipped > 0 {
        metrics::counter!("keel_projection_poison_skipped_total", "projection" => label)
            .increment(outcome.skipped);
    }
    shared.status.send_modify(|s| {
        if let (Some(next), Some(slot)) = (outcome.next, s.next_offsets.get_mut(partition as usize))
        {
            *slot = (*slot).max(next);
        }
        s.applied += outcome.applied;
        s.poison_skipped += outcome.skipped;
        if outcome.last_poison.is_some() {
            s.last_poison = outcome.last_poison;
        }
    });
}

/// One batch of one partition, ready to run on any thread.
struct Batch<P, S> {
    projection: Arc<P>,
    store: Arc<S>,
    label: String,
    policy: PoisonPolicy,
    partition: u32,
    records: Vec<StoredRecord>,
}

#[derive(Default)]
struct BatchOutcome {
    /// The partition's next offset after the batch, when the store got that far.
    next: Option<Offset>,
    applied: u64,
    skipped: u64,
    last_poison: Option<Position>,
    /// Why the projection must stop: a poison event under `Stop`, or a store failure.
    error: Option<ProjectionError>,
}

impl BatchOutcome {
    fn failed(error: ProjectionError) -> Self {
        BatchOutcome {
            error: Some(error),
            ..Default::default()
        }
    }
}

impl<P, S> Batch<P, S>
where
    P: Projection,
    S: ViewStore<P::Key, P::Value>,
{
    fn run(self) -> BatchOutcome {
        let span = tracing::debug_span!(
            "projection batch",
            projection = %self.label,
            partition = self.partition,
            size = self.records.len(),
            applied = tracing::field::Empty,
        );
        let _entered = span.enter();
        let outcome = self.apply_all();
        span.record("applied", outcome.applied);
        outcome
    }

    fn apply_all(self) -> BatchOutcome {
        let mut outcome = BatchOutcome::default();
        let projection = &*self.projection;
        let result = self
            .store
            .write_batch(self.partition, &self.records, &mut |base, record| {
                let position = record.position;
                let reason = match apply_record(projection, base, record)? {
                    Outcome::Applied => {
                        outcome.applied += 1;
                        return Ok(Step::Continue);
                    }
                    Outcome::Passed => return Ok(Step::Continue),
                    Outcome::Poison(reason) => reason,
                };
                match self.policy {
                    PoisonPolicy::Stop => {
                        outcome.error = Some(ProjectionError::Poisoned {
                            projection: self.label.clone(),
                            partition: position.partition,
                            offset: position.offset,
                            reason,
                        });
                        Ok(Step::Halt)
                    }
                    PoisonPolicy::SkipAndCount => {
                        tracing::warn!(
                            projection = %self.label,
                            partition = position.partition,
                            offset = position.offset,
                            key = %record.key,
                            reason = %reason,
                            "skipping poison event"
                        );
                        outcome.skipped += 1;
                        outcome.last_poison = Some(position);
                        Ok(Step::Continue)
                    }
                }
            });
        match result {
            Ok((next, _halted)) => outcome.next = Some(next),
            Err(e) => {
                // The store rolled the batch back: nothing of it counts.
                outcome = BatchOutcome::failed(e);
            }
        }
        outcome
    }
}

/// Reads one partition from `from` onwards and feeds the actor until it stops.
async fn read_partition(
    shared: Arc<Shared>,
    actor: ActorRef<ProjectionMsg>,
    partition: u32,
    mut from: Offset,
    settings: Settings,
) {
    let permits = Arc::new(Semaphore::new(settings.prefetch.max(1)));
    let mut backoff = Duration::from_millis(50);
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        match shared
            .backend
            .read(partition, from, settings.batch_size, settings.poll_wait)
            .await
        {
            Ok(records) => {
                backoff = Duration::from_millis(50);
                let Some(last) = records.last() else {
                    continue;
                };
                from = last.position.offset + 1;
                let message = ProjectionMsg::Fetched {
                    partition,
                    records,
                    permit,
                };
                if actor.cast(message).is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(
                    projection = %shared.label,
                    partition,
                    offset = from,
                    error = %e,
                    "reading the log failed; retrying"
                );
                drop(permit);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Measures the projection's lag every `interval`, for the status and the
/// `keel_projection_lag` gauge.
async fn measure_lag(shared: Arc<Shared>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match shared.measure_lag().await {
            Ok(lag) => {
                metrics::gauge!("keel_projection_lag", "projection" => shared.label.clone())
                    .set(lag as f64);
                shared.status.send_modify(|s| s.lag = Some(lag));
            }
            Err(e) => {
                tracing::warn!(projection = %shared.label, error = %e, "cannot measure lag");
            }
        }
    }
}
