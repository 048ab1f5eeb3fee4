//! [`KafkaOwnership`]: partition ownership through a Kafka consumer group.
//!
//! Every instance of an application joins the consumer group named by its app id, subscribed
//! to the events topic. The group's assignment *is* the ownership: an instance serves the
//! aggregates of exactly the partitions assigned to it.
//!
//! - **Revoke** (before the partitions leave this member): the shards stop taking commands,
//!   drain their actors, write their snapshots and commit their checkpoints — all before the
//!   rebalance callback returns, so the next owner starts from a complete log and snapshots.
//!   In the transactional mode the partitions' producers then commit and stop
//!   ([`KafkaLog::release_partition`]).
//! - **Assign** (after the partitions arrive): in the transactional mode the partition's
//!   transactional producer is created first, fencing the previous owner
//!   ([`KafkaLog::acquire_partition`]); then the snapshot cache is refreshed (another
//!   instance may have written snapshots meanwhile) and the shards recover from the
//!   partition checkpoint — all assigned partitions at once, not one after another. The
//!   consumer is paused on them: it exists for membership, not to read events.
//! - **Who owns what.** After recovering a partition, the new owner writes its endpoint to the
//!   compacted topic `{prefix}.owners` (key = partition); every instance reads it every few
//!   seconds, so a `NotOwner` error names where the partition is served. (The group's own
//!   member metadata would be the natural place, but tansu serves neither ListGroups nor
//!   DescribeGroups, and drops offset-commit metadata.)
//!
//! The protocol is `cooperative-sticky`: a rebalance moves only the partitions that change
//! owner, and the others keep serving throughout.
//!
//! Without transactions, a member that loses its group session (a long pause, a network
//! partition) is told so only when it next talks to the broker; until then it may still
//! append. The transactional mode ([`KafkaConfig::transactional`](crate::KafkaConfig))
//! fences such a zombie: the new owner's producer takes the partition's transactional id, and
//! the zombie's appends fail with [`StorageError::Fenced`] instead of reaching the log.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::topic_partition_list::TopicPartitionList;
use tracing::{info, warn};

use crate::error::{Error, StorageError};
use crate::log::kafka::KafkaLog;
use crate::runtime::Runtime;

/// How often the owners of other partitions are looked up again.
const OWNERS_REFRESH: Duration = Duration::from_secs(2);

/// Membership of this instance in its application's consumer group. Dropping it without
/// [`KafkaOwnership::leave`] leaves the group abruptly (the partitions move after the
/// session timeout).
pub struct KafkaOwnership {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    endpoint: String,
}

struct OwnershipContext {
    runtime: Runtime,
    log: Arc<KafkaLog>,
    tokio: tokio::runtime::Handle,
    endpoint: String,
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
                    self.runtime.revoke(&partitions, None).await;
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
            let published = self.tokio.block_on(async {
                self.runtime.assign(&served).await?;
                self.log
                    .publish_owner(&served, &self.endpoint)
                    .await
                    .map_err(Error::from)
            });
            if let Err(e) = published {
                warn!(partitions = ?served, error = %e, "cannot serve the assigned partitions, or cannot publish this instance as their owner");
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

impl KafkaOwnership {
    /// Joins the consumer group of `log`'s app id. `runtime` must have been started on `log`
    /// with no partitions (`RuntimeBuilder::owned_partitions(vec![])`); the group decides
    /// which it serves from now on. `endpoint` is how other instances can reach this one,
    /// reported in their `NotOwner` errors.
    pub fn join(
        runtime: &Runtime,
        log: Arc<KafkaLog>,
        endpoint: impl Into<String>,
    ) -> Result<KafkaOwnership, Error> {
        let endpoint = endpoint.into();
        let config = log.config();
        let bootstrap = config.bootstrap_servers.clone();
        let group = config.app_id.clone();
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", &group)
            .set("client.id", &endpoint)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .set("max.poll.interval.ms", "300000")
            .set("auto.offset.reset", "latest");
        for (key, value) in &config.client_properties {
            client.set(key, value);
        }
        let context = OwnershipContext {
            runtime: runtime.clone(),
            log: log.clone(),
            tokio: tokio::runtime::Handle::current(),
            endpoint: endpoint.clone(),
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
            let tokio = tokio::runtime::Handle::current();
            std::thread::Builder::new()
                .name(format!("keel-ownership-{group}"))
                .spawn(move || membership_loop(consumer, log, tokio, stop, runtime))
                .map_err(|e| Error::Spawn {
                    what: "the consumer group member".into(),
                    reason: e.to_string(),
                })?
        };
        info!(%endpoint, "joined the application's consumer group");
        Ok(KafkaOwnership {
            stop,
            thread: Some(thread),
            endpoint,
        })
    }

    /// This instance's endpoint.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Leaves the group gracefully: this instance's partitions are revoked (snapshots written,
    /// checkpoints committed) and the group rebalances them to the other members.
    pub async fn leave(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            // The membership thread blocks on the runtime while it revokes: wait for it off
            // the async workers.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for KafkaOwnership {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn membership_loop(
    consumer: BaseConsumer<OwnershipContext>,
    log: Arc<KafkaLog>,
    tokio: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
    runtime: Runtime,
) {
    let mut last_refresh: Option<Instant> = None;
    while !stop.load(Ordering::SeqCst) {
        if let Some(Err(e)) = consumer.poll(Duration::from_millis(100)) {
            warn!(error = %e, "consumer group member");
        }
        if last_refresh.is_none_or(|t| t.elapsed() >= OWNERS_REFRESH) {
            last_refresh = Some(Instant::now());
            refresh_owners(&log, &runtime, &tokio);
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
    info!("left the application's consumer group");
}

/// Records, for every partition this instance does not own, the endpoint its owner published.
fn refresh_owners(log: &KafkaLog, runtime: &Runtime, tokio: &tokio::runtime::Handle) {
    let Ok(owners) = tokio.block_on(log.owners()) else {
        return; // best effort: NotOwner then names no owner
    };
    let owned = runtime.owned_partitions();
    for (partition, endpoint) in owners {
        if !owned.contains(&partition) {
            runtime.set_owner(partition, endpoint);
        }
    }
}
