//! The transactional mode: one transactional producer per log, whose transactions a stale
//! owner of a partition cannot commit.
//!
//! A [`TxnProducer`] owns a producer on a thread of its own, because librdkafka's
//! transactional calls (`init_transactions`, `send_offsets_to_transaction`,
//! `commit_transaction`, `abort_transaction`) block. Appends (events and snapshots, of any
//! partition) are sent to that thread; it opens a transaction with the first one, produces
//! every append that arrives within the commit interval into it, commits, and only then
//! answers each append — with its offsets after a commit, with an error after a failure.
//!
//! **Fencing by the consumer group** (KIP-447), with partition ownership. Right after it
//! begins a transaction, and before it produces anything, the thread sends the transaction
//! offsets for the events partitions this instance holds, in the application's consumer
//! group, with the group metadata (member id and generation) of this instance's group member
//! ([`TxnShared::set_group`]). The group coordinator refuses them once the group has moved
//! past that generation: the transaction is aborted before it holds a record, and is tried
//! again with the member's newer metadata until the member learns what it owns now. A stale
//! owner's appends therefore never reach the log. The other half is the new owner's:
//! before it recovers a partition it reads the partition's group offset with
//! `require_stable` (a `read_committed` consumer), which waits while a transaction holding
//! offsets for that partition is open. Every transaction that touched the partition under an
//! older generation has ended — committed, so the recovery sees its records, or aborted —
//! before the new owner reads the partition.
//!
//! **Fencing by the transactional id**, without ownership: every log of an application uses
//! the transactional id `app_id`, so opening a second one bumps the producer epoch and
//! aborts the first one's open transaction; from then on the first one's commits fail with
//! `PRODUCER_FENCED`. A fenced producer answers every pending and later append with
//! [`StorageError::Fenced`] and is never re-initialised by itself: that would fence the new
//! holder back. Only an explicit [`KafkaLog::acquire_partition`](crate::KafkaLog) starts a
//! new one.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::oneshot;

use crate::error::StorageError;
use crate::log::Offset;

/// Where an append's outcome goes: the offset of its first record, or why it failed.
type Reply = oneshot::Sender<Result<Offset, StorageError>>;

/// One append handed to the producer thread: records for one topic and partition.
pub(super) struct TxnAppend {
    pub(super) partition: u32,
    pub(super) topic: String,
    pub(super) records: Vec<(String, Vec<u8>)>,
    /// The offset of the first record, once the transaction holding them committed.
    pub(super) reply: Reply,
}

enum Message {
    Append(TxnAppend),
    /// Answered once every append sent before it has been answered.
    Barrier(oneshot::Sender<()>),
}

/// A partition this log has never acquired: its first append acquires it (a log without
/// partition ownership holds every partition).
const UNCLAIMED: u8 = 0;
const HELD: u8 = 1;
/// Released to another owner; appends fail as fenced until acquired again.
const RELEASED: u8 = 2;

/// What a partition is to this log in the transactional mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Holding {
    Unclaimed,
    Held,
    Released,
}

/// What the log and its producer thread share.
pub(super) struct TxnShared {
    /// Per events partition, a [`Holding`].
    holding: Vec<AtomicU8>,
    /// The group metadata of this instance's member of the application's consumer group; `None`
    /// without partition ownership.
    group: Mutex<Option<Arc<ConsumerGroupMetadata>>>,
    /// Per events partition: this log's acknowledged end, the group offset a transaction
    /// commits for it.
    acked_end: Arc<[AtomicU64]>,
}

impl TxnShared {
    pub(super) fn new(acked_end: Arc<[AtomicU64]>) -> TxnShared {
        TxnShared {
            holding: (0..acked_end.len())
                .map(|_| AtomicU8::new(UNCLAIMED))
                .collect(),
            group: Mutex::new(None),
            acked_end,
        }
    }

    pub(super) fn holding(&self, partition: u32) -> Holding {
        match self.holding[partition as usize].load(Ordering::Acquire) {
            UNCLAIMED => Holding::Unclaimed,
            HELD => Holding::Held,
            _ => Holding::Released,
        }
    }

    pub(super) fn set_holding(&self, partition: u32, holding: Holding) {
        let value = match holding {
            Holding::Unclaimed => UNCLAIMED,
            Holding::Held => HELD,
            Holding::Released => RELEASED,
        };
        self.holding[partition as usize].store(value, Ordering::Release);
    }

    /// Records the current metadata of this instance's group member.
    pub(super) fn set_group(&self, metadata: Option<ConsumerGroupMetadata>) {
        *lock(&self.group) = metadata.map(Arc::new);
    }

    fn group(&self) -> Option<Arc<ConsumerGroupMetadata>> {
        lock(&self.group).clone()
    }

    fn held(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.holding.len() as u32).filter(|&p| self.holding(p) == Holding::Held)
    }
}

/// How the producer works.
pub(super) struct TxnSettings {
    pub(super) transactional_id: String,
    /// The events topic, whose partitions' group offsets the transactions carry.
    pub(super) events_topic: String,
    /// Whether transactions carry group offsets (the log runs under partition ownership).
    pub(super) grouped: bool,
    /// How long a transaction stays open for more appends after its first one.
    pub(super) commit_interval: Duration,
    /// The limit for `init_transactions`, commits, aborts and a full producer queue.
    pub(super) timeout: Duration,
    /// Prefix of error contexts: `"kafka HOST:PORT"`.
    pub(super) describe: String,
}

/// The log's transactional producer, running on its own thread.
pub(super) struct TxnProducer {
    sender: mpsc::Sender<Message>,
    thread: JoinHandle<()>,
    /// Set by the thread when it stopped: why.
    stopped: Arc<Mutex<Option<Stopped>>>,
}

/// Why the producer thread stopped.
#[derive(Clone)]
struct Stopped {
    detail: String,
    /// Fenced by a newer producer with its transactional id (a log without ownership), as
    /// opposed to failed (fatally, but no other producer took over), which a new producer
    /// mends.
    fenced: bool,
}

impl TxnProducer {
    /// Creates the producer and runs `init_transactions`, fencing any earlier producer with the
    /// same transactional id. Blocks: call it off the async workers.
    pub(super) fn start(
        config: ClientConfig,
        settings: TxnSettings,
        shared: Arc<TxnShared>,
    ) -> Result<TxnProducer, StorageError> {
        let context = format!(
            "{}: initialising transactional producer {}",
            settings.describe, settings.transactional_id
        );
        let producer: FutureProducer = config
            .create()
            .map_err(|e| StorageError::io(context.clone(), e))?;
        producer
            .init_transactions(settings.timeout)
            .map_err(|e| match classify(&e) {
                Failure::Fenced if !settings.grouped => StorageError::Fenced {
                    partition: 0,
                    detail: format!("{context}: {e}"),
                },
                _ => StorageError::io(context.clone(), e),
            })?;
        let (sender, receiver) = mpsc::channel();
        let stopped = Arc::new(Mutex::new(None));
        let thread = {
            let stopped = stopped.clone();
            let worker = Worker {
                producer,
                settings,
                shared,
                stopped,
            };
            std::thread::Builder::new()
                .name("keel-txn".into())
                .spawn(move || worker.run(receiver))
                .map_err(|e| StorageError::io(context, e))?
        };
        Ok(TxnProducer {
            sender,
            thread,
            stopped,
        })
    }

    /// Queues an append; it is answered after its transaction committed or failed. `Err` gives
    /// the append back when the producer has stopped (fenced).
    pub(super) fn send(&self, append: TxnAppend) -> Result<(), TxnAppend> {
        self.sender
            .send(Message::Append(append))
            .map_err(|e| match e.0 {
                Message::Append(append) => append,
                Message::Barrier(_) => unreachable!("sent an append"),
            })
    }

    /// Resolves once every append queued before it has been answered (at once when the
    /// producer has stopped).
    pub(super) fn barrier(&self) -> oneshot::Receiver<()> {
        let (done, answered) = oneshot::channel();
        let _ = self.sender.send(Message::Barrier(done));
        answered
    }

    /// Why the producer was fenced, once it was: a newer producer with its transactional id
    /// took over (only without partition ownership; with it, the group fences).
    pub(super) fn fenced(&self) -> Option<String> {
        lock(&self.stopped)
            .as_ref()
            .filter(|s| s.fenced)
            .map(|s| s.detail.clone())
    }

    /// Whether the producer has stopped, fenced or failed; a failed one is replaced by a new
    /// one (with the same transactional id) on the next append.
    pub(super) fn stopped(&self) -> bool {
        lock(&self.stopped).is_some()
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
    /// Another producer with the same transactional id took over, or the coordinator bumped
    /// the producer's epoch; this producer is done.
    Fenced,
    /// The producer failed fatally for another reason (seen after the whole cluster
    /// restarted: `INVALID_TXN_STATE`); this producer is done, but no other took over.
    Broken,
    /// The transaction failed and must be aborted; the producer can go on.
    Abortable,
    /// Retrying the same call may succeed.
    Retriable,
}

fn classify(e: &KafkaError) -> Failure {
    if let KafkaError::Transaction(txn) = e {
        if fencing_code(txn.code()) {
            return Failure::Fenced;
        }
        if txn.is_fatal() {
            return Failure::Broken;
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
    reply: Reply,
    partition: u32,
    topic: String,
    deliveries: Vec<DeliveryFuture>,
}

/// Why a transaction could not begin.
enum NotBegun {
    /// The producer is done (fenced or broken): this detail.
    Stopped(Failure, String),
    /// The first append's partition is no longer held, or the group kept refusing: this error.
    Refused(StorageError),
}

/// The producer thread's state.
struct Worker {
    producer: FutureProducer,
    settings: TxnSettings,
    shared: Arc<TxnShared>,
    stopped: Arc<Mutex<Option<Stopped>>>,
}

impl Worker {
    fn at(&self, what: &str) -> String {
        format!(
            "{}: {what} (transactional id {})",
            self.settings.describe, self.settings.transactional_id
        )
    }

    /// Transactions of batched appends until the sender is dropped or the producer is fenced.
    fn run(self, receiver: mpsc::Receiver<Message>) {
        let mut open = true;
        while open {
            let first = match receiver.recv() {
                Ok(Message::Append(append)) => append,
                Ok(Message::Barrier(done)) => {
                    let _ = done.send(());
                    continue;
                }
                Err(_) => break,
            };
            let started = Instant::now();
            let mut covered = BTreeSet::new();
            match self.begin(first.partition, &mut covered) {
                Ok(()) => {}
                Err(NotBegun::Refused(error)) => {
                    let _ = first.reply.send(Err(error));
                    continue;
                }
                Err(NotBegun::Stopped(kind, detail)) => {
                    self.stop(
                        &kind,
                        detail,
                        vec![(first.partition, first.reply)],
                        &receiver,
                    );
                    break;
                }
            }
            let mut failure: Option<(Failure, String)> = None;
            let mut pending = Vec::new();
            let mut barriers = Vec::new();
            self.produce(first, &mut covered, &mut pending, &mut failure);
            // Appends arriving within the commit interval of the first one join the
            // transaction. So does what queued up while it began (under ownership its offsets
            // take a round trip or more, waiting for the previous commit to complete), taken
            // as it is queued for another interval at most.
            let deadline = (started + self.settings.commit_interval).max(Instant::now());
            let drained_by = deadline + self.settings.commit_interval;
            while barriers.is_empty() {
                let now = Instant::now();
                if now >= drained_by {
                    break;
                }
                let received = if now >= deadline {
                    match receiver.try_recv() {
                        Ok(message) => Ok(message),
                        Err(mpsc::TryRecvError::Empty) => break,
                        Err(mpsc::TryRecvError::Disconnected) => {
                            Err(mpsc::RecvTimeoutError::Disconnected)
                        }
                    }
                } else {
                    receiver.recv_timeout(deadline - now)
                };
                match received {
                    Ok(Message::Append(append)) => {
                        self.produce(append, &mut covered, &mut pending, &mut failure)
                    }
                    // Commit now: a partition is being handed over.
                    Ok(Message::Barrier(done)) => barriers.push(done),
                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            if failure.is_none() {
                failure = self.commit();
            }
            let stopped = self.answer(pending, failure, started, &receiver);
            for done in barriers {
                let _ = done.send(());
            }
            if stopped {
                break;
            }
        }
        // Dropping the producer purges and flushes it; this thread may block for that.
        drop(self.producer);
    }

    /// Begins a transaction for an append to `partition`. Under partition ownership it first
    /// registers the group offsets of every held partition and `partition` (added to
    /// `covered`); while the group refuses them (a rebalance moved the generation on) the
    /// empty transaction is aborted and begun again with the member's newer metadata, until
    /// `partition` is released or the timeout passes.
    fn begin(&self, partition: u32, covered: &mut BTreeSet<u32>) -> Result<(), NotBegun> {
        let deadline = Instant::now() + self.settings.timeout;
        let mut pause = Duration::from_millis(20);
        loop {
            if let Err(e) = self.producer.begin_transaction() {
                let detail = format!("{}: {e}", self.at("beginning a transaction"));
                // `begin_transaction` is a local call: it fails only when the producer is in
                // a state it cannot leave by itself (seen: a commit that timed out while the
                // whole cluster was down stays "in progress" for good). A new producer mends
                // that, unless this one was fenced.
                return Err(match classify(&e) {
                    Failure::Fenced => NotBegun::Stopped(Failure::Fenced, detail),
                    _ => NotBegun::Stopped(Failure::Broken, detail),
                });
            }
            if !self.settings.grouped {
                return Ok(());
            }
            let mut partitions: BTreeSet<u32> = self.shared.held().collect();
            partitions.insert(partition);
            let refused = match self.register(&partitions) {
                Ok(()) => {
                    covered.extend(partitions);
                    return Ok(());
                }
                Err((kind @ (Failure::Fenced | Failure::Broken), detail)) => {
                    return Err(NotBegun::Stopped(kind, detail));
                }
                Err((_, detail)) => detail,
            };
            if let Err(e) = self.producer.abort_transaction(self.settings.timeout) {
                let detail = format!("{}: {e}", self.at("aborting an empty transaction"));
                // A producer that cannot abort is in a state it cannot leave by itself.
                let kind = match classify(&e) {
                    Failure::Fenced => Failure::Fenced,
                    _ => Failure::Broken,
                };
                return Err(NotBegun::Stopped(kind, detail));
            }
            if self.shared.holding(partition) == Holding::Released {
                return Err(NotBegun::Refused(StorageError::Fenced {
                    partition,
                    detail: format!(
                        "{}: this instance no longer owns the partition ({refused})",
                        self.at(&format!("appending to partition {partition}"))
                    ),
                }));
            }
            if Instant::now() + pause >= deadline {
                return Err(NotBegun::Refused(StorageError::io(
                    self.at(&format!("appending to partition {partition}")),
                    std::io::Error::other(refused),
                )));
            }
            tracing::debug!(
                partition,
                refused,
                "kafka transaction refused by the group; retrying"
            );
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// Adds the group offsets of `partitions` to the open transaction, with the current
    /// metadata of this instance's group member.
    fn register(&self, partitions: &BTreeSet<u32>) -> Result<(), (Failure, String)> {
        let what = "registering the transaction with the consumer group";
        let Some(group) = self.shared.group() else {
            return Err((
                Failure::Retriable,
                self.at(&format!("{what}: not a member of the group (yet)")),
            ));
        };
        let mut offsets = TopicPartitionList::with_capacity(partitions.len());
        for &p in partitions {
            let end = self.shared.acked_end[p as usize].load(Ordering::Acquire);
            offsets
                .add_partition_offset(
                    &self.settings.events_topic,
                    p as i32,
                    rdkafka::Offset::Offset(end as i64),
                )
                .map_err(|e| (Failure::Abortable, format!("{}: {e}", self.at(what))))?;
        }
        self.producer
            .send_offsets_to_transaction(&offsets, &group, self.settings.timeout)
            .map_err(|e| (classify(&e), format!("{}: {e}", self.at(what))))
    }

    /// Produces one append into the open transaction (nothing once the transaction failed).
    fn produce(
        &self,
        append: TxnAppend,
        covered: &mut BTreeSet<u32>,
        pending: &mut Vec<Pending>,
        failure: &mut Option<(Failure, String)>,
    ) {
        let mut deliveries = Vec::with_capacity(append.records.len());
        if failure.is_none() && self.settings.grouped && !covered.contains(&append.partition) {
            // A partition acquired while the transaction was open.
            match self.register(&BTreeSet::from([append.partition])) {
                Ok(()) => {
                    covered.insert(append.partition);
                }
                Err(refused) => *failure = Some(refused),
            }
        }
        if failure.is_none() {
            for (key, value) in &append.records {
                match send(
                    &self.producer,
                    &append.topic,
                    append.partition,
                    key,
                    value,
                    self.settings.timeout,
                ) {
                    Ok(delivery) => deliveries.push(delivery),
                    Err(e) => {
                        let what = self.at(&format!(
                            "producing to topic {} partition {}",
                            append.topic, append.partition
                        ));
                        *failure = Some((classify(&e), format!("{what}: {e}")));
                        break;
                    }
                }
            }
        }
        pending.push(Pending {
            reply: append.reply,
            partition: append.partition,
            topic: append.topic,
            deliveries,
        });
    }

    /// Commits the open transaction, retrying retriable failures until the timeout.
    fn commit(&self) -> Option<(Failure, String)> {
        let deadline = Instant::now() + self.settings.timeout;
        await_deliveries(&self.producer, deadline);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.producer.commit_transaction(left) {
                Ok(()) => return None,
                Err(e) => match classify(&e) {
                    Failure::Retriable if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    kind => {
                        return Some((
                            kind,
                            format!("{}: {e}", self.at("committing a transaction")),
                        ));
                    }
                },
            }
        }
    }

    /// Answers the transaction's appends after its commit (`failure` is `None`) or failure;
    /// aborts a failed one. True when the producer is fenced and has stopped.
    fn answer(
        &self,
        mut pending: Vec<Pending>,
        failure: Option<(Failure, String)>,
        started: Instant,
        receiver: &mpsc::Receiver<Message>,
    ) -> bool {
        let Some((kind, detail)) = failure else {
            let count = pending.len();
            for append in pending {
                let at = |what: &str| self.at(&format!("{what} partition {}", append.partition));
                let result = offsets(append.deliveries, &append.topic, &at);
                let _ = append.reply.send(result);
            }
            tracing::trace!(
                appends = count,
                latency_us = started.elapsed().as_micros() as u64,
                "kafka transaction committed"
            );
            return false;
        };
        // A delivery refused with PRODUCER_FENCED makes any failure a fencing.
        let fenced_delivery = pending.iter_mut().any(|p| {
            p.deliveries.iter_mut().any(|d| {
                matches!(
                    futures::FutureExt::now_or_never(d),
                    Some(Ok(Err((KafkaError::MessageProduction(code), _)))) if fencing_code(code)
                )
            })
        });
        let replies = || {
            pending
                .into_iter()
                .map(|p| (p.partition, p.reply))
                .collect::<Vec<_>>()
        };
        let kind = if fenced_delivery {
            Failure::Fenced
        } else {
            kind
        };
        if matches!(kind, Failure::Fenced | Failure::Broken) {
            self.stop(&kind, detail, replies(), receiver);
            return true;
        }
        tracing::warn!(detail, "kafka transaction failed; aborting it");
        let error = StorageError::io(
            self.at("committing a transaction"),
            std::io::Error::other(detail),
        );
        let aborted = self.producer.abort_transaction(self.settings.timeout);
        for (_, reply) in replies() {
            let _ = reply.send(Err(error.clone()));
        }
        match aborted {
            // A producer that cannot abort (a commit that timed out is still "in progress")
            // is in a state it cannot leave by itself: a new one takes over, unless fenced.
            Err(e) => {
                let kind = match classify(&e) {
                    Failure::Fenced => Failure::Fenced,
                    _ => Failure::Broken,
                };
                let detail = format!("{}: {e}", self.at("aborting a transaction"));
                self.stop(&kind, detail, Vec::new(), receiver);
                true
            }
            Ok(()) => false,
        }
    }

    /// The producer is done: records why, and fails `replies` and every append queued. A
    /// fencing is final without partition ownership (another log took the transactional id
    /// over); with ownership the group fences, and the log starts a new producer on the next
    /// append, as it does after any other fatal failure.
    fn stop(
        &self,
        kind: &Failure,
        detail: String,
        replies: Vec<(u32, Reply)>,
        receiver: &mpsc::Receiver<Message>,
    ) {
        let fenced = matches!(kind, Failure::Fenced) && !self.settings.grouped;
        if fenced {
            tracing::error!(
                detail,
                "kafka producer fenced: another instance owns its partitions now"
            );
        } else {
            tracing::warn!(
                detail,
                "kafka transactional producer failed; the next append starts a new one"
            );
        }
        *lock(&self.stopped) = Some(Stopped {
            detail: detail.clone(),
            fenced,
        });
        let error = |partition| {
            if fenced {
                StorageError::Fenced {
                    partition,
                    detail: detail.clone(),
                }
            } else {
                StorageError::io(
                    self.at(&format!("appending to partition {partition}")),
                    std::io::Error::other(detail.clone()),
                )
            }
        };
        for (partition, reply) in replies {
            let _ = reply.send(Err(error(partition)));
        }
        while let Ok(message) = receiver.try_recv() {
            match message {
                Message::Append(append) => {
                    let _ = append.reply.send(Err(error(append.partition)));
                }
                Message::Barrier(done) => {
                    let _ = done.send(());
                }
            }
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Only an Option is replaced under these locks; a panic cannot leave one inconsistent.
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
