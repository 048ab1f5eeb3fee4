//! Commands that queue up for one aggregate while it is busy run as one batch: decided one
//! at a time in arrival order on the state the earlier ones left, appended as one unit, each
//! caller answered with its own outcome; a rejection appends nothing for that command only;
//! a failed batch applies nothing of it.
//!
//! The tests make the batch deterministic without timing: a first command's append is held
//! at the gate of a [`GatedLog`] while the others are put in the actor's mailbox (one poll of
//! each send delivers it), so they are all queued when the actor next looks.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Account, AccountCommand as Cmd, AccountError, GatedLog, replay_from_log};
use keel::log::aggregate_key;
use keel::{AggregateHandle, CommandError, Committed, Runtime, SendOptions};
use tokio_test::task::{Spawn, spawn};

type Reply = Result<Committed<common::AccountEvent>, CommandError<AccountError>>;
type Sending = Spawn<std::pin::Pin<Box<dyn std::future::Future<Output = Reply> + Send>>>;

async fn start(log: &Arc<GatedLog>) -> (Runtime, AggregateHandle<Account>) {
    let runtime = Runtime::builder()
        .backend(log.clone())
        .start()
        .await
        .unwrap();
    let accounts = runtime.aggregate::<Account>();
    (runtime, accounts)
}

/// Starts sending `command` (with `id`, if any) and polls it once, which puts it in the live
/// actor's mailbox.
fn deliver(accounts: &AggregateHandle<Account>, command: Cmd, id: Option<&str>) -> Sending {
    let accounts = accounts.clone();
    let id = id.map(str::to_owned);
    let mut sending: Sending = spawn(Box::pin(async move {
        match id {
            Some(id) => {
                accounts
                    .send_with("a", command, SendOptions::with_id(id))
                    .await
            }
            None => accounts.send("a", command).await,
        }
    }));
    tokio_test::assert_pending!(sending.poll());
    sending
}

async fn answer(mut sending: Sending) -> Reply {
    loop {
        if let std::task::Poll::Ready(reply) = sending.poll() {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A runtime on a gated log in which `a` got a first deposit of `balance` through the gate,
/// then a deposit of 1 whose append is held at the gate: that held command is returned too.
async fn holding(balance: i64) -> (Arc<GatedLog>, Runtime, AggregateHandle<Account>, Sending) {
    let log = Arc::new(GatedLog::new(1));
    let (runtime, accounts) = start(&log).await;
    log.gate.add_permits(1);
    accounts.send("a", Cmd::Deposit(balance)).await.unwrap();
    let held = deliver(&accounts, Cmd::Deposit(1), None);
    while log.appends.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    (log, runtime, accounts, held)
}

#[tokio::test]
async fn queued_commands_are_decided_in_order_and_appended_as_one_batch() {
    let (log, runtime, accounts, held) = holding(10).await;
    // Queued behind it: 20 withdrawals of 1 with a malformed one after every fifth.
    let mut queued = Vec::new();
    for i in 0..20 {
        queued.push(deliver(&accounts, Cmd::Withdraw(1), None));
        if i % 5 == 4 {
            queued.push(deliver(&accounts, Cmd::Withdraw(0), None));
        }
    }
    log.gate.add_permits(1000);
    assert_eq!(answer(held).await.unwrap().seq, 2);
    let mut expected_seq = 2;
    let mut withdrawn = 0;
    for (i, sending) in queued.into_iter().enumerate() {
        let reply = answer(sending).await;
        if i % 6 == 5 {
            assert!(
                matches!(
                    reply,
                    Err(CommandError::Rejected(AccountError::NotPositive(0)))
                ),
                "{i}: {reply:?}"
            );
        } else if withdrawn < 11 {
            // Each decided on the state the earlier ones of the batch left.
            expected_seq += 1;
            withdrawn += 1;
            let committed = reply.unwrap();
            assert_eq!(committed.seq, expected_seq, "{i}");
            assert_eq!(committed.events.len(), 1);
        } else {
            assert!(
                matches!(
                    reply,
                    Err(CommandError::Rejected(AccountError::Insufficient {
                        balance: 0,
                        ..
                    }))
                ),
                "{i}: {reply:?}"
            );
        }
    }
    // The first deposit, the held one, then all eleven withdrawals in one append.
    assert_eq!(log.appends.load(Ordering::SeqCst), 3);
    let records = log.inner.all_records();
    assert_eq!(records.len(), 13);
    let offsets: Vec<u64> = records.iter().map(|r| r.position.offset).collect();
    assert_eq!(offsets, (0..13).collect::<Vec<_>>());
    let (replayed, seq) = replay_from_log(&log.inner, &aggregate_key("Account", "a"));
    assert_eq!((replayed.balance, seq), (0, 13));
    assert_eq!(accounts.query("a", |s| s.balance).await.unwrap(), 0);
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn each_caller_of_a_batch_gets_the_position_of_its_own_last_event() {
    let (log, runtime, accounts, held) = holding(5).await;
    let bursts: Vec<_> = [3, 1, 2]
        .into_iter()
        .map(|n| deliver(&accounts, Cmd::Burst(n), None))
        .collect();
    log.gate.add_permits(1000);
    answer(held).await.unwrap();
    let mut last = 1;
    for (sending, n) in bursts.into_iter().zip([3u64, 1, 2]) {
        let committed = answer(sending).await.unwrap();
        assert_eq!(committed.events.len() as u64, n);
        last += n;
        assert_eq!(committed.seq, last + 1);
        assert_eq!(committed.position.unwrap().offset, last);
    }
    assert_eq!(log.appends.load(Ordering::SeqCst), 3);
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_failed_batch_fails_what_was_decided_on_it_and_applies_nothing() {
    let (log, runtime, accounts, held) = holding(10).await;
    // A rejection decided before the batch appends anything stands; everything after the
    // first appending command depended on the unwritten state.
    let rejected_first = deliver(&accounts, Cmd::Withdraw(0), None);
    let deposits: Vec<_> = (0..5)
        .map(|_| deliver(&accounts, Cmd::Deposit(1), None))
        .collect();
    let rejected_after = deliver(&accounts, Cmd::Withdraw(0), None);
    log.gate.add_permits(1);
    assert_eq!(answer(held).await.unwrap().seq, 2);
    // The batch's append is at the gate now: make it fail.
    while log.appends.load(Ordering::SeqCst) < 3 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    log.inner.fail_next_appends(1);
    log.gate.add_permits(1000);
    assert!(matches!(
        answer(rejected_first).await,
        Err(CommandError::Rejected(AccountError::NotPositive(0)))
    ));
    for sending in deposits {
        let err = answer(sending).await.unwrap_err();
        assert!(matches!(err, CommandError::Storage { .. }), "{err}");
        assert!(err.is_retryable());
    }
    let err = answer(rejected_after).await.unwrap_err();
    assert!(matches!(err, CommandError::Storage { .. }), "{err}");
    // Nothing of the batch is in memory or in the log; the aggregate goes on from the log.
    assert_eq!(log.inner.all_records().len(), 2);
    assert_eq!(accounts.query("a", |s| s.balance).await.unwrap(), 11);
    assert_eq!(accounts.send("a", Cmd::Deposit(1)).await.unwrap().seq, 3);
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_command_id_twice_in_one_batch_is_applied_once() {
    let (log, runtime, accounts, held) = holding(10).await;
    let first = deliver(&accounts, Cmd::Deposit(7), Some("pay-1"));
    let other = deliver(&accounts, Cmd::Deposit(2), None);
    let retry = deliver(&accounts, Cmd::Deposit(7), Some("pay-1"));
    let quiet = deliver(&accounts, Cmd::Noop, Some("noop-1"));
    let quiet_retry = deliver(&accounts, Cmd::Noop, Some("noop-1"));
    log.gate.add_permits(1000);
    answer(held).await.unwrap();
    let first = answer(first).await.unwrap();
    assert!(!first.deduplicated);
    assert_eq!(answer(other).await.unwrap().seq, 4);
    let retry = answer(retry).await.unwrap();
    assert!(retry.deduplicated);
    assert_eq!((retry.seq, retry.position), (first.seq, first.position));
    assert_eq!(retry.events, first.events);
    let quiet = answer(quiet).await.unwrap();
    let quiet_retry = answer(quiet_retry).await.unwrap();
    assert!(!quiet.deduplicated && quiet_retry.deduplicated);
    assert_eq!(quiet_retry.seq, 4);
    assert_eq!(log.inner.all_records().len(), 4);
    assert_eq!(accounts.query("a", |s| s.balance).await.unwrap(), 20);
    // Both ids outlive the actor: the no-event one through the snapshot the batch wrote.
    runtime.shutdown().await.unwrap();
    let runtime = Runtime::builder()
        .backend(log.clone())
        .start()
        .await
        .unwrap();
    let accounts = runtime.aggregate::<Account>();
    log.gate.add_permits(1000);
    for (command, id) in [(Cmd::Deposit(7), "pay-1"), (Cmd::Noop, "noop-1")] {
        let again = accounts
            .send_with("a", command, SendOptions::with_id(id))
            .await
            .unwrap();
        assert!(again.deduplicated, "{id}");
    }
    assert_eq!(log.inner.all_records().len(), 4);
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_panic_in_a_batch_keeps_what_came_before_and_retries_what_came_after() {
    let (log, runtime, accounts, held) = holding(10).await;
    let before = deliver(&accounts, Cmd::Deposit(5), None);
    let explode = deliver(&accounts, Cmd::Explode, None);
    let after = deliver(&accounts, Cmd::Deposit(100), None);
    log.gate.add_permits(1000);
    answer(held).await.unwrap();
    assert_eq!(answer(before).await.unwrap().seq, 3);
    let err = answer(explode).await.unwrap_err();
    assert!(matches!(err, CommandError::Panicked { .. }), "{err}");
    let err = answer(after).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert_eq!(accounts.query("a", |s| s.balance).await.unwrap(), 16);
    assert_eq!(log.inner.all_records().len(), 3);
    runtime.shutdown().await.unwrap();
}
