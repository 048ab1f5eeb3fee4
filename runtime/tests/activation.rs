//! Activations replay from the partition's in-memory tail, not from the log: counted on a
//! backend that tallies every read.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Account, AccountCommand as Cmd};
use keel::Runtime;
use keel::config::SnapshotPolicy;
use keel::log::MemoryLog;
use keel::log::testing::CountingReads;

/// A [`MemoryLog`] standing for a remote log, whose reads are counted.
fn counting_log(partitions: u32) -> Arc<CountingReads> {
    Arc::new(CountingReads::new(Arc::new(MemoryLog::new(partitions))).as_remote())
}

/// Snapshots every 10 events and never on the way out, so aggregates keep a tail of events
/// after their snapshot.
const SNAPSHOT_EVERY_10: SnapshotPolicy = SnapshotPolicy {
    every_events: 10,
    on_passivation: false,
    after_long_replay: false,
};

/// Deposits 1 to each of `ids`, round after round: their events interleave in the one
/// partition, so no two events of one aggregate are adjacent.
async fn interleaved(runtime: &Runtime, ids: &[&str], rounds: u32) {
    let accounts = runtime.aggregate::<Account>();
    for _ in 0..rounds {
        for id in ids {
            accounts.send(id, Cmd::Deposit(1)).await.unwrap();
        }
    }
}

async fn balance(runtime: &Runtime, id: &str) -> i64 {
    runtime
        .aggregate::<Account>()
        .query(id, |s| s.balance)
        .await
        .unwrap()
}

#[tokio::test]
async fn after_a_restart_an_activation_replays_its_tail_without_reading_the_log() {
    let log = counting_log(1);
    let runtime = Runtime::builder()
        .backend(log.clone())
        .snapshots(SNAPSHOT_EVERY_10)
        .start()
        .await
        .unwrap();
    // 15 events each: a snapshot at 10, then 5 events after it.
    interleaved(&runtime, &["a", "b", "c"], 15).await;
    runtime.abort().await;

    let runtime = Runtime::builder()
        .backend(log.clone())
        .snapshots(SNAPSHOT_EVERY_10)
        .start()
        .await
        .unwrap();
    assert!(log.take_reads() > 0, "the recovery scan reads the log");
    for id in ["a", "b", "c"] {
        assert_eq!(balance(&runtime, id).await, 15);
    }
    assert_eq!(
        log.take_reads(),
        0,
        "activations were served by the tail the recovery scan filled"
    );
    runtime.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn after_passivation_an_activation_replays_its_own_appends_without_reading_the_log() {
    let log = counting_log(1);
    let runtime = Runtime::builder()
        .backend(log.clone())
        .snapshots(SNAPSHOT_EVERY_10)
        .idle_timeout(Duration::from_secs(10))
        .start()
        .await
        .unwrap();
    interleaved(&runtime, &["a", "b"], 17).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(!runtime.is_live::<Account>("a"), "passivated when idle");
    log.take_reads();
    assert_eq!(balance(&runtime, "a").await, 17);
    assert_eq!(balance(&runtime, "b").await, 17);
    assert_eq!(log.take_reads(), 0, "activations were served by the tail");
    runtime.shutdown().await.unwrap();
}

/// Restarts on `log` with a tail of `budget` bytes after 50 interleaved events each of
/// `a` and `b` without any snapshot; activates both at once and returns the reads they took.
async fn reads_to_activate_with_budget(budget: usize) -> u64 {
    let no_snapshots = SnapshotPolicy {
        every_events: 1000,
        on_passivation: false,
        after_long_replay: false,
    };
    let log = counting_log(1);
    let runtime = Runtime::builder()
        .backend(log.clone())
        .snapshots(no_snapshots)
        .start()
        .await
        .unwrap();
    interleaved(&runtime, &["a", "b"], 50).await;
    runtime.abort().await;
    let runtime = Runtime::builder()
        .backend(log.clone())
        .snapshots(no_snapshots)
        .tail_cache_bytes(budget)
        .start()
        .await
        .unwrap();
    log.take_reads();
    let (a, b) = tokio::join!(balance(&runtime, "a"), balance(&runtime, "b"));
    assert_eq!((a, b), (50, 50));
    let reads = log.take_reads();
    runtime.shutdown().await.unwrap();
    reads
}

#[tokio::test]
async fn an_evicted_tail_is_read_back_in_one_pass_not_one_read_per_event() {
    // Nothing fits: every event comes from the log, 50 per aggregate.
    let reads = reads_to_activate_with_budget(0).await;
    assert!(
        reads <= 2,
        "{reads} reads for 100 events: one sequential pass each at most"
    );
    // Part fits: the lowest offsets were evicted.
    let reads = reads_to_activate_with_budget(8 << 10).await;
    assert!(reads <= 2, "{reads} reads with a partly evicted tail");
    // All fits.
    assert_eq!(reads_to_activate_with_budget(1 << 20).await, 0);
}

/// Counts reads and, while armed, holds every `end_offset` call until `barrier` is full: the
/// activations then reach their scans of the partition at the same moment.
struct BarrierLog {
    inner: CountingReads,
    armed: std::sync::atomic::AtomicBool,
    barrier: tokio::sync::Barrier,
}

impl keel::log::testing::Intercept for BarrierLog {
    fn inner(&self) -> &dyn keel::log::LogBackend {
        &self.inner
    }
    fn end_offset(
        &self,
        partition: u32,
    ) -> futures::future::BoxFuture<'_, Result<keel::log::Offset, keel::log::StorageError>> {
        use keel::log::EventLog;
        Box::pin(async move {
            if self.armed.load(std::sync::atomic::Ordering::SeqCst) {
                self.barrier.wait().await;
            }
            EventLog::end_offset(&self.inner, partition).await
        })
    }
}

#[tokio::test]
async fn after_a_state_version_change_concurrent_activations_share_one_scan() {
    const AGGREGATES: usize = 20;
    let log = Arc::new(BarrierLog {
        inner: CountingReads::new(Arc::new(MemoryLog::new(1))),
        armed: std::sync::atomic::AtomicBool::new(false),
        barrier: tokio::sync::Barrier::new(AGGREGATES),
    });
    let runtime = Runtime::builder()
        .backend(log.clone())
        .snapshots(SNAPSHOT_EVERY_10)
        .start()
        .await
        .unwrap();
    let ids: Vec<String> = (0..AGGREGATES).map(|i| format!("acc-{i}")).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    interleaved(&runtime, &id_refs, 30).await;
    runtime.shutdown().await.unwrap();

    // A new build with another state version: every snapshot is unusable, and each
    // aggregate's events are spread over the whole partition.
    let runtime = Runtime::builder()
        .backend(log.clone())
        .snapshots(SNAPSHOT_EVERY_10)
        .start()
        .await
        .unwrap();
    let accounts = runtime.aggregate::<common::AccountV2>();
    log.inner.take_reads();
    log.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let balances =
        futures::future::join_all(ids.iter().map(|id| accounts.query(id, |s| s.0.balance))).await;
    log.armed.store(false, std::sync::atomic::Ordering::SeqCst);
    for balance in balances {
        assert_eq!(balance.unwrap(), 30);
    }
    // 600 events fit one read; one scan each would take 20.
    let reads = log.inner.take_reads();
    assert!(reads <= 2, "{reads} reads for {AGGREGATES} full replays");
    runtime.shutdown().await.unwrap();
}
