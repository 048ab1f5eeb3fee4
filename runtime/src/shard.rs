//! The shard actor: one per owned partition. It owns the aggregate actors whose keys fall in
//! its partition.
//!
//! - **Get-or-spawn without races.** Only the shard spawns actors of its partition, one message
//!   at a time, so two commands for a new aggregate never spawn it twice. Spawning does no
//!   I/O (the actor loads its history on its first command), so one slow activation never
//!   holds up the others.
//! - **Passivation.** An actor is stopped by *draining*: it leaves the registry, its mailbox
//!   closes to new sends (which the handle re-routes here), the commands already admitted
//!   are served, it snapshots and stops. A command for a key whose old actor is still
//!   draining waits here until it has stopped, then gets a fresh activation — so two actors
//!   of one aggregate never run at once.
//! - **Recovery.** Before the shard starts, [`recover`] reads its partition's checkpoint, scans the events
//!   from there to the end into the recovery index and drops what snapshots already cover.
//! - **Maintenance.** A periodic tick passivates idle actors and commits the checkpoint.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::FutureExt;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::oneshot;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::envelope::SnapshotEnvelope;
use crate::error::{Error, StorageError, short};
use crate::log::{LogBackend, Offset};
use crate::metrics as m;
use crate::partition::PartitionState;
use crate::shared::{ActivateError, ActivateReply, LiveEntry, ShardMsg, Shared, Spawner};

/// How many pinning aggregates a shard settles at once; each one settled starts the next.
const SETTLE_CONCURRENCY: usize = 8;

/// How many pinning keys one settling step looks at, at most: live, unloadable and
/// unregistered ones are passed over, so this bounds a step's work however many there are.
const SETTLE_VISITS: usize = 256;

/// How long an aggregate that failed to settle is passed over before it is tried again.
const SETTLE_RETRY: std::time::Duration = std::time::Duration::from_secs(600);

pub(crate) struct Shard;

/// Where settling is in its walk over the keys that hold the checkpoint back.
#[derive(Default)]
struct Settling {
    /// The walk goes on from the keys whose first uncovered event is at or above this.
    cursor: Offset,
    /// Keys being settled now.
    running: HashSet<String>,
    /// Keys that could not be settled: the offset they held the checkpoint at then, and
    /// when. They are passed over until they move or `SETTLE_RETRY` has passed.
    stuck: HashMap<String, (Offset, tokio::time::Instant)>,
    /// Aggregate types whose keys were passed over (no handle asked for yet): warned once.
    unregistered: HashSet<String>,
}

/// A recovered partition, ready to be served (see [`recover`]).
pub(crate) struct ShardArgs {
    pub(crate) shared: Arc<Shared>,
    pub(crate) part: PartitionState,
    pub(crate) checkpoint: Offset,
}

pub(crate) struct ShardState {
    shared: Arc<Shared>,
    part: Arc<PartitionState>,
    /// Every actor of this partition that has not yet stopped, draining ones included.
    actors: HashMap<String, Arc<LiveEntry>>,
    keys: HashMap<ActorId, String>,
    /// Activations waiting for a draining actor of the same key to stop.
    waiting: HashMap<String, Vec<(Spawner, ActivateReply)>>,
    committed_checkpoint: Offset,
    settling: Settling,
    /// When the checkpoint was last committed (or loaded); `None` before the first commit.
    committed_at: Option<tokio::time::Instant>,
    /// The checkpoint commit under way, if any: run beside the shard, so a slow backend
    /// never holds up its activations.
    committing: Option<Committing>,
    stopping: Option<Vec<oneshot::Sender<()>>>,
}

/// A checkpoint commit running as its own task; it resolves to the checkpoint it committed.
/// Dropped with the shard (an abort or a lost partition), it is cancelled.
struct Committing(tokio::task::JoinHandle<Option<Offset>>);

impl Drop for Committing {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Shard {
    pub(crate) fn recovery_group(app_id: &str) -> String {
        format!("{app_id}.recovery")
    }
}

impl Actor for Shard {
    type Msg = ShardMsg;
    type State = ShardState;
    type Arguments = ShardArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ShardMsg>,
        args: ShardArgs,
    ) -> Result<ShardState, ActorProcessingErr> {
        myself.send_interval(args.shared.config.tick(), || ShardMsg::Maintain);
        let checkpoint = args.checkpoint;
        Ok(ShardState {
            shared: args.shared,
            part: Arc::new(args.part),
            actors: HashMap::new(),
            keys: HashMap::new(),
            waiting: HashMap::new(),
            committed_checkpoint: checkpoint,
            settling: Settling::default(),
            committed_at: None,
            committing: None,
            stopping: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ShardMsg>,
        message: ShardMsg,
        state: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ShardMsg::Activate {
                key,
                spawner,
                reply,
            } => state.activate(&myself, key, spawner, reply).await,
            ShardMsg::Maintain => state.maintain(&myself).await,
            ShardMsg::Abort { reply } => {
                for entry in state.actors.values() {
                    let _ = entry.cell.kill_and_wait(None).await;
                }
                let _ = reply.send(());
            }
            ShardMsg::Stop { reply } => {
                state.begin_stop(reply);
                state.finish_stop_if_done(&myself).await;
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ShardMsg>,
        state: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        // The partition is no longer this instance's: another may append to it now.
        state.part.drop_tail();
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<ShardMsg>,
        event: SupervisionEvent,
        state: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        let (id, failure) = match &event {
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell.get_id(), None),
            SupervisionEvent::ActorFailed(cell, err) => (cell.get_id(), Some(err.to_string())),
            _ => return Ok(()),
        };
        let Some(key) = state.keys.remove(&id) else {
            return Ok(());
        };
        if let Some(failure) = failure {
            warn!(aggregate = %short(&key), %failure, "aggregate actor failed");
        }
        state.actors.remove(&key);
        state.shared.unregister(&key, id);
        let settled = state.settling.running.remove(&key);
        let live = state.shared.live.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!(m::LIVE_ACTORS).set(live as f64);
        if let Some(waiters) = state.waiting.remove(&key) {
            for (spawner, reply) in waiters {
                state.activate(&myself, key.clone(), spawner, reply).await;
            }
        }
        if settled {
            state.settled(&key);
            if state.stopping.is_none() {
                state.settle(&myself).await;
            }
        }
        state.finish_stop_if_done(&myself).await;
        Ok(())
    }
}

impl ShardState {
    async fn activate(
        &mut self,
        myself: &ActorRef<ShardMsg>,
        key: String,
        spawner: Spawner,
        reply: ActivateReply,
    ) {
        if self.stopping.is_some() {
            let _ = reply.send(Err(ActivateError::ShuttingDown));
            return;
        }
        if let Some(entry) = self.shared.registry.get(&key) {
            let _ = reply.send(Ok(entry.clone()));
            return;
        }
        if self.actors.contains_key(&key) {
            // Still draining: activate once it has stopped.
            self.waiting.entry(key).or_default().push((spawner, reply));
            return;
        }
        let (cell, inbox) = match spawner(myself.get_cell(), self.part.clone()).await {
            Ok(spawned) => spawned,
            Err(e) => {
                let _ = reply.send(Err(ActivateError::Spawn(e.to_string())));
                return;
            }
        };
        let entry = Arc::new(LiveEntry {
            cell: cell.clone(),
            last_used: AtomicU64::new(self.shared.now_ms()),
            inbox,
        });
        self.keys.insert(cell.get_id(), key.clone());
        self.actors.insert(key.clone(), entry.clone());
        self.shared.registry.insert(key, entry.clone());
        let live = self.shared.live.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!(m::LIVE_ACTORS).set(live as f64);
        let _ = reply.send(Ok(entry));
        self.shared.evict_least_recently_used();
    }

    async fn maintain(&mut self, myself: &ActorRef<ShardMsg>) {
        let now = self.shared.now_ms();
        let instant = tokio::time::Instant::now();
        let idle_ms = self.shared.config.idle_timeout.as_millis() as u64;
        let tick_ms = self.shared.config.tick().as_millis() as u64;
        // Right after a pause of this process the group may have moved these partitions on:
        // answer the callers, write nothing (see `PauseGuard`).
        let held = self.shared.writes_held();
        for (key, entry) in &self.actors {
            // The deadlines of the commands of every actor, draining ones included.
            entry.inbox.expire(key, instant);
            if held {
                continue;
            }
            let last = entry.last_used.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= tick_ms {
                entry.inbox.shrink();
            }
            if now.saturating_sub(last) >= idle_ms
                && entry.inbox.idle()
                && self.shared.passivate(key, entry)
            {
                metrics::counter!(m::PASSIVATIONS, "reason" => "idle").increment(1);
                debug!(aggregate = %short(key), "passivating idle actor");
            }
        }
        if held {
            return;
        }
        self.shared.evict_least_recently_used();
        if self.stopping.is_none() && self.shared.config.snapshots.on_passivation {
            self.settle(myself).await;
        }
        self.commit_checkpoint_beside();
    }

    /// Activates and snapshots aggregates that are not live but have events no snapshot
    /// covers — after a crash, the ones that hold the checkpoint (and so the next recovery's
    /// scan) back. Normal passivation never leaves such aggregates behind.
    ///
    /// It walks the keys by first uncovered event, from where it stopped last, a bounded
    /// number per step, and keeps up to `SETTLE_CONCURRENCY` settling; each one that stops
    /// starts the next, so the pace is the activations', not the tick's. Keys it cannot
    /// load (their type has no handle yet, their history does not load) are reported and
    /// passed over: they hold the checkpoint, never the others' settling.
    async fn settle(&mut self, myself: &ActorRef<ShardMsg>) {
        if self.settling.running.len() >= SETTLE_CONCURRENCY {
            return;
        }
        let (keys, reached_end) = self
            .part
            .pinning_keys_from(self.settling.cursor, SETTLE_VISITS);
        let mut cursor = if reached_end { 0 } else { self.settling.cursor };
        for (first, key) in keys {
            if self.settling.running.len() >= SETTLE_CONCURRENCY {
                break;
            }
            if !reached_end {
                cursor = first + 1;
            }
            if self.actors.contains_key(&key) || self.settling.running.contains(&key) {
                continue; // live: it snapshots when passivated
            }
            if let Some((at, since)) = self.settling.stuck.get(&key)
                && *at == first
                && since.elapsed() < SETTLE_RETRY
            {
                continue;
            }
            let aggregate_type = key.split_once('/').and_then(|(type_name, id)| {
                let found = self
                    .shared
                    .aggregate_types
                    .get(type_name)
                    .map(|t| t.clone());
                if found.is_none() && self.settling.unregistered.insert(type_name.to_owned()) {
                    warn!(
                        partition = self.part.partition,
                        aggregate_type = %short(type_name),
                        "aggregates of a type without a handle hold the checkpoint back; \
                         they settle once the application asks for the type's handle"
                    );
                }
                found.map(|t| (t, id.to_owned()))
            });
            let Some((aggregate_type, id)) = aggregate_type else {
                // Checked again in SETTLE_RETRY: the handle may have been asked for by then.
                let now = tokio::time::Instant::now();
                if self.settling.stuck.insert(key, (first, now)).is_none() {
                    metrics::counter!(m::SETTLE_SKIPPED, "reason" => "unregistered").increment(1);
                }
                continue;
            };
            let spawner = (aggregate_type.spawner)(self.shared.clone(), key.clone(), id);
            let (reply, _) = oneshot::channel();
            self.activate(myself, key.clone(), spawner, reply).await;
            if let Some(entry) = self.actors.get(&key) {
                entry.inbox.reserve();
                if (aggregate_type.compact)(&entry.cell) {
                    self.settling.running.insert(key.clone());
                } else {
                    entry.inbox.release();
                }
                debug!(aggregate = %short(&key), "settling an aggregate that holds the checkpoint back");
            }
        }
        self.settling.cursor = cursor;
    }

    /// The actor settling `key` has stopped: if the key still holds the checkpoint back,
    /// it could not be loaded or snapshotted, and is passed over for a while.
    fn settled(&mut self, key: &str) {
        let Some(at) = self.part.pinned_at(key) else {
            self.settling.stuck.remove(key);
            return;
        };
        let now = tokio::time::Instant::now();
        if let Some(stuck) = self.settling.stuck.get_mut(key) {
            *stuck = (at, now); // reported already
            return;
        }
        metrics::counter!(m::SETTLE_SKIPPED, "reason" => "unloadable").increment(1);
        warn!(
            partition = self.part.partition,
            aggregate = %short(key),
            offset = at,
            "an aggregate that holds the checkpoint back cannot be settled; passed over"
        );
        self.settling.stuck.insert(key.to_owned(), (at, now));
    }

    /// Whether the checkpoint needs committing: it moved, or its last commit is older than
    /// `checkpoint_refresh`.
    fn checkpoint_due(&self, checkpoint: Offset) -> bool {
        checkpoint != self.committed_checkpoint
            || self
                .committed_at
                .is_none_or(|at| at.elapsed() >= self.shared.config.checkpoint_refresh)
    }

    fn committed(&mut self, checkpoint: Offset) {
        self.committed_checkpoint = checkpoint;
        self.committed_at = Some(tokio::time::Instant::now());
    }

    /// Commits the checkpoint when due, as a task beside the shard (one at a time): the
    /// shard goes on serving activations however long the backend takes.
    fn commit_checkpoint_beside(&mut self) {
        if let Some(running) = &mut self.committing {
            if !running.0.is_finished() {
                return;
            }
            if let Some(Ok(Some(checkpoint))) = (&mut running.0).now_or_never() {
                self.committed(checkpoint);
            }
            self.committing = None;
        }
        if let Some(commit) = self.due_commit() {
            self.committing = Some(Committing(tokio::spawn(commit)));
        }
    }

    /// Commits the checkpoint when due and waits for it (a stopping shard's last step), after
    /// the commit under way, if any.
    async fn commit_checkpoint(&mut self) {
        if let Some(mut running) = self.committing.take()
            && let Ok(Some(checkpoint)) = (&mut running.0).await
        {
            self.committed(checkpoint);
        }
        if let Some(commit) = self.due_commit()
            && let Some(checkpoint) = commit.await
        {
            self.committed(checkpoint);
        }
    }

    /// The commit of the checkpoint, when one is due: it resolves to the checkpoint committed,
    /// or `None` (warned) when the backend refused it.
    fn due_commit(&self) -> Option<impl Future<Output = Option<Offset>> + Send + 'static> {
        let checkpoint = self.part.checkpoint();
        if !self.checkpoint_due(checkpoint) {
            return None;
        }
        let backend = self.shared.backend.clone();
        let group = Shard::recovery_group(&self.shared.config.app_id);
        let partition = self.part.partition;
        Some(async move {
            match backend
                .commit_checkpoint(group, partition, checkpoint)
                .await
            {
                Ok(()) => Some(checkpoint),
                Err(e) => {
                    warn!(partition, error = %e, "checkpoint commit failed");
                    None
                }
            }
        })
    }

    fn begin_stop(&mut self, reply: oneshot::Sender<()>) {
        self.stopping.get_or_insert_with(Vec::new).push(reply);
        for (key, entry) in &self.actors {
            if self.shared.passivate(key, entry) {
                metrics::counter!(m::PASSIVATIONS, "reason" => "shutdown").increment(1);
            }
        }
        for (_, waiters) in self.waiting.drain() {
            for (_, reply) in waiters {
                let _ = reply.send(Err(ActivateError::ShuttingDown));
            }
        }
    }

    async fn finish_stop_if_done(&mut self, myself: &ActorRef<ShardMsg>) {
        if self.stopping.is_none() || !self.actors.is_empty() {
            return;
        }
        self.commit_checkpoint().await;
        info!(
            partition = self.part.partition,
            checkpoint = self.committed_checkpoint,
            "shard stopped"
        );
        for reply in self.stopping.take().into_iter().flatten() {
            let _ = reply.send(());
        }
        myself.stop(None);
    }
}

/// The offset up to which the latest snapshot of `key` covers its events, if it has a readable
/// one.
async fn snapshot_coverage(
    backend: &Arc<dyn LogBackend>,
    partition: u32,
    key: &str,
) -> Result<Option<Offset>, Error> {
    let Some(bytes) = backend.load_snapshot(partition, key.to_owned()).await? else {
        return Ok(None);
    };
    match SnapshotEnvelope::decode(&bytes, &format!("snapshot of {}", short(key))) {
        Ok(snapshot) => Ok(snapshot.covered_offset),
        // Left uncovered: the aggregate will rebuild when activated.
        Err(e) => {
            warn!(aggregate = %short(key), error = %e, "unreadable snapshot during recovery");
            Ok(None)
        }
    }
}

/// Rebuilds the recovery index and the tail of `partition`: events from the checkpoint to the
/// end, minus what the latest snapshots cover.
pub(crate) async fn recover(
    shared: &Shared,
    partition: u32,
) -> Result<(PartitionState, Offset), Error> {
    let span = info_span!(
        "recovery",
        partition,
        checkpoint = tracing::field::Empty,
        scanned = tracing::field::Empty,
        uncovered = tracing::field::Empty
    );
    async {
        let backend = &shared.backend;
        let group = Shard::recovery_group(&shared.config.app_id);
        let checkpoint = backend
            .load_checkpoint(group, partition)
            .await?
            .unwrap_or(0);
        let end = backend.end_offset(partition).await?;
        if checkpoint > end {
            // Every checkpoint this runtime commits is at most the end it knew of: a larger
            // one means the log lost records (or the checkpoint belongs to another log).
            // Starting from it would leave the events below it unindexed and reuse their
            // sequence numbers.
            return Err(Error::Storage(StorageError::Corrupt {
                context: format!("the recovery checkpoint of partition {partition}"),
                detail: format!(
                    "checkpoint offset {checkpoint} is beyond the partition's end offset {end}"
                ),
            }));
        }
        let part = PartitionState::new(partition, end, shared.tail_budget.clone());
        // The coverage of each key's latest snapshot, looked up when the scan first meets the
        // key: an event it covers is neither indexed nor kept in the tail.
        let mut coverage: HashMap<String, Option<Offset>> = HashMap::new();
        let mut from = checkpoint;
        let mut scanned = 0u64;
        while from < end {
            let records = backend
                .read(partition, from, 4096, std::time::Duration::ZERO)
                .await?;
            // Backends return nothing from below the end only when no record is left there
            // (the transactional Kafka log: commit markers and aborted records); one that
            // cannot fetch records it knows of fails the read instead.
            let Some(last) = records.last() else { break };
            from = last.position.offset + 1;
            scanned += records.len() as u64;
            for record in records {
                let covered = match coverage.get(&record.key) {
                    Some(covered) => *covered,
                    None => {
                        let covered = snapshot_coverage(backend, partition, &record.key).await?;
                        coverage.insert(record.key.clone(), covered);
                        covered
                    }
                };
                let offset = record.position.offset;
                if covered.is_none_or(|covered| offset > covered) {
                    part.record_value(&record.key, offset, record.value);
                }
            }
        }
        let span = tracing::Span::current();
        span.record("checkpoint", checkpoint);
        span.record("scanned", scanned);
        span.record("uncovered", part.uncovered_events());
        info!(partition, checkpoint, end, scanned, "partition recovered");
        Ok((part, checkpoint))
    }
    .instrument(span)
    .await
}
