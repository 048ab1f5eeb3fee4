//! Two runtime instances share one application on Kafka: the consumer group decides which
//! instance serves which partitions; when one leaves, the other takes its partitions over
//! and serves those aggregates from the right state. Nothing acknowledged is lost, and no
//! aggregate's sequence has a gap or a duplicate.
//!
//! Runs against the broker named by `KEEL_KAFKA_BOOTSTRAP` (see `scripts/broker`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use keel::{CommandError, EventEnvelope, EventLog, KafkaConfig, KafkaLog, KafkaOwnership, Runtime};
use keel_tests::broker::{kafka_bootstrap, unique_topic_prefix};
use keel_tests::eventually;
use keel_tests::tally::{Tally, send_to_owner as send};

const PARTITIONS: u32 = 4;

struct Instance {
    runtime: Runtime,
    ownership: KafkaOwnership,
    log: Arc<KafkaLog>,
}

async fn instance(bootstrap: &str, prefix: &str, app: &str, endpoint: &str) -> Instance {
    let log = Arc::new(
        KafkaConfig::new(bootstrap)
            .app_id(app)
            .topic_prefix(prefix)
            .partitions(PARTITIONS)
            .linger(Duration::from_millis(2))
            .open()
            .await
            .expect("open the kafka log"),
    );
    let runtime = Runtime::builder()
        .backend(log.clone())
        .app_id(app)
        .owned_partitions(vec![])
        .command_timeout(Duration::from_secs(20))
        .start()
        .await
        .expect("start");
    let ownership = KafkaOwnership::join(&runtime, log.clone(), endpoint).expect("join");
    Instance {
        runtime,
        ownership,
        log,
    }
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
            let p = keel::partition_for(&keel::aggregate_key("Tally", id), PARTITIONS);
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
    a.ownership.leave().await;
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

    // The log: every acknowledged command exactly once, every sequence dense.
    let mut by_command: HashMap<String, usize> = HashMap::new();
    let mut seqs: HashMap<String, Vec<u64>> = HashMap::new();
    for partition in 0..PARTITIONS {
        let end = b.log.end_offset(partition).await.unwrap();
        let mut from = 0;
        while from < end {
            let batch = b
                .log
                .read(partition, from, 500, Duration::from_secs(1))
                .await
                .unwrap();
            assert!(
                !batch.is_empty(),
                "partition {partition} stops at {from} before {end}"
            );
            for r in &batch {
                let env = EventEnvelope::decode(&r.value, &r.position).unwrap();
                *by_command
                    .entry(env.command_id.clone().unwrap_or_default())
                    .or_default() += 1;
                seqs.entry(env.aggregate_id.clone())
                    .or_default()
                    .push(env.seq);
            }
            from = batch.last().unwrap().position.offset + 1;
        }
    }
    for (command_id, id, seq) in &acked {
        assert_eq!(
            by_command.get(command_id),
            Some(&1),
            "{command_id} ({id} seq {seq})"
        );
    }
    for (id, seqs) in &seqs {
        assert_eq!(seqs, &(1..=seqs.len() as u64).collect::<Vec<_>>(), "{id}");
    }

    b.ownership.leave().await;
    b.runtime.shutdown().await.unwrap();
    a.runtime.shutdown().await.unwrap();
    drop(a.log);
}

/// Runs a future to completion on the current multi-thread runtime from a sync closure.
fn futures_lite_block<F: std::future::Future>(future: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future))
}
