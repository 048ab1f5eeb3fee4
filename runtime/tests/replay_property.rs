//! Property: however commands, snapshots, passivations and crashes interleave, the state an
//! aggregate serves (snapshot + tail) equals the fold of its whole history in the log.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Account, AccountCommand as Cmd, replay_from_log};
use keel::Runtime;
use keel::config::SnapshotPolicy;
use keel::log::MemoryLog;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Step {
    Command(usize, Cmd),
    /// Drop the runtime without a shutdown and start a new one on the same log.
    Crash,
    /// Shut down cleanly and start again.
    Restart,
}

fn step() -> impl Strategy<Value = Step> {
    let command = prop_oneof![
        (1i64..20).prop_map(Cmd::Deposit),
        (1i64..30).prop_map(Cmd::Withdraw),
        (1u32..5).prop_map(Cmd::Burst),
        Just(Cmd::Noop),
    ];
    prop_oneof![
        12 => (0usize..3, command).prop_map(|(a, c)| Step::Command(a, c)),
        1 => Just(Step::Crash),
        1 => Just(Step::Restart),
    ]
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
        .expect("runtime starts")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn snapshot_plus_tail_equals_full_replay(
        steps in proptest::collection::vec(step(), 1..60),
        every in 1u64..8,
        cap in 1usize..4,
    ) {
        common::block_on(async move {
            let log = Arc::new(MemoryLog::new(2));
            let mut runtime = start(log.clone(), every, cap).await;
            for step in steps {
                match step {
                    Step::Command(a, command) => {
                        let _ = runtime
                            .aggregate::<Account>()
                            .send(&format!("acc-{a}"), command)
                            .await;
                    }
                    Step::Crash => {
                        runtime.abort().await;
                        runtime = start(log.clone(), every, cap).await;
                    }
                    Step::Restart => {
                        runtime.shutdown().await.expect("clean shutdown");
                        runtime = start(log.clone(), every, cap).await;
                    }
                }
            }
            let accounts = runtime.aggregate::<Account>();
            for a in 0..3 {
                let key = format!("Account/acc-{a}");
                let (expected, _) = replay_from_log(&log, &key);
                let served = accounts
                    .query(&format!("acc-{a}"), |s| s.clone())
                    .await
                    .expect("query");
                assert_eq!(served, expected, "{key}");
            }
            runtime.shutdown().await.expect("clean shutdown");
        });
    }
}
