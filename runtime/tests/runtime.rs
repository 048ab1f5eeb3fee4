//! Black-box tests of the aggregate runtime on the in-memory log.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{
    Account, AccountCommand as Cmd, AccountError, AccountEvent, GatedLog, replay_from_log,
};
use keel::config::SnapshotPolicy;
use keel::envelope::SnapshotEnvelope;
use keel::log::{
    CheckpointStore, EventLog, MemoryLog, SnapshotStore, aggregate_key, partition_for,
};
use keel::{CommandError, Runtime, SendOptions};

async fn start(log: Arc<MemoryLog>) -> Runtime {
    Runtime::builder().backend(log).start().await.unwrap()
}

/// Polls `check` until it holds, failing after a generous deadline (no timing assertions:
/// the deadline only turns a hang into a failure).
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_command_commits_durably_and_replies_with_seq_and_position() {
    let log = Arc::new(MemoryLog::new(4));
    let runtime = start(log.clone()).await;
    let accounts = runtime.aggregate::<Account>();
    let first = accounts.send("a", Cmd::Deposit(10)).await.unwrap();
    assert_eq!(first.events, vec![AccountEvent::Deposited { amount: 10 }]);
    assert_eq!(first.seq, 1);
    let second = accounts.send("a", Cmd::Burst(3)).await.unwrap();
    assert_eq!(second.seq, 4);
    let position = second.position.unwrap();
    assert_eq!(position.partition, partition_for("Account/a", 4));
    // The reply came after the append: the log already holds every event.
    assert_eq!(
        log.end_offset(position.partition).await.unwrap(),
        position.offset + 1
    );
    let (state, seq) = replay_from_log(&log, "Account/a");
    assert_eq!((state.balance, seq), (13, 4));
    assert_eq!(accounts.query("a", |s| s.balance).await.unwrap(), 13);
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_rejected_command_appends_nothing() {
    let log = Arc::new(MemoryLog::new(2));
    let runtime = start(log.clone()).await;
    let accounts = runtime.aggregate::<Account>();
    accounts.send("a", Cmd::Deposit(5)).await.unwrap();
    let err = accounts.send("a", Cmd::Withdraw(6)).await.unwrap_err();
    assert!(matches!(
        err,
        CommandError::Rejected(AccountError::Insufficient {
            balance: 5,
            requested: 6
        })
    ));
    let err = accounts.send("a", Cmd::Deposit(0)).await.unwrap_err();
    assert!(matches!(
        err,
        CommandError::Rejected(AccountError::NotPositive(0))
    ));
    assert_eq!(log.all_records().len(), 1);
    let noop = accounts.send("a", Cmd::Noop).await.unwrap();
    assert_eq!((noop.seq, noop.position), (1, None));
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn commands_to_one_aggregate_are_serialized() {
    let log = Arc::new(MemoryLog::new(4));
    let runtime = start(log.clone()).await;
    let accounts = runtime.aggregate::<Account>();
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let accounts = accounts.clone();
            tokio::spawn(async move { accounts.send("hot", Cmd::Deposit(1)).await.unwrap().seq })
        })
        .collect();
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=200).collect::<Vec<u64>>());
    let (state, seq) = replay_from_log(&log, "Account/hot");
    assert_eq!((state.balance, seq), (200, 200));
    runtime.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_idle_actor_is_passivated_with_a_snapshot_and_reactivates_with_its_state() {
    let log = Arc::new(MemoryLog::new(2));
    let runtime = Runtime::builder()
        .backend(log.clone())
        .idle_timeout(Duration::from_secs(10))
        .start()
        .await
        .unwrap();
    let accounts = runtime.aggregate::<Account>();
    accounts.send("a", Cmd::Deposit(7)).await.unwrap();
    assert!(runtime.is_live::<Account>("a"));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        runtime.is_live::<Account>("a"),
        "passivated before the idle timeout"
    );
    tokio::time::sleep(Duration::from_secs(20)).await;
    eventually("passivation", || runtime.live_actors() == 0).await;
    assert!(!runtime.is_live::<Account>("a"));
    let partition = partition_for("Account/a", 2);
    let snapshot = log
        .load_snapshot(partition, "Account/a".into())
        .await
        .unwrap()
        .expect("a snapshot on passivation");
    let snapshot = SnapshotEnvelope::decode(&snapshot, &"test").unwrap();
    assert_eq!(snapshot.seq, 1);
    let reply = accounts.send("a", Cmd::Withdraw(7)).await.unwrap();
    assert_eq!(reply.seq, 2);
    assert_eq!(accounts.query("a", |s| s.balance).await.unwrap(), 0);
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_racing_passivation_are_never_lost() {
    // A tiny idle timeout and a cap of 2 live actors over 8 hot aggregates: actors are
    // passivated constantly while commands keep arriving.
    let log = Arc::new(MemoryLog::new(4));
    let runtime = Runtime::builder()
        .backend(log.clone())
        .idle_timeout(Duration::from_millis(2))
        .maintenance_interval(Duration::from_millis(1))
        .max_live_actors(2)
        .start()
        .await
        .unwrap();
    let accounts = runtime.aggregate::<Account>();
    let per_aggregate = 150;
    let tasks: Vec<_> = (0..8)
        .flat_map(|a| (0..3).map(move |w| (a, w)))
        .map(|(a, _)| {
            let accounts = accounts.clone();
            tokio::spawn(async move {
                for _ in 0..per_aggregate / 3 {
                    accounts
                        .send(&format!("acc-{a}"), Cmd::Deposit(1))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    for a in 0..8 {
        let key = format!("Account/acc-{a}");
        let (state, seq) = replay_from_log(&log, &key);
        assert_eq!(
            (state.balance, seq),
            (per_aggregate, per_aggregate as u64),
            "{key}"
        );
        let live = accounts
            .query(&format!("acc-{a}"), |s| s.balance)
            .await
            .unwrap();
        assert_eq!(live, per_aggregate, "{key} state after reactivation");
    }
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_live_actor_cap_passivates_the_least_recently_used() {
    let log = Arc::new(MemoryLog::new(4));
    let runtime = Runtime::builder()
        .backend(log.clone())
        .max_live_actors(16)
        .start()
        .await
        .unwrap();
    let accounts = runtime.aggregate::<Account>();
    for i in 0..100 {
        accounts
            .send(&format!("a{i}"), Cmd::Deposit(i + 1))
            .await
            .unwrap();
    }
    eventually("live actors back under the cap", || {
        runtime.live_actors() <= 16
    })
    .await;
    // The most recently used survive; the oldest were passivated.
    assert!(runtime.is_live::<Account>("a99"));
    assert!(!runtime.is_live::<Account>("a0"));
    // Passivated aggregates come back with their state.
    for i in 0..100 {
        assert_eq!(
            accounts
                .query(&format!("a{i}"), |s| s.balance)
                .await
                .unwrap(),
            i + 1
        );
    }
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_retried_command_id_returns_the_original_outcome_and_appends_nothing() {
    let log = Arc::new(MemoryLog::new(2));
    let runtime = start(log.clone()).await;
    let accounts = runtime.aggregate::<Account>();
    let first = accounts
        .send_with("a", Cmd::Deposit(5), SendOptions::with_id("cmd-1"))
        .await
        .unwrap();
    assert!(!first.deduplicated);
    let retry = accounts
        .send_with("a", Cmd::Deposit(5), SendOptions::with_id("cmd-1"))
        .await
        .unwrap();
    assert!(retry.deduplicated);
    assert_eq!(
        (retry.seq, retry.position, &retry.events),
        (first.seq, first.position, &first.events)
    );
    assert_eq!(log.all_records().len(), 1);
    runtime.shutdown().await.unwrap();

    // The window survives a restart: from the snapshot written at shutdown…
    let runtime = start(log.clone()).await;
    let accounts = runtime.aggregate::<Account>();
    let retry = accounts
        .send_with("a", Cmd::Deposit(5), SendOptions::with_id("cmd-1"))
        .await
        .unwrap();
    assert!(retry.deduplicated);
    assert_eq!(retry.position, first.position);
    assert_eq!(log.all_records().len(), 1);
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_dedup_window_is_rebuilt_from_events_when_there_is_no_snapshot() {
    let log = Arc::new(MemoryLog::new(2));
    let runtime = Runtime::builder()
        .backend(log.clone())
        .snapshots(SnapshotPolicy {
            every_events: 1_000,
            on_passivation: false,
            after_long_replay: false,
        })
        .start()
        .await
        .unwrap();
    let accounts = runtime.aggregate::<Account>();
    let first = accounts
        .send_with("a", Cmd::Burst(3), SendOptions::with_id("burst-1"))
        .await
        .unwrap();
    runtime.shutdown().await.unwrap();
    assert!(log.snapshot_keys().is_empty());
    let runtime = start(log.clone()).await;
    let retry = runtime
        .aggregate::<Account>()
        .send_with("a", Cmd::Burst(3), SendOptions::with_id("burst-1"))
        .await
        .unwrap();
    assert!(retry.deduplicated);
    assert_eq!(retry.events, first.events);
    assert_eq!(retry.seq, 3);
    assert_eq!(log.all_records().len(), 3);
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn overload_is_an_error_not_unbounded_memory() {
    let log = Arc::new(GatedLog::new(1));
    let gate = log.gate.clone();
    let runtime = Runtime::builder()
        .backend(log.clone())
        .mailbox_capacity(2)
        .max_in_flight(3)
        .start()
        .await
        .unwrap();
    let accounts = runtime.aggregate::<Account>();
    // The first command is picked up and waits in its append; two more fill the mailbox.
    let mut held = Vec::new();
    for _ in 0..3 {
        let accounts = accounts.clone();
        held.push(tokio::spawn(async move {
            accounts.send("a", Cmd::Deposit(1)).await
        }));
        tokio::task::yield_now().await;
    }
    // A fourth command for the same aggregate: its mailbox (or the runtime) is full.
    let err = accounts.send("a", Cmd::Deposit(1)).await.unwrap_err();
    assert!(matches!(err, CommandError::Overloaded(_)), "{err}");
    // Another aggregate is refused by the runtime-wide in-flight limit.
    let err = accounts.send("b", Cmd::Deposit(1)).await.unwrap_err();
    assert!(
        matches!(err, CommandError::Overloaded(ref why) if why.contains("in flight")),
        "{err}"
    );
    gate.add_permits(100);
    for h in held {
        h.await.unwrap().unwrap();
    }
    assert_eq!(accounts.send("b", Cmd::Deposit(1)).await.unwrap().seq, 1);
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_panic_fails_that_command_and_restarts_only_that_aggregate() {
    let log = Arc::new(MemoryLog::new(2));
    let runtime = start(log.clone()).await;
    let accounts = runtime.aggregate::<Account>();
    accounts.send("a", Cmd::Deposit(3)).await.unwrap();
    accounts.send("b", Cmd::Deposit(4)).await.unwrap();
    let err = accounts.send("a", Cmd::Explode).await.unwrap_err();
    assert!(
        matches!(err, CommandError::Panicked { ref message, .. } if message.contains("boom")),
        "{err}"
    );
    // The aggregate restarts from the log with its state; the other one never noticed.
    assert_eq!(accounts.send("a", Cmd::Deposit(1)).await.unwrap().seq, 2);
    assert_eq!(accounts.query("a", |s| s.balance).await.unwrap(), 4);
    assert_eq!(accounts.send("b", Cmd::Deposit(1)).await.unwrap().seq, 2);
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_failed_append_stops_the_actor_and_memory_never_runs_ahead_of_the_log() {
    let log = Arc::new(MemoryLog::new(2));
    let runtime = start(log.clone()).await;
    let accounts = runtime.aggregate::<Account>();
    accounts.send("a", Cmd::Deposit(3)).await.unwrap();
    log.fail_next_appends(1);
    let err = accounts.send("a", Cmd::Deposit(100)).await.unwrap_err();
    assert!(matches!(err, CommandError::Storage { .. }), "{err}");
    assert!(err.is_retryable());
    assert_eq!(accounts.query("a", |s| s.balance).await.unwrap(), 3);
    assert_eq!(accounts.send("a", Cmd::Deposit(1)).await.unwrap().seq, 2);
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_undecodable_snapshot_falls_back_to_full_replay() {
    let log = Arc::new(MemoryLog::new(2));
    let runtime = start(log.clone()).await;
    let accounts = runtime.aggregate::<Account>();
    for _ in 0..5 {
        accounts.send("a", Cmd::Deposit(2)).await.unwrap();
    }
    runtime.shutdown().await.unwrap();
    let partition = partition_for("Account/a", 2);
    log.save_snapshot(partition, "Account/a".into(), vec![0xc1, 0xff, 0x00])
        .await
        .unwrap();
    let runtime = start(log.clone()).await;
    let accounts = runtime.aggregate::<Account>();
    assert_eq!(accounts.query("a", |s| s.balance).await.unwrap(), 10);
    assert_eq!(accounts.send("a", Cmd::Deposit(1)).await.unwrap().seq, 6);
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_corrupt_event_is_an_error_naming_the_aggregate_partition_and_offset() {
    let log = Arc::new(MemoryLog::new(1));
    log.append(
        0,
        vec![keel::log::LogRecord {
            key: "Account/bad".into(),
            value: vec![0x93, 0x01],
        }],
    )
    .await
    .unwrap();
    let runtime = start(log.clone()).await;
    let err = runtime
        .aggregate::<Account>()
        .send("bad", Cmd::Deposit(1))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, CommandError::Corrupt { .. }), "{text}");
    assert!(
        text.contains("Account/bad") && text.contains("partition 0") && text.contains("offset 0"),
        "{text}"
    );
    assert_eq!(
        log.all_records().len(),
        1,
        "nothing appended after the failure"
    );
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn recovery_after_a_clean_shutdown_starts_at_the_end_of_the_log() {
    let log = Arc::new(MemoryLog::new(2));
    let runtime = start(log.clone()).await;
    let accounts = runtime.aggregate::<Account>();
    for i in 0..50 {
        accounts
            .send(&format!("a{}", i % 7), Cmd::Deposit(1))
            .await
            .unwrap();
    }
    runtime.shutdown().await.unwrap();
    for partition in 0..2 {
        let end = log.end_offset(partition).await.unwrap();
        let checkpoint = log
            .load_checkpoint("keel.recovery".into(), partition)
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(
            checkpoint, end,
            "partition {partition}: everything is covered by snapshots"
        );
    }
}

#[tokio::test]
async fn recovery_after_a_crash_replays_only_what_snapshots_do_not_cover() {
    let log = Arc::new(MemoryLog::new(1));
    let runtime = Runtime::builder()
        .backend(log.clone())
        .snapshots(SnapshotPolicy {
            every_events: 10,
            ..SnapshotPolicy::default()
        })
        .maintenance_interval(Duration::from_millis(5))
        .start()
        .await
        .unwrap();
    let accounts = runtime.aggregate::<Account>();
    for _ in 0..25 {
        accounts.send("a", Cmd::Deposit(1)).await.unwrap();
    }
    // Snapshot at 10 and 20 events; the checkpoint moves past them on the next tick.
    eventually("checkpoint committed", || {
        futures::executor::block_on(log.load_checkpoint("keel.recovery".into(), 0)).unwrap()
            == Some(20)
    })
    .await;
    // Crash: stop without snapshots or checkpoint commits, start again on the same log.
    runtime.abort().await;
    let runtime = start(log.clone()).await;
    let accounts = runtime.aggregate::<Account>();
    assert_eq!(
        accounts
            .query("a", |s| (s.balance, s.operations))
            .await
            .unwrap(),
        (25, 25)
    );
    assert_eq!(accounts.send("a", Cmd::Deposit(1)).await.unwrap().seq, 26);
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn commands_after_shutdown_are_refused() {
    let log = Arc::new(MemoryLog::new(1));
    let runtime = start(log).await;
    let accounts = runtime.aggregate::<Account>();
    accounts.send("a", Cmd::Deposit(1)).await.unwrap();
    runtime.shutdown().await.unwrap();
    let err = accounts.send("a", Cmd::Deposit(1)).await.unwrap_err();
    assert!(matches!(err, CommandError::ShuttingDown), "{err}");
}

#[tokio::test]
async fn a_partition_not_owned_answers_not_owner_with_the_owner() {
    let log = Arc::new(MemoryLog::new(4));
    let key = aggregate_key("Account", "x");
    let partition = partition_for(&key, 4);
    let owned: Vec<u32> = (0..4).filter(|p| *p != partition).collect();
    let runtime = Runtime::builder()
        .backend(log)
        .owned_partitions(owned)
        .start()
        .await
        .unwrap();
    runtime.set_owner(partition, "10.0.0.2:7000");
    let err = runtime
        .aggregate::<Account>()
        .send("x", Cmd::Deposit(1))
        .await
        .unwrap_err();
    assert_eq!(err.not_owner(), Some((partition, Some("10.0.0.2:7000"))));
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn after_a_crash_idle_aggregates_are_settled_so_the_checkpoint_reaches_the_end() {
    let log = Arc::new(MemoryLog::new(1));
    let runtime = Runtime::builder()
        .backend(log.clone())
        .snapshots(SnapshotPolicy {
            every_events: 1_000,
            ..SnapshotPolicy::default()
        })
        .start()
        .await
        .unwrap();
    let accounts = runtime.aggregate::<Account>();
    for i in 0..40 {
        accounts
            .send(&format!("a{}", i % 20), Cmd::Deposit(1))
            .await
            .unwrap();
    }
    runtime.abort().await;
    assert!(log.snapshot_keys().is_empty(), "the crash left no snapshot");

    let runtime = Runtime::builder()
        .backend(log.clone())
        .maintenance_interval(Duration::from_millis(5))
        .start()
        .await
        .unwrap();
    let accounts = runtime.aggregate::<Account>();
    eventually("the checkpoint reaches the end of the log", || {
        futures::executor::block_on(log.load_checkpoint("keel.recovery".into(), 0)).unwrap()
            == Some(40)
    })
    .await;
    assert_eq!(log.snapshot_keys().len(), 20);
    for i in 0..20 {
        assert_eq!(
            accounts
                .query(&format!("a{i}"), |s| s.balance)
                .await
                .unwrap(),
            2
        );
    }
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn after_shutdown_the_runtime_releases_its_backend() {
    let log = Arc::new(MemoryLog::new(2));
    let runtime = start(log.clone()).await;
    let accounts = runtime.aggregate::<Account>();
    accounts.send("a", Cmd::Deposit(1)).await.unwrap();
    runtime.shutdown().await.unwrap();
    drop(accounts);
    drop(runtime);
    // Actor tasks finish a moment after the shutdown returns.
    eventually("every reference to the backend dropped", || {
        Arc::strong_count(&log) == 1
    })
    .await;
}

#[tokio::test]
async fn a_retry_after_a_lost_acknowledgement_finds_the_written_events() {
    let log = Arc::new(MemoryLog::new(2));
    let runtime = Runtime::builder()
        .backend(log.clone())
        .maintenance_interval(Duration::from_millis(5))
        .start()
        .await
        .unwrap();
    let accounts = runtime.aggregate::<Account>();
    accounts.send("b", Cmd::Deposit(1)).await.unwrap();
    accounts.send("a", Cmd::Deposit(3)).await.unwrap();
    log.lose_next_acks(1);
    let err = accounts
        .send_with("a", Cmd::Deposit(5), SendOptions::with_id("pay-1"))
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::Storage { .. }), "{err}");
    // Other aggregates keep committing meanwhile.
    accounts.send("b", Cmd::Deposit(1)).await.unwrap();
    // The retry with the same id finds the events the failed append wrote after all.
    let retry = accounts
        .send_with("a", Cmd::Deposit(5), SendOptions::with_id("pay-1"))
        .await
        .unwrap();
    assert!(retry.deduplicated, "{retry:?}");
    assert_eq!(retry.seq, 2);
    assert_eq!(accounts.query("a", |s| s.balance).await.unwrap(), 8);
    let (state, seq) = replay_from_log(&log, "Account/a");
    assert_eq!((state.balance, seq), (8, 2));
    runtime.shutdown().await.unwrap();
    // And a restart sees it too (the checkpoint never moved past it unresolved).
    let runtime = start(log.clone()).await;
    assert_eq!(
        runtime
            .aggregate::<Account>()
            .query("a", |s| s.balance)
            .await
            .unwrap(),
        8
    );
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_command_is_not_answered_before_its_append_is_durable() {
    let log = Arc::new(GatedLog::new(1));
    let gate = log.gate.clone();
    let runtime = Runtime::builder()
        .backend(log.clone())
        .start()
        .await
        .unwrap();
    let accounts = runtime.aggregate::<Account>();
    let mut send = tokio_test::task::spawn(accounts.send("a", Cmd::Deposit(1)));
    // However long the append is held back, the caller has no answer and the log has nothing.
    for _ in 0..20 {
        tokio_test::assert_pending!(send.poll());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(log.inner.all_records().is_empty());
    gate.add_permits(1);
    let reply = loop {
        match send.poll() {
            std::task::Poll::Ready(reply) => break reply.unwrap(),
            std::task::Poll::Pending => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    };
    assert_eq!(reply.seq, 1);
    assert_eq!(log.inner.all_records().len(), 1);
    drop(send);
    gate.add_permits(100);
    runtime.shutdown().await.unwrap();
}

/// A command held in an append that does not end is answered `Timeout` at its deadline, and
/// so is one queued behind it, which never runs. Both the timeouts the maintenance tick
/// watches (long against the tick) and the short ones, which get a timer of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_past_its_deadline_is_answered_timeout_and_a_queued_one_never_runs() {
    for (timeout, watched) in [
        (Duration::from_millis(300), true),
        (Duration::from_millis(30), false),
    ] {
        let log = Arc::new(GatedLog::new(1));
        let gate = log.gate.clone();
        let runtime = Runtime::builder()
            .backend(log.clone())
            // 16 ticks of 5 ms: the tick watches 300 ms, not 30 ms.
            .maintenance_interval(Duration::from_millis(5))
            .command_timeout(timeout)
            .start()
            .await
            .unwrap();
        let accounts = runtime.aggregate::<Account>();
        let a = accounts.clone();
        let first = tokio::spawn(async move { a.send("x", Cmd::Deposit(1)).await });
        eventually("the first append is held", || {
            log.appends.load(std::sync::atomic::Ordering::SeqCst) == 1
        })
        .await;
        let queued = accounts.send("x", Cmd::Deposit(2)).await;
        let first = tokio::time::timeout(Duration::from_secs(30), first)
            .await
            .expect("the held command is answered")
            .unwrap();
        for (which, outcome) in [("held", &first), ("queued", &queued)] {
            match outcome {
                Err(CommandError::Timeout(t, what)) => {
                    assert_eq!(*t, timeout, "{which}, watched {watched}");
                    assert!(what.contains("Account/x"), "{which}: {what}");
                }
                other => panic!("{which} command, watched {watched}: {other:?}"),
            }
        }
        // The held append goes through; the queued command, timed out before it ran, never
        // does: the next command is decided on the first one's state alone.
        gate.add_permits(100);
        let next = accounts
            .send_with(
                "x",
                Cmd::Deposit(4),
                SendOptions::default().timeout(Duration::from_secs(30)),
            )
            .await
            .unwrap();
        if watched {
            assert_eq!(next.seq, 2, "the timed-out queued command ran");
            assert_eq!(log.inner.all_records().len(), 2);
        } else {
            // A caller's own timer gave up on it; it was still queued and may have run.
            assert!(next.seq >= 2);
        }
        runtime.shutdown().await.unwrap();
    }
}
