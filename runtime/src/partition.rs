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

mod reader;
#[cfg(test)]
mod tests;
mod uncovered;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::log::Offset;

pub(crate) use reader::PartitionReader;
pub(crate) use uncovered::Replay;
use uncovered::UncoveredIndex;

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

/// An append in flight (see [`PartitionState::begin_append`]).
pub(crate) struct InFlightAppend<'a> {
    partition: &'a PartitionState,
    key: &'a str,
    floor: Offset,
    done: bool,
}

impl InFlightAppend<'_> {
    /// The append is durable at `offsets`: record them, in the same critical section that
    /// releases the floor, and keep their `values` (one per offset, or none when the tail is
    /// off) in the tail.
    pub(crate) fn commit(
        mut self,
        offsets: std::ops::Range<Offset>,
        values: impl IntoIterator<Item = Arc<[u8]>>,
    ) {
        self.done = true;
        let budget = &self.partition.budget;
        let mut index = self.partition.lock();
        index.end_append(self.floor);
        for (offset, value) in offsets.clone().zip(values) {
            index.cache(budget, offset, value);
        }
        index.record(self.key, offsets);
    }
}

impl Drop for InFlightAppend<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut index = self.partition.lock();
        index.end_append(self.floor);
        let floor = self.floor;
        let entry = index.uncertain.entry(self.key.to_owned()).or_insert(floor);
        *entry = (*entry).min(floor);
    }
}

/// Shared by a shard and its aggregate actors. A std `Mutex`, not a tokio one: it guards
/// a few map operations and is never held across an `.await`.
pub(crate) struct PartitionState {
    pub(crate) partition: u32,
    index: Mutex<RecoveryIndex>,
    budget: Arc<TailBudget>,
    /// The partition's one reader of the log for activations.
    pub(crate) reader: Arc<PartitionReader>,
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
    /// Appends in flight, counted by the end offset known when each began (its floor).
    in_flight: BTreeMap<Offset, usize>,
    /// The values of uncovered events, by offset (the tail).
    tail: BTreeMap<Offset, Arc<[u8]>>,
    /// The bytes `tail` is charged against the budget.
    tail_bytes: usize,
}

fn tail_cost(value: &[u8]) -> usize {
    value.len() + TAIL_ENTRY_OVERHEAD
}

impl RecoveryIndex {
    /// One append begun at `floor` has ended.
    fn end_append(&mut self, floor: Offset) {
        if let Some(count) = self.in_flight.get_mut(&floor) {
            *count -= 1;
            if *count == 0 {
                self.in_flight.remove(&floor);
            }
        }
    }

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
                in_flight: BTreeMap::new(),
                tail: BTreeMap::new(),
                tail_bytes: 0,
            }),
            budget,
            reader: Arc::new(PartitionReader::new(partition)),
        }
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
    /// Until the returned guard is committed ([`InFlightAppend::commit`]), the checkpoint
    /// cannot pass that floor, so it never passes records in flight. If the append fails, or
    /// is dropped unfinished, the key stays uncertain from the floor until its next
    /// activation has scanned for the records. Counted per floor, not kept per key: an
    /// append that succeeds allocates nothing here.
    pub(crate) fn begin_append<'a>(&'a self, key: &'a str) -> InFlightAppend<'a> {
        let mut index = self.lock();
        let floor = index.end;
        *index.in_flight.entry(floor).or_default() += 1;
        InFlightAppend {
            partition: self,
            key,
            floor,
            done: false,
        }
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
            .chain(index.in_flight.keys().next().copied())
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
