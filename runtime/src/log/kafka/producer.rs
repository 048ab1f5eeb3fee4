//! The append path: the idempotent producer (replaced when it fails fatally), handing records
//! to it and waiting for the broker's acknowledgement, and in the transactional mode the
//! transactional producer.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;

use super::clients::producer_client_config;
use rdkafka::consumer::Consumer;
use rdkafka::topic_partition_list::TopicPartitionList;

use super::checkpoints::coordinator_unready;
use super::transactions::{Holding, TxnAppend, TxnProducer, TxnSettings, offer};
use super::{KafkaLog, Transactions, join_failed};
use crate::error::StorageError;
use crate::log::{LogBackend, Offset};

impl KafkaLog {
    /// Starts the transactional producer unless one is running and not fenced: `init_transactions`
    /// fences every earlier producer with the same transactional id. `partition` is the one
    /// being acquired, for errors.
    pub(super) async fn ensure_producer(
        &self,
        txn: &Transactions,
        partition: u32,
    ) -> Result<(), StorageError> {
        let mut producer = txn.producer.write().await;
        if let Some(running) = &*producer
            && !running.stopped()
        {
            return Ok(());
        }
        if let Some(fenced) = producer.take() {
            join_producer(fenced).await;
        }
        let member = txn.member();
        let transactional_id = match &member {
            Some(endpoint) => format!("{}-{endpoint}", self.config.app_id),
            None => self.config.app_id.clone(),
        };
        let client = producer_client_config(&self.config, Some(&transactional_id));
        let settings = TxnSettings {
            transactional_id: transactional_id.clone(),
            events_topic: self.events_topic.clone(),
            grouped: member.is_some(),
            commit_interval: self.config.commit_interval,
            timeout: self
                .config
                .delivery_timeout
                .min(self.config.transaction_timeout),
            describe: format!("kafka {}", self.config.bootstrap_servers),
        };
        let shared = txn.shared.clone();
        let started = Instant::now();
        let context = || {
            self.at(
                "starting the producer for",
                &self.events_topic,
                partition,
                None,
            )
        };
        let fresh =
            tokio::task::spawn_blocking(move || TxnProducer::start(client, settings, shared))
                .await
                .map_err(|e| StorageError::io(context(), e))?
                .map_err(|e| match e {
                    StorageError::Fenced { detail, .. } => {
                        StorageError::Fenced { partition, detail }
                    }
                    other => other,
                })?;
        tracing::info!(
            transactional_id,
            latency_ms = started.elapsed().as_millis() as u64,
            "kafka transactional producer initialised; earlier producers with its id are fenced"
        );
        *producer = Some(fresh);
        Ok(())
    }

    /// Appends `records` to `topic`/`partition` in the producer's next transaction; resolves
    /// to the first record's offset once that transaction committed.
    pub(super) async fn append_transactional(
        &self,
        txn: &Transactions,
        topic: &str,
        partition: u32,
        records: Vec<(String, Vec<u8>)>,
    ) -> Result<Offset, StorageError> {
        let fenced = |detail: String| StorageError::Fenced { partition, detail };
        match txn.shared.holding(partition) {
            Holding::Held => {}
            Holding::Unclaimed => self.acquire_partition(partition).await?,
            Holding::Released => {
                return Err(fenced(format!(
                    "{}: this instance released the partition",
                    self.at("appending to", topic, partition, None)
                )));
            }
        }
        let (reply, committed) = tokio::sync::oneshot::channel();
        let mut append = TxnAppend {
            partition,
            topic: topic.to_owned(),
            records,
            reply,
        };
        // A producer that failed (not fenced), or that could not be started the last time
        // (none is running), is replaced, at most twice for one append.
        let mut replaced = 0;
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(StorageError::Closed(self.describe()));
            }
            let producer = txn.producer.read().await;
            if let Some(running) = &*producer {
                if let Some(detail) = running.fenced() {
                    return Err(fenced(detail));
                }
                if !running.stopped() {
                    match running.send(append) {
                        Ok(()) => break,
                        // It stopped meanwhile.
                        Err(refused) => append = refused,
                    }
                }
            }
            drop(producer);
            if replaced == 2 {
                return Err(StorageError::io(
                    self.at("appending to", topic, partition, None),
                    std::io::Error::other(
                        "the transactional producer stopped twice; the append is not written",
                    ),
                ));
            }
            replaced += 1;
            self.ensure_producer(txn, partition).await?;
        }
        committed.await.unwrap_or_else(|_| {
            Err(if self.closed.load(Ordering::Acquire) {
                StorageError::Closed(self.describe())
            } else {
                // The producer stopped with the append queued: it was never sent.
                StorageError::io(
                    self.at("appending to", topic, partition, None),
                    std::io::Error::other("the transactional producer stopped before sending it"),
                )
            })
        })
    }

    /// Waits until no open transaction holds a group offset for `partition` in the
    /// application's consumer group: reads that offset `require_stable` (the group consumer
    /// is `read_committed`), which the group coordinator answers only once every such
    /// transaction has committed or aborted.
    pub(super) async fn await_stable_group_offset(
        &self,
        partition: u32,
    ) -> Result<(), StorageError> {
        let group = self.config.app_id.clone();
        let context = || {
            format!(
                "{} (waiting for the transactions of its previous owner to end, group {group})",
                self.at("acquiring", &self.events_topic, partition, None)
            )
        };
        let consumer = self.group_consumer(&group)?;
        let mut wanted = TopicPartitionList::new();
        wanted.add_partition(&self.events_topic, partition as i32);
        let timeout = self.config.transaction_timeout + self.config.request_timeout;
        let started = Instant::now();
        self.retrying(coordinator_unready, || {
            let consumer = consumer.clone();
            let wanted = wanted.clone();
            async move {
                tokio::task::spawn_blocking(move || consumer.committed_offsets(wanted, timeout))
                    .await
                    .map_err(join_failed)
            }
        })
        .await
        .map_err(|e| StorageError::io(context(), e))?;
        tracing::debug!(
            partition,
            waited_ms = started.elapsed().as_millis() as u64,
            "no open transaction of an earlier owner holds the partition"
        );
        Ok(())
    }

    /// Hands one record to the producer; waits (up to the delivery timeout) while the
    /// producer's queue is full. Resolves to the future of the broker's acknowledgement.
    pub(super) async fn enqueue(
        &self,
        producer: &FutureProducer,
        topic: &str,
        partition: u32,
        key: &str,
        value: &[u8],
    ) -> Result<DeliveryFuture, StorageError> {
        let started = Instant::now();
        loop {
            match offer(
                producer,
                topic,
                partition,
                key,
                value,
                started,
                self.config.delivery_timeout,
            ) {
                Ok(Some(delivery)) => return Ok(delivery),
                // The producer is at its buffering limit; its queue drains as batches are
                // acknowledged.
                Ok(None) => tokio::time::sleep(Duration::from_millis(1)).await,
                Err(e) => {
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
    pub(super) fn producer(&self) -> FutureProducer {
        self.producer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// After a failed delivery: when `failed` has hit a fatal error it will never deliver
    /// again, so a new producer (with a new producer id) takes its place.
    pub(super) fn replace_if_fatal(&self, failed: &FutureProducer) {
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
    pub(super) async fn delivered(
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

    pub(super) fn kafka_error(
        &self,
        context: String,
        partition: u32,
        e: KafkaError,
    ) -> StorageError {
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
}

/// Stops a transactional producer and waits (off the async workers) until its thread ended.
pub(super) async fn join_producer(producer: TxnProducer) {
    let thread = producer.stop();
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
}
