//! Windows around a crash: an append durable but not yet recorded, an actor draining when
//! the runtime aborts, an append whose outcome is unknown.

#![allow(clippy::unwrap_used)]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Account, AccountCommand as Cmd};
use futures::future::BoxFuture;
use keel::Runtime;
use keel::log::StorageError;
use keel::log::testing::Intercept;
use keel::log::{
    CheckpointStore, EventLog, LogBackend, LogRecord, MemoryLog, Offset, SnapshotStore,
};
use tokio::sync::Semaphore;

/// Appends of `slow_key` become durable at once but are acknowledged only when `gate` opens.
/// Checkpoint commits are ignored once `freeze` is set (a crash right after that point).
struct SlowAckLog {
    inner: Arc<MemoryLog>,
    slow_key: String,
    gate: Arc<Semaphore>,
    freeze: Arc<AtomicBool>,
}

impl Intercept for SlowAckLog {
    fn inner(&self) -> &dyn LogBackend {
        &*self.inner
    }
    fn append(
        &self,
        partition: u32,
        records: Vec<LogRecord>,
    ) -> BoxFuture<'_, Result<Offset, StorageError>> {
        Box::pin(async move {
            let slow = records[0].key == self.slow_key;
            let r = self.inner.append(partition, records).await;
            if slow {
                self.gate.acquire().await.unwrap().forget();
            }
            r
        })
    }
    fn commit_checkpoint(
        &self,
        g: String,
        p: u32,
        o: Offset,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        if self.freeze.load(Ordering::SeqCst) {
            return Box::pin(async { Ok(()) });
        }
        self.inner.commit_checkpoint(g, p, o)
    }
    fn describe(&self) -> String {
        "slow-ack".into()
    }
}

/// A command whose append is durable but not yet acknowledged while another aggregate's later
/// append is recorded: the checkpoint must not pass it, or a crash would lose it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpoint_never_passes_an_append_in_flight() {
    let mem = Arc::new(MemoryLog::new(1));
    let gate = Arc::new(Semaphore::new(0));
    let freeze = Arc::new(AtomicBool::new(false));
    let log = Arc::new(SlowAckLog {
        inner: mem.clone(),
        slow_key: "Account/x".into(),
        gate: gate.clone(),
        freeze: freeze.clone(),
    });
    let runtime = Runtime::builder()
        .backend(log.clone())
        .maintenance_interval(Duration::from_millis(5))
        .start()
        .await
        .unwrap();
    let accounts = runtime.aggregate::<Account>();
    let ax = accounts.clone();
    let x = tokio::spawn(async move { ax.send("x", Cmd::Deposit(5)).await });
    // x's event is durable at offset 0, its actor has not recorded it yet.
    while mem.all_records().is_empty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    accounts.send("y", Cmd::Deposit(1)).await.unwrap(); // offset 1, recorded
    // Many maintenance ticks later, the checkpoint still has not passed x's offset 0.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        mem.load_checkpoint("keel.recovery".into(), 0)
            .await
            .unwrap()
            .unwrap_or(0),
        0
    );
    freeze.store(true, Ordering::SeqCst); // crash point: no further checkpoint commit
    gate.add_permits(1);
    let reply = x.await.unwrap().unwrap();
    assert_eq!(reply.seq, 1);
    runtime.abort().await;

    let runtime = Runtime::builder()
        .backend(mem.clone())
        .start()
        .await
        .unwrap();
    let accounts = runtime.aggregate::<Account>();
    let balance = accounts.query("x", |s| s.balance).await.unwrap();
    let next = accounts.send("x", Cmd::Deposit(1)).await.unwrap();
    eprintln!(
        "after restart: balance of x = {balance}, next seq = {}",
        next.seq
    );
    assert_eq!(
        balance, 5,
        "the acknowledged Deposit(5) of x was lost after the crash"
    );
    assert_eq!(next.seq, 2, "duplicate seq");
}

/// `abort` stops everything as a crash would, including an actor that was draining
/// (passivated while its command was in its append): it never writes again. An actor with
/// a command to answer is not idle, so the command times out first; the idle actor is then
/// passivated with its append still held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_stops_draining_actors_too() {
    let log = Arc::new(common::GatedLog::new(1));
    let gate = log.gate.clone();
    let runtime = Runtime::builder()
        .backend(log.clone())
        .idle_timeout(Duration::from_millis(20))
        .maintenance_interval(Duration::from_millis(5))
        .command_timeout(Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    let accounts = runtime.aggregate::<Account>();
    let a = accounts.clone();
    let x = tokio::spawn(async move { a.send("x", Cmd::Deposit(5)).await });
    // Wait until x's actor is passivated (draining) while its append is held.
    tokio::time::sleep(Duration::from_millis(10)).await;
    while runtime.is_live::<Account>("x") {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    runtime.abort().await;
    gate.add_permits(10);
    let reply = tokio::time::timeout(Duration::from_secs(2), x).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let records = log.inner.all_records().len();
    let snap = log
        .inner
        .load_snapshot(0, "Account/x".into())
        .await
        .unwrap();
    assert!(
        snap.is_none(),
        "an aborted runtime's actor wrote a snapshot (reply: {reply:?})"
    );
    assert_eq!(
        records, 0,
        "an aborted runtime's actor appended after abort()"
    );
}

/// A key whose append failed (outcome unknown) and that is never used again must not pin the
/// checkpoint: settle resolves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncertain_key_is_settled_and_releases_the_checkpoint() {
    let mem = Arc::new(MemoryLog::new(1));
    let runtime = Runtime::builder()
        .backend(mem.clone())
        .snapshots(keel::config::SnapshotPolicy {
            every_events: 1,
            ..keel::config::SnapshotPolicy::default()
        })
        .maintenance_interval(Duration::from_millis(5))
        .start()
        .await
        .unwrap();
    let accounts = runtime.aggregate::<Account>();
    accounts.send("x", Cmd::Deposit(1)).await.unwrap(); // offset 0, snapshotted
    mem.lose_next_acks(1);
    assert!(accounts.send("x", Cmd::Deposit(1)).await.is_err()); // offset 1 written, "failed"
    for _ in 0..50 {
        accounts.send("y", Cmd::Deposit(1)).await.unwrap();
    } // offsets 2..52, snapshotted
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while mem
        .load_checkpoint("keel.recovery".into(), 0)
        .await
        .unwrap()
        != Some(52)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "checkpoint stuck at the failed append's floor"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The written-after-all event of x was found and is part of its state.
    assert_eq!(accounts.query("x", |s| s.balance).await.unwrap(), 2);
}
