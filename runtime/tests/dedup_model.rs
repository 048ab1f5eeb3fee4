//! Model-based property: however commands (with and without ids, several events, none,
//! rejected), retries, lost acknowledgements, failed appends, passivation, snapshots,
//! crashes and restarts interleave, every acknowledged command is applied exactly once,
//! sequence numbers stay dense and every retry of an acknowledged command id is
//! deduplicated.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Account, AccountCommand as Cmd, replay_from_log};
use keel::config::SnapshotPolicy;
use keel::log::MemoryLog;
use keel::{CommandError, Runtime, SendOptions};
use proptest::prelude::*;

const AGGREGATES: usize = 3;

#[derive(Debug, Clone)]
enum Step {
    /// A command, with a fresh command id or none.
    Send {
        aggregate: usize,
        command: Cmd,
        with_id: bool,
    },
    /// The retry of the `n`th acknowledged command id (modulo how many there are).
    Retry(usize),
    /// A deposit with an id whose append is written but not acknowledged, then retried.
    LostAck { aggregate: usize, amount: i64 },
    /// A deposit with an id whose append fails (nothing written), then retried.
    FailedAppend { aggregate: usize, amount: i64 },
    /// `Runtime::abort` and a new runtime on the same log.
    Crash,
    /// A clean shutdown (snapshots everything) and a new runtime.
    Restart,
}

fn step() -> impl Strategy<Value = Step> {
    let command = prop_oneof![
        (1i64..20).prop_map(Cmd::Deposit),
        (1i64..40).prop_map(Cmd::Withdraw),
        (1u32..4).prop_map(Cmd::Burst),
        Just(Cmd::Noop),
    ];
    let aggregate = 0..AGGREGATES;
    prop_oneof![
        10 => (aggregate.clone(), command, any::<bool>())
            .prop_map(|(aggregate, command, with_id)| Step::Send { aggregate, command, with_id }),
        4 => any::<usize>().prop_map(Step::Retry),
        1 => (aggregate.clone(), 1i64..10).prop_map(|(aggregate, amount)| Step::LostAck { aggregate, amount }),
        1 => (aggregate, 1i64..10).prop_map(|(aggregate, amount)| Step::FailedAppend { aggregate, amount }),
        1 => Just(Step::Crash),
        1 => Just(Step::Restart),
    ]
}

/// What the aggregates must look like.
#[derive(Default)]
struct Model {
    balance: [i64; AGGREGATES],
    seq: [u64; AGGREGATES],
    /// Acknowledged command ids: the aggregate and the seq the first outcome reported.
    acknowledged: Vec<(String, usize, Cmd, u64)>,
    next_id: usize,
}

impl Model {
    fn fresh_id(&mut self) -> String {
        self.next_id += 1;
        format!("cmd-{}", self.next_id)
    }

    /// The outcome `command` must have on `aggregate` now: the events' total, or `None`
    /// when it is rejected.
    fn apply(&mut self, aggregate: usize, command: &Cmd) -> Option<u64> {
        let (delta, events) = match *command {
            Cmd::Deposit(n) => (n, 1),
            Cmd::Withdraw(n) if n > self.balance[aggregate] => return None,
            Cmd::Withdraw(n) => (-n, 1),
            Cmd::Burst(n) => (i64::from(n), u64::from(n)),
            Cmd::Noop => (0, 0),
            Cmd::Explode => unreachable!(),
        };
        self.balance[aggregate] += delta;
        self.seq[aggregate] += events;
        Some(self.seq[aggregate])
    }
}

async fn start(log: Arc<MemoryLog>, every: u64, cap: usize) -> Runtime {
    Runtime::builder()
        .backend(log)
        .snapshots(SnapshotPolicy {
            every_events: every,
            ..SnapshotPolicy::default()
        })
        .max_live_actors(cap)
        .maintenance_interval(Duration::from_millis(1))
        .start()
        .await
        .unwrap()
}

fn name(aggregate: usize) -> String {
    format!("acc-{aggregate}")
}

async fn run(steps: Vec<Step>, every: u64, cap: usize) {
    let log = Arc::new(MemoryLog::new(2));
    let mut runtime = start(log.clone(), every, cap).await;
    let mut model = Model::default();
    for step in steps {
        let accounts = runtime.aggregate::<Account>();
        match step {
            Step::Send {
                aggregate,
                command,
                with_id,
            } => {
                let id = with_id.then(|| model.fresh_id());
                let options = SendOptions {
                    command_id: id.clone(),
                    timeout: None,
                };
                let result = accounts
                    .send_with(&name(aggregate), command.clone(), options)
                    .await;
                match model.apply(aggregate, &command) {
                    Some(seq) => {
                        let committed = result.unwrap();
                        assert_eq!(committed.seq, seq, "{command:?} on {aggregate}");
                        assert!(!committed.deduplicated);
                        if let Some(id) = id {
                            model.acknowledged.push((id, aggregate, command, seq));
                        }
                    }
                    None => assert!(
                        matches!(result, Err(CommandError::Rejected(_))),
                        "{result:?}"
                    ),
                }
            }
            Step::Retry(n) => {
                if model.acknowledged.is_empty() {
                    continue;
                }
                let (id, aggregate, command, seq) =
                    model.acknowledged[n % model.acknowledged.len()].clone();
                let retry = accounts
                    .send_with(&name(aggregate), command, SendOptions::with_id(id.as_str()))
                    .await
                    .unwrap();
                assert!(retry.deduplicated, "{id} applied twice");
                assert_eq!(retry.seq, seq, "{id}: another outcome");
            }
            Step::LostAck { aggregate, amount } | Step::FailedAppend { aggregate, amount } => {
                let lost = matches!(step, Step::LostAck { .. });
                if lost {
                    log.lose_next_acks(1);
                } else {
                    log.fail_next_appends(1);
                }
                let id = model.fresh_id();
                let command = Cmd::Deposit(amount);
                let first = accounts
                    .send_with(
                        &name(aggregate),
                        command.clone(),
                        SendOptions::with_id(id.as_str()),
                    )
                    .await;
                assert!(
                    matches!(first, Err(CommandError::Storage { .. })),
                    "{first:?}"
                );
                let retry = accounts
                    .send_with(
                        &name(aggregate),
                        command.clone(),
                        SendOptions::with_id(id.as_str()),
                    )
                    .await
                    .unwrap();
                // Written without an acknowledgement: the retry finds it. Not written: the
                // retry appends it. Either way it is applied once.
                assert_eq!(retry.deduplicated, lost, "{id}");
                let seq = model.apply(aggregate, &command).unwrap();
                assert_eq!(retry.seq, seq);
                model.acknowledged.push((id, aggregate, command, seq));
            }
            Step::Crash => {
                runtime.abort().await;
                runtime = start(log.clone(), every, cap).await;
            }
            Step::Restart => {
                runtime.shutdown().await.unwrap();
                runtime = start(log.clone(), every, cap).await;
            }
        }
    }
    // Every acknowledged id, once more, after one last crash.
    runtime.abort().await;
    let runtime = start(log.clone(), every, cap).await;
    let accounts = runtime.aggregate::<Account>();
    for (id, aggregate, command, seq) in &model.acknowledged {
        let retry = accounts
            .send_with(
                &name(*aggregate),
                command.clone(),
                SendOptions::with_id(id.as_str()),
            )
            .await
            .unwrap();
        assert!(
            retry.deduplicated && retry.seq == *seq,
            "{id} after a crash: {retry:?}"
        );
    }
    for aggregate in 0..AGGREGATES {
        let key = format!("Account/{}", name(aggregate));
        // Dense sequence numbers, checked by the fold of the log.
        let (state, seq) = replay_from_log(&log, &key);
        assert_eq!(
            (state.balance, seq),
            (model.balance[aggregate], model.seq[aggregate]),
            "{key}"
        );
        let balance = accounts
            .query(&name(aggregate), |s| s.balance)
            .await
            .unwrap();
        assert_eq!(balance, model.balance[aggregate]);
    }
    runtime.shutdown().await.unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_acknowledged_command_is_applied_exactly_once(
        steps in proptest::collection::vec(step(), 1..50),
        every in 1u64..6,
        cap in 1usize..4,
    ) {
        common::block_on(run(steps, every, cap));
    }
}
