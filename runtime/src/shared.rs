//! [`Shared`]: the state the runtime core shares — the registry of live aggregate actors,
//! the shards of the owned partitions and the messages they take, admission under
//! `max_in_flight`, the passivation policy, and the watch for pauses of this process. Every part of the core (shards, aggregate
//! actors, handles, the runtime) holds an `Arc<Shared>`; this module imports none of them.

use std::any::{Any, TypeId};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;
use futures::future::BoxFuture;
use ractor::{ActorCell, ActorId, ActorRef, SpawnErr};
use tokio::sync::{Semaphore, oneshot};

use crate::config::RuntimeConfig;
use crate::log::{KeyHasher, LogBackend};
use crate::metrics as m;
use crate::partition::{PartitionState, TailBudget};
use crate::pause::PauseGuard;

/// Membership in whatever decides partition ownership (the Kafka consumer group): the runtime
/// only ever leaves it.
pub(crate) trait GroupMembership: Send {
    /// Leaves gracefully: the partitions are revoked (drained, snapshotted, committed) and
    /// handed to the other members.
    fn leave(self: Box<Self>) -> futures::future::BoxFuture<'static, ()>;
}

pub(crate) struct Shared {
    pub(crate) backend: Arc<dyn LogBackend>,
    /// This instance's group membership, when ownership is configured; taken (and left) by
    /// shutdown.
    pub(crate) membership: std::sync::Mutex<Option<Box<dyn GroupMembership>>>,
    pub(crate) config: RuntimeConfig,
    pub(crate) partitions: u32,
    /// Live aggregate actors by key: the command path's lock-free lookup.
    pub(crate) registry: DashMap<String, Arc<LiveEntry>, KeyHasher>,
    /// The shard of every partition this instance owns.
    pub(crate) shards: DashMap<u32, ActorRef<ShardMsg>>,
    /// Shards taken out of `shards` (revoked, lost, aborted) that have not stopped yet.
    pub(crate) retiring: DashMap<u32, ActorRef<ShardMsg>>,
    /// Makes moving a shard between `shards` and `retiring`, and an assignment's look at
    /// both, one step. A std `Mutex`: never held across an `.await`.
    pub(crate) handover: std::sync::Mutex<()>,
    /// Serializes assignments (a tokio `Mutex`: held across the recovery of the partitions).
    pub(crate) assigning: tokio::sync::Mutex<()>,
    /// Commands and queries admitted and not yet answered, capped by `max_in_flight`.
    pub(crate) in_flight: Arc<AtomicUsize>,
    pub(crate) activations: Semaphore,
    pub(crate) live: AtomicUsize,
    pub(crate) shutting_down: AtomicBool,
    pub(crate) started: tokio::time::Instant,
    pub(crate) types: DashMap<&'static str, TypeId>,
    /// How to spawn each aggregate type the application has asked a handle for.
    pub(crate) aggregate_types: DashMap<&'static str, Arc<AggregateType>>,
    /// Tells callers where a partition this instance does not own lives.
    pub(crate) owner_of: DashMap<u32, String>,
    /// The byte budget every partition tail shares.
    pub(crate) tail_budget: Arc<TailBudget>,
    /// Holds the runtime's own writes back after this process was paused.
    pub(crate) pauses: PauseGuard,
}

/// How often the pause watch notes that the process runs.
#[cfg(feature = "kafka")]
const PAUSE_WATCH: std::time::Duration = std::time::Duration::from_millis(100);

/// A command or query admitted under `max_in_flight`; dropping it (once the request has been
/// answered, or dropped unanswered) frees its place.
///
/// An atomic count rather than a semaphore: admission never waits (a full runtime answers
/// `Overloaded`), and a semaphore's release takes a lock on every command.
pub(crate) struct InFlightPermit(Arc<AtomicUsize>);

impl Drop for InFlightPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shared {
    /// Whether the runtime's own writes (snapshots, settling, checkpoints) are held back
    /// after a pause of this process (see [`PauseGuard`]).
    pub(crate) fn writes_held(&self) -> bool {
        self.pauses.held(self.now_ms())
    }

    /// Arms the pause guard for a group whose session expires after `session`, and starts
    /// the task that notes the process running; it ends with the runtime.
    #[cfg(feature = "kafka")]
    pub(crate) fn watch_pauses(self: &Arc<Self>, session: std::time::Duration) {
        if !self.pauses.arm(session, self.now_ms()) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PAUSE_WATCH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                if shared.shutting_down.load(Ordering::Relaxed) {
                    return;
                }
                shared.pauses.alive(shared.now_ms());
            }
        });
    }

    /// Milliseconds since the runtime started (tokio time, so paused-time tests control it).
    pub(crate) fn now_ms(&self) -> u64 {
        self.ms_at(tokio::time::Instant::now())
    }

    /// Milliseconds from the runtime's start to `instant`.
    pub(crate) fn ms_at(&self, instant: tokio::time::Instant) -> u64 {
        instant.saturating_duration_since(self.started).as_millis() as u64
    }

    /// Admits one more request in flight, or `None` when `max_in_flight` are.
    pub(crate) fn admit(&self) -> Option<InFlightPermit> {
        if self.in_flight.fetch_add(1, Ordering::Relaxed) >= self.config.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(InFlightPermit(self.in_flight.clone()))
    }

    /// Removes `key` from the registry if it still points at actor `id`.
    pub(crate) fn unregister(&self, key: &str, id: ActorId) {
        self.registry
            .remove_if(key, |_, entry| entry.cell.get_id() == id);
    }

    /// Starts passivating one actor: out of the registry, then drained. Returns false when it
    /// was already on its way out.
    pub(crate) fn passivate(&self, key: &str, entry: &Arc<LiveEntry>) -> bool {
        let removed = self
            .registry
            .remove_if(key, |_, e| Arc::ptr_eq(e, entry))
            .is_some();
        if removed {
            entry.drain();
        }
        removed
    }

    /// Passivates the least recently used actors once more than `max_live_actors` serve
    /// commands, down to a sixteenth below the cap, so the scan of the registry this takes
    /// happens once per `cap / 16` activations, not on every one. Actors already on their way
    /// out (writing their snapshot) are not counted: they take no commands and are gone soon.
    pub(crate) fn evict_least_recently_used(&self) {
        let cap = self.config.max_live_actors;
        let serving = self.registry.len();
        if serving <= cap {
            return;
        }
        let excess = serving - cap.saturating_sub(cap / 16);
        let mut candidates: Vec<(u64, String, Arc<LiveEntry>)> = self
            .registry
            .iter()
            // Only idle actors: passivating one with queued commands would just bounce them.
            .filter(|e| e.value().inbox.idle())
            .map(|e| {
                (
                    e.value().last_used.load(Ordering::Relaxed),
                    e.key().clone(),
                    e.value().clone(),
                )
            })
            .collect();
        let excess = excess.min(candidates.len());
        if excess == 0 {
            return;
        }
        candidates.select_nth_unstable_by_key(excess - 1, |c| c.0);
        for (_, key, entry) in candidates.into_iter().take(excess) {
            if self.passivate(&key, &entry) {
                metrics::counter!(m::PASSIVATIONS, "reason" => "capacity").increment(1);
            }
        }
    }
}

/// A live aggregate actor as the command path sees it.
pub(crate) struct LiveEntry {
    pub(crate) cell: ActorCell,
    /// Milliseconds since the runtime started, at the last command sent to it.
    pub(crate) last_used: AtomicU64,
    /// The actor's typed inbox (the handle downcasts it).
    pub(crate) inbox: Arc<dyn Mailbox>,
}

impl LiveEntry {
    /// Closes the inbox, then drains the actor: the commands it accepted run, later ones
    /// are refused and re-routed.
    pub(crate) fn drain(&self) {
        self.inbox.close(&self.cell);
        let _ = self.cell.drain();
    }
}

/// What the shard and the runtime need of an actor's inbox, whatever its aggregate type.
pub(crate) trait Mailbox: Send + Sync {
    /// Nothing queued, running or reserved.
    fn idle(&self) -> bool;
    /// Marks the actor busy for a message the shard sends it (`Compact`).
    fn reserve(&self);
    /// Ends a [`reserve`](Mailbox::reserve).
    fn release(&self);
    /// Answers every command past its deadline at `now` with `Timeout`; `key` is the
    /// aggregate's, for the errors.
    fn expire(&self, key: &str, now: tokio::time::Instant);
    /// Gives back the room of past batches (an actor idle for a while).
    fn shrink(&self);
    /// Refuses further commands; wakes the actor `cell` for the ones left.
    fn close(&self, cell: &ActorCell);
    fn as_any(&self) -> &dyn Any;
}

/// Spawns one typed aggregate actor, linked to the shard; returns it with its inbox. Built
/// by the typed handle, run by the shard.
pub(crate) type Spawner = Box<
    dyn FnOnce(
            ActorCell,
            Arc<PartitionState>,
        ) -> BoxFuture<'static, Result<(ActorCell, Arc<dyn Mailbox>), SpawnErr>>
        + Send,
>;

/// What a shard needs to activate aggregates of one type on its own (to settle keys that
/// hold its checkpoint back): registered when the application asks for the type's handle.
pub(crate) struct AggregateType {
    pub(crate) spawner: Box<dyn Fn(Arc<Shared>, String, String) -> Spawner + Send + Sync>,
    /// Sends the typed `Compact` message; false if the actor is no longer accepting.
    pub(crate) compact: Box<dyn Fn(&ActorCell) -> bool + Send + Sync>,
}

pub(crate) type ActivateReply = oneshot::Sender<Result<Arc<LiveEntry>, ActivateError>>;

#[derive(Debug)]
pub(crate) enum ActivateError {
    ShuttingDown,
    Spawn(String),
}

pub(crate) enum ShardMsg {
    Activate {
        key: String,
        spawner: Spawner,
        reply: ActivateReply,
    },
    Maintain,
    /// Passivate every actor, commit the checkpoint and stop (shutdown or revocation).
    Stop {
        reply: oneshot::Sender<()>,
    },
    /// Kill every actor at once, draining ones included: no snapshots, no checkpoint.
    Abort {
        reply: oneshot::Sender<()>,
    },
}
