//! Regression tests of the runtime's correctness guarantees: ids that no backend can store,
//! shards that must not outlive a failed start, checkpoints, deduplication, panics and
//! settling.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{Account, AccountCommand as Cmd};
use futures::future::BoxFuture;
use keel::{
    CheckpointStore, CommandError, EmbeddedLog, Error, EventLog, LogBackend, LogRecord, MemoryLog,
    Offset, Runtime, SendOptions, SnapshotPolicy, SnapshotStore, StorageError, StoredRecord,
    aggregate_key, partition_for,
};

async fn start(log: Arc<MemoryLog>) -> Runtime {
    Runtime::builder().backend(log).start().await.unwrap()
}

#[tokio::test]
async fn an_id_no_backend_can_store_is_refused_before_anything_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(EmbeddedLog::open(dir.path(), 2).unwrap());
    let runtime = Runtime::builder()
        .backend(log.clone())
        .snapshots(SnapshotPolicy {
            every_events: 1,
            ..SnapshotPolicy::default()
        })
        .start()
        .await
        .unwrap();
    let accounts = runtime.aggregate::<Account>();
    let long = "x".repeat(70_000);
    for id in [long.as_str(), ""] {
        let err = accounts.send(id, Cmd::Deposit(1)).await.unwrap_err();
        assert!(matches!(err, CommandError::InvalidId { .. }), "{err}");
        assert!(!err.is_retryable());
        assert!(
            err.to_string().len() < 200,
            "the error carries the id: {err}"
        );
        let err = accounts.query(id, |s| s.balance).await.unwrap_err();
        assert!(matches!(err, CommandError::InvalidId { .. }), "{err}");
    }
    let err = accounts
        .send_with("a", Cmd::Deposit(1), SendOptions::with_id(long.clone()))
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::InvalidId { .. }), "{err}");
    // Nothing reached the log, and the store still takes every other aggregate's writes.
    for partition in 0..2 {
        assert_eq!(log.end_offset(partition).await.unwrap(), 0);
    }
    assert_eq!(accounts.send("b", Cmd::Deposit(1)).await.unwrap().seq, 1);
    assert_eq!(accounts.send("b", Cmd::Deposit(1)).await.unwrap().seq, 2);
    // An id at the limit works end to end, snapshots included.
    let at_limit = "y".repeat(runtime.config().max_id_bytes);
    assert_eq!(
        accounts.send(&at_limit, Cmd::Deposit(1)).await.unwrap().seq,
        1
    );
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn errors_about_a_long_id_show_only_its_prefix() {
    let log = Arc::new(MemoryLog::new(1));
    let runtime = start(log.clone()).await;
    let accounts = runtime.aggregate::<Account>();
    let long = "z".repeat(4000);
    accounts.send(&long, Cmd::Deposit(1)).await.unwrap();
    let err = accounts.send(&long, Cmd::Explode).await.unwrap_err();
    assert!(matches!(err, CommandError::Panicked { .. }), "{err}");
    assert!(err.to_string().len() < 300, "{err}");
    assert!(err.to_string().contains("(4008 bytes)"), "{err}");
    runtime.shutdown().await.unwrap();
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Slashed;

impl keel::Aggregate for Slashed {
    const TYPE: &'static str = "Sla/shed";
    type Command = ();
    type Event = common::AccountEvent;
    type Error = common::AccountError;
    fn handle(&self, _: ()) -> Result<Vec<common::AccountEvent>, common::AccountError> {
        Ok(vec![])
    }
    fn apply(&mut self, _: &common::AccountEvent) {}
}

#[tokio::test]
#[should_panic(expected = "invalid Aggregate::TYPE")]
async fn a_type_name_with_a_slash_is_refused_at_registration() {
    let runtime = start(Arc::new(MemoryLog::new(1))).await;
    let _ = runtime.aggregate::<Slashed>();
}

/// A backend that delegates to another but fails loading the recovery checkpoint of one
/// partition while told to.
struct FailingRecovery {
    inner: Arc<dyn LogBackend>,
    /// The partition whose checkpoint does not load, or `u32::MAX` for none.
    failing: AtomicU32,
}

impl FailingRecovery {
    fn new(inner: Arc<dyn LogBackend>, failing: u32) -> Arc<Self> {
        Arc::new(FailingRecovery {
            inner,
            failing: AtomicU32::new(failing),
        })
    }
}

impl EventLog for FailingRecovery {
    fn partition_count(&self) -> u32 {
        self.inner.partition_count()
    }
    fn append(&self, p: u32, r: Vec<LogRecord>) -> BoxFuture<'_, Result<Offset, StorageError>> {
        self.inner.append(p, r)
    }
    fn read(
        &self,
        p: u32,
        from: Offset,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<StoredRecord>, StorageError>> {
        self.inner.read(p, from, max, wait)
    }
    fn end_offset(&self, p: u32) -> BoxFuture<'_, Result<Offset, StorageError>> {
        self.inner.end_offset(p)
    }
}

impl SnapshotStore for FailingRecovery {
    fn save_snapshot(
        &self,
        p: u32,
        key: String,
        value: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        self.inner.save_snapshot(p, key, value)
    }
    fn load_snapshot(
        &self,
        p: u32,
        key: String,
    ) -> BoxFuture<'_, Result<Option<Vec<u8>>, StorageError>> {
        self.inner.load_snapshot(p, key)
    }
}

impl CheckpointStore for FailingRecovery {
    fn load_checkpoint(
        &self,
        group: String,
        p: u32,
    ) -> BoxFuture<'_, Result<Option<Offset>, StorageError>> {
        if p == self.failing.load(Ordering::SeqCst) {
            return Box::pin(async move {
                Err(StorageError::Closed(format!("injected: checkpoint of {p}")))
            });
        }
        self.inner.load_checkpoint(group, p)
    }
    fn commit_checkpoint(
        &self,
        group: String,
        p: u32,
        offset: Offset,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        self.inner.commit_checkpoint(group, p, offset)
    }
}

impl LogBackend for FailingRecovery {
    fn describe(&self) -> String {
        "failing recovery".into()
    }
}

/// Waits until nothing but the test holds `log` (shard tasks finish tearing down after they
/// have been reported stopped).
async fn released<T: ?Sized>(log: &Arc<T>) -> bool {
    for _ in 0..1000 {
        if Arc::strong_count(log) == 1 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    false
}

#[tokio::test]
async fn a_failed_start_leaves_no_shard_running_and_releases_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let embedded: Arc<dyn LogBackend> = Arc::new(EmbeddedLog::open(dir.path(), 4).unwrap());
    let log = FailingRecovery::new(embedded, 2);
    let err = Runtime::builder()
        .backend(log.clone())
        .start()
        .await
        .err()
        .expect("the start fails");
    assert!(err.to_string().contains("checkpoint of 2"), "{err}");
    assert!(released(&log).await, "a shard still holds the backend");
    drop(log);
    // The store's lock went with the last reference: it opens again.
    let reopened = EmbeddedLog::open(dir.path(), 4).unwrap();
    drop(reopened);
}

#[tokio::test]
async fn a_failed_assign_stops_what_it_started_and_a_second_assign_serves_each_partition_once() {
    let memory = Arc::new(MemoryLog::new(4));
    let log = FailingRecovery::new(memory.clone(), 0);
    let runtime = Runtime::builder()
        .backend(log.clone())
        .owned_partitions(vec![])
        .start()
        .await
        .unwrap();
    assert!(runtime.assign(&[0, 1, 2, 3]).await.is_err());
    assert!(runtime.owned_partitions().is_empty());
    log.failing.store(u32::MAX, Ordering::SeqCst);
    runtime.assign(&[0, 1, 2, 3, 3]).await.unwrap();
    assert_eq!(runtime.owned_partitions(), vec![0, 1, 2, 3]);
    let accounts = runtime.aggregate::<Account>();
    for i in 0..20 {
        accounts
            .send(&format!("a{i}"), Cmd::Deposit(1))
            .await
            .unwrap();
    }
    runtime.shutdown().await.unwrap();
    drop(accounts);
    drop(runtime);
    assert!(released(&log).await, "a shard outlived the runtime");
}

#[tokio::test(start_paused = true)]
async fn an_assign_waits_for_the_revoked_shard_of_its_partition_to_stop() {
    let gated = Arc::new(common::GatedLog::new(1));
    let gate = gated.gate.clone();
    let runtime = Runtime::builder()
        .backend(gated.clone())
        .start()
        .await
        .unwrap();
    let accounts = runtime.aggregate::<Account>();
    gate.add_permits(1);
    accounts.send("a", Cmd::Deposit(1)).await.unwrap();
    // An append held in flight: the revoked shard cannot finish draining.
    let held = tokio::spawn({
        let accounts = accounts.clone();
        async move { accounts.send("a", Cmd::Deposit(1)).await }
    });
    while gated.inner.all_records().len() < 1 || !runtime.is_live::<Account>("a") {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let revoke = tokio::spawn({
        let runtime = runtime.clone();
        async move { runtime.revoke(&[0], None).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let assign = tokio::spawn({
        let runtime = runtime.clone();
        async move { runtime.assign(&[0]).await }
    });
    // Time runs ahead whenever every task is idle: ten seconds pass with the drain stuck.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        !assign.is_finished(),
        "assign did not wait for the draining shard"
    );
    assert!(runtime.owned_partitions().is_empty());
    gate.add_permits(100);
    assert_eq!(held.await.unwrap().unwrap().seq, 2);
    revoke.await.unwrap();
    assign.await.unwrap().unwrap();
    assert_eq!(runtime.owned_partitions(), vec![0]);
    assert_eq!(accounts.send("a", Cmd::Deposit(1)).await.unwrap().seq, 3);
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_checkpoint_beyond_the_end_of_its_partition_is_corrupt() {
    let log = Arc::new(MemoryLog::new(2));
    log.append(
        1,
        vec![LogRecord {
            key: "k".into(),
            value: vec![],
        }],
    )
    .await
    .unwrap();
    log.commit_checkpoint("keel.recovery".into(), 1, 1000)
        .await
        .unwrap();
    let err = Runtime::builder()
        .backend(log.clone())
        .start()
        .await
        .err()
        .expect("the start fails");
    assert!(
        matches!(err, Error::Storage(StorageError::Corrupt { .. })),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("partition 1") && text.contains("1000") && text.contains("end offset 1"),
        "{text}"
    );
}
