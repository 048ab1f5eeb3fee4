//! Activations on Kafka replay from the partition's in-memory tail: after a restart, an
//! aggregate with events after its snapshot activates without reading the events topic, and
//! in the transactional mode an aborted transaction's records are never replayed.
//!
//! Runs against the broker named by `KEEL_KAFKA_BOOTSTRAP` (see `scripts/broker`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use keel::config::SnapshotPolicy;
use keel::log::LogBackend;
use keel::log::testing::CountingReads;
use keel::{KafkaConfig, Runtime};
use keel_tests::broker::{kafka_bootstrap, unique_topic_prefix};
use keel_tests::tally::Tally;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

const SNAPSHOT_EVERY_10: SnapshotPolicy = SnapshotPolicy {
    every_events: 10,
    on_passivation: false,
    after_long_replay: false,
};

fn config(bootstrap: &str, prefix: &str, transactional: bool) -> KafkaConfig {
    keel_tests::kafka_config(bootstrap, format!("{prefix}-app"), prefix, 1)
        .commit_interval(Duration::from_millis(5))
        .transactional(transactional)
}

async fn runtime_on(backend: Arc<dyn LogBackend>, prefix: &str) -> Runtime {
    Runtime::builder()
        .backend(backend)
        .app_id(format!("{prefix}-app"))
        .snapshots(SNAPSHOT_EVERY_10)
        .command_timeout(Duration::from_secs(20))
        .start()
        .await
        .expect("start")
}

/// 15 events for each of three interleaved aggregates (a snapshot at 10, 5 after it); in the
/// transactional mode with an aborted transaction of records under their keys in between;
/// then a crash, a restart, and activations that must not read the events topic.
async fn restart_and_activate(bootstrap: &str, prefix: &str, transactional: bool) {
    let ids = ["x", "y", "z"];
    let log = Arc::new(
        config(bootstrap, prefix, transactional)
            .open()
            .await
            .unwrap(),
    );
    let runtime = runtime_on(log.clone(), prefix).await;
    let tallies = runtime.aggregate::<Tally>();
    for round in 0..15 {
        for id in ids {
            tallies.send(id, 1).await.unwrap();
        }
        if transactional && round == 12 {
            abort_a_transaction(bootstrap, prefix, log.events_topic(), &ids).await;
        }
    }
    runtime.abort().await;
    log.close().await.unwrap();

    let counting = Arc::new(CountingReads::new(Arc::new(
        config(bootstrap, prefix, transactional)
            .open()
            .await
            .unwrap(),
    )));
    let runtime = runtime_on(counting.clone(), prefix).await;
    assert!(counting.take_reads() > 0, "recovery reads");
    let tallies = runtime.aggregate::<Tally>();
    for id in ids {
        let total = tallies.query(id, |t| t.total).await.unwrap();
        assert_eq!(total, 15, "{id}: only committed events replayed");
    }
    assert_eq!(
        counting.take_reads(),
        0,
        "activations read the events topic"
    );
    // And the aggregates go on from there.
    let done = tallies.send("x", 1).await.unwrap();
    assert_eq!(done.seq, 16);
    runtime.shutdown().await.unwrap();
}

/// Writes records under the aggregates' keys in a transaction of another producer and aborts
/// it: a reader that served them would replay garbage.
async fn abort_a_transaction(bootstrap: &str, prefix: &str, topic: &str, ids: &[&str]) {
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", format!("{prefix}-aborted"))
        .create()
        .unwrap();
    let producer = tokio::task::spawn_blocking(move || {
        producer.init_transactions(Duration::from_secs(10)).unwrap();
        producer.begin_transaction().unwrap();
        producer
    })
    .await
    .unwrap();
    for id in ids {
        producer
            .send(
                FutureRecord::to(topic)
                    .partition(0)
                    .key(&format!("Tally/{id}"))
                    .payload("aborted"),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
    }
    tokio::task::spawn_blocking(move || {
        producer.abort_transaction(Duration::from_secs(10)).unwrap();
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_activations_do_not_read_the_events_topic() {
    let Some(bootstrap) = kafka_bootstrap("kafka_activation::plain") else {
        return;
    };
    restart_and_activate(&bootstrap, &unique_topic_prefix("activation"), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_activations_replay_only_committed_events_from_the_tail() {
    let Some(bootstrap) = kafka_bootstrap("kafka_activation::transactional") else {
        return;
    };
    restart_and_activate(&bootstrap, &unique_topic_prefix("activation-txn"), true).await;
}
