//! Two and three runtime instances share one application on Kafka: the consumer group decides
//! which instance serves which partitions; when one leaves (or aborts), the others take its
//! partitions over and serve those aggregates from the right state.
//! `NotOwner` names the owner's endpoint, found in the group's description. Nothing
//! acknowledged is lost, and no aggregate's sequence has a gap or a duplicate.
//!
//! Runs against the broker named by `KEEL_KAFKA_BOOTSTRAP` (see `scripts/broker`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use keel::{CommandError, KafkaLog, KafkaOwnership, Runtime};
use keel_tests::broker::{kafka_bootstrap, unique_topic_prefix};
use keel_tests::eventually;
use keel_tests::tally::{Tally, send_to_owner as send};

const PARTITIONS: u32 = 6;

struct Instance {
    runtime: Runtime,
    log: Arc<KafkaLog>,
}

async fn instance(bootstrap: &str, prefix: &str, app: &str, endpoint: &str) -> Instance {
    instance_with(bootstrap, prefix, app, endpoint, Duration::from_secs(20)).await
}

async fn instance_with(
    bootstrap: &str,
    prefix: &str,
    app: &str,
    endpoint: &str,
    command_timeout: Duration,
) -> Instance {
    let log = Arc::new(
        keel_tests::kafka_config(bootstrap, app, prefix, PARTITIONS)
            .open()
            .await
            .expect("open the kafka log"),
    );
    let runtime = Runtime::builder()
        .ownership(KafkaOwnership::new(log.clone(), endpoint))
        .command_timeout(command_timeout)
        .start()
        .await
        .expect("start");
    Instance { runtime, log }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_partitions_and_one_takes_over_when_the_other_leaves() {
    let Some(bootstrap) = kafka_bootstrap("kafka_ownership::two_instances") else {
        return;
    };
    let prefix = unique_topic_prefix("owners");
    let app = format!("{prefix}-app");
    let a = instance(&bootstrap, &prefix, &app, "node-a:7001").await;
    let b = instance(&bootstrap, &prefix, &app, "node-b:7002").await;

    eventually(
        "the group splits the partitions between both instances",
        || {
            let (pa, pb) = (a.runtime.owned_partitions(), b.runtime.owned_partitions());
            let all: BTreeSet<u32> = pa.iter().chain(&pb).copied().collect();
            !pa.is_empty()
                && !pb.is_empty()
                && all.len() == PARTITIONS as usize
                && pa.len() + pb.len() == PARTITIONS as usize
        },
    )
    .await;

    // An aggregate on a partition B owns: A says NotOwner, naming B once it knows.
    let on_b = (0..100)
        .map(|i| format!("t{i}"))
        .find(|id| {
            let p = keel::log::partition_for(&keel::log::aggregate_key("Tally", id), PARTITIONS);
            b.runtime.owned_partitions().contains(&p)
        })
        .unwrap();
    let err = a
        .runtime
        .aggregate::<Tally>()
        .send(&on_b, 1)
        .await
        .unwrap_err();
    assert!(err.not_owner().is_some(), "{err}");
    eventually("A learns that B owns the partition", || {
        let err = futures_lite_block(a.runtime.aggregate::<Tally>().send(&on_b, 1));
        matches!(err, Err(CommandError::NotOwner { owner: Some(ref o), .. }) if o == "node-b:7002")
    })
    .await;

    let mut acked: Vec<(String, String, u64)> = Vec::new();
    let both = [&a.runtime, &b.runtime];
    for round in 0..3 {
        for i in 0..24 {
            let id = format!("t{i}");
            let command_id = format!("r{round}-{i}");
            let done = send(&both, &id, &command_id).await;
            acked.push((command_id, id, done.seq));
        }
    }

    // A leaves: its partitions are snapshotted and handed over to B.
    a.runtime.shutdown().await.unwrap();
    eventually("B owns every partition", || {
        b.runtime.owned_partitions().len() == PARTITIONS as usize
    })
    .await;
    assert!(a.runtime.owned_partitions().is_empty());

    let only_b = [&b.runtime];
    for i in 0..24 {
        let id = format!("t{i}");
        let total = b
            .runtime
            .aggregate::<Tally>()
            .query(&id, |t| t.total)
            .await
            .unwrap();
        assert_eq!(total, 3, "{id} after the takeover");
        let command_id = format!("r3-{i}");
        let done = send(&only_b, &id, &command_id).await;
        assert_eq!(done.seq, 4, "{id}");
        acked.push((command_id, id, done.seq));
    }

    assert_exactly_once(&b.log, &acked).await;

    b.runtime.shutdown().await.unwrap();
    drop(a.log);
}

/// The log: every acknowledged command exactly once, every aggregate's sequence dense.
async fn assert_exactly_once(log: &KafkaLog, acked: &[(String, String, u64)]) {
    let mut by_command: HashMap<String, usize> = HashMap::new();
    let mut seqs: HashMap<String, Vec<u64>> = HashMap::new();
    for env in keel_tests::read_events(log).await {
        *by_command
            .entry(env.command_id.clone().unwrap_or_default())
            .or_default() += 1;
        seqs.entry(env.aggregate_id).or_default().push(env.seq);
    }
    for (command_id, id, seq) in acked {
        assert_eq!(
            by_command.get(command_id),
            Some(&1),
            "{command_id} ({id} seq {seq})"
        );
    }
    for (id, seqs) in &seqs {
        assert_eq!(seqs, &(1..=seqs.len() as u64).collect::<Vec<_>>(), "{id}");
    }
}

/// Runs a future to completion on the current multi-thread runtime from a sync closure.
fn futures_lite_block<F: std::future::Future>(future: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_split_partitions_and_survive_a_join_a_leave_and_an_abort() {
    let Some(bootstrap) = kafka_bootstrap("kafka_ownership::three_instances") else {
        return;
    };
    let prefix = unique_topic_prefix("three");
    let app = format!("{prefix}-app");
    // Short command timeouts: a command caught by a handover is retried (same command id).
    let quick = Duration::from_secs(3);
    let a = instance_with(&bootstrap, &prefix, &app, "node-a:7001", quick).await;
    let b = instance_with(&bootstrap, &prefix, &app, "node-b:7002", quick).await;
    eventually("A and B split the partitions", || {
        a.runtime.owned_partitions().len() + b.runtime.owned_partitions().len()
            == PARTITIONS as usize
            && !a.runtime.owned_partitions().is_empty()
            && !b.runtime.owned_partitions().is_empty()
    })
    .await;

    // A load that keeps going through every change of ownership below.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let c_slot: Arc<std::sync::Mutex<Option<Runtime>>> = Arc::default();
    let load = {
        let (stop, c_slot) = (stop.clone(), c_slot.clone());
        let (ra, rb) = (a.runtime.clone(), b.runtime.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let c = c_slot.lock().unwrap().clone();
                let mut instances = vec![&ra, &rb];
                if let Some(c) = &c {
                    instances.push(c);
                }
                let id = format!("t{}", n % 30);
                let command_id = format!("c{n}");
                let done = send(&instances, &id, &command_id).await;
                acked.push((command_id, id, done.seq));
                n += 1;
            }
            acked
        })
    };

    let c = instance_with(&bootstrap, &prefix, &app, "node-c:7003", quick).await;
    *c_slot.lock().unwrap() = Some(c.runtime.clone());
    eventually("A, B and C each serve partitions, all of them once", || {
        let owned = [&a, &b, &c].map(|i| i.runtime.owned_partitions());
        let all: BTreeSet<u32> = owned.iter().flatten().copied().collect();
        owned.iter().all(|o| !o.is_empty())
            && all.len() == PARTITIONS as usize
            && owned.iter().map(Vec::len).sum::<usize>() == PARTITIONS as usize
    })
    .await;

    // C names the owner of a partition it does not serve.
    let not_on_c = (0..100)
        .map(|i| format!("t{i}"))
        .find(|id| {
            let p = keel::log::partition_for(&keel::log::aggregate_key("Tally", id), PARTITIONS);
            a.runtime.owned_partitions().contains(&p)
        })
        .unwrap();
    eventually("C learns that A owns a partition", || {
        let err = futures_lite_block(c.runtime.aggregate::<Tally>().send(&not_on_c, 1));
        matches!(err, Err(CommandError::NotOwner { owner: Some(ref o), .. }) if o == "node-a:7001")
    })
    .await;

    // B shuts down (leaving the group gracefully); then A's runtime aborts (no snapshots, no
    // checkpoint commits, as a crash would) and leaves, so the group gives its partitions to C.
    // (A member killed outright is `kafka_member_faults`.)
    b.runtime.shutdown().await.unwrap();
    eventually("A and C serve every partition", || {
        a.runtime.owned_partitions().len() + c.runtime.owned_partitions().len()
            == PARTITIONS as usize
    })
    .await;
    let Instance {
        runtime: a_runtime,
        log: a_log,
    } = a;
    a_runtime.abort().await;
    eventually("C serves every partition after A is gone", || {
        c.runtime.owned_partitions().len() == PARTITIONS as usize
    })
    .await;
    // The load (now only C answers) goes on for a moment, then stops.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = load.await.unwrap();
    assert!(
        acked.len() > 50,
        "only {} commands acknowledged",
        acked.len()
    );
    assert_exactly_once(&c.log, &acked).await;

    c.runtime.shutdown().await.unwrap();
    drop((a_log, b.log));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ownership_is_configured_once_and_conflicting_settings_are_refused() {
    let Some(bootstrap) = kafka_bootstrap("kafka_ownership::configured_once") else {
        return;
    };
    let prefix = unique_topic_prefix("configured-once");
    let app = format!("{prefix}-app");
    let log = Arc::new(
        keel_tests::kafka_config(&bootstrap, &app, &prefix, PARTITIONS)
            .open()
            .await
            .expect("open"),
    );
    let ownership = || KafkaOwnership::new(log.clone(), "node-x:7000");
    let refused = |result: Result<Runtime, keel::Error>, what: &str| match result {
        Ok(_) => panic!("{what} was accepted"),
        Err(e) => {
            assert!(matches!(e, keel::Error::Config(_)), "{what}: {e:?}");
            e.to_string()
        }
    };
    let text = refused(
        Runtime::builder()
            .ownership(ownership())
            .app_id("another-app")
            .start()
            .await,
        "another app id",
    );
    assert!(
        text.contains("another-app") && text.contains(&app),
        "{text}"
    );
    let other: Arc<dyn keel::log::LogBackend> = Arc::new(keel::log::MemoryLog::new(PARTITIONS));
    refused(
        Runtime::builder()
            .backend(other)
            .ownership(ownership())
            .start()
            .await,
        "another backend",
    );
    refused(
        Runtime::builder()
            .ownership(ownership())
            .owned_partitions(vec![0, 1])
            .start()
            .await,
        "fixed partitions",
    );

    // The same log and app id given again are fine; the group assigns every partition, and
    // shutdown leaves the group.
    let runtime = Runtime::builder()
        .backend(log.clone())
        .app_id(&app)
        .ownership(ownership())
        .start()
        .await
        .expect("start");
    assert_eq!(runtime.config().app_id, app);
    eventually("the only member is assigned every partition", || {
        runtime.owned_partitions().len() == PARTITIONS as usize
    })
    .await;
    runtime.shutdown().await.expect("shutdown");
    assert!(runtime.owned_partitions().is_empty());
}
