//! [`PauseGuard`]: noticing that this process was paused, and holding the runtime's own
//! writes back for a group session afterwards. Clock arithmetic only: `Shared` owns the
//! guard and the task that feeds it the time.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Notices that this process was paused (SIGSTOP, a frozen VM, a stalled host) for long
/// enough that the group may have given its partitions to another member meanwhile.
///
/// The threads of a paused process all resume at once, and a shard's overdue tick can run
/// before the group consumer has learned that its session expired: settling, passivating
/// and snapshotting then write as a zombie. For one group session after such a pause the
/// runtime writes nothing on its own (snapshots, settling, checkpoints); by then the
/// consumer has heard from the group, and either the partitions were lost (and stopped
/// without writes) or they are still this member's. Commands are not held back: without
/// the transactional mode a zombie's appends are not fenced (see `ownership.rs`).
///
/// Armed only with partition ownership: without a group no one else can own a partition.
#[derive(Default)]
pub(crate) struct PauseGuard {
    /// The group session timeout; unset without ownership.
    session: OnceLock<Duration>,
    /// When the watch (`Shared::watch_pauses`) last ran, in milliseconds of the runtime clock.
    alive_ms: AtomicU64,
    /// Until when the runtime's own writes are held back.
    held_until_ms: AtomicU64,
}

impl PauseGuard {
    /// Arms the guard at `now_ms`; false when it was armed already.
    #[cfg(any(feature = "kafka", test))]
    pub(crate) fn arm(&self, session: Duration, now_ms: u64) -> bool {
        if self.session.set(session).is_err() {
            return false;
        }
        self.alive_ms.store(now_ms, Ordering::Relaxed);
        true
    }

    /// The process runs at `now_ms` (the watch's tick).
    #[cfg(any(feature = "kafka", test))]
    pub(crate) fn alive(&self, now_ms: u64) {
        self.held(now_ms);
        self.alive_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Whether the runtime's own writes are held back at `now_ms`: within a session of the
    /// end of a pause longer than half a session. Called by the watch and before each write,
    /// so a pause is noticed by whichever runs first after it.
    pub(crate) fn held(&self, now_ms: u64) -> bool {
        let Some(session) = self.session.get() else {
            return false;
        };
        let session_ms = session.as_millis() as u64;
        let alive = self.alive_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(alive) > session_ms / 2 {
            let until = now_ms + session_ms;
            if self.held_until_ms.fetch_max(until, Ordering::Relaxed) < alive {
                tracing::warn!(
                    paused_ms = now_ms - alive,
                    "this process was paused for longer than half a group session; \
                     holding snapshots, settling and checkpoints back for one session"
                );
            }
            // Noticed: later calls go by the hold alone.
            self.alive_ms.store(now_ms, Ordering::Relaxed);
            return true;
        }
        now_ms < self.held_until_ms.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::PauseGuard;
    use std::time::Duration;

    #[test]
    fn a_pause_longer_than_half_a_session_holds_writes_back_for_one_session() {
        let guard = PauseGuard::default();
        // Not armed (no ownership): never held, whatever the gap.
        assert!(!guard.held(1_000_000));

        assert!(guard.arm(Duration::from_secs(10), 0));
        assert!(!guard.arm(Duration::from_secs(10), 0), "armed once");
        // The watch runs every 100 ms: nothing held.
        for now in (100..=3_000).step_by(100) {
            guard.alive(now);
            assert!(!guard.held(now), "at {now}");
        }
        // A pause of 4.9 s (under half a session) holds nothing.
        assert!(!guard.held(7_900));
        guard.alive(7_900);
        // Paused 6 s: noticed by a write before the watch runs again, held for a session.
        assert!(guard.held(13_900));
        for now in (14_000..23_900).step_by(100) {
            guard.alive(now);
            assert!(guard.held(now), "at {now}");
        }
        guard.alive(23_900);
        assert!(!guard.held(23_900), "a session after the pause");
        // Noticed by the watch first: the same.
        guard.alive(30_000);
        assert!(guard.held(30_001));
        for now in (30_100..=40_000).step_by(100) {
            guard.alive(now);
        }
        assert!(!guard.held(40_001));
    }
}
