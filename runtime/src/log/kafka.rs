//! [`KafkaLog`]: the log in Kafka topics, through rdkafka (librdkafka).
//!
//! # Topics
//! - `{prefix}.events`: the events, keyed by aggregate key, one partition per
//!   [`partition_for`](crate::log::partition_for) value.
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
//! - **One transactional producer per log.** Under partition ownership its transactional id
//!   is `"{app_id}-{endpoint}"`, and every transaction carries the offsets of the partitions
//!   this instance holds in the application's consumer group, with its group member's
//!   metadata (KIP-447): the group coordinator refuses them from a member the group has moved
//!   past, so a zombie's transactions abort before they hold a record, and
//!   [`KafkaLog::acquire_partition`] waits until every transaction of the previous owner that
//!   touched the partition has ended. Without ownership the transactional id is `app_id`,
//!   and a second log of the same application fences the first when it acquires a
//!   partition. Fenced appends fail with [`StorageError::Fenced`] — never a success. Without
//!   ownership a fenced producer stays fenced for this log until a partition is acquired
//!   again; the log never re-initialises it by itself, because that would fence the new
//!   holder back. A producer that failed fatally otherwise (seen after a whole-cluster
//!   restart: `INVALID_TXN_STATE`), and under ownership any failed one, is replaced by a new
//!   one on the next append: the group, not the producer epoch, fences there.
//!   [`KafkaLog::release_partition`] gives a partition up (later appends to it fail as
//!   fenced).
//! - **Durability and atomicity.** An append (events, or a snapshot) resolves once the
//!   transaction holding it committed: its records are on every in-sync replica and visible
//!   to `read_committed` readers, all of them or none.
//! - **Group commit.** Appends arriving within [`KafkaConfig::commit_interval`] of the
//!   transaction's first one share that transaction, whatever their partitions. The
//!   blocking transactional calls run on the producer's own thread, never on the async
//!   workers.
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
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};

use crate::error::{Error, StorageError};
use crate::log::{EventLog, LogBackend, LogRecord, Offset, StoredRecord};

mod checkpoints;
mod clients;
mod config;
mod diagnose;
mod producer;
mod reader;
mod redact;
mod snapshots;
mod topics;
mod transactions;

pub use config::KafkaConfig;

use clients::{base_client_config, producer_client_config, reader_client_config};
use producer::join_producer;
use reader::ReaderPool;
use snapshots::PartitionSnapshots;
use topics::topic_specs;
use transactions::{Holding, TxnProducer, TxnShared};

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
    events_acked_end: Arc<[AtomicU64]>,
    /// Per snapshots partition: the end of this log's own acknowledged snapshot writes.
    snapshots_acked_end: Vec<AtomicU64>,
    /// Per snapshots partition: the cache, `None` until first loaded. A tokio mutex because a
    /// first load holds it while reading the topic.
    snapshots: Vec<tokio::sync::Mutex<Option<PartitionSnapshots>>>,
    readers: ReaderPool,
    /// One consumer per checkpoint group, used only to commit and fetch offsets.
    groups: Mutex<HashMap<String, Arc<BaseConsumer>>>,
    /// The transactional mode's state; `None` outside it.
    transactions: Option<Transactions>,
    closed: AtomicBool,
}

/// What a log in the transactional mode holds.
struct Transactions {
    /// The partitions held, and the group member's metadata; shared with the producer.
    shared: Arc<TxnShared>,
    /// The producer, once started. Appends take the read lock; starting one the write lock.
    producer: tokio::sync::RwLock<Option<TxnProducer>>,
    /// The endpoint of this instance's member of the application's consumer group, once
    /// partition ownership joined it: transactions then carry group offsets.
    member: Mutex<Option<String>>,
}

impl Transactions {
    fn member(&self) -> Option<String> {
        self.member
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
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
        let events_acked_end: Arc<[AtomicU64]> =
            (0..partitions).map(|_| AtomicU64::new(0)).collect();
        let log = KafkaLog {
            readers: ReaderPool::new(reader_client_config(&config)),
            events_topic,
            snapshots_topic,
            producer: std::sync::RwLock::new(producer),
            append_locks: (0..partitions)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            events_acked_end: events_acked_end.clone(),
            snapshots_acked_end: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            snapshots: (0..partitions)
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            groups: Mutex::new(HashMap::new()),
            transactions: config.transactional.then(|| Transactions {
                shared: Arc::new(TxnShared::new(events_acked_end)),
                producer: tokio::sync::RwLock::new(None),
                member: Mutex::new(None),
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

    /// Takes `partition` over for this instance in the transactional mode. Under partition
    /// ownership (which calls it when a partition is assigned, before recovering it) it waits
    /// until every transaction of a previous owner that touched the partition has ended
    /// (committed or aborted; at most [`KafkaConfig::transaction_timeout`] after a crashed
    /// owner's last one began). Without ownership it starts this log's producer, which fences
    /// the producer of any other log of the application; the first append to a partition
    /// acquires it. A fenced producer is replaced by a new one here (the partition was
    /// assigned back). Does nothing outside the transactional mode.
    pub async fn acquire_partition(&self, partition: u32) -> Result<(), StorageError> {
        self.check_partition(partition)?;
        let Some(txn) = &self.transactions else {
            return Ok(());
        };
        self.ensure_producer(txn, partition).await?;
        if txn.member().is_some() {
            self.await_stable_group_offset(partition).await?;
        }
        txn.shared.set_holding(partition, Holding::Held);
        Ok(())
    }

    /// Gives `partition` up in the transactional mode: waits until every append to it already
    /// handed to the producer has been answered; later appends to it fail with
    /// [`StorageError::Fenced`] until it is acquired again. Partition ownership calls it after
    /// the partition's actors have stopped. Does nothing outside the transactional mode.
    pub async fn release_partition(&self, partition: u32) -> Result<(), StorageError> {
        self.check_partition(partition)?;
        let Some(txn) = &self.transactions else {
            return Ok(());
        };
        txn.shared.set_holding(partition, Holding::Released);
        let barrier = txn.producer.read().await.as_ref().map(TxnProducer::barrier);
        if let Some(barrier) = barrier {
            let _ = barrier.await;
        }
        Ok(())
    }

    /// Makes transactions carry the offsets of the held partitions in the application's
    /// consumer group, whose member at `endpoint` this instance is. Partition ownership calls
    /// it before it joins the group.
    pub(crate) fn join_group(&self, endpoint: &str) {
        if let Some(txn) = &self.transactions {
            *txn.member.lock().unwrap_or_else(|e| e.into_inner()) = Some(endpoint.to_owned());
        }
    }

    /// Records the current metadata (member id, generation) of this instance's group member,
    /// which transactions carry from now on.
    pub(crate) fn set_group_metadata(
        &self,
        metadata: Option<rdkafka::consumer::ConsumerGroupMetadata>,
    ) {
        if let Some(txn) = &self.transactions {
            txn.shared.set_group(metadata);
        }
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

    /// Runs a Kafka request, again (pausing a little longer each time) while `passes` says its
    /// error is one that goes away by itself — a coordinator or partition leader not known
    /// yet — up to the request timeout.
    pub(super) async fn retrying<T, F, Fut>(
        &self,
        passes: fn(&KafkaError) -> bool,
        mut request: F,
    ) -> Result<T, KafkaError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Result<T, KafkaError>, KafkaError>>,
    {
        let deadline = Instant::now() + self.config.request_timeout;
        let mut pause = Duration::from_millis(20);
        loop {
            match request().await.and_then(|r| r) {
                Err(e) if passes(&e) && Instant::now() + pause < deadline => {
                    tracing::debug!(error = %e, "kafka request: retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                other => return other,
            }
        }
    }

    fn check_partition(&self, partition: u32) -> Result<(), StorageError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StorageError::Closed(self.describe()));
        }
        if partition >= self.config.partitions {
            return Err(StorageError::NoSuchPartition {
                context: format!(
                    "kafka {}: topic {}",
                    self.config.bootstrap_servers, self.events_topic
                ),
                partition,
                count: self.config.partitions,
            });
        }
        Ok(())
    }
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
            if let Some(txn) = &self.transactions {
                let count = records.len() as Offset;
                let records = records.into_iter().map(|r| (r.key, r.value)).collect();
                let first = self
                    .append_transactional(txn, topic, partition, records)
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

impl LogBackend for KafkaLog {
    fn describe(&self) -> String {
        format!("kafka:{}", self.config.bootstrap_servers)
    }

    fn remote_reads(&self) -> bool {
        true
    }

    fn close(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            if self.closed.swap(true, Ordering::AcqRel) {
                return Ok(());
            }
            // The transactional producer commits what it holds, then stops.
            if let Some(txn) = &self.transactions
                && let Some(producer) = txn.producer.write().await.take()
            {
                join_producer(producer).await;
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

/// A blocking Kafka call whose task did not finish (it panicked or was cancelled).
fn join_failed(e: tokio::task::JoinError) -> KafkaError {
    tracing::error!(error = %e, "a blocking kafka call did not finish");
    KafkaError::Canceled
}
