//! [`KafkaOwnership`]: partition ownership through a Kafka consumer group.
//!
//! Every instance of an application joins the consumer group named by its app id, subscribed
//! to the events topic. The group's assignment *is* the ownership: an instance serves the
//! aggregates of exactly the partitions assigned to it.
//!
//! - **Revoke** (before the partitions leave this member): the shards stop taking commands,
//!   drain their actors, write their snapshots and commit their checkpoints — all before the
//!   rebalance callback returns, so the next owner starts from a complete log and snapshots.
//!   In the transactional mode the log then gives the partitions up
//!   ([`KafkaLog::release_partition`]).
//! - **Assign** (after the partitions arrive): in the transactional mode the log first waits
//!   until every transaction of the previous owner that touched the partition has ended
//!   ([`KafkaLog::acquire_partition`]); then the snapshot cache is refreshed (another
//!   instance may have written snapshots meanwhile) and the shards recover from the
//!   partition checkpoint — all assigned partitions at once, not one after another. The
//!   consumer is paused on them: it exists for membership, not to read events.
//! - **Who owns what.** Every member's `client.id` is its endpoint. Every few seconds each
//!   instance asks the group coordinator for the group's members and their assignments
//!   (DescribeGroups) and records, for each partition it does not own, the endpoint of the
//!   member it is assigned to, so a `NotOwner` error names where the partition is served.
//!   Nothing else is written anywhere: a member that dies drops out of the group after its
//!   session timeout, so an entry is never stale for longer.
//!
//! The protocol is `cooperative-sticky`: a rebalance moves only the partitions that change
//! owner, and the others keep serving throughout.
//!
//! Without transactions, a member that loses its group session (a long pause, a network
//! partition) is told so only when it next talks to the broker; until then it may still
//! append. After a pause of its own process it at least writes nothing on its own (no
//! snapshot, settling or checkpoint) for one session, the time the group takes to tell it
//! (`PauseGuard` in `pause.rs`). The transactional mode
//! ([`KafkaConfig::transactional`](crate::KafkaConfig)) fences such a zombie through this group (KIP-447): every transaction carries the group
//! metadata this member last had, which the group coordinator refuses once the group has
//! moved on, so the zombie's appends fail with [`StorageError::Fenced`] instead of reaching
//! the log.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::topic_partition_list::TopicPartitionList;
use tracing::{debug, info, warn};

use crate::error::{Error, StorageError};
use crate::log::kafka::KafkaLog;
use crate::runtime::Runtime;
use crate::shared::GroupMembership;

/// The group session: a member the coordinator has not heard from for this long loses its
/// partitions.
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the owners of other partitions are looked up again (DescribeGroups).
const OWNERS_REFRESH: Duration = Duration::from_secs(2);

/// Partition ownership through the consumer group of a [`KafkaLog`]'s app id, configured once
/// on the runtime with [`RuntimeBuilder::ownership`](crate::RuntimeBuilder::ownership):
///
/// ```no_run
/// # async fn demo() -> Result<(), keel::Error> {
/// use std::sync::Arc;
/// let log = Arc::new(keel::KafkaConfig::new("127.0.0.1:9092").app_id("inventory").open().await?);
/// let runtime = keel::Runtime::builder()
///     .ownership(keel::KafkaOwnership::new(log, "10.0.0.5:8080"))
///     .start()
///     .await?;
/// // … serve commands; the group decides which partitions this instance owns …
/// runtime.shutdown().await?; // leaves the group: partitions handed over, snapshots, commits
/// # Ok(()) }
/// ```
///
/// The runtime then uses the log as its backend and the log's app id as its own, starts with no
/// partitions, joins the group when it starts and leaves it in
/// [`Runtime::shutdown`](crate::Runtime::shutdown).
#[derive(Clone)]
pub struct KafkaOwnership {
    pub(crate) log: Arc<KafkaLog>,
    pub(crate) endpoint: String,
}

impl crate::runtime::RuntimeBuilder {
    /// Partition ownership through a Kafka consumer group: the runtime runs on the ownership's
    /// log, takes its app id, starts with no partitions, joins the group on start (the group
    /// assigns partitions from then on) and leaves it on [`Runtime::shutdown`]. Giving another
    /// backend, another app id or fixed partitions as well is an error at start.
    pub fn ownership(self, ownership: KafkaOwnership) -> Self {
        let backend: Arc<dyn crate::log::LogBackend> = ownership.log.clone();
        let app_id = ownership.log.config().app_id.clone();
        self.ownership_plan(crate::runtime::OwnershipPlan {
            backend,
            app_id,
            join: Box::new(move |runtime: &Runtime| {
                let membership: Box<dyn GroupMembership> =
                    Box::new(Membership::join(runtime, &ownership)?);
                Ok(membership)
            }),
        })
    }
}

impl KafkaOwnership {
    /// Ownership through `log`'s consumer group. `endpoint` is how other instances reach this
    /// one: its group member's `client.id`, and what their `NotOwner` errors name.
    pub fn new(log: Arc<KafkaLog>, endpoint: impl Into<String>) -> Self {
        KafkaOwnership {
            log,
            endpoint: endpoint.into(),
        }
    }

    /// This instance's endpoint.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

/// This instance's membership in its application's consumer group: the thread that polls the
/// group member. Held by the runtime; [`Membership::leave`] ends it.
pub(crate) struct Membership {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct OwnershipContext {
    runtime: Runtime,
    log: Arc<KafkaLog>,
    tokio: tokio::runtime::Handle,
}

impl ClientContext for OwnershipContext {}

fn partitions_of(list: &TopicPartitionList) -> Vec<u32> {
    list.elements()
        .iter()
        .filter_map(|e| u32::try_from(e.partition()).ok())
        .collect()
}

impl ConsumerContext for OwnershipContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) if consumer.assignment_lost() => {
                // The session expired: the group has already given these partitions to other
                // members, who may be writing them. Writing a snapshot or committing a
                // checkpoint now could overwrite theirs, so stop at once, as a crash would.
                let partitions = partitions_of(list);
                warn!(
                    ?partitions,
                    "partitions lost (group session expired); stopping them without snapshots or commits"
                );
                self.tokio.block_on(async {
                    self.runtime.lose(&partitions).await;
                    for &partition in &partitions {
                        if let Err(e) = self.log.release_partition(partition).await {
                            warn!(partition, error = %e, "cannot release the partition's producer");
                        }
                    }
                });
            }
            Rebalance::Revoke(list) => {
                let partitions = partitions_of(list);
                info!(?partitions, "partitions revoked; handing them over");
                // Blocks the consumer's poll thread (never a tokio worker) until every actor
                // of these partitions has snapshotted and stopped; then, in the transactional
                // mode, their producers commit and stop.
                self.tokio.block_on(async {
                    self.runtime.revoke_partitions(&partitions, None).await;
                    let released = partitions.iter().map(|&partition| async move {
                        if let Err(e) = self.log.release_partition(partition).await {
                            warn!(partition, error = %e, "cannot release the partition's producer");
                        }
                    });
                    futures::future::join_all(released).await;
                });
            }
            Rebalance::Error(e) => warn!(error = %e, "consumer group rebalance failed"),
            Rebalance::Assign(_) => {}
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let partitions = partitions_of(list);
            if partitions.is_empty() {
                return;
            }
            // Transactions from now on carry the new generation.
            self.log.set_group_metadata(consumer.group_metadata());
            // Membership only: nothing is read through this consumer.
            if let Err(e) = consumer.pause(list) {
                warn!(error = %e, "cannot pause the membership consumer");
            }
            info!(?partitions, "partitions assigned; recovering them");
            // All partitions at once, each on its own with a few retries: one that cannot be
            // prepared must not leave the others unserved.
            let served: Vec<u32> = self.tokio.block_on(async {
                let prepared = partitions.iter().map(|&partition| async move {
                    let mut attempt = 0u32;
                    loop {
                        match self.prepare(partition).await {
                            Ok(()) => return Some(partition),
                            Err(e) if attempt < 3 => {
                                attempt += 1;
                                warn!(partition, error = %e, attempt, "cannot prepare an assigned partition; retrying");
                                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                            }
                            Err(e) => {
                                warn!(partition, error = %e, "cannot serve an assigned partition until the next rebalance");
                                return None;
                            }
                        }
                    }
                });
                futures::future::join_all(prepared)
                    .await
                    .into_iter()
                    .flatten()
                    .collect()
            });
            if served.is_empty() {
                return;
            }
            if let Err(e) = self.tokio.block_on(self.runtime.assign_partitions(&served)) {
                warn!(partitions = ?served, error = %e, "cannot serve the assigned partitions");
            }
        }
    }
}

impl OwnershipContext {
    /// Fences the previous owner (transactional mode) and refreshes the snapshot cache.
    async fn prepare(&self, partition: u32) -> Result<(), StorageError> {
        self.log.acquire_partition(partition).await?;
        self.log.refresh_snapshots(partition).await
    }
}

impl Membership {
    /// Joins the consumer group of `ownership`'s log. `runtime` was started on that log with
    /// no partitions; the group decides which it serves from now on.
    pub(crate) fn join(runtime: &Runtime, ownership: &KafkaOwnership) -> Result<Membership, Error> {
        let log = ownership.log.clone();
        let endpoint = ownership.endpoint.clone();
        let config = log.config();
        let bootstrap = config.bootstrap_servers.clone();
        let group = config.app_id.clone();
        log.join_group(&endpoint);
        runtime.guard_pauses(SESSION_TIMEOUT);
        // The log's client settings (brokers, timeouts, reconnects, the user's properties),
        // with the endpoint as client id: other members find it in the group's description.
        let mut client = log.client_config("member");
        client
            .set("client.id", &endpoint)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set(
                "session.timeout.ms",
                SESSION_TIMEOUT.as_millis().to_string(),
            )
            .set("heartbeat.interval.ms", "1000")
            .set("max.poll.interval.ms", "300000")
            .set("auto.offset.reset", "latest");
        let context = OwnershipContext {
            runtime: runtime.clone(),
            log: log.clone(),
            tokio: tokio::runtime::Handle::current(),
        };
        let consumer: BaseConsumer<OwnershipContext> =
            client.create_with_context(context).map_err(|e| {
                StorageError::io(format!("kafka {bootstrap}: joining group {group}"), e)
            })?;
        consumer.subscribe(&[log.events_topic()]).map_err(|e| {
            StorageError::io(
                format!("kafka {bootstrap}: subscribing to {}", log.events_topic()),
                e,
            )
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            let runtime = runtime.clone();
            let log = log.clone();
            let group_name = group.clone();
            std::thread::Builder::new()
                .name(format!("keel-ownership-{group}"))
                .spawn(move || membership_loop(consumer, log, group_name, stop, runtime))
                .map_err(|e| Error::Spawn {
                    what: "the consumer group member".into(),
                    reason: e.to_string(),
                })?
        };
        info!(%endpoint, "joined the application's consumer group");
        Ok(Membership {
            stop,
            thread: Some(thread),
        })
    }

    /// Leaves the group gracefully: this instance's partitions are revoked (snapshots written,
    /// checkpoints committed) and the group rebalances them to the other members.
    pub(crate) async fn leave(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            // The membership thread blocks on the runtime while it revokes: wait for it off
            // the async workers.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl GroupMembership for Membership {
    fn leave(self: Box<Self>) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(Membership::leave(*self))
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn membership_loop(
    consumer: BaseConsumer<OwnershipContext>,
    log: Arc<KafkaLog>,
    group: String,
    stop: Arc<AtomicBool>,
    runtime: Runtime,
) {
    let mut last_refresh: Option<Instant> = None;
    while !stop.load(Ordering::SeqCst) {
        if let Some(Err(e)) = consumer.poll(Duration::from_millis(100)) {
            warn!(error = %e, "consumer group member");
        }
        // The member's generation moves with every rebalance, whether or not this member's
        // partitions changed.
        if log.config().transactional {
            log.set_group_metadata(consumer.group_metadata());
        }
        if last_refresh.is_none_or(|t| t.elapsed() >= OWNERS_REFRESH) {
            last_refresh = Some(Instant::now());
            refresh_owners(&consumer, &group, log.events_topic(), &runtime);
        }
    }
    // Leaving: unsubscribing revokes every partition through the callbacks above.
    consumer.unsubscribe();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let _ = consumer.poll(Duration::from_millis(100));
        let assigned = consumer.assignment().map(|a| a.count()).unwrap_or_default();
        if assigned == 0 && runtime.owned_partitions().is_empty() {
            break;
        }
    }
    log.set_group_metadata(None);
    info!("left the application's consumer group");
}

/// Records, for every partition this instance does not own, the endpoint (`client.id`) of the
/// group member it is assigned to, as the group coordinator describes the group.
fn refresh_owners(
    consumer: &BaseConsumer<OwnershipContext>,
    group: &str,
    topic: &str,
    runtime: &Runtime,
) {
    let groups = match consumer.fetch_group_list(Some(group), Duration::from_secs(2)) {
        Ok(groups) => groups,
        Err(e) => {
            // Best effort: NotOwner then names the owner last seen, or none.
            debug!(error = %e, "cannot describe the consumer group");
            return;
        }
    };
    let owned = runtime.owned_partitions();
    for info in groups.groups().iter().filter(|g| g.name() == group) {
        for member in info.members() {
            let Some(bytes) = member.assignment() else {
                continue;
            };
            let partitions = match assigned_partitions(bytes, topic) {
                Ok(partitions) => partitions,
                Err(e) => {
                    warn!(member = member.id(), error = %e, "cannot read a group member's assignment");
                    continue;
                }
            };
            for partition in partitions {
                if !owned.contains(&partition) {
                    runtime.record_owner(partition, member.client_id());
                }
            }
        }
    }
}

/// The partitions of `topic` in a consumer-protocol assignment (Kafka's
/// `ConsumerProtocolAssignment`, the same layout in every version: `int16` version, an
/// `int32`-counted array of (`int16`-length topic name, `int32`-counted array of `int32`
/// partitions), then user data).
fn assigned_partitions(bytes: &[u8], topic: &str) -> Result<Vec<u32>, String> {
    struct Reader<'a>(&'a [u8]);
    impl Reader<'_> {
        fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
            let Some((head, rest)) = self.0.split_first_chunk::<N>() else {
                return Err(format!(
                    "truncated assignment ({} bytes left, {N} needed)",
                    self.0.len()
                ));
            };
            self.0 = rest;
            Ok(*head)
        }
        fn count(&mut self) -> Result<usize, String> {
            let n = i32::from_be_bytes(self.take()?);
            usize::try_from(n.max(0)).map_err(|e| e.to_string())
        }
    }
    let mut r = Reader(bytes);
    let _version = i16::from_be_bytes(r.take()?);
    let mut partitions = Vec::new();
    for _ in 0..r.count()? {
        let len = usize::try_from(i16::from_be_bytes(r.take()?).max(0)).unwrap_or_default();
        if r.0.len() < len {
            return Err("truncated topic name".into());
        }
        let (name, rest) = r.0.split_at(len);
        r.0 = rest;
        let same = name == topic.as_bytes();
        for _ in 0..r.count()? {
            let partition = i32::from_be_bytes(r.take()?);
            if same && let Ok(partition) = u32::try_from(partition) {
                partitions.push(partition);
            }
        }
    }
    Ok(partitions)
}

#[cfg(test)]
mod tests {
    use super::assigned_partitions;

    fn assignment(topics: &[(&str, &[i32])]) -> Vec<u8> {
        let mut bytes = 3i16.to_be_bytes().to_vec();
        bytes.extend((topics.len() as i32).to_be_bytes());
        for (name, partitions) in topics {
            bytes.extend((name.len() as i16).to_be_bytes());
            bytes.extend(name.as_bytes());
            bytes.extend((partitions.len() as i32).to_be_bytes());
            for p in *partitions {
                bytes.extend(p.to_be_bytes());
            }
        }
        bytes.extend((-1i32).to_be_bytes()); // no user data
        bytes
    }

    #[test]
    fn reads_the_partitions_of_the_events_topic() {
        let bytes = assignment(&[("other", &[0, 1]), ("app.events", &[2, 5, 7])]);
        assert_eq!(assigned_partitions(&bytes, "app.events"), Ok(vec![2, 5, 7]));
        assert_eq!(assigned_partitions(&bytes, "none"), Ok(vec![]));
        let empty = assignment(&[]);
        assert_eq!(assigned_partitions(&empty, "app.events"), Ok(vec![]));
    }

    #[test]
    fn a_truncated_assignment_is_an_error() {
        let bytes = assignment(&[("app.events", &[2, 5, 7])]);
        for cut in [1, 5, 9, bytes.len() - 6] {
            assert!(
                assigned_partitions(&bytes[..cut], "app.events").is_err(),
                "cut at {cut}"
            );
        }
    }
}
