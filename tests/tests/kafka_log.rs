//! `KafkaLog` behaviour beyond the shared conformance cases: topic creation and checks,
//! several instances on one set of topics, and errors that say where they happened.
//!
//! Runs against the broker named by `KEEL_KAFKA_BOOTSTRAP` (see `scripts/broker`).

use std::time::Duration;

use keel::log::StorageError;
use keel::log::{CheckpointStore, EventLog, LogBackend, LogRecord, SnapshotStore};
use keel::{Error, KafkaConfig};
use keel_tests::broker::{kafka_bootstrap, unique_topic_prefix};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;

fn config(bootstrap: &str, prefix: &str, partitions: u32) -> KafkaConfig {
    keel_tests::kafka_config(bootstrap, "keel-kafka-log-test", prefix, partitions)
}

fn record(key: &str, value: &str) -> LogRecord {
    LogRecord {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_both_topics_and_compacts_snapshots() {
    let Some(bootstrap) = kafka_bootstrap("kafka_log::creates_both_topics_and_compacts_snapshots")
    else {
        return;
    };
    let prefix = unique_topic_prefix("topics");
    let log = config(&bootstrap, &prefix, 3).open().await.expect("open");
    assert_eq!(log.events_topic(), format!("{prefix}.events"));
    assert_eq!(log.snapshots_topic(), format!("{prefix}.snapshots"));
    assert_eq!(log.describe(), format!("kafka:{bootstrap}"));

    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("admin client");
    let snapshots = log.snapshots_topic().to_owned();
    let configs = admin
        .describe_configs(
            &[ResourceSpecifier::Topic(&snapshots)],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("describe configs");
    let resource = configs
        .into_iter()
        .next()
        .expect("one resource")
        .expect("snapshot topic config");
    let policy = resource
        .get("cleanup.policy")
        .and_then(|entry| entry.value.clone());
    assert_eq!(policy.as_deref(), Some("compact"), "snapshots topic config");

    // Opening again finds the topics and accepts them.
    let again = config(&bootstrap, &prefix, 3).open().await.expect("reopen");
    assert_eq!(again.partition_count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_count_mismatch_is_a_clear_error() {
    let Some(bootstrap) = kafka_bootstrap("kafka_log::a_partition_count_mismatch_is_a_clear_error")
    else {
        return;
    };
    let prefix = unique_topic_prefix("mismatch");
    config(&bootstrap, &prefix, 2).open().await.expect("open");
    let error = match config(&bootstrap, &prefix, 5).open().await {
        Ok(_) => panic!("opening 2-partition topics as 5 partitions succeeded"),
        Err(e) => e,
    };
    let message = error.to_string();
    assert!(matches!(error, Error::Config(_)), "{error:?}");
    assert!(message.contains(&format!("{prefix}.events")), "{message}");
    assert!(message.contains("2 partitions"), "{message}");
    assert!(message.contains(&bootstrap), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_topics() {
    let Some(bootstrap) = kafka_bootstrap("kafka_log::two_instances_share_topics") else {
        return;
    };
    let prefix = unique_topic_prefix("two-instances");
    let first = config(&bootstrap, &prefix, 2)
        .open()
        .await
        .expect("open first");
    let second = config(&bootstrap, &prefix, 2)
        .open()
        .await
        .expect("open second");

    // Appends from both instances to one partition interleave as whole appends.
    assert_eq!(
        first
            .append(0, vec![record("a/1", "a0"), record("a/1", "a1")])
            .await
            .expect("append"),
        0
    );
    assert_eq!(
        second
            .append(0, vec![record("b/1", "b0")])
            .await
            .expect("append"),
        2
    );
    assert_eq!(first.end_offset(0).await.expect("end"), 3);
    let read = first
        .read(0, 0, 10, Duration::from_secs(10))
        .await
        .expect("read");
    assert!(!read.is_empty());
    let mut all = read;
    while all.len() < 3 {
        let next = all.len() as u64;
        let more = first
            .read(0, next, 10, Duration::from_secs(10))
            .await
            .expect("read");
        assert!(!more.is_empty(), "record {next} did not arrive");
        all.extend(more);
    }
    let values: Vec<&[u8]> = all.iter().map(|r| r.value.as_slice()).collect();
    assert_eq!(values, vec![&b"a0"[..], b"a1", b"b0"]);

    // Snapshots: the second instance's cache loads what the first wrote, and a refresh picks
    // up writes made after its first load.
    let key = "Thing/1".to_owned();
    let partition = keel::log::partition_for(&key, 2);
    first
        .save_snapshot(partition, key.clone(), b"v1".to_vec())
        .await
        .expect("save");
    assert_eq!(
        second
            .load_snapshot(partition, key.clone())
            .await
            .expect("load"),
        Some(b"v1".to_vec())
    );
    first
        .save_snapshot(partition, key.clone(), b"v2".to_vec())
        .await
        .expect("save");
    second.refresh_snapshots(partition).await.expect("refresh");
    assert_eq!(
        second
            .load_snapshot(partition, key.clone())
            .await
            .expect("load"),
        Some(b"v2".to_vec())
    );

    // Checkpoints are shared through the broker.
    first
        .commit_checkpoint("shared".to_owned(), 1, 42)
        .await
        .expect("commit");
    assert_eq!(
        second
            .load_checkpoint("shared".to_owned(), 1)
            .await
            .expect("load"),
        Some(42)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_broker_topic_and_partition() {
    let Some(bootstrap) = kafka_bootstrap("kafka_log::errors_name_the_broker_topic_and_partition")
    else {
        return;
    };
    let prefix = unique_topic_prefix("errors");
    let log = config(&bootstrap, &prefix, 2).open().await.expect("open");
    let error = log
        .append(7, vec![record("k", "v")])
        .await
        .expect_err("partition 7 of 2");
    let message = error.to_string();
    assert!(message.contains(&bootstrap), "{message}");
    assert!(message.contains(&format!("{prefix}.events")), "{message}");
    assert!(message.contains("partition 7"), "{message}");

    log.close().await.expect("close");
    assert!(matches!(
        log.append(0, vec![record("k", "v")]).await,
        Err(StorageError::Closed(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_fails_open_within_the_request_timeout() {
    // A port nothing listens on: bind one, then drop it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let bootstrap = format!("127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let result = KafkaConfig::new(&bootstrap)
        .topic_prefix(unique_topic_prefix("unreachable"))
        .request_timeout(Duration::from_secs(2))
        .open()
        .await;
    let error = match result {
        Ok(_) => panic!("opened a log on {bootstrap}, where no broker listens"),
        Err(e) => e,
    };
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert!(error.to_string().contains(&bootstrap), "{error}");
}
