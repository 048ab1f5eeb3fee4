//! [`DedupWindow`]: the command ids one aggregate remembers, so that a retry with the same id
//! returns the first outcome instead of appending again.
//!
//! An id is remembered while it is among the aggregate's last
//! [`dedup_window`](crate::config::RuntimeConfig::dedup_window) commands with an id, *or* younger
//! than [`dedup_retention`](crate::config::RuntimeConfig::dedup_retention) — but never more than
//! [`dedup_max_ids`](crate::config::RuntimeConfig::dedup_max_ids) ids per aggregate, the hard cap
//! on its memory and on its snapshot's size. An entry holds the id and where the command's
//! events are, not the events: a deduplicated reply reads them back from the log, so the
//! window does not depend on the event schema (a changed event type never makes it
//! unreadable) and costs the same for a large event as for a small one.
//!
//! The window is kept in snapshots and rebuilt from the events' `command_id` and
//! `timestamp_ms` on replay; ids of commands that caused no event exist only in the window,
//! so the actor snapshots before it answers such a command.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::RuntimeConfig;
use crate::log::{Offset, Position};

/// A remembered command outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Remembered {
    pub(crate) command_id: String,
    /// The aggregate's sequence number after the command.
    pub(crate) seq: u64,
    /// How many events the command caused (0: none; then both offsets are `None`).
    pub(crate) events: u64,
    /// The offset of its first event.
    pub(crate) first_offset: Option<Offset>,
    /// The position of its last event.
    pub(crate) position: Option<Position>,
    /// When it committed, in milliseconds since the Unix epoch (the events' `timestamp_ms`).
    pub(crate) timestamp_ms: i64,
}

/// What a window keeps: see the module documentation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DedupLimits {
    pub(crate) last: usize,
    pub(crate) retention_ms: i64,
    pub(crate) max: usize,
}

impl DedupLimits {
    pub(crate) fn of(config: &RuntimeConfig) -> Self {
        DedupLimits {
            last: config.dedup_window,
            retention_ms: i64::try_from(config.dedup_retention.as_millis()).unwrap_or(i64::MAX),
            max: config.dedup_max_ids,
        }
    }

    fn remembers_anything(&self) -> bool {
        self.max > 0 && (self.last > 0 || self.retention_ms > 0)
    }
}

/// The remembered command ids of one aggregate, oldest first.
#[derive(Debug)]
pub(crate) struct DedupWindow {
    entries: VecDeque<Remembered>,
    /// Where each id sits: its number, counted from the first entry ever remembered.
    index: HashMap<String, u64>,
    /// The number of `entries[0]`.
    base: u64,
    limits: DedupLimits,
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as i64
}

impl DedupWindow {
    pub(crate) fn new(limits: DedupLimits) -> Self {
        DedupWindow {
            entries: VecDeque::new(),
            index: HashMap::new(),
            base: 0,
            limits,
        }
    }

    /// The remembered outcome of `command_id`, if it is still remembered.
    pub(crate) fn get(&self, command_id: &str) -> Option<&Remembered> {
        let number = *self.index.get(command_id)?;
        self.entries.get((number - self.base) as usize)
    }

    /// How many ids are remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Remembers a committed command, then forgets what the limits no longer keep.
    pub(crate) fn remember(&mut self, entry: Remembered) {
        if !self.limits.remembers_anything() {
            return;
        }
        if let Some(number) = self.index.get(&entry.command_id).copied() {
            // The same id for a later command (the first was forgotten meanwhile, then
            // re-learned from a replay): the latest outcome wins.
            if let Some(old) = self.entries.get_mut((number - self.base) as usize) {
                *old = entry;
                return;
            }
        }
        let number = self.base + self.entries.len() as u64;
        self.index.insert(entry.command_id.clone(), number);
        self.entries.push_back(entry);
        self.evict(now_ms());
    }

    /// Learns the event with `seq` at `position`, caused by `command_id`, from a replay:
    /// the next event of the command remembered last, or an already remembered one (a window
    /// from a snapshot seeded the replay), or a new command.
    pub(crate) fn replayed(
        &mut self,
        command_id: &str,
        seq: u64,
        position: Position,
        timestamp_ms: i64,
    ) {
        if let Some(known) = self.get(command_id) {
            if known.seq >= seq {
                return; // already known
            }
            let is_last = self.index.get(command_id).copied()
                == Some(self.base + self.entries.len() as u64 - 1);
            if is_last
                && known.seq + 1 == seq
                && let Some(last) = self.entries.back_mut()
            {
                last.seq = seq;
                last.events += 1;
                last.position = Some(position);
                return;
            }
        }
        self.remember(Remembered {
            command_id: command_id.to_owned(),
            seq,
            events: 1,
            first_offset: Some(position.offset),
            position: Some(position),
            timestamp_ms,
        });
    }

    /// Forgets the oldest entries while over the hard cap, or beyond the last `last` and
    /// older than the retention.
    fn evict(&mut self, now_ms: i64) {
        let horizon = now_ms.saturating_sub(self.limits.retention_ms);
        while let Some(front) = self.entries.front() {
            let len = self.entries.len();
            let over_cap = len > self.limits.max;
            let expired = len > self.limits.last && front.timestamp_ms < horizon;
            if !over_cap && !expired {
                break;
            }
            if let Some(old) = self.entries.pop_front() {
                if self.index.get(&old.command_id) == Some(&self.base) {
                    self.index.remove(&old.command_id);
                }
                self.base += 1;
            }
        }
    }

    /// The window as a snapshot stores it: a msgpack array of [`Remembered`] maps.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, String> {
        rmp_serde::to_vec_named(&self.entries).map_err(|e| e.to_string())
    }

    /// A window stored by [`encode`](Self::encode), under today's limits.
    pub(crate) fn decode(bytes: &[u8], limits: DedupLimits) -> Result<Self, String> {
        let entries: Vec<Remembered> = rmp_serde::from_slice(bytes).map_err(|e| e.to_string())?;
        let mut window = DedupWindow::new(limits);
        for entry in entries {
            window.remember(entry);
        }
        Ok(window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, seq: u64, timestamp_ms: i64) -> Remembered {
        Remembered {
            command_id: id.into(),
            seq,
            events: 0,
            first_offset: None,
            position: None,
            timestamp_ms,
        }
    }

    fn limits(last: usize, retention_ms: i64, max: usize) -> DedupLimits {
        DedupLimits {
            last,
            retention_ms,
            max,
        }
    }

    #[test]
    fn an_id_is_kept_while_recent_or_young_and_never_beyond_the_cap() {
        let now = now_ms();
        let mut window = DedupWindow::new(limits(2, 60_000, 5));
        window.remember(entry("old", 1, now - 120_000));
        window.remember(entry("young", 2, now));
        assert!(window.get("old").is_some(), "among the last 2");
        window.remember(entry("b", 3, now));
        assert!(window.get("old").is_none(), "neither recent nor young");
        for (i, id) in ["c", "d", "e", "f"].into_iter().enumerate() {
            window.remember(entry(id, 4 + i as u64, now));
        }
        assert_eq!(window.len(), 5, "the hard cap");
        assert!(window.get("young").is_none() && window.get("f").is_some());
    }

    #[test]
    fn a_replay_extends_the_last_command_and_skips_what_a_snapshot_seeded() {
        let at = |offset| Position {
            partition: 0,
            offset,
        };
        let mut window = DedupWindow::new(limits(10, 0, 10));
        window.remember(Remembered {
            first_offset: Some(0),
            position: Some(at(1)),
            events: 2,
            ..entry("seeded", 2, 0)
        });
        window.replayed("seeded", 1, at(0), 0);
        window.replayed("seeded", 2, at(1), 0);
        window.replayed("multi", 3, at(5), 0);
        window.replayed("multi", 4, at(7), 0);
        let seeded = window.get("seeded").unwrap();
        assert_eq!((seeded.seq, seeded.events), (2, 2));
        let multi = window.get("multi").unwrap();
        assert_eq!(
            (multi.seq, multi.events, multi.first_offset),
            (4, 2, Some(5))
        );
        assert_eq!(multi.position, Some(at(7)));
        let decoded = DedupWindow::decode(&window.encode().unwrap(), window.limits).unwrap();
        assert_eq!(decoded.get("multi"), Some(multi));
    }
}
