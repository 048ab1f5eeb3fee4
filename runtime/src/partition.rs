//! [`PartitionState`]: what a shard knows about its partition's recent history — the recovery
//! index and the checkpoint it implies.
//!
//! The **recovery index** lists, per aggregate key, the offsets of its events that no snapshot
//! covers yet. An activation reads the key's snapshot, then exactly those offsets after it —
//! no scan. The **checkpoint** is the lowest offset in the index (or the partition's end when
//! the index is empty): every event below it is covered by its aggregate's snapshot, so a
//! restart scans the partition from the checkpoint, never from the beginning.
//!
//! The **tail** keeps the encoded values of those uncovered events in memory, by offset, so
//! an activation replays without reading the log. Every event an activation replays is an
//! uncovered one (the snapshot covers the rest), and every uncovered event is at or above the
//! checkpoint, where the shard's recovery scan reads it, or was appended since by this
//! instance, which owns the partition and so writes everything appended to it. The tail is
//! filled from exactly those two sources and loses an entry when a snapshot covers it; its
//! bytes count against one budget per runtime ([`TailBudget`]), and when it is full the
//! lowest offsets are evicted first. It only ever holds records the backend acknowledged
//! (for transactional Kafka: committed), and it lives and dies with the shard, so a revoked
//! or lost partition keeps nothing.

#[cfg(test)]
mod tests;
mod uncovered;

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::error::StorageError;
use crate::log::{LogBackend, Offset, StoredRecord};

pub(crate) use uncovered::Replay;
use uncovered::UncoveredIndex;

/// The most records one read of the tail reader asks for.
const REFILL_READ_BATCH: usize = 4096;

/// A stretch of offsets without a wanted event longer than this is skipped by re-positioning
/// the tail reader instead of reading through it.
const REFILL_MAX_GAP: Offset = 4096;

/// What one tail entry is charged beyond its value's bytes: the map node and the
/// reference-counted allocation, roughly.
const TAIL_ENTRY_OVERHEAD: usize = 64;

/// The byte budget every partition tail of one runtime shares
/// ([`RuntimeConfig::tail_cache_bytes`](crate::config::RuntimeConfig::tail_cache_bytes)).
#[derive(Debug)]
pub(crate) struct TailBudget {
    limit: usize,
    used: AtomicUsize,
}

impl TailBudget {
    pub(crate) fn new(limit: usize) -> Self {
        TailBudget {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    /// Whether tails keep anything at all.
    pub(crate) fn enabled(&self) -> bool {
        self.limit > 0
    }

    /// The bytes the tails of the runtime hold now.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// Shared by a shard and its aggregate actors. A std `Mutex`, not a tokio one: it guards
/// a few map operations and is never held across an `.await`.
pub(crate) struct PartitionState {
    pub(crate) partition: u32,
    index: Mutex<RecoveryIndex>,
    budget: Arc<TailBudget>,
    /// Activations waiting for events the tail does not hold, and whether the tail reader is
    /// running.
    refill: Mutex<Refill>,
}

/// Events wanted from the log by activations, served by one sequential read at a time.
#[derive(Default)]
struct Refill {
    running: bool,
    waiting: Vec<(Want, RefillReply)>,
}

/// What one activation wants read.
enum Want {
    /// The records at these offsets (ascending): events the tail does not hold.
    Offsets(Vec<Offset>),
    /// Every record of `key` in `range`: a replay whose offsets are not known one by one
    /// (an unusable snapshot, a key whose index holds only a span).
    Key { key: String, range: Range<Offset> },
}

type RefillReply = oneshot::Sender<Result<Vec<StoredRecord>, StorageError>>;

/// Marks the tail reader stopped however its task ends (a panic included): the activations
/// still waiting then get an error instead of waiting for good.
struct RefillRunning {
    part: Arc<PartitionState>,
    /// Set when the reader stopped because nothing was left to read.
    finished: bool,
}

impl Drop for RefillRunning {
    fn drop(&mut self) {
        if !self.finished {
            let mut refill = lock(&self.part.refill);
            refill.running = false;
            refill.waiting.clear();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Only plain container operations happen under these locks.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default)]
struct RecoveryIndex {
    /// The events not covered by a snapshot, per aggregate key.
    uncovered: UncoveredIndex,
    /// The offset after the last event this instance knows of.
    end: Offset,
    /// Keys whose last append failed without certainty that nothing landed (a timeout, a
    /// broker restart): the failed records, if written, are at or above this offset. The
    /// next activation of such a key scans from there before replaying.
    uncertain: HashMap<String, Offset>,
    /// The values of uncovered events, by offset (the tail).
    tail: BTreeMap<Offset, Arc<[u8]>>,
    /// The bytes `tail` is charged against the budget.
    tail_bytes: usize,
}

fn tail_cost(value: &[u8]) -> usize {
    value.len() + TAIL_ENTRY_OVERHEAD
}

impl RecoveryIndex {
    /// Keeps `value`, the event at `offset`, in the tail; evicts the lowest offsets of this
    /// tail while the runtime's tails are over budget (the new entry too, when this tail has
    /// nothing else left to give).
    fn cache(&mut self, budget: &TailBudget, offset: Offset, value: Arc<[u8]>) {
        let cost = tail_cost(&value);
        if cost > budget.limit {
            return;
        }
        if let Some(old) = self.tail.insert(offset, value) {
            self.release(budget, tail_cost(&old));
        }
        self.tail_bytes += cost;
        let mut used = budget.used.fetch_add(cost, Ordering::Relaxed) + cost;
        while used > budget.limit {
            let Some((_, evicted)) = self.tail.pop_first() else {
                break;
            };
            let freed = tail_cost(&evicted);
            self.release(budget, freed);
            used = budget.used.load(Ordering::Relaxed);
        }
    }

    fn uncache(&mut self, budget: &TailBudget, offset: Offset) {
        if let Some(value) = self.tail.remove(&offset) {
            self.release(budget, tail_cost(&value));
        }
    }

    fn release(&mut self, budget: &TailBudget, bytes: usize) {
        self.tail_bytes -= bytes;
        budget.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn clear_tail(&mut self, budget: &TailBudget) {
        self.tail.clear();
        budget.used.fetch_sub(self.tail_bytes, Ordering::Relaxed);
        self.tail_bytes = 0;
    }

    fn record(&mut self, key: &str, offsets: impl IntoIterator<Item = Offset>) {
        let mut last = None;
        let offsets = offsets.into_iter().inspect(|offset| last = Some(*offset));
        self.uncovered.record(key, offsets);
        if let Some(last) = last {
            self.end = self.end.max(last + 1);
        }
    }
}

impl Drop for PartitionState {
    fn drop(&mut self) {
        let budget = self.budget.clone();
        self.lock().clear_tail(&budget);
    }
}

impl PartitionState {
    pub(crate) fn new(partition: u32, end: Offset, budget: Arc<TailBudget>) -> Self {
        PartitionState {
            partition,
            index: Mutex::new(RecoveryIndex {
                uncovered: UncoveredIndex::default(),
                end,
                uncertain: HashMap::new(),
                tail: BTreeMap::new(),
                tail_bytes: 0,
            }),
            budget,
            refill: Mutex::new(Refill::default()),
        }
    }

    /// Reads the events at `offsets` (ascending) that the tail does not hold from the log.
    /// One reader per partition serves every activation waiting: it reads the union of
    /// what they want in one sequential pass (skipping long stretches with nothing wanted),
    /// and what is asked while it reads is served by its next pass. Returns the records
    /// found, ascending; an offset the log does not return is left out.
    pub(crate) async fn read_missing(
        self: &Arc<Self>,
        backend: &Arc<dyn LogBackend>,
        offsets: Vec<Offset>,
    ) -> Result<Vec<StoredRecord>, StorageError> {
        self.read_wanted_records(backend, Want::Offsets(offsets))
            .await
    }

    /// Every record of `key` in `range`, read by the partition's one reader: activations that
    /// scan the partition at the same time (after a `STATE_VERSION` change, say) share one
    /// sequential pass instead of one each. Ascending.
    pub(crate) async fn scan_key(
        self: &Arc<Self>,
        backend: &Arc<dyn LogBackend>,
        key: &str,
        range: Range<Offset>,
    ) -> Result<Vec<StoredRecord>, StorageError> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let want = Want::Key {
            key: key.to_owned(),
            range,
        };
        self.read_wanted_records(backend, want).await
    }

    async fn read_wanted_records(
        self: &Arc<Self>,
        backend: &Arc<dyn LogBackend>,
        want: Want,
    ) -> Result<Vec<StoredRecord>, StorageError> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut refill = lock(&self.refill);
            refill.waiting.push((want, reply));
            !std::mem::replace(&mut refill.running, true)
        };
        if start {
            // A task of its own: a cancelled activation must not stop the reads of others.
            let running = RefillRunning {
                part: self.clone(),
                finished: false,
            };
            tokio::spawn(refill_loop(running, backend.clone()));
        }
        answer
            .await
            .map_err(|_| StorageError::Closed("the partition's tail reader stopped".into()))?
    }

    /// Whether the tail keeps anything (a zero budget turns it off).
    pub(crate) fn tail_enabled(&self) -> bool {
        self.budget.enabled()
    }

    /// Records the event of `key` at `offset`, not covered by a snapshot, and keeps its value
    /// in the tail: the recovery scan's path.
    pub(crate) fn record_value(&self, key: &str, offset: Offset, value: Vec<u8>) {
        let mut index = self.lock();
        index.record(key, [offset]);
        if self.budget.enabled() {
            index.cache(&self.budget, offset, value.into());
        }
    }

    /// The tail's values of the events at `offsets`, `None` for those it does not hold.
    pub(crate) fn tail_values(&self, offsets: &[Offset]) -> Vec<Option<Arc<[u8]>>> {
        let index = self.lock();
        offsets
            .iter()
            .map(|offset| index.tail.get(offset).cloned())
            .collect()
    }

    /// Drops the whole tail (the partition is being given up).
    pub(crate) fn drop_tail(&self) {
        self.lock().clear_tail(&self.budget);
    }

    /// How many events the tail holds.
    #[cfg(test)]
    pub(crate) fn tail_len(&self) -> usize {
        self.lock().tail.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RecoveryIndex> {
        // Every critical section below leaves the index consistent at each step, so a
        // panic elsewhere that poisoned the lock left nothing half-done.
        lock(&self.index)
    }

    /// Records events of `key` at `offsets` (ascending), not yet covered by a snapshot.
    #[cfg(test)]
    pub(crate) fn record(&self, key: &str, offsets: impl IntoIterator<Item = Offset>) {
        self.lock().record(key, offsets);
    }

    /// Records events of `key` found by scanning the log (with their values): merged with
    /// what the index already has, without duplicates.
    pub(crate) fn record_found(&self, key: &str, found: Vec<(Offset, Vec<u8>)>) {
        if found.is_empty() {
            return;
        }
        let mut index = self.lock();
        let offsets: Vec<Offset> = found.iter().map(|(offset, _)| *offset).collect();
        index.uncovered.merge(key, &offsets);
        let last = found
            .iter()
            .map(|(offset, _)| *offset)
            .max()
            .unwrap_or_default();
        index.end = index.end.max(last + 1);
        if self.budget.enabled() {
            for (offset, value) in found {
                index.cache(&self.budget, offset, value.into());
            }
        }
    }

    /// An append of `key` starts: whatever it writes lands at or above the end known now.
    /// Until [`commit_append`](Self::commit_append) the key is uncertain from there, so the
    /// checkpoint cannot pass the records in flight; if the append fails, it stays uncertain
    /// and the next activation scans for them.
    pub(crate) fn begin_append(&self, key: &str) {
        let mut index = self.lock();
        let floor = index.end;
        let entry = index.uncertain.entry(key.to_owned()).or_insert(floor);
        *entry = (*entry).min(floor);
    }

    /// The append of `key` begun last is durable at `offsets`: record them, in the same
    /// critical section that clears the uncertainty, and keep their `values` (one per
    /// offset, or none when the tail is off) in the tail.
    pub(crate) fn commit_append(
        &self,
        key: &str,
        offsets: std::ops::Range<Offset>,
        values: Vec<Arc<[u8]>>,
    ) {
        let mut index = self.lock();
        index.uncertain.remove(key);
        for (offset, value) in offsets.clone().zip(values) {
            index.cache(&self.budget, offset, value);
        }
        index.record(key, offsets);
    }

    /// Where to scan from for `key`'s records of failed appends, if it has any.
    pub(crate) fn uncertain_floor(&self, key: &str) -> Option<Offset> {
        self.lock().uncertain.get(key).copied()
    }

    /// The scan for `key`'s failed appends is done and recorded.
    pub(crate) fn resolve_uncertain(&self, key: &str) {
        self.lock().uncertain.remove(key);
    }

    /// A snapshot of `key` now covers every event up to and including `offset`.
    pub(crate) fn covered(&self, key: &str, offset: Offset) {
        let mut index = self.lock();
        for offset in index.uncovered.cover(key, offset) {
            index.uncache(&self.budget, offset);
        }
    }

    /// How an activation finds `key`'s events after `after` (all of them when `None`).
    pub(crate) fn replay_after(&self, key: &str, after: Option<Offset>) -> Replay {
        self.lock().uncovered.replay(key, after)
    }

    /// The offsets of `key`'s events after `after`, when the index lists them.
    #[cfg(test)]
    pub(crate) fn offsets_after(&self, key: &str, after: Option<Offset>) -> Vec<Offset> {
        match self.replay_after(key, after) {
            Replay::Offsets(offsets) => offsets,
            Replay::Scan { .. } => panic!("{key} keeps a span"),
        }
    }

    /// The recovery checkpoint: no event below it needs replaying. A tree lookup plus the
    /// keys with an append in flight or failed, never a pass over every key.
    pub(crate) fn checkpoint(&self) -> Offset {
        let index = self.lock();
        index
            .uncovered
            .lowest()
            .into_iter()
            .chain(index.uncertain.values().copied())
            .min()
            .unwrap_or(index.end)
    }

    /// Up to `limit` keys with uncovered events, by first uncovered event from `from` on,
    /// and whether that reached the last of them. Then (once per walk over the keys) the
    /// keys whose last append is uncertain, with the offset they hold the checkpoint at:
    /// an aggregate whose append failed and that is never used again would otherwise hold
    /// it back for good.
    pub(crate) fn pinning_keys_from(
        &self,
        from: Offset,
        limit: usize,
    ) -> (Vec<(Offset, String)>, bool) {
        let index = self.lock();
        let mut keys = index.uncovered.keys_from(from, limit);
        let reached_end = keys.len() < limit;
        if reached_end {
            keys.extend(
                index
                    .uncertain
                    .iter()
                    .filter(|(key, _)| index.uncovered.first_of(key).is_none())
                    .map(|(key, floor)| (*floor, key.clone())),
            );
        }
        (keys, reached_end)
    }

    /// The offset at which `key` holds the checkpoint back, if it does.
    pub(crate) fn pinned_at(&self, key: &str) -> Option<Offset> {
        let index = self.lock();
        let uncertain = index.uncertain.get(key).copied();
        index
            .uncovered
            .first_of(key)
            .into_iter()
            .chain(uncertain)
            .min()
    }

    /// How many uncovered events the index lists by offset.
    pub(crate) fn uncovered_events(&self) -> usize {
        self.lock().uncovered.listed()
    }
}

/// The tail reader of one partition: serves the waiting activations, pass after pass, until
/// none is left.
async fn refill_loop(mut running: RefillRunning, backend: Arc<dyn LogBackend>) {
    let part = running.part.clone();
    loop {
        let batch = {
            let mut refill = lock(&part.refill);
            if refill.waiting.is_empty() {
                refill.running = false;
                running.finished = true;
                return;
            }
            std::mem::take(&mut refill.waiting)
        };
        let (by_offset, by_key): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .partition(|(want, _)| matches!(want, Want::Offsets(_)));
        if !by_offset.is_empty() {
            serve_offsets(&*backend, part.partition, by_offset).await;
        }
        if !by_key.is_empty() {
            serve_keys(&*backend, part.partition, by_key).await;
        }
    }
}

/// Answers activations that want records by offset, from one pass over their union.
async fn serve_offsets(backend: &dyn LogBackend, partition: u32, batch: Vec<(Want, RefillReply)>) {
    let mut wanted: Vec<Offset> = batch
        .iter()
        .flat_map(|(want, _)| match want {
            Want::Offsets(offsets) => offsets.as_slice(),
            Want::Key { .. } => &[],
        })
        .copied()
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    match read_wanted(backend, partition, &wanted).await {
        Ok(mut found) => {
            for (want, reply) in batch {
                // Two activations of one key never run at once, so no offset is wanted
                // twice: each record moves to its one activation.
                let Want::Offsets(offsets) = want else {
                    continue;
                };
                let records = offsets.iter().filter_map(|o| found.remove(o)).collect();
                let _ = reply.send(Ok(records));
            }
        }
        Err(e) => {
            for (_, reply) in batch {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// Answers activations that want every record of their key in a range, from one contiguous
/// pass over the union of the ranges.
async fn serve_keys(backend: &dyn LogBackend, partition: u32, batch: Vec<(Want, RefillReply)>) {
    let mut wants: HashMap<String, (Range<Offset>, Vec<StoredRecord>, RefillReply)> =
        HashMap::with_capacity(batch.len());
    let (mut from, mut to) = (Offset::MAX, 0);
    for (want, reply) in batch {
        if let Want::Key { key, range } = want {
            from = from.min(range.start);
            to = to.max(range.end);
            // Two activations of one key never run at once: one entry per key.
            wants.insert(key, (range, Vec::new(), reply));
        }
    }
    let mut failure = None;
    while from < to {
        let max = (to - from).min(REFILL_READ_BATCH as Offset) as usize;
        let records = match backend
            .read(partition, from, max, std::time::Duration::ZERO)
            .await
        {
            Ok(records) => records,
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        let Some(last) = records.last() else { break };
        from = last.position.offset + 1;
        for record in records {
            if let Some((range, found, _)) = wants.get_mut(&record.key)
                && range.contains(&record.position.offset)
            {
                found.push(record);
            }
        }
    }
    for (_, (_, found, reply)) in wants {
        let _ = reply.send(match &failure {
            Some(e) => Err(e.clone()),
            None => Ok(found),
        });
    }
}

/// One sequential pass over the partition from the first to the last of `wanted`
/// (ascending, non-empty): the records at those offsets.
async fn read_wanted(
    backend: &dyn LogBackend,
    partition: u32,
    wanted: &[Offset],
) -> Result<HashMap<Offset, StoredRecord>, StorageError> {
    let mut found = HashMap::with_capacity(wanted.len());
    let Some(&last_wanted) = wanted.last() else {
        return Ok(found);
    };
    let mut next = 0;
    let mut from = wanted[0];
    while next < wanted.len() {
        if wanted[next] > from + REFILL_MAX_GAP {
            from = wanted[next];
        }
        // Offsets are at least one per record, so this many records reach the last wanted.
        let max = (last_wanted - from + 1).min(REFILL_READ_BATCH as Offset) as usize;
        let records = backend
            .read(partition, from, max, std::time::Duration::ZERO)
            .await?;
        let Some(last) = records.last() else { break };
        from = last.position.offset + 1;
        for record in records {
            let offset = record.position.offset;
            while next < wanted.len() && wanted[next] < offset {
                next += 1; // not in the log: the activation reports it
            }
            if next < wanted.len() && wanted[next] == offset {
                found.insert(offset, record);
                next += 1;
            }
        }
        while next < wanted.len() && wanted[next] < from {
            next += 1;
        }
    }
    Ok(found)
}
