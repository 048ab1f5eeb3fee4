//! Reading one partition: consumers assigned to (topic, partition, offset) without group
//! management, kept in a small pool per partition.
//!
//! A librdkafka consumer prefetches in the background from its position, so a sequential
//! reader (a projection tailing a partition, a recovery reading to the end) should find its
//! next records already fetched. The pool hands a read the consumer that is already positioned
//! at its `from` offset when there is one, and only re-assigns (seeks) otherwise.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::Producer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, TopicPartitionList};

use super::{KafkaLog, join_failed};
use crate::error::StorageError;
use crate::log::{Offset, Position, StoredRecord};

/// Idle consumers kept per (topic, partition); more concurrent readers than this get a fresh
/// consumer that is dropped afterwards.
const IDLE_PER_PARTITION: usize = 2;

/// A consumer assigned to one partition.
pub(super) struct PartitionReader {
    consumer: StreamConsumer,
    /// The offset of the next record the consumer will deliver, when known.
    next: Option<Offset>,
    /// True until the consumer delivers a record after its last (re)assignment: it may not
    /// have fetched anything yet, so "nothing received" does not mean "nothing there".
    fresh: bool,
    /// Where the consumer last reached the end of the partition (its position at a
    /// partition-EOF event), while it has delivered nothing beyond. Only readers created with
    /// `enable.partition.eof=true` (the transactional mode) learn it. For a `read_committed`
    /// consumer this is the last stable offset: every committed record below it was delivered.
    /// Offsets without a record (commit markers, aborted records) are skipped silently, so
    /// this is what tells "nothing more" from "not fetched yet".
    caught_up_to: Option<Offset>,
}

/// The idle readers, by (topic, partition).
pub(super) struct ReaderPool {
    config: ClientConfig,
    idle: Mutex<HashMap<(String, u32), Vec<PartitionReader>>>,
}

impl ReaderPool {
    pub(super) fn new(config: ClientConfig) -> Self {
        ReaderPool {
            config,
            idle: Mutex::new(HashMap::new()),
        }
    }

    /// A reader of `topic`/`partition` positioned at `from`; `force_assign` assigns (seeks)
    /// even a reader already positioned there, so it reports the partition's end afresh.
    pub(super) fn take(
        &self,
        topic: &str,
        partition: u32,
        from: Offset,
        force_assign: bool,
        context: impl Fn() -> String,
    ) -> Result<PartitionReader, StorageError> {
        let reused = {
            let mut idle = lock(&self.idle);
            idle.get_mut(&(topic.to_owned(), partition))
                .and_then(
                    |readers| match readers.iter().position(|r| r.next == Some(from)) {
                        Some(i) => Some(readers.swap_remove(i)),
                        None => readers.pop(),
                    },
                )
        };
        let mut reader = match reused {
            Some(reader) => reader,
            None => PartitionReader {
                consumer: self.config.create().map_err(|e| {
                    StorageError::io(format!("{}: creating a consumer", context()), e)
                })?,
                next: None,
                fresh: true,
                caught_up_to: None,
            },
        };
        if reader.next != Some(from) || force_assign {
            let mut assignment = TopicPartitionList::new();
            assignment
                .add_partition_offset(
                    topic,
                    partition as i32,
                    rdkafka::Offset::Offset(from as i64),
                )
                .map_err(|e| StorageError::io(context(), e))?;
            reader
                .consumer
                .assign(&assignment)
                .map_err(|e| StorageError::io(format!("{}: assigning", context()), e))?;
            reader.next = Some(from);
            reader.fresh = true;
            reader.caught_up_to = None;
        }
        Ok(reader)
    }

    /// Returns a reader to the pool after a successful read.
    pub(super) fn give_back(&self, topic: &str, partition: u32, reader: PartitionReader) {
        let mut idle = lock(&self.idle);
        let readers = idle.entry((topic.to_owned(), partition)).or_default();
        if readers.len() < IDLE_PER_PARTITION {
            readers.push(reader);
        }
    }
}

/// How long a read may wait, and what it knows about the partition's end.
pub(super) struct ReadLimits<'a> {
    pub(super) from: Offset,
    pub(super) max: usize,
    /// The long-poll window: how long to wait for a first record when none is there.
    pub(super) wait: Duration,
    /// How long to keep waiting for records known to exist (below `known_end`) that the
    /// consumer has not fetched yet.
    pub(super) fetch_timeout: Duration,
    /// An end offset known without asking the broker (this log's own acknowledged appends).
    pub(super) known_end: Offset,
    /// Asks the broker for the end offset (lazily: it runs only when awaited), at most once,
    /// when nothing arrived within `wait` and no known end says records are there.
    pub(super) query_end: BoxFuture<'a, Result<Offset, StorageError>>,
}

impl PartitionReader {
    /// Reads up to `limits.max` records starting at `limits.from`.
    pub(super) async fn read(
        &mut self,
        partition: u32,
        mut limits: ReadLimits<'_>,
        context: impl Fn(Offset) -> String,
    ) -> Result<Vec<StoredRecord>, StorageError> {
        let from = limits.from;
        let mut records = Vec::new();
        if limits.max == 0 {
            return Ok(records);
        }
        let mut deadline = tokio::time::Instant::now() + limits.wait;
        let mut extended = false;
        let mut known_end = limits.known_end;
        loop {
            let received = if records.is_empty() {
                tokio::time::timeout_at(deadline, self.consumer.recv())
                    .await
                    .ok()
            } else {
                // Take what is already fetched, without waiting for more.
                self.consumer.recv().now_or_never()
            };
            match received {
                Some(Ok(message)) => {
                    self.fresh = false;
                    let offset = message.offset() as Offset;
                    self.next = Some(offset + 1);
                    if self.caught_up_to.is_some_and(|end| offset >= end) {
                        self.caught_up_to = None;
                    }
                    // After an out-of-range reset the consumer may deliver records before
                    // `from`; they were not asked for.
                    if offset < from {
                        continue;
                    }
                    let key = match message.key() {
                        None => String::new(),
                        Some(bytes) => std::str::from_utf8(bytes)
                            .map_err(|e| StorageError::Corrupt {
                                context: context(offset),
                                detail: format!("record key is not UTF-8: {e}"),
                            })?
                            .to_owned(),
                    };
                    records.push(StoredRecord {
                        position: Position { partition, offset },
                        key,
                        value: message.payload().unwrap_or_default().to_vec(),
                    });
                    if records.len() >= limits.max {
                        break;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    self.fresh = false;
                    self.caught_up_to = self.end_position();
                    if !records.is_empty() || (extended && self.caught_up(known_end)) {
                        break;
                    }
                }
                // librdkafka reports a lost broker connection to the consumer as well, and
                // goes on fetching from the partition's new leader: keep waiting.
                Some(Err(e)) if transient(&e) => {
                    tracing::debug!(at = %context(self.next.unwrap_or(from)), error = %e, "kafka reader: transient error");
                }
                Some(Err(e)) => {
                    let at = self.next.unwrap_or(from);
                    self.next = None;
                    return Err(read_error(context(at), e));
                }
                None if records.is_empty() && !extended => {
                    // Nothing arrived within the long-poll window. If records are known to be
                    // there, the consumer just has not fetched them yet: wait for them.
                    if self.caught_up(known_end) {
                        break;
                    }
                    // Nothing fetched does not mean nothing there: the consumer may not have
                    // fetched yet (freshly positioned) or its next fetch is under way. Ask the
                    // broker where the partition ends, once per read.
                    if self.fresh || known_end <= from {
                        self.fresh = false;
                        known_end = known_end.max((&mut limits.query_end).await?);
                    }
                    if known_end <= from {
                        break;
                    }
                    extended = true;
                    deadline = tokio::time::Instant::now() + limits.fetch_timeout;
                }
                None => break,
            }
        }
        if records.is_empty() && extended && !self.caught_up(known_end) {
            // Records are known to be there; returning nothing would read as "no more".
            return Err(StorageError::io(
                context(from),
                std::io::Error::other(format!(
                    "records below the end offset {known_end} were not fetched within {:?}",
                    limits.fetch_timeout
                )),
            ));
        }
        Ok(records)
    }

    /// Whether every committed record below `end` has been delivered (as far as known).
    fn caught_up(&self, end: Offset) -> bool {
        self.caught_up_to.is_some_and(|reached| reached >= end)
    }

    /// Where the consumer is when it reports the end of the partition: the offset after the
    /// last record or commit marker it went past (librdkafka moves the position over markers
    /// too). A consumer that went past nothing since it was assigned has no position yet; it
    /// is still where it was assigned.
    fn end_position(&self) -> Option<Offset> {
        let position = self.consumer.position().ok().and_then(|list| {
            let element = list.elements().into_iter().next()?;
            element
                .offset()
                .to_raw()
                .and_then(|o| Offset::try_from(o).ok())
        });
        position.or(self.next)
    }
}

/// Whether a consumer error is only news about connections or leadership, after which the
/// consumer carries on by itself.
fn transient(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::NetworkException
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::FencedLeaderEpoch
                | RDKafkaErrorCode::UnknownLeaderEpoch
                | RDKafkaErrorCode::NotCoordinator
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

/// A consumer error as a storage error; an offset out of range (the consumer's
/// `auto.offset.reset=error`) is damage, not a passing failure.
fn read_error(context: String, e: KafkaError) -> StorageError {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange) => {
            StorageError::Corrupt {
                context,
                detail: format!(
                    "the offset is out of the partition's range: below its log start (records \
                     deleted by retention or DeleteRecords) or past its end; keel never skips \
                     records ({e})"
                ),
            }
        }
        _ => StorageError::io(context, e),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Only plain map operations happen under this lock; a panic cannot leave it inconsistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl KafkaLog {
    /// The end of `topic`/`partition` by ListOffsets, asked of the partition leader. librdkafka
    /// asks with its `isolation.level`, `read_committed` unless set otherwise, so in the
    /// transactional mode this is the last stable offset: every committed record is below it,
    /// and no record of an open transaction is.
    pub(super) fn high_watermark<'a>(
        &'a self,
        topic: &'a str,
        partition: u32,
    ) -> BoxFuture<'a, Result<Offset, StorageError>> {
        Box::pin(async move {
            // A partition just created, or whose leader just moved, has no leader known to
            // this client yet: asked again shortly. So is one whose leader this client still
            // believes in after that broker died (a client that has not produced since learns
            // late, and ListOffsets does not refresh its metadata): each attempt gets a quarter
            // of the request timeout, and every attempt after the first fetches the topic's
            // metadata afresh first.
            let timeout = (self.config.request_timeout / 4).max(Duration::from_millis(500));
            let passes = |e: &KafkaError| {
                leader_unknown(e)
                    || e.rdkafka_error_code() == Some(RDKafkaErrorCode::OperationTimedOut)
            };
            let mut attempt = 0u32;
            let (_low, high) = self
                .retrying(passes, || {
                    attempt += 1;
                    let refresh = attempt > 1;
                    let producer = self.producer();
                    let lookup = topic.to_owned();
                    async move {
                        tokio::task::spawn_blocking(move || {
                            let client = producer.client();
                            if refresh {
                                // Best effort: the watermark query says what went wrong.
                                let _ = client.fetch_metadata(Some(&lookup), timeout);
                            }
                            client.fetch_watermarks(&lookup, partition as i32, timeout)
                        })
                        .await
                        .map_err(join_failed)
                    }
                })
                .await
                .map_err(|e| {
                    StorageError::io(
                        self.at("fetching the end offset of", topic, partition, None),
                        e,
                    )
                })?;
            Ok(high.max(0) as Offset)
        })
    }

    pub(super) async fn read_topic(
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
}
