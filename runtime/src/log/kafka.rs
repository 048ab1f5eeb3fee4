//! [`KafkaLog`]: the log in Kafka topics, through rdkafka (librdkafka).
//!
//! # Topics
//! - `{prefix}.events`: the events, keyed by aggregate key, one partition per
//!   [`partition_for`](crate::partition_for) value.
//! - `{prefix}.snapshots`: compacted (`cleanup.policy=compact`), co-partitioned with the events.
//! - checkpoints are the committed offsets of consumer groups on the events topic.
//!
//! Both topics are created with the admin API when the log opens; existing topics must have
//! the configured partition count.
//!
//! # Guarantees
//! - **Durability.** An append resolves once the broker acknowledged every record with
//!   `acks=all`: the records are on every in-sync replica. The producer is idempotent
//!   (`enable.idempotence=true`), so its internal retries neither duplicate nor reorder
//!   records.
//! - **Consecutive offsets.** The records of one append are handed to the producer together,
//!   while no other append to that partition can interleave, so they get consecutive offsets
//!   (checked on every append against the acknowledged offsets).
//! - **Group commit.** Appends from many callers within the linger window
//!   ([`KafkaConfig::linger`]) travel in one produce request.
//! - **All-or-nothing** holds for the acknowledgement only: without transactions Kafka may keep
//!   the first records of an append whose later records failed, as any Kafka producer may.
//!   The caller gets an error and must treat the append as not done (a retry with the same
//!   command id detects it).
//! - `end_offset` is the partition's end by ListOffsets (`read_committed`: the last stable
//!   offset), and at least the end of this log's own acknowledged appends.
//! - **Nothing is skipped.** A read below a partition's log start (records deleted by
//!   retention or `DeleteRecords`) fails with [`StorageError::Corrupt`] naming the partition
//!   and offset; the events topic is created to keep records forever, and an existing one
//!   with finite retention is refused.
//!
//! # Transactional mode
//! With [`KafkaConfig::transactional`] the log fences a stale owner ("zombie") of a partition
//! (see `kafka/transactions.rs`):
//! - **One producer per owned partition**, `transactional.id = "{app_id}-{partition}"`, created
//!   by [`KafkaLog::acquire_partition`] (partition ownership calls it on assign; without
//!   ownership the first append to the partition does). Its `init_transactions` fences every
//!   older producer with the same id: their transactions are aborted and their later appends
//!   fail with [`StorageError::Fenced`] — never a success. A fenced partition stays fenced
//!   for this log until it is acquired again; the log never re-initialises it by itself,
//!   because that would fence the new owner back. [`KafkaLog::release_partition`] gives a
//!   partition up (later appends fail as fenced).
//! - **Durability and atomicity.** An append (events, or a snapshot) resolves once the
//!   transaction holding it committed: its records are on every in-sync replica and visible
//!   to `read_committed` readers, all of them or none. Events and snapshots of one partition
//!   share its transactions.
//! - **Group commit.** Appends to a partition arriving within [`KafkaConfig::commit_interval`]
//!   of the transaction's first one share that transaction. The blocking transactional calls
//!   run on the producer's own thread, never on the async workers.
//! - **Reads** are `read_committed`: records of open or aborted transactions are never
//!   returned. Offsets are not dense: every commit leaves a marker record, which readers skip.
//! - `end_offset` is the last stable offset (every committed record is below it): the
//!   `read_committed` ListOffsets answer of the partition leader, one round trip.
//! - Checkpoints are committed outside the transactions: they are only a recovery bound.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use rdkafka::ClientConfig;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use crate::error::{Error, StorageError};
use crate::log::{
    CheckpointStore, EventLog, LogBackend, LogRecord, Offset, SnapshotStore, StoredRecord,
};

mod config;
mod diagnose;
mod reader;
mod redact;
mod snapshots;
mod topics;
mod transactions;

pub use config::KafkaConfig;

use reader::{ReadLimits, ReaderPool};
use snapshots::PartitionSnapshots;
use transactions::{PartitionProducer, TxnAppend, TxnSettings};

/// How many snapshot records one step of reading the snapshots topic asks for.
const SNAPSHOT_READ_BATCH: usize = 1024;

/// A log backend on a Kafka cluster (or any broker speaking the Kafka protocol).
///
/// Open it with [`KafkaConfig::open`] or [`KafkaLog::open`]. Every instance of an application
/// opens the same topics; which instance writes which partition is decided above this type
/// (partition ownership).
pub struct KafkaLog {
    config: KafkaConfig,
    events_topic: String,
    snapshots_topic: String,
    /// The idempotent producer. Replaced when it fails fatally (librdkafka then refuses every
    /// further record), so the log recovers without a restart; a std lock because it is only
    /// held to clone or swap the handle.
    producer: std::sync::RwLock<FutureProducer>,
    /// Per events partition: held while an append hands its records to the producer, so the
    /// records of two appends never interleave.
    append_locks: Vec<tokio::sync::Mutex<()>>,
    /// Per events partition: the end of this log's own acknowledged appends.
    events_acked_end: Vec<AtomicU64>,
    /// Per snapshots partition: the end of this log's own acknowledged snapshot writes.
    snapshots_acked_end: Vec<AtomicU64>,
    /// Per snapshots partition: the cache, `None` until first loaded. A tokio mutex because a
    /// first load holds it while reading the topic.
    snapshots: Vec<tokio::sync::Mutex<Option<PartitionSnapshots>>>,
    readers: ReaderPool,
    /// One consumer per checkpoint group, used only to commit and fetch offsets.
    groups: Mutex<HashMap<String, Arc<BaseConsumer>>>,
    /// In the transactional mode, per events partition: its transactional producer, if this
    /// instance holds one. A tokio mutex because acquiring holds it while the producer
    /// initialises.
    transactions: Option<Vec<tokio::sync::Mutex<TxnSlot>>>,
    closed: AtomicBool,
}

/// What this instance holds of one partition in the transactional mode.
enum TxnSlot {
    /// Never acquired: the first append acquires it (a runtime without partition ownership
    /// owns every partition).
    Unclaimed,
    /// Acquired: appends go to this producer (until it is fenced).
    Owned(PartitionProducer),
    /// Released to another owner; appends fail as fenced until acquired again.
    Released,
}

impl KafkaLog {
    /// Connects to the brokers, creates the topics that do not exist (the snapshots topic
    /// compacted) and checks the partition count of those that do.
    ///
    /// Fails with [`Error::Config`] for an invalid configuration or a partition count that
    /// does not match an existing topic, and with [`Error::Storage`] when the brokers cannot
    /// be reached within the request timeout.
    pub async fn open(config: KafkaConfig) -> Result<KafkaLog, Error> {
        config.validate()?;
        let events_topic = format!("{}.events", config.prefix());
        let snapshots_topic = format!("{}.snapshots", config.prefix());
        let bootstrap = config.bootstrap_servers.clone();

        let timeout = config.request_timeout;
        let ensured = topics::ensure_topics(
            &base_client_config(&config, "admin"),
            &bootstrap,
            &topic_specs(&config, &events_topic, &snapshots_topic),
            timeout,
        )
        .await;
        if let Err(e) = ensured {
            return Err(diagnose::explain(e, &config).await);
        }

        let producer: FutureProducer =
            producer_client_config(&config, None)
                .create()
                .map_err(|e| {
                    StorageError::io(format!("kafka {bootstrap}: creating the producer"), e)
                })?;
        let partitions = config.partitions as usize;
        let log = KafkaLog {
            readers: ReaderPool::new(reader_client_config(&config)),
            events_topic,
            snapshots_topic,
            producer: std::sync::RwLock::new(producer),
            append_locks: (0..partitions)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            events_acked_end: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            snapshots_acked_end: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            snapshots: (0..partitions)
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            groups: Mutex::new(HashMap::new()),
            transactions: config.transactional.then(|| {
                (0..partitions)
                    .map(|_| tokio::sync::Mutex::new(TxnSlot::Unclaimed))
                    .collect()
            }),
            closed: AtomicBool::new(false),
            config,
        };
        tracing::info!(
            bootstrap = %log.config.bootstrap_servers,
            events = %log.events_topic,
            snapshots = %log.snapshots_topic,
            partitions = log.config.partitions,
            transactional = log.config.transactional,
            "kafka log open"
        );
        Ok(log)
    }

    /// The configuration the log was opened with.
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    /// The events topic, `{prefix}.events`.
    pub fn events_topic(&self) -> &str {
        &self.events_topic
    }

    /// The snapshots topic, `{prefix}.snapshots`.
    pub fn snapshots_topic(&self) -> &str {
        &self.snapshots_topic
    }

    /// Reads the snapshots another instance wrote to `partition` since this log last read
    /// them. Call it when this instance (re)gains a partition; until a partition's snapshots
    /// are first loaded there is nothing to refresh.
    pub async fn refresh_snapshots(&self, partition: u32) -> Result<(), StorageError> {
        self.check_partition(partition)?;
        let mut cache = self.snapshots[partition as usize].lock().await;
        if let Some(cached) = cache.as_mut() {
            self.catch_up_snapshots(partition, cached).await?;
        }
        Ok(())
    }

    /// Takes `partition` over for this instance in the transactional mode: creates its
    /// transactional producer (`transactional.id = "{app_id}-{partition}"`), which fences the
    /// producer of any previous owner. Partition ownership calls it when a partition is
    /// assigned, before recovering it; without ownership the first append to a partition
    /// acquires it. Acquiring a partition this instance holds is a no-op, unless its producer
    /// was fenced: then a new one takes over (ownership assigned the partition back).
    /// Does nothing outside the transactional mode.
    pub async fn acquire_partition(&self, partition: u32) -> Result<(), StorageError> {
        self.check_partition(partition)?;
        let Some(slots) = &self.transactions else {
            return Ok(());
        };
        let mut slot = slots[partition as usize].lock().await;
        if let TxnSlot::Owned(producer) = &*slot
            && producer.fenced().is_none()
        {
            return Ok(());
        }
        if let TxnSlot::Owned(fenced) = std::mem::replace(&mut *slot, TxnSlot::Released) {
            join_producer(fenced).await;
        }
        *slot = TxnSlot::Owned(self.start_producer(partition).await?);
        Ok(())
    }

    /// Gives `partition` up in the transactional mode: its producer finishes its open
    /// transaction and stops; later appends to the partition fail with
    /// [`StorageError::Fenced`] until it is acquired again. Partition ownership calls it after
    /// the partition's actors have stopped. Does nothing outside the transactional mode.
    pub async fn release_partition(&self, partition: u32) -> Result<(), StorageError> {
        self.check_partition(partition)?;
        let Some(slots) = &self.transactions else {
            return Ok(());
        };
        let mut slot = slots[partition as usize].lock().await;
        if let TxnSlot::Owned(producer) = std::mem::replace(&mut *slot, TxnSlot::Released) {
            join_producer(producer).await;
        }
        Ok(())
    }

    /// Creates and initialises the transactional producer of `partition`.
    async fn start_producer(&self, partition: u32) -> Result<PartitionProducer, StorageError> {
        let transactional_id = format!("{}-{partition}", self.config.app_id);
        let client = producer_client_config(&self.config, Some(&transactional_id));
        let settings = TxnSettings {
            partition,
            transactional_id,
            commit_interval: self.config.commit_interval,
            timeout: self.config.delivery_timeout,
            describe: format!("kafka {}", self.config.bootstrap_servers),
        };
        let started = Instant::now();
        let producer =
            tokio::task::spawn_blocking(move || PartitionProducer::start(client, settings))
                .await
                .map_err(|e| {
                    StorageError::io(
                        self.at(
                            "starting the producer of",
                            &self.events_topic,
                            partition,
                            None,
                        ),
                        e,
                    )
                })??;
        tracing::info!(
            partition,
            latency_ms = started.elapsed().as_millis() as u64,
            "kafka transactional producer initialised; earlier owners are fenced"
        );
        Ok(producer)
    }

    /// Appends `records` to `topic`/`partition` in the partition's next transaction; resolves
    /// to the first record's offset once that transaction committed.
    async fn append_transactional(
        &self,
        slots: &[tokio::sync::Mutex<TxnSlot>],
        topic: &str,
        partition: u32,
        records: Vec<(String, Vec<u8>)>,
    ) -> Result<Offset, StorageError> {
        let fenced = |detail: String| StorageError::Fenced { partition, detail };
        let (reply, committed) = tokio::sync::oneshot::channel();
        {
            let mut slot = slots[partition as usize].lock().await;
            if let TxnSlot::Unclaimed = &*slot {
                *slot = TxnSlot::Owned(self.start_producer(partition).await?);
            }
            let producer = match &*slot {
                TxnSlot::Owned(producer) => producer,
                _ => {
                    return Err(fenced(format!(
                        "{}: this instance released the partition",
                        self.at("appending to", topic, partition, None)
                    )));
                }
            };
            if let Some(detail) = producer.fenced() {
                return Err(fenced(detail));
            }
            let append = TxnAppend {
                topic: topic.to_owned(),
                records,
                reply,
            };
            if producer.send(append).is_err() {
                return Err(match producer.fenced() {
                    Some(detail) => fenced(detail),
                    None => StorageError::Closed(self.describe()),
                });
            }
        }
        committed
            .await
            .map_err(|_| StorageError::Closed(self.describe()))?
    }

    /// The settings of a client in `role` that talks to this log's brokers: the brokers, a
    /// client id, timeouts and reconnect backoff, and the user's own properties.
    pub(crate) fn client_config(&self, role: &str) -> ClientConfig {
        base_client_config(&self.config, role)
    }

    /// "kafka HOST:PORT: WHAT topic T partition P[ offset O]", for errors and logs.
    fn at(&self, what: &str, topic: &str, partition: u32, offset: Option<Offset>) -> String {
        let mut context = format!(
            "kafka {}: {what} topic {topic} partition {partition}",
            self.config.bootstrap_servers
        );
        if let Some(offset) = offset {
            context.push_str(&format!(" offset {offset}"));
        }
        context
    }

    fn check_partition(&self, partition: u32) -> Result<(), StorageError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StorageError::Closed(self.describe()));
        }
        if partition >= self.config.partitions {
            return Err(StorageError::Corrupt {
                context: format!(
                    "kafka {}: topic {} partition {partition}",
                    self.config.bootstrap_servers, self.events_topic
                ),
                detail: format!("no such partition (count {})", self.config.partitions),
            });
        }
        Ok(())
    }

    /// Hands one record to the producer; waits (up to the delivery timeout) while the
    /// producer's queue is full. Resolves to the future of the broker's acknowledgement.
    async fn enqueue(
        &self,
        producer: &FutureProducer,
        topic: &str,
        partition: u32,
        key: &str,
        value: &[u8],
    ) -> Result<DeliveryFuture, StorageError> {
        let started = Instant::now();
        loop {
            let record = FutureRecord::to(topic)
                .partition(partition as i32)
                .key(key)
                .payload(value);
            match producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if started.elapsed() < self.config.delivery_timeout =>
                {
                    // The producer is at its buffering limit; its queue drains as batches are
                    // acknowledged.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => {
                    return Err(self.kafka_error(
                        self.at("producing to", topic, partition, None),
                        partition,
                        e,
                    ));
                }
            }
        }
    }

    /// The current producer (a cheap handle clone).
    fn producer(&self) -> FutureProducer {
        self.producer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// After a failed delivery: when `failed` has hit a fatal error it will never deliver
    /// again, so a new producer (with a new producer id) takes its place.
    fn replace_if_fatal(&self, failed: &FutureProducer) {
        let Some((code, reason)) = failed.client().fatal_error() else {
            return;
        };
        let mut current = self.producer.write().unwrap_or_else(|e| e.into_inner());
        if current.client().native_ptr() != failed.client().native_ptr() {
            return; // another append already replaced it
        }
        match producer_client_config(&self.config, None).create::<FutureProducer>() {
            Ok(fresh) => {
                tracing::warn!(
                    bootstrap = %self.config.bootstrap_servers,
                    ?code,
                    reason,
                    "kafka producer failed fatally; replaced it"
                );
                let old = std::mem::replace(&mut *current, fresh);
                // Dropping a producer purges and briefly flushes it: not on this thread.
                tokio::task::spawn_blocking(move || drop(old));
            }
            Err(e) => tracing::error!(
                bootstrap = %self.config.bootstrap_servers,
                error = %e,
                "kafka producer failed fatally and a new one cannot be created"
            ),
        }
    }

    /// Awaits one acknowledgement; the offset the record got.
    async fn delivered(
        &self,
        producer: &FutureProducer,
        delivery: DeliveryFuture,
        topic: &str,
        partition: u32,
        what: impl Fn() -> String,
    ) -> Result<Offset, StorageError> {
        match delivery.await {
            Ok(Ok(delivery)) if delivery.offset >= 0 => Ok(delivery.offset as Offset),
            // Stored, but the broker's answer carried no offset (seen after a broker
            // restart): the record is in the log at an unknown place. Report a failure; the
            // runtime then looks for the record before it serves the aggregate again.
            Ok(Ok(delivery)) => Err(StorageError::io(
                format!(
                    "{} ({})",
                    self.at("producing to", topic, partition, None),
                    what()
                ),
                std::io::Error::other(format!(
                    "acknowledged without an offset ({})",
                    delivery.offset
                )),
            )),
            Ok(Err((e, _))) => {
                self.replace_if_fatal(producer);
                Err(self.kafka_error(
                    format!(
                        "{} ({})",
                        self.at("producing to", topic, partition, None),
                        what()
                    ),
                    partition,
                    e,
                ))
            }
            Err(_canceled) => Err(StorageError::Closed(self.describe())),
        }
    }

    fn kafka_error(&self, context: String, partition: u32, e: KafkaError) -> StorageError {
        match e.rdkafka_error_code() {
            Some(RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch) => {
                StorageError::Fenced {
                    partition,
                    detail: format!("{context}: {e}"),
                }
            }
            _ => StorageError::io(context, e),
        }
    }

    /// The end of `topic`/`partition` by ListOffsets, asked of the partition leader. librdkafka
    /// asks with its `isolation.level`, `read_committed` unless set otherwise, so in the
    /// transactional mode this is the last stable offset: every committed record is below it,
    /// and no record of an open transaction is.
    fn high_watermark<'a>(
        &'a self,
        topic: &'a str,
        partition: u32,
    ) -> BoxFuture<'a, Result<Offset, StorageError>> {
        Box::pin(async move {
            let timeout = self.config.request_timeout;
            let context = || self.at("fetching the end offset of", topic, partition, None);
            let deadline = Instant::now() + timeout;
            let mut pause = Duration::from_millis(20);
            loop {
                let producer = self.producer();
                let lookup = topic.to_owned();
                let answer = tokio::task::spawn_blocking(move || {
                    producer
                        .client()
                        .fetch_watermarks(&lookup, partition as i32, timeout)
                })
                .await
                .map_err(join_failed)
                .and_then(|r| r);
                match answer {
                    Ok((_low, high)) => return Ok(high.max(0) as Offset),
                    // A partition just created, or whose leader just moved, has no leader
                    // known to this client yet: ask again shortly.
                    Err(e) if leader_unknown(&e) && Instant::now() + pause < deadline => {
                        tracing::debug!(at = %context(), error = %e, "no partition leader yet; retrying");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_millis(500));
                    }
                    Err(e) => return Err(StorageError::io(context(), e)),
                }
            }
        })
    }

    async fn read_topic(
        &self,
        topic: &str,
        partition: u32,
        from: Offset,
        max: usize,
        wait: Duration,
        known_end: Offset,
    ) -> Result<Vec<StoredRecord>, StorageError> {
        let mut reader = self.readers.take(topic, partition, from, false, || {
            self.at("reading", topic, partition, Some(from))
        })?;
        let limits = ReadLimits {
            from,
            max,
            wait,
            fetch_timeout: self.config.request_timeout,
            known_end,
            query_end: self.high_watermark(topic, partition),
        };
        let records = reader
            .read(partition, limits, |offset| {
                self.at("reading", topic, partition, Some(offset))
            })
            .await?;
        self.readers.give_back(topic, partition, reader);
        Ok(records)
    }

    /// Reads `partition` of the snapshots topic from where `cached` stopped to its current end.
    async fn catch_up_snapshots(
        &self,
        partition: u32,
        cached: &mut PartitionSnapshots,
    ) -> Result<(), StorageError> {
        let topic = &self.snapshots_topic;
        let acked_end = self.snapshots_acked_end[partition as usize].load(Ordering::Acquire);
        let end = self.high_watermark(topic, partition).await?.max(acked_end);
        while cached.read_to < end {
            let records = self
                .read_topic(
                    topic,
                    partition,
                    cached.read_to,
                    SNAPSHOT_READ_BATCH,
                    self.config.request_timeout,
                    end,
                )
                .await?;
            if records.is_empty() && self.transactions.is_some() {
                // Offsets without a committed record (commit markers) end the partition; the
                // reader returns nothing once every committed record below `end` was read.
                break;
            }
            if records.is_empty() {
                return Err(StorageError::io(
                    self.at(
                        "loading snapshots from",
                        topic,
                        partition,
                        Some(cached.read_to),
                    ),
                    std::io::Error::other(format!(
                        "no records within {:?}, though the partition ends at offset {end}",
                        self.config.request_timeout
                    )),
                ));
            }
            for record in records {
                cached.read_to = record.position.offset + 1;
                cached.record(record.key, record.position.offset, record.value);
            }
        }
        Ok(())
    }

    /// Runs a group coordinator request, again while the coordinator is moving or loading (a
    /// fresh cluster creates its offsets topic on the first group request; a rebalance of
    /// that topic moves coordinators), up to the request timeout.
    async fn with_coordinator<T, F, Fut>(&self, mut request: F) -> Result<T, KafkaError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Result<T, KafkaError>, KafkaError>>,
    {
        let deadline = Instant::now() + self.config.request_timeout;
        let mut pause = Duration::from_millis(50);
        loop {
            match request().await.and_then(|r| r) {
                Err(e) if coordinator_unready(&e) && Instant::now() + pause < deadline => {
                    tracing::debug!(error = %e, "kafka group coordinator not ready; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                other => return other,
            }
        }
    }

    /// The consumer that commits and fetches offsets of `group`.
    fn group_consumer(&self, group: &str) -> Result<Arc<BaseConsumer>, StorageError> {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(consumer) = groups.get(group) {
            return Ok(consumer.clone());
        }
        let mut config = base_client_config(&self.config, group);
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        let consumer: BaseConsumer = config.create().map_err(|e| {
            StorageError::io(
                format!(
                    "kafka {}: creating a consumer for group {group}",
                    self.config.bootstrap_servers
                ),
                e,
            )
        })?;
        let consumer = Arc::new(consumer);
        groups.insert(group.to_owned(), consumer.clone());
        Ok(consumer)
    }
}

/// Whether `e` says the group coordinator is not there yet (moving, loading, not elected).
fn coordinator_unready(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::CoordinatorNotAvailable
                | RDKafkaErrorCode::CoordinatorLoadInProgress
        )
    )
}

/// Whether `e` says the partition's leader is not known (yet) or has just moved.
fn leader_unknown(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::FencedLeaderEpoch
                | RDKafkaErrorCode::UnknownLeaderEpoch
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
        )
    )
}

/// A blocking Kafka call whose task did not finish (it panicked or was cancelled).
fn join_failed(e: tokio::task::JoinError) -> KafkaError {
    tracing::error!(error = %e, "a blocking kafka call did not finish");
    KafkaError::Canceled
}

/// Room for the record batch framing and key around the largest snapshot.
const SNAPSHOT_FRAMING_BYTES: usize = 64 << 10;

/// The largest record (batch) keel's producers send and its snapshots topic accepts.
fn max_message_bytes(config: &KafkaConfig) -> usize {
    config.max_snapshot_bytes + SNAPSHOT_FRAMING_BYTES
}

/// The topics keel needs, with the settings it creates them with and relies on.
fn topic_specs(config: &KafkaConfig, events: &str, snapshots: &str) -> Vec<topics::TopicSpec> {
    use topics::Required::{AtLeast, Equals, Nothing};
    // Compaction only runs on closed segments: hourly segments keep a first snapshot load
    // from reading a week of superseded snapshots.
    let compacted = |why: &'static str| {
        vec![
            (
                "cleanup.policy",
                "compact".to_owned(),
                Equals("compact"),
                why,
            ),
            ("segment.ms", "3600000".to_owned(), Nothing, ""),
            ("min.cleanable.dirty.ratio", "0.1".to_owned(), Nothing, ""),
        ]
    };
    let mut snapshot_configs = compacted(
        "a snapshot stands for every event before the recovery checkpoint and must never \
         expire",
    );
    let max_message = max_message_bytes(config);
    snapshot_configs.push((
        "max.message.bytes",
        max_message.to_string(),
        AtLeast(max_message as u64),
        "snapshots up to KafkaConfig::max_snapshot_bytes must fit",
    ));
    let forever = "keel keeps every event forever (aggregates are rebuilt from them)";
    vec![
        topics::TopicSpec {
            name: events.to_owned(),
            partitions: config.partitions,
            replication_factor: config.replication_factor,
            configs: vec![
                (
                    "cleanup.policy",
                    "delete".to_owned(),
                    Equals("delete"),
                    forever,
                ),
                ("retention.ms", "-1".to_owned(), Equals("-1"), forever),
                ("retention.bytes", "-1".to_owned(), Equals("-1"), forever),
            ],
        },
        topics::TopicSpec {
            name: snapshots.to_owned(),
            partitions: config.partitions,
            replication_factor: config.replication_factor,
            configs: snapshot_configs,
        },
    ]
}

/// Properties every client gets: the brokers, a client id, and the user's own properties.
fn base_client_config(config: &KafkaConfig, role: &str) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.bootstrap_servers)
        .set("client.id", format!("{}-keel-{role}", config.app_id))
        .set(
            "socket.timeout.ms",
            config.request_timeout.as_millis().to_string(),
        )
        // librdkafka backs off up to 10 s between reconnects by default; a restarted broker
        // should be in use again within a second.
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "1000");
    for (key, value) in &config.client_properties {
        client.set(key, value);
    }
    client
}

/// The one place producers are configured. `transactional_id` is for the transactional mode
/// (one producer per owned partition); the plain log uses one idempotent producer.
fn producer_client_config(config: &KafkaConfig, transactional_id: Option<&str>) -> ClientConfig {
    let mut client = base_client_config(config, "producer");
    client
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", config.linger.as_millis().to_string())
        .set(
            "request.timeout.ms",
            config.request_timeout.as_millis().to_string(),
        )
        .set(
            "delivery.timeout.ms",
            config.delivery_timeout.as_millis().to_string(),
        )
        // Snapshots up to the configured limit; the snapshots topic accepts as much.
        .set("message.max.bytes", max_message_bytes(config).to_string())
        // keel chooses every partition itself; this only matters for records without one.
        .set("partitioner", "murmur2_random");
    if let Some(id) = transactional_id {
        client.set("transactional.id", id);
    }
    client
}

/// Stops a transactional producer and waits (off the async workers) until its thread ended.
async fn join_producer(producer: PartitionProducer) {
    let thread = producer.stop();
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
}

/// Consumers that read one assigned partition: no group, no offset commits.
fn reader_client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = base_client_config(config, "reader");
    client
        // librdkafka refuses `assign` without a group id, though an assign-only consumer
        // never joins the group nor commits to it.
        .set("group.id", format!("{}.keel-reader", config.app_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // A read below the partition's log start (records deleted) or past its end is an
        // error, never a silent jump to another offset.
        .set("auto.offset.reset", "error")
        // The longest a fetch waits at the broker for new records. Kafka answers a parked
        // fetch as soon as records arrive, but a reader moved to another offset waits for its
        // parked fetch to return first, so keep it short.
        .set("fetch.wait.max.ms", "100")
        // Prefetch per consumer; one consumer per partition being read.
        .set("queued.max.messages.kbytes", "8192");
    if config.transactional {
        client
            .set("isolation.level", "read_committed")
            // A read_committed consumer skips commit markers and aborted records silently;
            // its end-of-partition events are how a reader knows it has read everything
            // committed (see `reader.rs`).
            .set("enable.partition.eof", "true");
    }
    client
}

impl EventLog for KafkaLog {
    fn partition_count(&self) -> u32 {
        self.config.partitions
    }

    fn append(
        &self,
        partition: u32,
        records: Vec<LogRecord>,
    ) -> BoxFuture<'_, Result<Offset, StorageError>> {
        Box::pin(async move {
            self.check_partition(partition)?;
            if records.is_empty() {
                return self.end_offset(partition).await;
            }
            let topic = &self.events_topic;
            if let Some(slots) = &self.transactions {
                let count = records.len() as Offset;
                let records = records.into_iter().map(|r| (r.key, r.value)).collect();
                let first = self
                    .append_transactional(slots, topic, partition, records)
                    .await?;
                self.events_acked_end[partition as usize]
                    .fetch_max(first + count, Ordering::AcqRel);
                return Ok(first);
            }
            let started = Instant::now();
            let producer = self.producer();
            let deliveries = {
                let _exclusive = self.append_locks[partition as usize].lock().await;
                let mut deliveries = Vec::with_capacity(records.len());
                for record in &records {
                    deliveries.push(
                        self.enqueue(&producer, topic, partition, &record.key, &record.value)
                            .await?,
                    );
                }
                deliveries
            };
            let count = deliveries.len();
            let mut first = 0;
            for (i, delivery) in deliveries.into_iter().enumerate() {
                let offset = self
                    .delivered(&producer, delivery, topic, partition, || {
                        format!("record {} of {count}", i + 1)
                    })
                    .await?;
                if i == 0 {
                    first = offset;
                } else if offset != first + i as Offset {
                    return Err(StorageError::Corrupt {
                        context: self.at("appending to", topic, partition, Some(offset)),
                        detail: format!(
                            "record {} of {count} got offset {offset}, expected {}",
                            i + 1,
                            first + i as Offset
                        ),
                    });
                }
            }
            let end = first + count as Offset;
            self.events_acked_end[partition as usize].fetch_max(end, Ordering::AcqRel);
            tracing::trace!(
                partition,
                first,
                count,
                latency_us = started.elapsed().as_micros() as u64,
                "kafka append acknowledged"
            );
            Ok(first)
        })
    }

    fn read(
        &self,
        partition: u32,
        from: Offset,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<StoredRecord>, StorageError>> {
        Box::pin(async move {
            self.check_partition(partition)?;
            let known_end = self.events_acked_end[partition as usize].load(Ordering::Acquire);
            self.read_topic(&self.events_topic, partition, from, max, wait, known_end)
                .await
        })
    }

    fn end_offset(&self, partition: u32) -> BoxFuture<'_, Result<Offset, StorageError>> {
        Box::pin(async move {
            self.check_partition(partition)?;
            let known_end = &self.events_acked_end[partition as usize];
            let end = self.high_watermark(&self.events_topic, partition).await?;
            Ok(end.max(known_end.load(Ordering::Acquire)))
        })
    }
}

impl SnapshotStore for KafkaLog {
    fn save_snapshot(
        &self,
        partition: u32,
        key: String,
        value: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            self.check_partition(partition)?;
            let topic = &self.snapshots_topic;
            let size = key.len() + value.len();
            if size > self.config.max_snapshot_bytes {
                return Err(StorageError::TooLarge {
                    context: format!(
                        "{} (snapshot of {key})",
                        self.at("writing to", topic, partition, None)
                    ),
                    size,
                    limit: self.config.max_snapshot_bytes,
                    setting: "KafkaConfig::max_snapshot_bytes",
                });
            }
            let offset = match &self.transactions {
                Some(slots) => {
                    let records = vec![(key.clone(), value.clone())];
                    self.append_transactional(slots, topic, partition, records)
                        .await?
                }
                None => {
                    let producer = self.producer();
                    let delivery = self
                        .enqueue(&producer, topic, partition, &key, &value)
                        .await?;
                    self.delivered(&producer, delivery, topic, partition, || {
                        format!("snapshot of {key}")
                    })
                    .await?
                }
            };
            self.snapshots_acked_end[partition as usize].fetch_max(offset + 1, Ordering::AcqRel);
            if let Some(cached) = self.snapshots[partition as usize].lock().await.as_mut() {
                cached.record(key, offset, value);
            }
            Ok(())
        })
    }

    fn load_snapshot(
        &self,
        partition: u32,
        key: String,
    ) -> BoxFuture<'_, Result<Option<Vec<u8>>, StorageError>> {
        Box::pin(async move {
            self.check_partition(partition)?;
            let mut cache = self.snapshots[partition as usize].lock().await;
            let cached = match cache.as_mut() {
                Some(cached) => cached,
                None => {
                    let mut loaded = PartitionSnapshots::default();
                    self.catch_up_snapshots(partition, &mut loaded).await?;
                    cache.insert(loaded)
                }
            };
            Ok(cached.latest.get(&key).map(|(_, value)| value.clone()))
        })
    }
}

impl CheckpointStore for KafkaLog {
    fn load_checkpoint(
        &self,
        group: String,
        partition: u32,
    ) -> BoxFuture<'_, Result<Option<Offset>, StorageError>> {
        Box::pin(async move {
            self.check_partition(partition)?;
            let context = || {
                format!(
                    "{} for group {group}",
                    self.at(
                        "loading the checkpoint of",
                        &self.events_topic,
                        partition,
                        None
                    )
                )
            };
            let consumer = self.group_consumer(&group)?;
            let mut wanted = TopicPartitionList::new();
            wanted.add_partition(&self.events_topic, partition as i32);
            let timeout = self.config.request_timeout;
            let committed = self
                .with_coordinator(|| {
                    let consumer = consumer.clone();
                    let wanted = wanted.clone();
                    async move {
                        tokio::task::spawn_blocking(move || {
                            consumer.committed_offsets(wanted, timeout)
                        })
                        .await
                        .map_err(join_failed)
                    }
                })
                .await
                .map_err(|e| StorageError::io(context(), e))?;
            let Some(element) = committed.find_partition(&self.events_topic, partition as i32)
            else {
                return Ok(None);
            };
            element
                .error()
                .map_err(|e| StorageError::io(context(), e))?;
            Ok(match element.offset() {
                rdkafka::Offset::Offset(offset) if offset >= 0 => Some(offset as Offset),
                _ => None,
            })
        })
    }

    fn commit_checkpoint(
        &self,
        group: String,
        partition: u32,
        offset: Offset,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            self.check_partition(partition)?;
            let context = || {
                format!(
                    "{} for group {group}",
                    self.at(
                        "committing the checkpoint of",
                        &self.events_topic,
                        partition,
                        Some(offset)
                    )
                )
            };
            let consumer = self.group_consumer(&group)?;
            let mut commit = TopicPartitionList::new();
            commit
                .add_partition_offset(
                    &self.events_topic,
                    partition as i32,
                    rdkafka::Offset::Offset(offset as i64),
                )
                .map_err(|e| StorageError::io(context(), e))?;
            self.with_coordinator(|| {
                let consumer = consumer.clone();
                let commit = commit.clone();
                async move {
                    tokio::task::spawn_blocking(move || consumer.commit(&commit, CommitMode::Sync))
                        .await
                        .map_err(join_failed)
                }
            })
            .await
            .map_err(|e| StorageError::io(context(), e))?;
            Ok(())
        })
    }
}

impl LogBackend for KafkaLog {
    fn describe(&self) -> String {
        format!("kafka:{}", self.config.bootstrap_servers)
    }

    fn close(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            if self.closed.swap(true, Ordering::AcqRel) {
                return Ok(());
            }
            // Transactional producers commit what they hold, then stop.
            for slot in self.transactions.iter().flatten() {
                let mut slot = slot.lock().await;
                if let TxnSlot::Owned(producer) = std::mem::replace(&mut *slot, TxnSlot::Released) {
                    join_producer(producer).await;
                }
            }
            let producer = self.producer();
            let timeout = self.config.delivery_timeout;
            tokio::task::spawn_blocking(move || producer.flush(timeout))
                .await
                .map_err(|e| StorageError::io(format!("{}: flushing", self.describe()), e))?
                .map_err(|e| StorageError::io(format!("{}: flushing", self.describe()), e))
        })
    }
}
