//! [`Inbox`]: the commands sent to one aggregate actor, in order, each with its deadline.
//!
//! A handle puts a command here and wakes the actor with one message in its ractor mailbox
//! (`Wake`) only when no wake is pending. The actor takes every queued command at once as its
//! next batch, so a burst for a hot aggregate costs one mailbox message, not one per command.
//!
//! **Deadlines without a timer per command.** The inbox keeps the reply of every command until
//! it is answered, the ones the actor is running included. The shard's maintenance tick
//! answers those past their deadline with `Timeout` ([`Inbox::expire`]): a queued one is
//! dropped without running, a running one may still commit (as with any timeout). Commands
//! whose timeout is shorter than [`WATCHED_TICKS`] ticks also get a timer in the caller, so
//! their `Timeout` comes on time.
//!
//! **Closing.** An actor that drains (passivation, failure) closes its inbox first: later
//! sends are refused and re-routed to a fresh activation, and a wake is queued ahead of
//! ractor's drain marker when commands are left, so every command accepted is answered.

use std::any::Any;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use ractor::{ActorCell, ActorStatus};
use smallvec::SmallVec;
use tokio::time::Instant;

use super::execute::Outcomes;
use super::{AggregateMsg, Reply};
use crate::aggregate::Aggregate;
use crate::error::{CommandError, short};
use crate::shared::{InFlightPermit, Mailbox};

/// Timeouts of at least this many maintenance ticks are left to the tick alone (answered up
/// to one tick late); shorter ones also get a timer in the caller.
pub(crate) const WATCHED_TICKS: u32 = 16;

/// When a command's caller stops waiting.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    pub(crate) at: Instant,
    /// The timeout it was set from, for the error.
    pub(crate) timeout: Duration,
}

/// A command waiting in the inbox.
pub(crate) struct Queued<A: Aggregate> {
    pub(crate) command: A::Command,
    pub(crate) command_id: Option<String>,
    pub(crate) reply: Reply<A>,
    pub(crate) deadline: Deadline,
    /// The runtime-wide in-flight permit, held until the command has been answered.
    pub(crate) permit: InFlightPermit,
}

/// What answering a running command needs.
struct Running<A: Aggregate> {
    reply: Reply<A>,
    deadline: Deadline,
    _permit: InFlightPermit,
}

/// Why a command was not queued; it is handed back.
pub(crate) enum Refused<A: Aggregate> {
    /// `mailbox_capacity` commands are queued already.
    Full,
    /// The actor is draining: route the command again.
    Closed(Queued<A>),
}

/// The commands of one batch. One fits inline, so an aggregate that gets one command at a
/// time never allocates for it and keeps no room on the heap between commands.
pub(crate) type Batch<A> = SmallVec<[(<A as Aggregate>::Command, Option<String>); 1]>;

struct State<A: Aggregate> {
    /// In arrival order; always taken whole.
    queue: SmallVec<[Queued<A>; 1]>,
    /// The replies of the batch the actor runs now, by position; `None` once answered by
    /// [`Inbox::expire`].
    running: SmallVec<[Option<Running<A>>; 1]>,
    /// The room of the last batch's commands, handed out again by the next `take`.
    spare: Batch<A>,
    closed: bool,
    /// A `Wake` is in the actor's mailbox and has not taken the queue yet.
    woken: bool,
}

pub(crate) struct Inbox<A: Aggregate> {
    state: Mutex<State<A>>,
    /// Commands queued or running, plus the shard's reservations: zero means idle. Read
    /// without the lock.
    busy: AtomicUsize,
    /// A batch outgrew the inline room: [`Mailbox::shrink`] has heap room to give back.
    spilled: AtomicBool,
}

impl Deadline {
    /// The answer of a command to `key` that reached this deadline.
    pub(crate) fn timed_out<E: std::error::Error>(&self, key: &str) -> CommandError<E> {
        CommandError::Timeout(self.timeout, format!("a reply from {}", short(key)))
    }
}

impl<A: Aggregate> Queued<A> {
    /// The command, unless it is past its deadline at `now`: then it is answered `Timeout`
    /// and dropped, never run.
    fn unless_expired(self, key: &str, now: Instant) -> Option<Self> {
        if self.deadline.at > now {
            return Some(self);
        }
        let _ = self.reply.send(Err(self.deadline.timed_out(key)));
        None
    }
}

impl<A: Aggregate> Inbox<A> {
    pub(crate) fn new() -> Self {
        Inbox {
            state: Mutex::new(State {
                queue: SmallVec::new(),
                running: SmallVec::new(),
                spare: SmallVec::new(),
                closed: false,
                woken: false,
            }),
            busy: AtomicUsize::new(0),
            spilled: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<A>> {
        // Only container operations and channel sends happen under this lock.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `command` for the actor `cell`, waking it when no wake is pending.
    pub(crate) fn push(
        &self,
        command: Queued<A>,
        capacity: usize,
        cell: &ActorCell,
    ) -> Result<(), Refused<A>> {
        let mut state = self.lock();
        // An actor that failed (rather than drained) never closed its inbox; a wake it had
        // not taken yet would leave this command waiting for its deadline.
        if state.closed || cell.get_status() >= ActorStatus::Draining {
            state.closed = true;
            return Err(Refused::Closed(command));
        }
        if state.queue.len() >= capacity {
            return Err(Refused::Full);
        }
        if !state.woken {
            // Sent under the lock, so a wake is in the mailbox before any close that
            // follows, and so before the drain marker.
            if cell.send_message(AggregateMsg::<A>::Wake).is_err() {
                state.closed = true;
                return Err(Refused::Closed(command));
            }
            state.woken = true;
        }
        state.queue.push(command);
        self.busy.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Takes the queue as the next batch, the commands in order; their replies stay here
    /// until [`finish`](Self::finish). Those already past their deadline are answered and
    /// never run. `key` is the aggregate's, for the errors.
    pub(crate) fn take(&self, key: &str) -> Batch<A> {
        let now = Instant::now();
        let mut state = self.lock();
        state.woken = false;
        let State {
            queue,
            running,
            spare,
            ..
        } = &mut *state;
        let mut batch = std::mem::take(spare);
        for queued in queue.drain(..) {
            let Some(queued) = queued.unless_expired(key, now) else {
                self.busy.fetch_sub(1, Ordering::Relaxed);
                continue;
            };
            batch.push((queued.command, queued.command_id));
            running.push(Some(Running {
                reply: queued.reply,
                deadline: queued.deadline,
                _permit: queued.permit,
            }));
        }
        batch
    }

    /// Answers the batch taken last with its `outcomes`, in order (those `expire` answered
    /// already are skipped), and keeps the emptied `batch` for its room.
    pub(crate) fn finish(&self, mut batch: Batch<A>, outcomes: Outcomes<A>) {
        batch.clear();
        let mut state = self.lock();
        if batch.spilled() || state.queue.spilled() || state.running.spilled() {
            self.spilled.store(true, Ordering::Relaxed);
        }
        state.spare = batch;
        let mut answered = 0;
        for (running, outcome) in state.running.drain(..).zip(outcomes) {
            if let Some(running) = running {
                let _ = running.reply.send(outcome);
                answered += 1;
            }
        }
        self.busy.fetch_sub(answered, Ordering::Relaxed);
    }

    /// Answers every queued command with `error` (the actor is stopping without running
    /// them).
    pub(crate) fn refuse_all(&self, error: impl Fn() -> CommandError<A::Error>) {
        let mut state = self.lock();
        state.closed = true;
        let refused = state.queue.len();
        for queued in state.queue.drain(..) {
            let _ = queued.reply.send(Err(error()));
        }
        self.busy.fetch_sub(refused, Ordering::Relaxed);
    }
}

impl<A: Aggregate> Mailbox for Inbox<A> {
    fn idle(&self) -> bool {
        self.busy.load(Ordering::Relaxed) == 0
    }

    fn reserve(&self) {
        self.busy.fetch_add(1, Ordering::Relaxed);
    }

    fn release(&self) {
        self.busy.fetch_sub(1, Ordering::Relaxed);
    }

    fn expire(&self, key: &str, now: Instant) {
        if self.idle() {
            return;
        }
        let mut state = self.lock();
        let mut answered = 0;
        if state.queue.iter().any(|q| q.deadline.at <= now) {
            let queue = std::mem::take(&mut state.queue);
            for queued in queue {
                match queued.unless_expired(key, now) {
                    Some(queued) => state.queue.push(queued),
                    None => answered += 1,
                }
            }
        }
        for slot in &mut state.running {
            if slot.as_ref().is_some_and(|r| r.deadline.at <= now)
                && let Some(running) = slot.take()
            {
                let _ = running.reply.send(Err(running.deadline.timed_out(key)));
                answered += 1;
            }
        }
        self.busy.fetch_sub(answered, Ordering::Relaxed);
    }

    fn shrink(&self) {
        // Checked without the lock: the shard asks every idle actor on every tick.
        if !self.spilled.load(Ordering::Relaxed) || !self.idle() {
            return;
        }
        let mut state = self.lock();
        if state.queue.is_empty() && state.running.is_empty() {
            state.queue.shrink_to_fit();
            state.running.shrink_to_fit();
            state.spare.shrink_to_fit();
            self.spilled.store(false, Ordering::Relaxed);
        }
    }

    fn close(&self, cell: &ActorCell) {
        let mut state = self.lock();
        state.closed = true;
        if !state.queue.is_empty() && !state.woken {
            // The commands left run before the drain marker that follows.
            state.woken = cell.send_message(AggregateMsg::<A>::Wake).is_ok();
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
