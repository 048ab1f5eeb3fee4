//! Black-box tests of projections over a `MemoryLog` (and the aggregate runtime): views equal
//! a fresh replay, read-your-writes, poison policies, rebuilds, persisted reopen, history.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use keel::Runtime;
use keel::log::Position;
use keel::log::{EventLog, LogBackend, MemoryLog};
use keel_projections::history::History;
use keel_projections::status::ProjectionState;
use keel_projections::{PoisonPolicy, ProjectionError, ProjectionRunner, SwitchableView, replay};
use proptest::prelude::*;
use support::{
    Account, AccountCommand, AccountEvent, Balance, Balances, Picky, Totals, all_records, append,
    append_garbage,
};

const WAIT: Duration = Duration::from_secs(10);

fn memory_log(partitions: u32) -> (Arc<MemoryLog>, Arc<dyn LogBackend>) {
    let log = Arc::new(MemoryLog::new(partitions));
    let backend: Arc<dyn LogBackend> = log.clone();
    (log, backend)
}

/// Appends `ops` (account index, signed amount) with per-account sequence numbers.
async fn append_ops(log: &dyn EventLog, seqs: &mut HashMap<String, u64>, ops: &[(u8, i64)]) {
    for (account, amount) in ops {
        let id = format!("acc-{account}");
        let seq = seqs.entry(id.clone()).or_default();
        *seq += 1;
        let event = if *amount >= 0 {
            AccountEvent::Deposited { amount: *amount }
        } else {
            AccountEvent::Withdrawn { amount: -amount }
        };
        append(log, &id, *seq, &event).await;
    }
}

fn as_map<K: std::hash::Hash + Eq, V>(entries: Vec<(K, V)>) -> HashMap<K, V> {
    entries.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Whatever the events and however they interleave with the projection running, every
    /// view (in memory and persisted, per-key and cross-partition) equals a replay of the
    /// whole log into an empty view.
    #[test]
    fn every_view_equals_a_fresh_replay_of_the_log(
        before in proptest::collection::vec((0u8..6, -50i64..50), 0..60),
        during in proptest::collection::vec((0u8..6, -50i64..50), 0..60),
        partitions in 1u32..5,
        batch_size in 1usize..16,
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (log, backend) = memory_log(partitions);
            let dir = tempfile::tempdir().expect("tempdir");
            let mut seqs = HashMap::new();
            append_ops(&*log, &mut seqs, &before).await;
            let runner = ProjectionRunner::new(backend).batch_size(batch_size);
            let balances = runner.start_in_memory(Balances::new()).await.expect("start");
            let totals = runner.start_in_memory(Totals).await.expect("start");
            let persisted = runner
                .start_persisted(Balances::new(), dir.path())
                .await
                .expect("start");
            append_ops(&*log, &mut seqs, &during).await;
            for view in [&balances, &totals, &persisted] {
                view.caught_up(WAIT).await.expect("caught up");
            }
            let records = all_records(&*log).await;
            let expected = replay(&Balances::new(), &records).expect("replay");
            assert_eq!(as_map(balances.all().expect("all")), expected);
            assert_eq!(as_map(persisted.all().expect("all")), expected);
            let expected_totals = replay(&Totals, &records).expect("replay");
            assert_eq!(as_map(totals.all().expect("all")), expected_totals);
            assert_eq!(balances.lag().await.expect("lag"), 0);
            persisted.shutdown(WAIT).await.expect("shutdown");
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_waiting_on_a_position_sees_that_write() {
    let (log, backend) = memory_log(4);
    let view = ProjectionRunner::new(backend)
        .start_in_memory(Balances::new())
        .await
        .expect("start");
    let mut written: HashMap<String, u64> = HashMap::new();
    for seq in 1..=200u64 {
        let id = format!("acc-{}", seq % 7);
        let position = append(&*log, &id, seq, &AccountEvent::Deposited { amount: 1 }).await;
        *written.entry(id.clone()).or_default() += 1;
        view.wait_for(position, WAIT).await.expect("wait_for");
        let seen = view.get(&id).expect("get").map_or(0, |b: Balance| b.events);
        assert_eq!(seen, written[&id], "{id} after {position}");
        assert!(view.status().has_reached(position));
    }
    let expected = replay(&Balances::new(), &all_records(&*log).await).expect("replay");
    assert_eq!(as_map(view.all().expect("all")), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_through_the_runtime() {
    let (_log, backend) = memory_log(4);
    let runtime = Runtime::builder()
        .backend(backend.clone())
        .start()
        .await
        .expect("runtime");
    let view = ProjectionRunner::new(runtime.backend())
        .start_in_memory(Balances::new())
        .await
        .expect("start");
    let accounts = runtime.aggregate::<Account>();
    for i in 1..=50i64 {
        let id = format!("acc-{}", i % 5);
        let committed = accounts
            .send(&id, AccountCommand::Deposit(i))
            .await
            .expect("deposit");
        let position = committed.position.expect("an event was appended");
        view.wait_for(position, WAIT).await.expect("wait_for");
        let balance = view.get(&id).expect("get").expect("entry");
        let state = accounts.query(&id, |a| a.balance).await.expect("query");
        assert_eq!(balance.balance, state, "{id}");
    }
    // A rejected command appends nothing and has no position to wait for.
    let rejected = accounts
        .send("acc-1", AccountCommand::Withdraw(1_000_000))
        .await;
    assert!(rejected.is_err());
    runtime.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_times_out_and_rejects_unknown_partitions() {
    let (_log, backend) = memory_log(2);
    let view = ProjectionRunner::new(backend)
        .start_in_memory(Balances::new())
        .await
        .expect("start");
    let far = Position {
        partition: 0,
        offset: 10,
    };
    let err = view
        .wait_for(far, Duration::from_millis(50))
        .await
        .expect_err("nothing there yet");
    assert!(matches!(err, ProjectionError::Timeout { .. }), "{err}");
    let err = view
        .wait_for(
            Position {
                partition: 9,
                offset: 0,
            },
            WAIT,
        )
        .await
        .expect_err("no partition 9");
    assert!(matches!(err, ProjectionError::Config(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_stops_one_projection_and_is_counted_by_another() {
    // One partition, so every event is behind the poison one.
    let (log, backend) = memory_log(1);
    let runner = ProjectionRunner::new(backend).lag_interval(Duration::from_millis(20));
    let stopping = runner
        .clone()
        .poison_policy(PoisonPolicy::Stop)
        .start_in_memory(Balances::new())
        .await
        .expect("start");
    let skipping = runner
        .poison_policy(PoisonPolicy::SkipAndCount)
        .start_in_memory(Balances::new())
        .await
        .expect("start");

    append(&*log, "a", 1, &AccountEvent::Deposited { amount: 5 }).await;
    let poison = append_garbage(&*log, "a").await;
    let last = append(&*log, "a", 2, &AccountEvent::Deposited { amount: 7 }).await;

    // The stopping projection names the partition and offset, to status and to waiters.
    let err = stopping.wait_for(last, WAIT).await.expect_err("stopped");
    match &err {
        ProjectionError::Poisoned {
            partition, offset, ..
        } => assert_eq!((*partition, *offset), (poison.partition, poison.offset)),
        other => panic!("expected Poisoned, got {other}"),
    }
    assert!(err.to_string().contains("offset 1"), "{err}");
    let status = stopping.status();
    assert!(matches!(
        status.state,
        ProjectionState::Failed(ProjectionError::Poisoned { .. })
    ));
    assert_eq!(
        status.next_offsets,
        vec![1],
        "stopped before the poison event"
    );
    // What it applied before the poison event still answers queries.
    assert_eq!(
        stopping.get(&"a".into()).expect("get").expect("a").balance,
        5
    );
    assert_eq!(stopping.lag().await.expect("lag"), 2);

    // The skipping projection keeps going and counts the event.
    skipping.wait_for(last, WAIT).await.expect("skips past it");
    let status = skipping.status();
    assert!(matches!(status.state, ProjectionState::Running));
    assert_eq!(status.poison_skipped, 1);
    assert_eq!(status.last_poison, Some(poison));
    assert_eq!(
        skipping.get(&"a".into()).expect("get").expect("a").balance,
        12
    );
    // The lag gauge's value reaches the status too.
    let deadline = tokio::time::Instant::now() + WAIT;
    while skipping.status().lag != Some(0) {
        assert!(tokio::time::Instant::now() < deadline, "lag never measured");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_errors_and_panics_are_poison_and_leave_no_partial_change() {
    let (log, backend) = memory_log(1);
    let runner = ProjectionRunner::new(backend);
    let skipping = runner
        .clone()
        .poison_policy(PoisonPolicy::SkipAndCount)
        .start_in_memory(Picky)
        .await
        .expect("start");
    let stopping = runner.start_in_memory(Picky).await.expect("start");

    append(&*log, "a", 1, &AccountEvent::Deposited { amount: 1 }).await;
    let unlucky = append(&*log, "a", 2, &AccountEvent::Deposited { amount: 13 }).await;
    append(&*log, "a", 3, &AccountEvent::Deposited { amount: 666 }).await;
    let last = append(&*log, "a", 4, &AccountEvent::Deposited { amount: 2 }).await;

    skipping.wait_for(last, WAIT).await.expect("skips both");
    assert_eq!(skipping.status().poison_skipped, 2);
    // Picky writes before failing; none of a failed event's writes may remain.
    assert_eq!(skipping.get(&"a".into()).expect("get"), Some(3));
    assert_eq!(skipping.get(&"touched".into()).expect("get"), Some(2));

    let err = stopping.wait_for(last, WAIT).await.expect_err("stops");
    match err {
        ProjectionError::Poisoned { offset, reason, .. } => {
            assert_eq!(offset, unlucky.offset);
            assert!(reason.contains("13 is unlucky"), "{reason}");
        }
        other => panic!("expected Poisoned, got {other}"),
    }
    assert_eq!(stopping.get(&"a".into()).expect("get"), Some(1));

    // A panicking handler is reported the same way.
    let (log, backend) = memory_log(1);
    let stopping = ProjectionRunner::new(backend)
        .start_in_memory(Picky)
        .await
        .expect("start");
    let beast = append(&*log, "b", 1, &AccountEvent::Deposited { amount: 666 }).await;
    match stopping.wait_for(beast, WAIT).await {
        Err(ProjectionError::Poisoned { reason, .. }) => {
            assert!(reason.contains("the beast"), "{reason}")
        }
        other => panic!("expected Poisoned, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_is_rebuilt_beside_the_old_one_then_switched_in() {
    let (log, backend) = memory_log(3);
    let runner = ProjectionRunner::new(backend);
    let v1 = runner.start_in_memory(Balances::new()).await.expect("v1");
    for seq in 1..=300u64 {
        let id = format!("acc-{}", seq % 10);
        append(&*log, &id, seq, &AccountEvent::Deposited { amount: 2 }).await;
    }
    v1.caught_up(WAIT).await.expect("v1");
    let served = SwitchableView::new(v1.clone());

    // v2 counts ten times as much; it replays from the start while v1 keeps serving.
    let v2 = runner
        .start_in_memory(Balances::v2_scaled(10))
        .await
        .expect("v2");
    let during = served
        .current()
        .get(&"acc-3".into())
        .expect("get")
        .expect("acc-3");
    assert_eq!(during.balance, 60, "v1 serves during the rebuild");
    assert_eq!(served.current().version(), 1);

    let old = served
        .switch_when_caught_up(v2, WAIT)
        .await
        .expect("switch");
    assert_eq!(old.version(), 1);
    let now = served.current();
    assert_eq!(now.version(), 2);
    assert_eq!(
        now.get(&"acc-3".into())
            .expect("get")
            .expect("acc-3")
            .balance,
        600
    );
    assert_eq!(now.lag().await.expect("lag"), 0);

    // Dropping the old handles stops the old projection.
    drop(old);
    drop(v1);
    assert_eq!(now.len().expect("len"), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persisted_view_reopens_where_it_left_off() {
    let (log, backend) = memory_log(4);
    let dir = tempfile::tempdir().expect("tempdir");
    let runner = ProjectionRunner::new(backend).batch_size(64);
    let mut seq = 0;
    for i in 0..500u64 {
        seq += 1;
        append(
            &*log,
            &format!("acc-{}", i % 9),
            seq,
            &AccountEvent::Deposited { amount: 3 },
        )
        .await;
    }
    let view = runner
        .start_persisted(Balances::new(), dir.path())
        .await
        .expect("start");
    view.caught_up(WAIT).await.expect("caught up");
    let first = as_map(view.all().expect("all"));
    let offsets = view.status().next_offsets;
    assert_eq!(view.status().applied, 500);
    view.shutdown(WAIT).await.expect("shutdown");

    // Reopened: the entries are there before anything is applied, and nothing is applied again.
    let view = runner
        .start_persisted(Balances::new(), dir.path())
        .await
        .expect("reopen");
    assert_eq!(view.status().next_offsets, offsets);
    assert_eq!(as_map(view.all().expect("all")), first);
    view.caught_up(WAIT).await.expect("caught up");
    assert_eq!(
        view.status().applied,
        0,
        "nothing at or below the checkpoint is applied"
    );

    for i in 0..10u64 {
        seq += 1;
        append(
            &*log,
            &format!("acc-{i}"),
            seq,
            &AccountEvent::Withdrawn { amount: 1 },
        )
        .await;
    }
    view.caught_up(WAIT).await.expect("caught up");
    assert_eq!(view.status().applied, 10);
    let expected = replay(&Balances::new(), &all_records(&*log).await).expect("replay");
    assert_eq!(as_map(view.all().expect("all")), expected);
    view.shutdown(WAIT).await.expect("shutdown");

    // A rebuilt version gets its own database beside the old one.
    let v2 = runner
        .start_persisted(Balances::v2_scaled(2), dir.path())
        .await
        .expect("v2");
    v2.caught_up(WAIT).await.expect("caught up");
    assert_eq!(v2.status().applied, 510);
    assert!(dir.path().join("balances-v1").is_dir());
    assert!(dir.path().join("balances-v2").is_dir());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_scan_and_rank_entries() {
    let (log, backend) = memory_log(2);
    let dir = tempfile::tempdir().expect("tempdir");
    let runner = ProjectionRunner::new(backend);
    let memory = runner
        .start_in_memory(Balances::new())
        .await
        .expect("start");
    let persisted = runner
        .start_persisted(Balances::new(), dir.path())
        .await
        .expect("start");
    for i in 1..=20i64 {
        append(
            &*log,
            &format!("acc-{i}"),
            1,
            &AccountEvent::Deposited { amount: i * 10 },
        )
        .await;
    }
    for view in [&memory, &persisted] {
        view.caught_up(WAIT).await.expect("caught up");
        let top = view.top_n(3, |_, b| b.balance).expect("top");
        let ids: Vec<_> = top.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(ids, ["acc-20", "acc-19", "acc-18"]);
        assert!(view.top_n(0, |_, b| b.balance).expect("top").is_empty());
        assert_eq!(view.top_n(50, |_, b| b.balance).expect("top").len(), 20);
        let rich = view.scan(|_, b| b.balance >= 150).expect("scan");
        assert_eq!(rich.len(), 6);
        assert_eq!(view.len().expect("len"), 20);
        assert_eq!(view.get(&"nobody".into()).expect("get"), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_serves_one_aggregates_events_and_past_states() {
    let (log, backend) = memory_log(3);
    for seq in 1..=6u64 {
        append(&*log, "mine", seq, &AccountEvent::Deposited { amount: 10 }).await;
        append(&*log, "other", seq, &AccountEvent::Deposited { amount: 1 }).await;
    }
    append(&*log, "mine", 7, &AccountEvent::Withdrawn { amount: 5 }).await;
    let history = History::new(backend);

    let events = history.events::<Account>("mine").await.expect("events");
    let seqs: Vec<u64> = events.iter().map(|e| e.envelope.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(events[6].event, AccountEvent::Withdrawn { amount: 5 });
    assert!(events.windows(2).all(|w| w[0].position < w[1].position));

    let at3 = history
        .state_at_seq::<Account>("mine", 3)
        .await
        .expect("state");
    assert_eq!((at3.state.balance, at3.seq), (30, 3));
    let now = history
        .state_at_seq::<Account>("mine", u64::MAX)
        .await
        .expect("state");
    assert_eq!((now.state.balance, now.seq), (55, 7));
    // Envelope timestamps are seq * 1000 ms.
    let at_time = history
        .state_at_time::<Account>("mine", 4_500)
        .await
        .expect("state");
    assert_eq!((at_time.state.balance, at_time.seq), (40, 4));
    let before = history
        .state_at_time::<Account>("mine", 0)
        .await
        .expect("state");
    assert_eq!(
        (before.state.balance, before.seq, before.position),
        (0, 0, None)
    );
    assert!(
        history
            .envelopes("Account", "nobody")
            .await
            .expect("none")
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_that_does_not_decode_is_poison_located_by_aggregate_partition_and_offset() {
    let (log, backend) = memory_log(1);
    let view = ProjectionRunner::new(backend)
        .start_in_memory(Balances::new())
        .await
        .expect("start");
    append(&*log, "a", 1, &AccountEvent::Deposited { amount: 5 }).await;
    let mut bad = support::envelope("a", 2, &AccountEvent::Deposited { amount: 1 });
    bad.payload = vec![0xc1];
    let offset = log
        .append(
            0,
            vec![keel::log::LogRecord {
                key: bad.key(),
                value: bad.encode(),
            }],
        )
        .await
        .expect("append");
    let err = view
        .wait_for(
            Position {
                partition: 0,
                offset,
            },
            WAIT,
        )
        .await
        .expect_err("poison");
    match err {
        ProjectionError::Poisoned { reason, .. } => assert!(
            reason.contains("aggregate Account/a, partition 0, offset 1"),
            "{reason}"
        ),
        other => panic!("expected Poisoned, got {other}"),
    }
    assert_eq!(view.get(&"a".into()).expect("get").expect("a").balance, 5);
}
