//! [`UncoveredIndex`]: per aggregate key, the events of one partition that no snapshot
//! covers yet, ordered by each key's first such event.
//!
//! Memory is bounded per event: a key lists its offsets exactly until it has
//! [`EXACT_PER_KEY`] of them, or until the partition lists [`EXACT_TOTAL`]; after that it
//! keeps only the stretch they lie in (a *span*), and its activation scans that stretch of
//! the log for its records instead of reading them one by one. The order by first event
//! makes the checkpoint (the lowest first event) and the walk over the keys that hold it
//! back cost a tree lookup, not a pass over every key.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::log::{KeyHasher, Offset};

/// The most offsets one key lists before it keeps only their span.
pub(crate) const EXACT_PER_KEY: usize = 1024;

/// The most offsets one partition lists (8 bytes each) before further keys keep spans.
pub(crate) const EXACT_TOTAL: usize = 4 << 20;

/// The uncovered events of one key.
#[derive(Debug)]
enum Events {
    /// Their offsets, ascending.
    Exact(Vec<Offset>),
    /// Too many to list: they lie from `first` (an event of the key) to `last`
    /// (inclusive), among other keys' events.
    Span { first: Offset, last: Offset },
}

impl Events {
    fn first(&self) -> Option<Offset> {
        match self {
            Events::Exact(offsets) => offsets.first().copied(),
            Events::Span { first, .. } => Some(*first),
        }
    }

    fn listed(&self) -> usize {
        match self {
            Events::Exact(offsets) => offsets.len(),
            Events::Span { .. } => 0,
        }
    }
}

/// How an activation finds a key's uncovered events.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Replay {
    /// Exactly these offsets, ascending.
    Offsets(Vec<Offset>),
    /// The key's records from `from` to `to` (inclusive), found by scanning.
    Scan { from: Offset, to: Offset },
}

#[derive(Debug, Default)]
pub(crate) struct UncoveredIndex {
    keys: HashMap<Arc<str>, Events, KeyHasher>,
    /// Every key by its first uncovered event (offsets are unique per record, so no two keys
    /// share one).
    by_first: BTreeMap<Offset, Arc<str>>,
    /// How many offsets `keys` lists.
    listed: usize,
}

impl UncoveredIndex {
    /// Records events of `key` at `offsets` (ascending, above any it has already).
    pub(crate) fn record(&mut self, key: &str, offsets: impl IntoIterator<Item = Offset>) {
        let mut offsets = offsets.into_iter().peekable();
        if offsets.peek().is_none() {
            return;
        }
        // Look the key up before inserting it: it is usually there already, and an owned key
        // would be allocated for every event.
        if !self.keys.contains_key(key) {
            let key: Arc<str> = Arc::from(key);
            let listed: Vec<Offset> = offsets.collect();
            self.by_first.insert(listed[0], key.clone());
            self.listed += listed.len();
            self.keys.insert(key.clone(), Events::Exact(listed));
            self.limit(&key);
            return;
        }
        self.update(key, |events| match events {
            Events::Exact(listed) => listed.extend(offsets),
            Events::Span { last, .. } => *last = offsets.last().unwrap_or(*last).max(*last),
        });
    }

    /// Merges events of `key` found by scanning the log, in any order and maybe known.
    pub(crate) fn merge(&mut self, key: &str, found: &[Offset]) {
        if found.is_empty() {
            return;
        }
        if !self.keys.contains_key(key) {
            let mut sorted = found.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            self.record(key, sorted);
            return;
        }
        self.update(key, |events| match events {
            Events::Exact(listed) => {
                listed.extend_from_slice(found);
                listed.sort_unstable();
                listed.dedup();
            }
            Events::Span { first, last } => {
                for &offset in found {
                    *first = (*first).min(offset);
                    *last = (*last).max(offset);
                }
            }
        });
    }

    /// A snapshot of `key` covers every event up to and including `offset`; returns the
    /// offsets that were listed and are covered now.
    pub(crate) fn cover(&mut self, key: &str, offset: Offset) -> Vec<Offset> {
        let mut dropped = Vec::new();
        self.update(key, |events| match events {
            Events::Exact(listed) => {
                let split = listed.partition_point(|o| *o <= offset);
                dropped = listed.drain(..split).collect();
            }
            // A span's first event stays its bound until the span is covered whole: the
            // events between are not known one by one.
            Events::Span { last, .. } if *last <= offset => *events = Events::Exact(Vec::new()),
            Events::Span { .. } => {}
        });
        dropped
    }

    /// How the events of `key` after `after` (all of them when `None`) are found.
    pub(crate) fn replay(&self, key: &str, after: Option<Offset>) -> Replay {
        let above = |o: Offset| after.is_none_or(|after| o > after);
        match self.keys.get(key) {
            None => Replay::Offsets(Vec::new()),
            Some(Events::Exact(listed)) => {
                Replay::Offsets(listed.iter().copied().filter(|o| above(*o)).collect())
            }
            Some(Events::Span { first, last }) => {
                let from = after.map_or(*first, |after| (*first).max(after + 1));
                if from > *last {
                    Replay::Offsets(Vec::new())
                } else {
                    Replay::Scan { from, to: *last }
                }
            }
        }
    }

    /// The lowest uncovered event, if any.
    pub(crate) fn lowest(&self) -> Option<Offset> {
        self.by_first.keys().next().copied()
    }

    /// The first uncovered event of `key`.
    pub(crate) fn first_of(&self, key: &str) -> Option<Offset> {
        self.keys.get(key).and_then(Events::first)
    }

    /// Up to `limit` keys by first uncovered event, from `from` on.
    pub(crate) fn keys_from(&self, from: Offset, limit: usize) -> Vec<(Offset, String)> {
        self.by_first
            .range(from..)
            .take(limit)
            .map(|(offset, key)| (*offset, key.to_string()))
            .collect()
    }

    /// How many offsets are listed.
    pub(crate) fn listed(&self) -> usize {
        self.listed
    }

    /// Changes the events of `key` (which exists) and keeps the order and the count right.
    fn update(&mut self, key: &str, change: impl FnOnce(&mut Events)) {
        let Some(events) = self.keys.get_mut(key) else {
            return;
        };
        let (old_first, old_listed) = (events.first(), events.listed());
        change(events);
        let (new_first, new_listed) = (events.first(), events.listed());
        self.listed = self.listed + new_listed - old_listed;
        if old_first != new_first {
            let name = old_first.and_then(|o| self.by_first.remove(&o));
            if let (Some(first), Some(name)) = (new_first, name) {
                self.by_first.insert(first, name);
            }
        }
        if new_first.is_none() {
            self.keys.remove(key);
        } else {
            self.limit(key);
        }
    }

    /// Turns the offsets of `key` into a span when it or the partition lists too many.
    fn limit(&mut self, key: &str) {
        let Some(events) = self.keys.get_mut(key) else {
            return;
        };
        if let Events::Exact(listed) = events
            && (listed.len() > EXACT_PER_KEY || self.listed > EXACT_TOTAL)
            && let (Some(&first), Some(&last)) = (listed.first(), listed.last())
        {
            self.listed -= listed.len();
            *events = Events::Span { first, last };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_with_too_many_events_keeps_their_span() {
        let mut index = UncoveredIndex::default();
        let many = EXACT_PER_KEY as Offset + 1;
        index.record("hot", (0..many).map(|i| 2 * i + 10));
        index.record("cold", [11]);
        assert_eq!(index.listed(), 1, "the hot key keeps no list");
        assert_eq!(index.lowest(), Some(10));
        assert_eq!(
            index.replay("hot", Some(20)),
            Replay::Scan {
                from: 21,
                to: 2 * (many - 1) + 10
            }
        );
        assert_eq!(index.replay("cold", None), Replay::Offsets(vec![11]));
        index.cover("hot", 100);
        assert_eq!(
            index.lowest(),
            Some(10),
            "a partly covered span keeps its bound"
        );
        index.cover("hot", 1_000_000);
        assert_eq!(index.lowest(), Some(11));
        assert_eq!(index.keys_from(0, 10), vec![(11, "cold".to_string())]);
    }

    #[test]
    fn keys_are_walked_by_first_uncovered_event() {
        let mut index = UncoveredIndex::default();
        index.record("b", [5, 9]);
        index.record("a", [7]);
        index.merge("c", &[3, 2, 3]);
        assert_eq!(
            index.keys_from(0, 2),
            vec![(2, "c".to_string()), (5, "b".to_string())]
        );
        assert_eq!(index.cover("b", 5), vec![5]);
        assert_eq!(index.keys_from(6, 10).len(), 2);
        assert_eq!(index.first_of("b"), Some(9));
        assert_eq!(index.listed(), 4);
    }
}
