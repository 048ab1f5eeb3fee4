//! [`PartitionState`]: what a shard knows about its partition's recent history — the recovery
//! index and the checkpoint it implies.
//!
//! The **recovery index** lists, per aggregate key, the offsets of its events that no snapshot
//! covers yet. An activation reads the key's snapshot, then exactly those offsets after it —
//! no scan. The **checkpoint** is the lowest offset in the index (or the partition's end when
//! the index is empty): every event below it is covered by its aggregate's snapshot, so a
//! restart scans the partition from the checkpoint, never from the beginning.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::log::Offset;

/// Shared by a shard and its aggregate actors. A std `Mutex`, not a tokio one: it guards
/// a few map operations and is never held across an `.await`.
pub(crate) struct PartitionState {
    pub(crate) partition: u32,
    index: Mutex<RecoveryIndex>,
}

#[derive(Default)]
struct RecoveryIndex {
    /// Offsets of events not covered by a snapshot, per aggregate key, ascending.
    uncovered: HashMap<String, Vec<Offset>>,
    /// The offset after the last event this instance knows of.
    end: Offset,
    /// Keys whose last append failed without certainty that nothing landed (a timeout, a
    /// broker restart): the failed records, if written, are at or above this offset. The
    /// next activation of such a key scans from there before replaying.
    uncertain: HashMap<String, Offset>,
}

impl RecoveryIndex {
    fn record(&mut self, key: &str, offsets: impl IntoIterator<Item = Offset>) {
        let mut offsets = offsets.into_iter().peekable();
        if offsets.peek().is_none() {
            return;
        }
        // Look the key up before inserting it: it is usually there already, and `entry` would
        // allocate an owned key for every event.
        let mut last = 0;
        let offsets = offsets.inspect(|offset| last = *offset);
        match self.uncovered.get_mut(key) {
            Some(entry) => entry.extend(offsets),
            None => {
                let entry = offsets.collect();
                self.uncovered.insert(key.to_owned(), entry);
            }
        }
        self.end = self.end.max(last + 1);
    }
}

impl PartitionState {
    pub(crate) fn new(partition: u32, end: Offset) -> Self {
        PartitionState {
            partition,
            index: Mutex::new(RecoveryIndex {
                uncovered: HashMap::new(),
                end,
                uncertain: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RecoveryIndex> {
        // Every critical section below leaves the index consistent at each step, so a
        // panic elsewhere that poisoned the lock left nothing half-done.
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records events of `key` at `offsets` (ascending), not yet covered by a snapshot.
    pub(crate) fn record(&self, key: &str, offsets: impl IntoIterator<Item = Offset>) {
        self.lock().record(key, offsets);
    }

    /// Records events of `key` found by scanning the log: merged with what the index already
    /// has, without duplicates.
    pub(crate) fn record_found(&self, key: &str, found: &[Offset]) {
        if found.is_empty() {
            return;
        }
        let mut index = self.lock();
        let entry = index.uncovered.entry(key.to_owned()).or_default();
        entry.extend_from_slice(found);
        entry.sort_unstable();
        entry.dedup();
        let last = found.iter().copied().max().unwrap_or_default();
        index.end = index.end.max(last + 1);
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
    /// critical section that clears the uncertainty.
    pub(crate) fn commit_append(&self, key: &str, offsets: std::ops::Range<Offset>) {
        let mut index = self.lock();
        index.uncertain.remove(key);
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
        if let Some(offsets) = index.uncovered.get_mut(key) {
            offsets.retain(|o| *o > offset);
            if offsets.is_empty() {
                index.uncovered.remove(key);
            }
        }
    }

    /// The offsets of `key`'s events after `after` (all of them when `None`).
    pub(crate) fn offsets_after(&self, key: &str, after: Option<Offset>) -> Vec<Offset> {
        let index = self.lock();
        index
            .uncovered
            .get(key)
            .map(|offsets| {
                offsets
                    .iter()
                    .copied()
                    .filter(|o| after.is_none_or(|after| *o > after))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The recovery checkpoint: no event below it needs replaying.
    pub(crate) fn checkpoint(&self) -> Offset {
        let index = self.lock();
        index
            .uncovered
            .values()
            .filter_map(|offsets| offsets.first().copied())
            .chain(index.uncertain.values().copied())
            .min()
            .unwrap_or(index.end)
    }

    /// Up to `limit` keys whose uncovered events hold the checkpoint back the most (lowest
    /// first offset first).
    pub(crate) fn pinning_keys(&self, limit: usize) -> Vec<String> {
        let index = self.lock();
        // Uncertain keys too: an aggregate whose append failed and that is never used again
        // would otherwise hold the checkpoint back for good.
        let mut keys: Vec<(Offset, &String)> = index
            .uncovered
            .iter()
            .filter_map(|(key, offsets)| offsets.first().map(|o| (*o, key)))
            .chain(index.uncertain.iter().map(|(key, floor)| (*floor, key)))
            .collect();
        keys.sort_unstable();
        keys.dedup_by(|a, b| a.1 == b.1);
        keys.into_iter()
            .take(limit)
            .map(|(_, key)| key.clone())
            .collect()
    }

    /// Keys with uncovered events (used after recovery to check them against snapshots).
    pub(crate) fn uncovered_keys(&self) -> Vec<String> {
        self.lock().uncovered.keys().cloned().collect()
    }

    /// How many uncovered events the index holds.
    pub(crate) fn uncovered_events(&self) -> usize {
        self.lock().uncovered.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_is_the_lowest_uncovered_offset() {
        let p = PartitionState::new(0, 10);
        assert_eq!(p.checkpoint(), 10);
        p.record("A/1", [10, 12]);
        p.record("A/2", [11, 13]);
        assert_eq!(p.checkpoint(), 10);
        p.covered("A/1", 12);
        assert_eq!(p.checkpoint(), 11);
        assert_eq!(p.offsets_after("A/2", Some(11)), vec![13]);
        p.covered("A/2", 13);
        assert_eq!(p.checkpoint(), 14);
        assert_eq!(p.uncovered_events(), 0);
    }

    #[test]
    fn an_uncertain_append_holds_the_checkpoint_until_resolved() {
        let p = PartitionState::new(0, 0);
        p.record("A/1", [0, 1]);
        p.covered("A/1", 1);
        p.begin_append("A/2");
        p.record("A/3", [3]);
        p.covered("A/3", 3);
        assert_eq!(p.checkpoint(), 2);
        p.record_found("A/2", &[2]);
        p.record_found("A/2", &[2]);
        p.resolve_uncertain("A/2");
        assert_eq!(p.offsets_after("A/2", None), vec![2]);
        assert_eq!(p.checkpoint(), 2);
        p.covered("A/2", 2);
        assert_eq!(p.checkpoint(), 4);
    }
}
