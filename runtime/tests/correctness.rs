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
use keel::config::SnapshotPolicy;
use keel::log::StorageError;
use keel::log::testing::Intercept;
use keel::log::{
    CheckpointStore, EventLog, LogBackend, LogRecord, MemoryLog, Offset, SnapshotStore,
    aggregate_key,
};
use keel::{CommandError, EmbeddedLog, Error, Runtime, SendOptions};

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

/// A second Rust type claiming `Account`'s name.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Impostor;

impl keel::Aggregate for Impostor {
    const TYPE: &'static str = "Account";
    type Command = ();
    type Event = common::AccountEvent;
    type Error = std::io::Error;
    fn handle(&self, _: ()) -> Result<Vec<common::AccountEvent>, std::io::Error> {
        Ok(vec![])
    }
    fn apply(&mut self, _: &common::AccountEvent) {}
}

#[tokio::test]
async fn types_registered_on_the_builder_are_checked_when_it_starts() {
    let clash = Runtime::builder()
        .backend(Arc::new(MemoryLog::new(1)))
        .register::<Account>()
        .register::<Impostor>()
        .start()
        .await;
    match clash {
        Ok(_) => panic!("two types named Account were accepted"),
        Err(e) => {
            assert!(matches!(e, Error::Config(_)), "{e:?}");
            assert!(e.to_string().contains("\"Account\""), "{e}");
        }
    }
    let slashed = Runtime::builder()
        .backend(Arc::new(MemoryLog::new(1)))
        .register::<Slashed>()
        .start()
        .await;
    assert!(
        matches!(&slashed, Err(Error::Config(m)) if m.contains("invalid Aggregate::TYPE")),
        "{:?}",
        slashed.err()
    );
    // Registering the same type twice is fine, and its handle works.
    let runtime = Runtime::builder()
        .backend(Arc::new(MemoryLog::new(1)))
        .register::<Account>()
        .register::<Account>()
        .start()
        .await
        .unwrap();
    runtime
        .aggregate::<Account>()
        .send("a", Cmd::Deposit(1))
        .await
        .unwrap();
    runtime.shutdown().await.unwrap();
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

impl Intercept for FailingRecovery {
    fn inner(&self) -> &dyn LogBackend {
        &*self.inner
    }
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
    while gated.inner.all_records().is_empty() || !runtime.is_live::<Account>("a") {
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

async fn send_once(
    accounts: &keel::AggregateHandle<Account>,
    id: &str,
    command: Cmd,
    command_id: &str,
) -> keel::Committed<common::AccountEvent> {
    accounts
        .send_with(id, command, SendOptions::with_id(command_id))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_snapshot_whose_command_window_does_not_decode_is_not_used() {
    let log = Arc::new(MemoryLog::new(1));
    let runtime = start(log.clone()).await;
    let accounts = runtime.aggregate::<Account>();
    send_once(&accounts, "a", Cmd::Deposit(5), "d1").await;
    runtime.shutdown().await.unwrap();
    let stored = log
        .load_snapshot(0, "Account/a".into())
        .await
        .unwrap()
        .unwrap();
    let mut snapshot = keel::envelope::SnapshotEnvelope::decode(&stored, &"test").unwrap();
    snapshot.recent_commands = vec![0xc1, 0x00];
    log.save_snapshot(0, "Account/a".into(), snapshot.encode())
        .await
        .unwrap();
    let runtime = start(log.clone()).await;
    let accounts = runtime.aggregate::<Account>();
    let retry = send_once(&accounts, "a", Cmd::Deposit(5), "d1").await;
    assert!(retry.deduplicated);
    assert_eq!(accounts.query("a", |s| s.balance).await.unwrap(), 5);
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn acknowledged_command_ids_survive_snapshot_restarts_state_version_bumps_and_crashes() {
    let log = Arc::new(MemoryLog::new(2));
    let mut acknowledged: Vec<(String, Cmd, String)> = Vec::new();
    let runtime = start(log.clone()).await;
    let accounts = runtime.aggregate::<Account>();
    for (i, command) in [Cmd::Deposit(5), Cmd::Noop, Cmd::Burst(2), Cmd::Noop]
        .into_iter()
        .enumerate()
    {
        let (id, command_id) = (format!("a{}", i % 2), format!("c{i}"));
        send_once(&accounts, &id, command.clone(), &command_id).await;
        acknowledged.push((id, command, command_id));
    }
    let retry_all = |runtime: Runtime, acknowledged: Vec<(String, Cmd, String)>| async move {
        let accounts = runtime.aggregate::<Account>();
        for (id, command, command_id) in &acknowledged {
            // A retry of a command that caused nothing, now sent as one that would append.
            let command = match command {
                Cmd::Noop => Cmd::Deposit(1000),
                other => other.clone(),
            };
            let retry = send_once(&accounts, id, command, command_id).await;
            assert!(retry.deduplicated, "{command_id} applied twice");
        }
        runtime
    };
    // A restart from snapshots (written on shutdown).
    runtime.shutdown().await.unwrap();
    let runtime = retry_all(start(log.clone()).await, acknowledged.clone()).await;
    // A crash: nothing snapshotted on the way down.
    let accounts = runtime.aggregate::<Account>();
    send_once(&accounts, "a0", Cmd::Noop, "c4").await;
    send_once(&accounts, "a1", Cmd::Deposit(1), "c5").await;
    acknowledged.push(("a0".into(), Cmd::Noop, "c4".into()));
    acknowledged.push(("a1".into(), Cmd::Deposit(1), "c5".into()));
    runtime.abort().await;
    let runtime = retry_all(start(log.clone()).await, acknowledged.clone()).await;
    runtime.shutdown().await.unwrap();
    // A new state version: every snapshot's state is unusable.
    let runtime = start(log.clone()).await;
    let accounts = runtime.aggregate::<common::AccountV2>();
    for (id, command, command_id) in &acknowledged {
        let command = match command {
            Cmd::Noop => Cmd::Deposit(1000),
            other => other.clone(),
        };
        let retry = accounts
            .send_with(id, command, SendOptions::with_id(command_id.as_str()))
            .await
            .unwrap();
        assert!(
            retry.deduplicated,
            "{command_id} applied twice after a version bump"
        );
    }
    assert_eq!(accounts.query("a0", |s| s.0.balance).await.unwrap(), 7);
    assert_eq!(accounts.query("a1", |s| s.0.balance).await.unwrap(), 1);
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_retry_after_a_thousand_other_commands_within_the_retention_is_deduplicated() {
    let log = Arc::new(MemoryLog::new(1));
    let runtime = start(log.clone()).await;
    let accounts = runtime.aggregate::<Account>();
    let first = send_once(&accounts, "hot", Cmd::Burst(2), "first").await;
    for i in 0..1000 {
        send_once(&accounts, "hot", Cmd::Deposit(1), &format!("other-{i}")).await;
    }
    let retry = send_once(&accounts, "hot", Cmd::Burst(2), "first").await;
    assert!(retry.deduplicated);
    assert_eq!((retry.seq, retry.position), (first.seq, first.position));
    assert_eq!(
        retry.events, first.events,
        "the first outcome, read back from the log"
    );
    // Kept across a snapshot restart and, rebuilt from the events, across a crash.
    runtime.shutdown().await.unwrap();
    let runtime = start(log.clone()).await;
    let accounts = runtime.aggregate::<Account>();
    assert!(
        send_once(&accounts, "hot", Cmd::Burst(2), "first")
            .await
            .deduplicated
    );
    runtime.abort().await;
    let runtime = start(log.clone()).await;
    let accounts = runtime.aggregate::<Account>();
    assert!(
        send_once(&accounts, "hot", Cmd::Burst(2), "first")
            .await
            .deduplicated
    );
    assert_eq!(accounts.query("hot", |s| s.balance).await.unwrap(), 1002);
    runtime.shutdown().await.unwrap();
}

static APPLY_PANICS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// An account whose `apply` panics once on a deposit of 13, while told to.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Fragile(Account);

impl keel::Aggregate for Fragile {
    const TYPE: &'static str = "Fragile";
    type Command = Cmd;
    type Event = common::AccountEvent;
    type Error = common::AccountError;
    fn handle(&self, command: Cmd) -> Result<Vec<common::AccountEvent>, common::AccountError> {
        self.0.handle(command)
    }
    fn apply(&mut self, event: &common::AccountEvent) {
        if *event == (common::AccountEvent::Deposited { amount: 13 })
            && APPLY_PANICS.swap(false, Ordering::SeqCst)
        {
            panic!("apply is broken");
        }
        self.0.apply(event)
    }
}

#[tokio::test]
async fn a_panic_in_apply_after_the_append_reports_the_command_committed() {
    let log = Arc::new(MemoryLog::new(1));
    let runtime = start(log.clone()).await;
    let fragile = runtime.aggregate::<Fragile>();
    fragile.send("f", Cmd::Deposit(1)).await.unwrap();
    APPLY_PANICS.store(true, Ordering::SeqCst);
    let committed = fragile.send("f", Cmd::Deposit(13)).await.unwrap();
    assert_eq!(committed.seq, 2);
    assert!(!committed.deduplicated);
    // The actor restarted from the log, which has the event.
    assert_eq!(fragile.query("f", |s| s.0.balance).await.unwrap(), 14);
    assert_eq!(fragile.send("f", Cmd::Deposit(1)).await.unwrap().seq, 3);
    assert_eq!(log.all_records().len(), 3);
    runtime.shutdown().await.unwrap();
}

/// An account whose events of version 1 go through an upcaster that panics.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Upcasted(Account);

impl keel::Aggregate for Upcasted {
    const TYPE: &'static str = "Upcasted";
    type Command = Cmd;
    type Event = common::AccountEvent;
    type Error = common::AccountError;
    fn handle(&self, command: Cmd) -> Result<Vec<common::AccountEvent>, common::AccountError> {
        self.0.handle(command)
    }
    fn apply(&mut self, event: &common::AccountEvent) {
        self.0.apply(event)
    }
    fn upcasters() -> keel::upcast::Upcasters {
        keel::upcast::Upcasters::new().register("Deposited", 1, |_| panic!("upcaster bug"))
    }
}

#[tokio::test]
async fn a_panicking_upcaster_is_corrupt_naming_aggregate_partition_and_offset() {
    let log = Arc::new(MemoryLog::new(1));
    let payload = rmp_serde::to_vec_named(&common::AccountEvent::Deposited { amount: 1 }).unwrap();
    let envelope = keel::envelope::EventEnvelope {
        aggregate_type: "Upcasted".into(),
        aggregate_id: "u".into(),
        seq: 1,
        event_type: "Deposited".into(),
        event_version: 1,
        command_id: None,
        timestamp_ms: 0,
        payload,
    };
    log.append(
        0,
        vec![LogRecord {
            key: "Upcasted/u".into(),
            value: envelope.encode(),
        }],
    )
    .await
    .unwrap();
    let runtime = start(log.clone()).await;
    let err = runtime
        .aggregate::<Upcasted>()
        .send("u", Cmd::Deposit(1))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, CommandError::Corrupt { .. }), "{text}");
    assert!(
        text.contains("Upcasted/u") && text.contains("partition 0") && text.contains("offset 0"),
        "{text}"
    );
    assert!(text.contains("upcaster bug"), "{text}");
    runtime.shutdown().await.unwrap();
}

fn account_event(id: &str, seq: u64) -> LogRecord {
    let payload = rmp_serde::to_vec_named(&common::AccountEvent::Deposited { amount: 1 }).unwrap();
    let envelope = keel::envelope::EventEnvelope {
        aggregate_type: "Account".into(),
        aggregate_id: id.into(),
        seq,
        event_type: "Deposited".into(),
        event_version: 1,
        command_id: None,
        timestamp_ms: 0,
        payload,
    };
    LogRecord {
        key: aggregate_key("Account", id),
        value: envelope.encode(),
    }
}

#[tokio::test]
async fn settling_moves_past_keys_it_cannot_load() {
    let log = Arc::new(MemoryLog::new(1));
    // As a crash leaves them: the lowest offsets belong to keys no handle can load (a type
    // this application never registers, a corrupt history), then twenty plain aggregates.
    let mut records: Vec<LogRecord> = (0..9)
        .map(|i| LogRecord {
            key: format!("Other/x{i}"),
            value: vec![1, 2, 3],
        })
        .collect();
    records.push(LogRecord {
        key: "Account/bad".into(),
        value: vec![0xc1],
    });
    records.extend((0..20).map(|i| account_event(&format!("a{i}"), 1)));
    log.append(0, records).await.unwrap();
    let runtime = Runtime::builder()
        .backend(log.clone())
        .maintenance_interval(Duration::from_millis(1))
        .start()
        .await
        .unwrap();
    let _accounts = runtime.aggregate::<Account>();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let snapshots = log.snapshot_keys();
        if (0..20).all(|i| snapshots.contains_key(&format!("Account/a{i}"))) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "settling is stuck: {snapshots:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    runtime.shutdown().await.unwrap();
    // The keys it could not load still hold the checkpoint: their events are not covered.
    let checkpoint = log
        .load_checkpoint("keel.recovery".into(), 0)
        .await
        .unwrap();
    assert_eq!(checkpoint, Some(0));
}

#[tokio::test]
async fn an_aggregate_with_more_uncovered_events_than_the_index_lists_replays_them_all() {
    let log = Arc::new(MemoryLog::new(1));
    let mut records = Vec::new();
    for seq in 1..=1500 {
        records.push(account_event("hot", seq));
        records.push(account_event(&format!("cold{}", seq % 7), seq / 7 + 1));
        if seq % 7 != 6 {
            records.pop(); // keep the cold keys' sequences dense
        }
    }
    log.append(0, records).await.unwrap();
    let runtime = Runtime::builder()
        .backend(log.clone())
        .snapshots(SnapshotPolicy {
            after_long_replay: false,
            on_passivation: false,
            ..SnapshotPolicy::default()
        })
        .start()
        .await
        .unwrap();
    let accounts = runtime.aggregate::<Account>();
    assert_eq!(accounts.query("hot", |s| s.balance).await.unwrap(), 1500);
    assert_eq!(
        accounts.send("hot", Cmd::Deposit(1)).await.unwrap().seq,
        1501
    );
    runtime.abort().await;
    let runtime = start(log.clone()).await;
    let accounts = runtime.aggregate::<Account>();
    assert_eq!(accounts.query("hot", |s| s.balance).await.unwrap(), 1501);
    runtime.shutdown().await.unwrap();
}

/// A backend whose checkpoint commits wait at a gate (a broker that takes its time).
struct SlowCheckpoints {
    inner: MemoryLog,
    gate: tokio::sync::Semaphore,
    commits: AtomicU32,
}

impl Intercept for SlowCheckpoints {
    fn inner(&self) -> &dyn LogBackend {
        &self.inner
    }
    fn commit_checkpoint(
        &self,
        group: String,
        partition: u32,
        offset: Offset,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        self.commits.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            self.gate.acquire().await.unwrap().forget();
            self.inner.commit_checkpoint(group, partition, offset).await
        })
    }
}

#[tokio::test]
async fn a_slow_checkpoint_commit_never_holds_up_activations() {
    let log = Arc::new(SlowCheckpoints {
        inner: MemoryLog::new(1),
        gate: tokio::sync::Semaphore::new(0),
        commits: AtomicU32::new(0),
    });
    let runtime = Runtime::builder()
        .backend(log.clone())
        .maintenance_interval(Duration::from_millis(2))
        .command_timeout(Duration::from_secs(20))
        .start()
        .await
        .unwrap();
    let accounts = runtime.aggregate::<Account>();
    accounts.send("a", Cmd::Deposit(1)).await.unwrap();
    // The checkpoint moved: the shard's next tick commits it, and the commit hangs.
    while log.commits.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Meanwhile the one shard of the log activates new aggregates and serves them.
    for id in ["b", "c", "d"] {
        let committed = accounts.send(id, Cmd::Deposit(2)).await.unwrap();
        assert_eq!(committed.seq, 1, "{id}");
    }
    assert_eq!(accounts.query("a", |s| s.balance).await.unwrap(), 1);
    // The stop waits for the commit under way, then commits the last checkpoint.
    log.gate.add_permits(100);
    runtime.shutdown().await.unwrap();
    let group = "keel.recovery".to_string();
    assert_eq!(
        log.inner.load_checkpoint(group, 0).await.unwrap(),
        Some(log.inner.end_offset(0).await.unwrap())
    );
}
