//! The transactional mode: one transactional producer per owned partition, which fences the
//! producer of any earlier owner of that partition.
//!
//! A [`PartitionProducer`] owns a producer with `transactional.id = "{app_id}-{partition}"`
//! on a thread of its own, because librdkafka's transactional calls (`init_transactions`,
//! `commit_transaction`, `abort_transaction`) block. Appends (events and snapshots of the
//! partition) are sent to that thread; it opens a transaction with the first one, produces
//! every append that arrives within the commit interval into it, commits, and only then
//! answers each append — with its offsets after a commit, with an error after a failure.
//!
//! Creating the producer calls `init_transactions`, which makes the broker bump the
//! producer epoch of that transactional id and abort the open transaction of the previous
//! holder: from then on the previous owner's produce requests and commits fail with
//! `PRODUCER_FENCED`. A fenced producer answers every pending and later append with
//! [`StorageError::Fenced`] and is never re-initialised by itself: re-initialising would fence
//! the new owner back. Only an explicit [`KafkaLog::acquire_partition`](crate::KafkaLog)
//! (partition ownership assigned the partition again) creates a new one.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::oneshot;

use crate::error::StorageError;
use crate::log::Offset;

/// One append handed to a partition's producer thread: records for one topic, all in the
/// producer's partition.
pub(super) struct TxnAppend {
    pub(super) topic: String,
    pub(super) records: Vec<(String, Vec<u8>)>,
    /// The offset of the first record, once the transaction holding them committed.
    pub(super) reply: oneshot::Sender<Result<Offset, StorageError>>,
}

/// How a partition's producer works.
pub(super) struct TxnSettings {
    pub(super) partition: u32,
    pub(super) transactional_id: String,
    /// How long a transaction stays open for more appends after its first one.
    pub(super) commit_interval: Duration,
    /// The limit for `init_transactions`, commits, aborts and a full producer queue.
    pub(super) timeout: Duration,
    /// Prefix of error contexts: `"kafka HOST:PORT"`.
    pub(super) describe: String,
}

/// The transactional producer of one partition, running on its own thread.
pub(super) struct PartitionProducer {
    sender: mpsc::Sender<TxnAppend>,
    thread: JoinHandle<()>,
    /// Set by the thread when it was fenced (and has stopped): why.
    fenced: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl PartitionProducer {
    /// Creates the producer and runs `init_transactions`, fencing any earlier producer with the
    /// same transactional id. Blocks: call it off the async workers.
    pub(super) fn start(
        config: ClientConfig,
        settings: TxnSettings,
    ) -> Result<PartitionProducer, StorageError> {
        let context = format!(
            "{}: initialising transactional producer {} for partition {}",
            settings.describe, settings.transactional_id, settings.partition
        );
        let producer: FutureProducer = config
            .create()
            .map_err(|e| StorageError::io(context.clone(), e))?;
        producer
            .init_transactions(settings.timeout)
            .map_err(|e| match classify(&e) {
                Failure::Fenced => StorageError::Fenced {
                    partition: settings.partition,
                    detail: format!("{context}: {e}"),
                },
                _ => StorageError::io(context.clone(), e),
            })?;
        let (sender, receiver) = mpsc::channel();
        let fenced = std::sync::Arc::new(std::sync::Mutex::new(None));
        let thread = {
            let fenced = fenced.clone();
            std::thread::Builder::new()
                .name(format!("keel-txn-{}", settings.partition))
                .spawn(move || run(producer, receiver, settings, fenced))
                .map_err(|e| StorageError::io(context, e))?
        };
        Ok(PartitionProducer {
            sender,
            thread,
            fenced,
        })
    }

    /// Queues an append; it is answered after its transaction committed or failed. `Err` gives
    /// the append back when the producer has stopped (fenced).
    pub(super) fn send(&self, append: TxnAppend) -> Result<(), TxnAppend> {
        self.sender.send(append).map_err(|e| e.0)
    }

    /// Why the producer was fenced, once it was.
    pub(super) fn fenced(&self) -> Option<String> {
        lock(&self.fenced).clone()
    }

    /// Stops taking appends; the open transaction (if any) still commits and is answered.
    /// Returns the thread to join (it ends after dropping the producer).
    pub(super) fn stop(self) -> JoinHandle<()> {
        drop(self.sender);
        self.thread
    }
}

/// What went wrong with a transactional call.
enum Failure {
    /// Another producer with the same transactional id took over; this one is done.
    Fenced,
    /// The transaction failed and must be aborted; the producer can go on.
    Abortable,
    /// Retrying the same call may succeed.
    Retriable,
}

fn classify(e: &KafkaError) -> Failure {
    if let KafkaError::Transaction(txn) = e {
        if txn.is_fatal() || fencing_code(txn.code()) {
            return Failure::Fenced;
        }
        if txn.is_retriable() && !txn.txn_requires_abort() {
            return Failure::Retriable;
        }
        // librdkafka reports a produce request refused with PRODUCER_FENCED as an abortable
        // error whose message names it; the producer is still fenced.
        if txn.string().contains("fences the current one") {
            return Failure::Fenced;
        }
        return Failure::Abortable;
    }
    match e.rdkafka_error_code() {
        Some(code) if fencing_code(code) => Failure::Fenced,
        _ => Failure::Abortable,
    }
}

fn fencing_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::InvalidProducerIdMapping
            | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
            | RDKafkaErrorCode::Fenced
    )
}

/// One append produced into the open transaction.
struct Pending {
    reply: oneshot::Sender<Result<Offset, StorageError>>,
    topic: String,
    deliveries: Vec<DeliveryFuture>,
}

/// The producer thread: transactions of batched appends until the sender is dropped or the
/// producer is fenced.
fn run(
    producer: FutureProducer,
    receiver: mpsc::Receiver<TxnAppend>,
    settings: TxnSettings,
    fenced: std::sync::Arc<std::sync::Mutex<Option<String>>>,
) {
    let partition = settings.partition;
    let at = |what: &str| {
        format!(
            "{}: {what} (transactional id {}, partition {partition})",
            settings.describe, settings.transactional_id
        )
    };
    let mut open = true;
    while open {
        let Ok(first) = receiver.recv() else { break };
        let started = Instant::now();
        let mut failure: Option<(Failure, String)> = None;
        if let Err(e) = producer.begin_transaction() {
            failure = Some((
                classify(&e),
                format!("{}: {e}", at("beginning a transaction")),
            ));
        }
        let mut pending = Vec::new();
        let mut produce = |append: TxnAppend, failure: &mut Option<(Failure, String)>| {
            let mut deliveries = Vec::with_capacity(append.records.len());
            if failure.is_none() {
                for (key, value) in &append.records {
                    match send(
                        &producer,
                        &append.topic,
                        partition,
                        key,
                        value,
                        settings.timeout,
                    ) {
                        Ok(delivery) => deliveries.push(delivery),
                        Err(e) => {
                            let what = at(&format!("producing to topic {}", append.topic));
                            *failure = Some((classify(&e), format!("{what}: {e}")));
                            break;
                        }
                    }
                }
            }
            pending.push(Pending {
                reply: append.reply,
                topic: append.topic,
                deliveries,
            });
        };
        produce(first, &mut failure);
        let deadline = started + settings.commit_interval;
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match receiver.recv_timeout(deadline - now) {
                Ok(append) => produce(append, &mut failure),
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if failure.is_none() {
            failure = commit(&producer, &settings, &at);
        }
        let count = pending.len();
        match failure {
            None => {
                for append in pending {
                    let result = offsets(append.deliveries, &append.topic, &at);
                    let _ = append.reply.send(result);
                }
                tracing::trace!(
                    partition,
                    appends = count,
                    latency_us = started.elapsed().as_micros() as u64,
                    "kafka transaction committed"
                );
            }
            Some((kind, detail)) => {
                // A delivery refused with PRODUCER_FENCED makes any failure a fencing.
                let fenced_delivery = pending.iter_mut().any(|p| {
                    p.deliveries.iter_mut().any(|d| {
                        matches!(
                            futures::FutureExt::now_or_never(d),
                            Some(Ok(Err((KafkaError::MessageProduction(code), _)))) if fencing_code(code)
                        )
                    })
                });
                let kind = if fenced_delivery {
                    Failure::Fenced
                } else {
                    kind
                };
                if let Failure::Fenced = kind {
                    tracing::error!(
                        partition,
                        detail,
                        "kafka producer fenced: another instance owns the partition now"
                    );
                    *lock(&fenced) = Some(detail.clone());
                    let error = StorageError::Fenced { partition, detail };
                    for append in pending {
                        let _ = append.reply.send(Err(error.clone()));
                    }
                    // Everything queued behind the failed transaction fails the same way.
                    while let Ok(append) = receiver.try_recv() {
                        let _ = append.reply.send(Err(error.clone()));
                    }
                    break;
                }
                tracing::warn!(partition, detail, "kafka transaction failed; aborting it");
                let error = StorageError::io(
                    at("committing a transaction"),
                    std::io::Error::other(detail),
                );
                let aborted = producer.abort_transaction(settings.timeout);
                for append in pending {
                    let _ = append.reply.send(Err(error.clone()));
                }
                if let Err(e) = aborted {
                    if let Failure::Fenced = classify(&e) {
                        let detail = format!("{}: {e}", at("aborting a transaction"));
                        *lock(&fenced) = Some(detail.clone());
                        let error = StorageError::Fenced { partition, detail };
                        while let Ok(append) = receiver.try_recv() {
                            let _ = append.reply.send(Err(error.clone()));
                        }
                        break;
                    }
                    tracing::warn!(partition, error = %e, "kafka transaction abort failed");
                }
            }
        }
    }
    // Dropping the producer purges and flushes it; this thread may block for that.
    drop(producer);
}

/// Commits the open transaction, retrying retriable failures until the timeout.
fn commit(
    producer: &FutureProducer,
    settings: &TxnSettings,
    at: &impl Fn(&str) -> String,
) -> Option<(Failure, String)> {
    let deadline = Instant::now() + settings.timeout;
    await_deliveries(producer, deadline);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match producer.commit_transaction(left) {
            Ok(()) => return None,
            Err(e) => match classify(&e) {
                Failure::Retriable if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                kind => return Some((kind, format!("{}: {e}", at("committing a transaction")))),
            },
        }
    }
}

/// Waits (until `deadline`) until the producer has nothing in flight: every record of the
/// transaction acknowledged and its delivery report served (by the producer's own polling
/// thread).
///
/// rdkafka's `commit_transaction` flushes first, and its flush, when a record is still in
/// flight, polls the producer for 100 ms in one go — the whole 100 ms, however soon the last
/// acknowledgement comes. Committing straight after the commit interval, while the last
/// records were still on their way, so cost 100 ms on nearly every transaction (seen: a
/// partition's transactions took 105 ms instead of the 5 ms interval plus a round trip).
/// With nothing in flight that flush returns at once.
fn await_deliveries(producer: &FutureProducer, deadline: Instant) {
    while producer.in_flight_count() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The first offset of one committed append, checking that its records are consecutive.
fn offsets(
    deliveries: Vec<DeliveryFuture>,
    topic: &str,
    at: &impl Fn(&str) -> String,
) -> Result<Offset, StorageError> {
    let count = deliveries.len();
    let mut first = 0;
    for (i, delivery) in deliveries.into_iter().enumerate() {
        // The commit waited for every delivery report; this does not block for long.
        let offset = match futures::executor::block_on(delivery) {
            Ok(Ok(delivery)) => delivery.offset as Offset,
            Ok(Err((e, _))) => {
                return Err(StorageError::io(
                    at(&format!("producing to topic {topic}")),
                    e,
                ));
            }
            Err(_canceled) => {
                return Err(StorageError::io(
                    at(&format!("producing to topic {topic}")),
                    std::io::Error::other("the producer dropped the delivery report"),
                ));
            }
        };
        if i == 0 {
            first = offset;
        } else if offset != first + i as Offset {
            return Err(StorageError::Corrupt {
                context: at(&format!("appending to topic {topic} at offset {offset}")),
                detail: format!(
                    "record {} of {count} got offset {offset}, expected {}",
                    i + 1,
                    first + i as Offset
                ),
            });
        }
    }
    Ok(first)
}

/// Hands one record to the producer, waiting while its queue is full.
fn send(
    producer: &FutureProducer,
    topic: &str,
    partition: u32,
    key: &str,
    value: &[u8],
    timeout: Duration,
) -> Result<DeliveryFuture, KafkaError> {
    let started = Instant::now();
    loop {
        match offer(producer, topic, partition, key, value, started, timeout)? {
            Some(delivery) => return Ok(delivery),
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Only an Option is replaced under this lock; a panic cannot leave it inconsistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Offers one record to `producer`: its delivery future, or `None` when the producer's queue
/// is full and `timeout` since `started` has not passed yet (the caller waits and offers it
/// again).
pub(super) fn offer(
    producer: &FutureProducer,
    topic: &str,
    partition: u32,
    key: &str,
    value: &[u8],
    started: Instant,
    timeout: Duration,
) -> Result<Option<DeliveryFuture>, KafkaError> {
    let record = FutureRecord::to(topic)
        .partition(partition as i32)
        .key(key)
        .payload(value);
    match producer.send_result(record) {
        Ok(delivery) => Ok(Some(delivery)),
        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
            if started.elapsed() < timeout =>
        {
            Ok(None)
        }
        Err((e, _)) => Err(e),
    }
}
