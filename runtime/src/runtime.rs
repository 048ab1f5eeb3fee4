//! [`Runtime`]: starts shards for the owned partitions, hands out typed command handles and
//! shuts down gracefully.

use std::any::TypeId;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use ractor::{Actor, ActorRef};
use tokio::sync::{Semaphore, oneshot};
use tracing::info;

use crate::aggregate::Aggregate;
use crate::config::{MAX_TYPE_NAME_BYTES, RuntimeConfig, SnapshotPolicy};
use crate::error::Error;
use crate::handle::AggregateHandle;
use crate::log::LogBackend;
use crate::partition::TailBudget;
use crate::shard::{Shard, ShardArgs};
use crate::shared::{GroupMembership, ShardMsg, Shared};

/// The aggregate runtime. Cheap to clone; every clone drives the same runtime.
///
/// ```no_run
/// # use std::sync::Arc;
/// # async fn demo() -> Result<(), keel::Error> {
/// let runtime = keel::Runtime::builder()
///     .backend(Arc::new(keel::log::MemoryLog::new(8)))
///     .start()
///     .await?;
/// // let stock = runtime.aggregate::<StockItem>();
/// // stock.send("store-1:sku-9", ReceiveShipment { .. }).await?;
/// runtime.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Runtime {
    shared: Arc<Shared>,
}

impl Runtime {
    /// A builder with the default configuration; a backend is required.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// The typed command handle of aggregate type `A`. Registers the type if
    /// [`RuntimeBuilder::register`] did not already.
    ///
    /// # Panics
    /// If another Rust type already registered the same [`Aggregate::TYPE`] name: two types
    /// sharing one key space would corrupt each other's history. If the name is empty,
    /// longer than [`MAX_TYPE_NAME_BYTES`] or contains `/`: keys are `"{TYPE}/{id}"`, so a
    /// `/` in the name would collide with another type's ids. Register the types on the
    /// builder to have [`RuntimeBuilder::start`] refuse these instead.
    pub fn aggregate<A: Aggregate>(&self) -> AggregateHandle<A> {
        self.register::<A>().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Registers aggregate type `A` (once; again is a no-op) and returns its handle.
    fn register<A: Aggregate>(&self) -> Result<AggregateHandle<A>, Error> {
        if A::TYPE.is_empty() || A::TYPE.len() > MAX_TYPE_NAME_BYTES || A::TYPE.contains('/') {
            return Err(Error::Config(format!(
                "invalid Aggregate::TYPE {:?}: it must be 1 to {MAX_TYPE_NAME_BYTES} bytes \
                 without '/'",
                crate::error::short(A::TYPE)
            )));
        }
        let id = TypeId::of::<A>();
        let existing = *self.shared.types.entry(A::TYPE).or_insert(id);
        if existing != id {
            return Err(Error::Config(format!(
                "two aggregate types are both named {:?} ({} and another); Aggregate::TYPE \
                 must be unique",
                A::TYPE,
                std::any::type_name::<A>()
            )));
        }
        let handle = AggregateHandle::<A>::new(self.shared.clone());
        self.shared
            .aggregate_types
            .entry(A::TYPE)
            .or_insert_with(|| Arc::new(handle.aggregate_type()));
        Ok(handle)
    }

    /// The log backend the runtime writes to.
    pub fn backend(&self) -> Arc<dyn LogBackend> {
        self.shared.backend.clone()
    }

    /// The configuration in force.
    pub fn config(&self) -> &RuntimeConfig {
        &self.shared.config
    }

    /// How many aggregate actors are live (including ones passivating).
    pub fn live_actors(&self) -> usize {
        self.shared.live.load(Ordering::Relaxed)
    }

    /// Whether the actor of `A`/`id` is live and accepting commands right now.
    pub fn is_live<A: Aggregate>(&self, id: &str) -> bool {
        self.shared
            .registry
            .contains_key(&crate::log::aggregate_key(A::TYPE, id))
    }

    /// The partitions this instance owns, ascending.
    pub fn owned_partitions(&self) -> Vec<u32> {
        let mut owned: Vec<u32> = self.shared.shards.iter().map(|e| *e.key()).collect();
        owned.sort_unstable();
        owned
    }

    /// Starts serving `partitions` (recovering each first). Used by ownership integrations
    /// such as the Kafka consumer group; partitions already owned are skipped, and a
    /// partition whose previous shard is still stopping (a revoke in progress) is assigned
    /// once that shard has stopped. All or nothing: if one partition fails to recover, the
    /// shards started for the others are stopped again and the error is returned.
    pub(crate) async fn assign_partitions(&self, partitions: &[u32]) -> Result<(), Error> {
        let shared = &self.shared;
        if let Some(&partition) = partitions.iter().find(|&&p| p >= shared.partitions) {
            return Err(Error::Config(format!(
                "partition {partition} out of range (the log has {})",
                shared.partitions
            )));
        }
        // One assignment at a time: two concurrent ones must not both spawn a shard.
        let _assigning = shared.assigning.lock().await;
        let mut wanted: Vec<u32> = partitions.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let mut started = Vec::new();
        for partition in wanted {
            loop {
                let retiring = {
                    let _handover = lock(&shared.handover);
                    if shared.shards.contains_key(&partition) {
                        break;
                    }
                    shared.retiring.get(&partition).map(|s| s.clone())
                };
                let Some(old) = retiring else {
                    let shared = shared.clone();
                    started.push(async move {
                        // Recovered before the shard is spawned, so its errors keep their type.
                        let (part, checkpoint) = crate::shard::recover(&shared, partition).await?;
                        let args = ShardArgs {
                            shared,
                            part,
                            checkpoint,
                        };
                        let (shard, _) =
                            Actor::spawn(None, Shard, args)
                                .await
                                .map_err(|e| Error::Spawn {
                                    what: format!("shard of partition {partition}"),
                                    reason: e.to_string(),
                                })?;
                        Ok::<_, Error>((partition, shard))
                    });
                    break;
                };
                let _ = old.wait(None).await;
                let _handover = lock(&shared.handover);
                shared
                    .retiring
                    .remove_if(&partition, |_, s| s.get_id() == old.get_id());
            }
        }
        let mut spawned = Vec::new();
        let mut failure = None;
        for result in futures::future::join_all(started).await {
            match result {
                Ok(shard) => spawned.push(shard),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failure {
            for (_, shard) in spawned {
                kill_shard(&shard).await;
            }
            return Err(e);
        }
        let _handover = lock(&shared.handover);
        for (partition, shard) in spawned {
            shared.owner_of.remove(&partition);
            shared.shards.insert(partition, shard);
        }
        Ok(())
    }

    /// Takes the shard of `partition` out of service: no command reaches it any more, and
    /// until it has stopped an assignment of the partition waits for it.
    fn retire(&self, partition: u32) -> Option<ActorRef<ShardMsg>> {
        let _handover = lock(&self.shared.handover);
        let (_, shard) = self.shared.shards.remove(&partition)?;
        self.shared.retiring.insert(partition, shard.clone());
        Some(shard)
    }

    /// The shard of `partition` has stopped.
    fn retired(&self, partition: u32, shard: &ActorRef<ShardMsg>) {
        let _handover = lock(&self.shared.handover);
        self.shared
            .retiring
            .remove_if(&partition, |_, s| s.get_id() == shard.get_id());
    }

    /// Stops serving `partitions`: new commands get `NotOwner`, live actors drain and snapshot,
    /// the checkpoints are committed. `owner` names the new owner's endpoint when known.
    pub(crate) async fn revoke_partitions(&self, partitions: &[u32], owner: Option<String>) {
        let mut stopped = Vec::new();
        for &partition in partitions {
            if let Some(owner) = &owner {
                self.shared.owner_of.insert(partition, owner.clone());
            }
            if let Some(shard) = self.retire(partition) {
                stopped.push(async move {
                    let (tx, rx) = oneshot::channel();
                    if shard.send_message(ShardMsg::Stop { reply: tx }).is_ok() {
                        let _ = rx.await;
                    }
                    let _ = shard.wait(None).await;
                    self.retired(partition, &shard);
                });
            }
        }
        futures::future::join_all(stopped).await;
    }

    /// Records where a partition this instance does not own is served, for `NotOwner` errors.
    #[cfg_attr(
        not(any(feature = "kafka", feature = "test-support")),
        allow(dead_code)
    )]
    pub(crate) fn record_owner(&self, partition: u32, endpoint: impl Into<String>) {
        self.shared.owner_of.insert(partition, endpoint.into());
    }

    /// Stops everything at once, as a crash would: no snapshots, no checkpoint commits, no
    /// waiting for commands in flight (they get errors). What was acknowledged is in the log;
    /// a runtime started afterwards recovers exactly as after a process crash.
    #[cfg_attr(not(feature = "test-support"), allow(dead_code))]
    pub(crate) async fn crash(&self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        let partitions = self.owned_partitions();
        self.kill_shards(&partitions).await;
        self.shared.registry.clear();
        // No shard is left to drain: leaving the group only hands the partitions over.
        self.leave_group().await;
    }

    /// Holds the runtime's own writes back for a group session after a pause of this
    /// process longer than half of one (see `PauseGuard`).
    #[cfg(feature = "kafka")]
    pub(crate) fn guard_pauses(&self, session: Duration) {
        self.shared.watch_pauses(session);
    }

    /// Leaves the consumer group, when ownership is configured.
    async fn leave_group(&self) {
        let membership = lock(&self.shared.membership).take();
        if let Some(membership) = membership {
            membership.leave().await;
        }
    }

    /// Stops serving `partitions` at once because they were *lost*: this instance's group
    /// session expired, so another instance may own them already. Unlike a revoke nothing is
    /// snapshotted and no checkpoint is committed (that would write to partitions this
    /// instance no longer owns); commands in flight get errors. Nothing acknowledged is lost:
    /// the next owner recovers from the log as after a crash.
    #[cfg(feature = "kafka")]
    pub(crate) async fn lose(&self, partitions: &[u32]) {
        self.kill_shards(partitions).await;
        let count = self.shared.partitions;
        self.shared
            .registry
            .retain(|key, _| !partitions.contains(&crate::log::partition_for(key, count)));
    }

    /// Kills the shards of `partitions` and every actor they spawned, without snapshots or
    /// checkpoint commits.
    async fn kill_shards(&self, partitions: &[u32]) {
        for &partition in partitions {
            let Some(shard) = self.retire(partition) else {
                continue;
            };
            kill_shard(&shard).await;
            self.retired(partition, &shard);
        }
    }

    /// Graceful shutdown: refuses new commands, lets every admitted command finish, snapshots
    /// live actors, commits the recovery checkpoints and closes the backend. When it returns,
    /// everything acknowledged is durable in the backend.
    pub async fn shutdown(&self) -> Result<(), Error> {
        // Leaving the group revokes this instance's partitions through the group's callbacks
        // (drain, snapshot, commit) and hands them to the other members.
        self.leave_group().await;
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        let partitions = self.owned_partitions();
        self.revoke_partitions(&partitions, None).await;
        self.shared.backend.close().await?;
        info!("runtime stopped");
        Ok(())
    }
}

/// Test support (feature `test-support`): driving partition ownership by hand and simulating
/// a crash. Applications get ownership from [`RuntimeBuilder::ownership`] and stop with
/// [`Runtime::shutdown`].
#[cfg(feature = "test-support")]
impl Runtime {
    /// Starts serving `partitions`, as an ownership assignment does (see the runtime's
    /// partition handover rules).
    pub async fn assign(&self, partitions: &[u32]) -> Result<(), Error> {
        self.assign_partitions(partitions).await
    }

    /// Stops serving `partitions`, as an ownership revocation does: drain, snapshot, commit.
    pub async fn revoke(&self, partitions: &[u32], owner: Option<String>) {
        self.revoke_partitions(partitions, owner).await
    }

    /// Records where a partition this instance does not own is served, for `NotOwner` errors.
    pub fn set_owner(&self, partition: u32, endpoint: impl Into<String>) {
        self.record_owner(partition, endpoint)
    }

    /// Stops everything at once, as a crash would: no snapshots, no checkpoint commits, no
    /// waiting for commands in flight (they get errors). What was acknowledged is in the log;
    /// a runtime started afterwards recovers exactly as after a process crash.
    pub async fn abort(&self) {
        self.crash().await
    }
}

/// Kills `shard` and every actor it spawned, without snapshots or checkpoint commits.
async fn kill_shard(shard: &ActorRef<ShardMsg>) {
    // The shard kills every actor it spawned, draining ones included (ractor does not take
    // draining children down with their supervisor), then itself.
    let (tx, rx) = oneshot::channel();
    if shard.send_message(ShardMsg::Abort { reply: tx }).is_ok() {
        let _ = rx.await;
    }
    let _ = shard.kill_and_wait(None).await;
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Guards a few map operations that cannot leave anything half-done.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Builds a [`Runtime`]. Every setting has a documented default (see [`RuntimeConfig`](crate::config::RuntimeConfig)).
#[derive(Default)]
pub struct RuntimeBuilder {
    backend: Option<Arc<dyn LogBackend>>,
    config: RuntimeConfig,
    app_id_set: bool,
    owned: Option<Vec<u32>>,
    ownership: Option<OwnershipPlan>,
    /// Aggregate types to register before any partition is served.
    #[allow(clippy::type_complexity)]
    registrations: Vec<Box<dyn FnOnce(&Runtime) -> Result<(), Error> + Send>>,
}

/// How a runtime takes part in partition ownership (built by an ownership integration such as
/// [`KafkaOwnership`](crate::KafkaOwnership)): the log it must run on, the app id it must use,
/// and how to join once started.
pub(crate) struct OwnershipPlan {
    pub(crate) backend: Arc<dyn LogBackend>,
    pub(crate) app_id: String,
    #[allow(clippy::type_complexity)]
    pub(crate) join: Box<dyn FnOnce(&Runtime) -> Result<Box<dyn GroupMembership>, Error> + Send>,
}

impl RuntimeBuilder {
    /// With ownership configured: checks it against the rest of the configuration and makes
    /// the ownership's log the backend and its app id the runtime's.
    fn take_ownership(&mut self) -> Result<Option<OwnershipPlan>, Error> {
        let Some(plan) = self.ownership.take() else {
            return Ok(None);
        };
        if self.app_id_set && self.config.app_id != plan.app_id {
            return Err(Error::Config(format!(
                "the runtime's app id {:?} differs from its log's {:?}; with ownership the \
                 runtime takes the log's (leave RuntimeBuilder::app_id out)",
                self.config.app_id, plan.app_id
            )));
        }
        if let Some(backend) = &self.backend
            && !std::ptr::addr_eq(Arc::as_ptr(backend), Arc::as_ptr(&plan.backend))
        {
            return Err(Error::Config(
                "a backend other than the ownership's log was given; with ownership the \
                 runtime runs on the ownership's log (leave RuntimeBuilder::backend out)"
                    .into(),
            ));
        }
        if self.owned.as_ref().is_some_and(|owned| !owned.is_empty()) {
            return Err(Error::Config(
                "fixed partitions were given together with ownership; the group assigns them \
                 (leave RuntimeBuilder::owned_partitions out)"
                    .into(),
            ));
        }
        self.config.app_id = plan.app_id.clone();
        self.backend = Some(plan.backend.clone());
        self.owned = Some(Vec::new());
        Ok(Some(plan))
    }

    /// Sets the ownership plan (see `KafkaOwnership`'s builder method).
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))]
    pub(crate) fn ownership_plan(mut self, plan: OwnershipPlan) -> Self {
        self.ownership = Some(plan);
        self
    }

    /// Registers aggregate type `A`: [`RuntimeBuilder::start`] fails if its
    /// [`Aggregate::TYPE`] is invalid or another registered type has the same name, and
    /// shards can settle `A`'s aggregates after a crash from the start. Registering is
    /// optional (the first [`Runtime::aggregate`] registers a type too), but a clash then
    /// panics there.
    pub fn register<A: Aggregate>(mut self) -> Self {
        self.registrations.push(Box::new(|runtime: &Runtime| {
            runtime.register::<A>().map(drop)
        }));
        self
    }

    /// The log backend. Required, unless [`RuntimeBuilder::ownership`] names the log.
    pub fn backend(mut self, backend: Arc<dyn LogBackend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: RuntimeConfig) -> Self {
        self.config = config;
        self
    }

    /// The application id. Default = `"keel"`.
    pub fn app_id(mut self, app_id: impl Into<String>) -> Self {
        self.config.app_id = app_id.into();
        self.app_id_set = true;
        self
    }

    /// Passivate actors idle this long. Default = 60 s.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// The cap on live aggregate actors in this process. Default = 10 000.
    pub fn max_live_actors(mut self, max: usize) -> Self {
        self.config.max_live_actors = max;
        self
    }

    /// The cap on commands queued per aggregate. Default = 256.
    pub fn mailbox_capacity(mut self, capacity: usize) -> Self {
        self.config.mailbox_capacity = capacity;
        self
    }

    /// The cap on commands in flight in the runtime. Default = 65 536.
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.config.max_in_flight = max;
        self
    }

    /// The cap on concurrent activations. Default = 64.
    pub fn max_concurrent_activations(mut self, max: usize) -> Self {
        self.config.max_concurrent_activations = max;
        self
    }

    /// The snapshot policy. Default = every 100 events, on passivation, after long replays.
    pub fn snapshots(mut self, policy: SnapshotPolicy) -> Self {
        self.config.snapshots = policy;
        self
    }

    /// The default command timeout. Default = 30 s.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.config.command_timeout = timeout;
        self
    }

    /// See [`RuntimeConfig::max_id_bytes`]. Default = 4 KiB.
    pub fn max_id_bytes(mut self, bytes: usize) -> Self {
        self.config.max_id_bytes = bytes;
        self
    }

    /// How many command ids each aggregate remembers at least. Default = 128.
    pub fn dedup_window(mut self, window: usize) -> Self {
        self.config.dedup_window = window;
        self
    }

    /// See [`RuntimeConfig::dedup_retention`]. Default = 10 min.
    pub fn dedup_retention(mut self, retention: Duration) -> Self {
        self.config.dedup_retention = retention;
        self
    }

    /// See [`RuntimeConfig::dedup_max_ids`]. Default = 4 096.
    pub fn dedup_max_ids(mut self, max: usize) -> Self {
        self.config.dedup_max_ids = max;
        self
    }

    /// How often shards run maintenance. Default = 1 s.
    pub fn maintenance_interval(mut self, interval: Duration) -> Self {
        self.config.maintenance_interval = interval;
        self
    }

    /// See [`RuntimeConfig::checkpoint_refresh`].
    pub fn checkpoint_refresh(mut self, refresh: Duration) -> Self {
        self.config.checkpoint_refresh = refresh;
        self
    }

    /// The memory the partition tails may use, over all partitions (0: no tails). See
    /// [`RuntimeConfig::tail_cache_bytes`] for the default.
    pub fn tail_cache_bytes(mut self, bytes: usize) -> Self {
        self.config.tail_cache_bytes = Some(bytes);
        self
    }

    /// Serve only these partitions at start (default: all). Ownership integrations start
    /// with none and call [`Runtime::assign`].
    pub fn owned_partitions(mut self, partitions: Vec<u32>) -> Self {
        self.owned = Some(partitions);
        self
    }

    /// Starts the runtime: recovers and serves the owned partitions.
    pub async fn start(mut self) -> Result<Runtime, Error> {
        let ownership = self.take_ownership()?;
        let backend = self
            .backend
            .ok_or_else(|| Error::Config("a log backend is required".into()))?;
        self.config.validate()?;
        let partitions = backend.partition_count();
        let shared = Arc::new(Shared {
            partitions,
            in_flight: Arc::new(AtomicUsize::new(0)),
            activations: Semaphore::new(self.config.max_concurrent_activations),
            registry: DashMap::with_hasher(Default::default()),
            shards: DashMap::new(),
            retiring: DashMap::new(),
            handover: std::sync::Mutex::new(()),
            assigning: tokio::sync::Mutex::new(()),
            live: AtomicUsize::new(0),
            shutting_down: AtomicBool::new(false),
            started: tokio::time::Instant::now(),
            types: DashMap::new(),
            aggregate_types: DashMap::new(),
            owner_of: DashMap::new(),
            tail_budget: Arc::new(TailBudget::new(self.config.tail_budget_for(&*backend))),
            pauses: Default::default(),
            membership: std::sync::Mutex::new(None),
            config: self.config,
            backend,
        });
        let runtime = Runtime { shared };
        for registration in self.registrations {
            registration(&runtime)?;
        }
        let owned = self.owned.unwrap_or_else(|| (0..partitions).collect());
        runtime.assign_partitions(&owned).await?;
        if let Some(plan) = ownership {
            let membership = (plan.join)(&runtime)?;
            *lock(&runtime.shared.membership) = Some(membership);
        }
        info!(
            backend = %runtime.shared.backend.describe(),
            partitions,
            owned = owned.len(),
            "runtime started"
        );
        Ok(runtime)
    }
}
