//! Checkpoints in Kafka: a checkpoint is the committed offset of a consumer group on the events
//! topic, committed and fetched through the group coordinator, outside the transactions.

use std::sync::Arc;

use futures::future::BoxFuture;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use super::clients::base_client_config;
use super::{KafkaLog, join_failed};
use crate::error::StorageError;
use crate::log::{CheckpointStore, Offset};

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
                .retrying(coordinator_unready, || {
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
            self.retrying(coordinator_unready, || {
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

impl KafkaLog {
    /// The consumer that commits and fetches offsets of `group`.
    pub(super) fn group_consumer(&self, group: &str) -> Result<Arc<BaseConsumer>, StorageError> {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(consumer) = groups.get(group) {
            return Ok(consumer.clone());
        }
        let mut config = base_client_config(&self.config, group);
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Offset fetches then ask for stable offsets (KIP-447): the group coordinator
            // answers only once no open transaction holds an offset of the partition.
            .set("isolation.level", "read_committed");
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

/// Whether `e` says the group coordinator is not there yet: a fresh cluster creates its offsets
/// topic on the first group request, and a rebalance of that topic moves coordinators.
pub(super) fn coordinator_unready(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::CoordinatorNotAvailable
                | RDKafkaErrorCode::CoordinatorLoadInProgress
        )
    )
}
