//! keel's topics and clients on a real Apache Kafka broker: topics that keep events forever,
//! existing topics refused by name and setting, reads that never skip deleted records, snapshots
//! up to the configured size, end offsets by ListOffsets (the last stable offset), and recovery
//! checkpoints that never expire.
//!
//! Runs against the broker named by `KEEL_KAFKA_BOOTSTRAP` (see `scripts/broker`); the
//! checkpoint-expiry test starts a broker of its own with a one-minute offsets retention.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use keel::config::SnapshotPolicy;
use keel::log::StorageError;
use keel::log::{CheckpointStore, EventLog, LogRecord, SnapshotStore};
use keel::{Aggregate, Error, KafkaConfig, Runtime};
use keel_tests::broker::{Cluster, ClusterSpec, kafka_bootstrap, unique_topic_prefix};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, TopicPartitionList};
use serde::{Deserialize, Serialize};

const TIMEOUT: Duration = Duration::from_secs(10);

fn config(bootstrap: &str, prefix: &str) -> KafkaConfig {
    keel_tests::kafka_config(bootstrap, format!("{prefix}-app"), prefix, 2)
}

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client")
}

fn options() -> AdminOptions {
    AdminOptions::new()
        .request_timeout(Some(TIMEOUT))
        .operation_timeout(Some(TIMEOUT))
}

/// The settings of `topic` as the broker reports them.
async fn settings(bootstrap: &str, topic: &str) -> HashMap<String, String> {
    let results = admin(bootstrap)
        .describe_configs([&ResourceSpecifier::Topic(topic)], &options())
        .await
        .expect("describe configs");
    let resource = results
        .into_iter()
        .next()
        .expect("one resource")
        .expect("topic config");
    resource
        .entries
        .into_iter()
        .filter_map(|e| Some((e.name, e.value?)))
        .collect()
}

fn record(key: &str, value: &[u8]) -> LogRecord {
    LogRecord {
        key: key.to_owned(),
        value: value.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_topics_keep_events_forever_and_compact_snapshots_hourly() {
    let Some(bootstrap) = kafka_bootstrap("kafka_topics::new_topics") else {
        return;
    };
    let prefix = unique_topic_prefix("new-topics");
    let log = config(&bootstrap, &prefix).open().await.expect("open");

    let events = settings(&bootstrap, log.events_topic()).await;
    assert_eq!(events["retention.ms"], "-1", "{events:?}");
    assert_eq!(events["retention.bytes"], "-1", "{events:?}");
    assert_eq!(events["cleanup.policy"], "delete", "{events:?}");
    // One broker: replication factor 1 (the broker's default), so min.insync.replicas 1.
    assert_eq!(events["min.insync.replicas"], "1", "{events:?}");

    let snapshots = settings(&bootstrap, log.snapshots_topic()).await;
    assert_eq!(snapshots["cleanup.policy"], "compact", "{snapshots:?}");
    assert_eq!(snapshots["segment.ms"], "3600000", "{snapshots:?}");
    assert_eq!(
        snapshots["min.cleanable.dirty.ratio"], "0.1",
        "{snapshots:?}"
    );
    let max_message: usize = snapshots["max.message.bytes"].parse().unwrap();
    assert!(max_message > 8 << 20, "max.message.bytes {max_message}");

    // Opening again finds the topics and accepts them.
    config(&bootstrap, &prefix).open().await.expect("reopen");
}

/// Creates `{prefix}.events` by hand with `configs`, as an operator (or broker-side
/// auto-creation) might have, and opens the log on it.
async fn open_on_existing_events_topic(
    bootstrap: &str,
    prefix: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> Result<keel::KafkaLog, Error> {
    let name = format!("{prefix}.events");
    let topic = configs.iter().fold(
        NewTopic::new(&name, partitions, TopicReplication::Fixed(1)),
        |t, (k, v)| t.set(k, v),
    );
    for result in admin(bootstrap)
        .create_topics([&topic], &options())
        .await
        .expect("create topic")
    {
        result.expect("topic created");
    }
    config(bootstrap, prefix).open().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_events_topic_that_would_lose_events_is_refused_by_name_and_setting() {
    let Some(bootstrap) = kafka_bootstrap("kafka_topics::refused") else {
        return;
    };
    for (setting, configs) in [
        ("retention.ms", vec![("retention.ms", "604800000")]),
        (
            "retention.bytes",
            vec![("retention.ms", "-1"), ("retention.bytes", "1073741824")],
        ),
        (
            "cleanup.policy",
            vec![
                ("retention.ms", "-1"),
                ("retention.bytes", "-1"),
                ("cleanup.policy", "compact"),
            ],
        ),
    ] {
        let prefix = unique_topic_prefix("refused");
        let error = match open_on_existing_events_topic(&bootstrap, &prefix, 2, &configs).await {
            Ok(_) => panic!("an events topic with {configs:?} was accepted"),
            Err(e) => e,
        };
        assert!(matches!(error, Error::Config(_)), "{error:?}");
        let text = error.to_string();
        assert!(
            text.contains(&format!("{prefix}.events")),
            "names the topic: {text}"
        );
        assert!(
            text.contains(setting),
            "names the setting {setting}: {text}"
        );
    }

    // The right settings, made by hand, are accepted.
    let prefix = unique_topic_prefix("accepted");
    open_on_existing_events_topic(
        &bootstrap,
        &prefix,
        2,
        &[("retention.ms", "-1"), ("retention.bytes", "-1")],
    )
    .await
    .expect("an events topic that keeps events forever is accepted");

    // The wrong partition count is refused too, naming both counts.
    let prefix = unique_topic_prefix("wrong-count");
    let error = open_on_existing_events_topic(
        &bootstrap,
        &prefix,
        3,
        &[("retention.ms", "-1"), ("retention.bytes", "-1")],
    )
    .await
    .err()
    .expect("3 partitions opened as 2");
    let text = error.to_string();
    assert!(
        text.contains(&format!("{prefix}.events")) && text.contains("3 partitions"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_below_the_log_start_is_an_error_naming_partition_and_offset() {
    let Some(bootstrap) = kafka_bootstrap("kafka_topics::below_log_start") else {
        return;
    };
    let prefix = unique_topic_prefix("below-start");
    let log = config(&bootstrap, &prefix).open().await.expect("open");
    let records: Vec<LogRecord> = (0..10)
        .map(|i| record("k", format!("v{i}").as_bytes()))
        .collect();
    let first = log.append(1, records).await.expect("append");
    assert_eq!(first, 0);

    // An operator deletes the first five records.
    let mut cut = TopicPartitionList::new();
    cut.add_partition_offset(log.events_topic(), 1, rdkafka::Offset::Offset(5))
        .unwrap();
    admin(&bootstrap)
        .delete_records(&cut, &options())
        .await
        .expect("delete records");

    let error = log
        .read(1, 2, 100, Duration::from_millis(500))
        .await
        .expect_err("a read below the log start must fail, not jump to offset 5");
    assert!(matches!(error, StorageError::Corrupt { .. }), "{error:?}");
    let text = error.to_string();
    assert!(text.contains("partition 1"), "names the partition: {text}");
    assert!(text.contains("offset 2"), "names the offset: {text}");
    assert!(text.contains(log.events_topic()), "names the topic: {text}");

    // What is still there reads as before.
    let rest = log
        .read(1, 5, 100, Duration::from_millis(500))
        .await
        .expect("read from the log start");
    assert_eq!(rest.first().map(|r| r.position.offset), Some(5));
    assert_eq!(rest.first().map(|r| r.value.clone()), Some(b"v5".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_up_to_the_limit_load_and_larger_ones_fail_naming_it() {
    let Some(bootstrap) = kafka_bootstrap("kafka_topics::snapshot_sizes") else {
        return;
    };
    let prefix = unique_topic_prefix("snapshot-size");
    let log = config(&bootstrap, &prefix).open().await.expect("open");
    let limit = 8 << 20;
    let big: Vec<u8> = (0..limit - 64).map(|i| (i % 251) as u8).collect();
    log.save_snapshot(0, "Big/one".into(), big.clone())
        .await
        .expect("an 8 MiB snapshot is saved");

    let too_big = vec![7u8; limit + 1];
    let error = log
        .save_snapshot(0, "Big/two".into(), too_big)
        .await
        .expect_err("a snapshot over the limit");
    assert!(matches!(error, StorageError::TooLarge { .. }), "{error:?}");
    let text = error.to_string();
    assert!(text.contains(&limit.to_string()), "names the limit: {text}");
    assert!(
        text.contains("max_snapshot_bytes"),
        "names the setting: {text}"
    );

    // Another instance reads the big one back from the topic.
    let other = config(&bootstrap, &prefix)
        .open()
        .await
        .expect("open again");
    let loaded = other
        .load_snapshot(0, "Big/one".into())
        .await
        .expect("load")
        .expect("the big snapshot is there");
    assert!(loaded == big, "the snapshot comes back byte for byte");
    assert_eq!(
        other.load_snapshot(0, "Big/two".into()).await.unwrap(),
        None
    );
}

/// An aggregate whose state is everything it was sent: big states, big snapshots.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Blob {
    chunks: Vec<serde_bytes_like::Bytes>,
}

mod serde_bytes_like {
    use serde::{Deserialize, Serialize};

    /// Bytes as one msgpack bin (not an array of numbers).
    #[derive(Debug, Clone, PartialEq)]
    pub(super) struct Bytes(pub(super) Vec<u8>);

    impl Serialize for Bytes {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }

    impl<'de> Deserialize<'de> for Bytes {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visit;
            impl serde::de::Visitor<'_> for Visit {
                type Value = Bytes;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E>(self, v: &[u8]) -> Result<Bytes, E> {
                    Ok(Bytes(v.to_vec()))
                }
                fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Bytes, E> {
                    Ok(Bytes(v))
                }
            }
            d.deserialize_byte_buf(Visit)
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum BlobEvent {
    Appended(serde_bytes_like::Bytes),
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Aggregate for Blob {
    const TYPE: &'static str = "Blob";
    type Command = Vec<u8>;
    type Event = BlobEvent;
    type Error = Never;

    fn handle(&self, bytes: Vec<u8>) -> Result<Vec<BlobEvent>, Never> {
        Ok(vec![BlobEvent::Appended(serde_bytes_like::Bytes(bytes))])
    }

    fn apply(&mut self, event: &BlobEvent) {
        let BlobEvent::Appended(bytes) = event;
        self.chunks.push(bytes.clone());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_aggregates_snapshot_end_to_end_and_one_over_the_limit_still_serves() {
    let Some(bootstrap) = kafka_bootstrap("kafka_topics::big_aggregates") else {
        return;
    };
    let prefix = unique_topic_prefix("big-aggregates");
    let open = || async {
        let log = Arc::new(config(&bootstrap, &prefix).open().await.expect("open"));
        let runtime = Runtime::builder()
            .backend(log.clone())
            .app_id(format!("{prefix}-app"))
            .snapshots(SnapshotPolicy {
                every_events: 1000,
                ..SnapshotPolicy::default()
            })
            .start()
            .await
            .expect("start");
        (log, runtime)
    };
    // 6 MiB of state (fits the 8 MiB limit) and 10 MiB (does not), in 512 KiB events.
    let chunk = |i: usize| vec![(i % 256) as u8; 512 << 10];
    let (log, runtime) = open().await;
    let blobs = runtime.aggregate::<Blob>();
    for i in 0..12 {
        blobs.send("fits", chunk(i)).await.expect("command to fits");
    }
    for i in 0..20 {
        blobs
            .send("too-big", chunk(i))
            .await
            .expect("command to too-big");
    }
    // Shutdown snapshots both: one is written, the other is refused (and logged).
    runtime.shutdown().await.expect("shutdown");
    drop(log);
    let log = config(&bootstrap, &prefix)
        .open()
        .await
        .expect("open to look");
    let key = |id: &str| format!("Blob/{id}");
    let partition = |id: &str| keel::log::partition_for(&key(id), 2);
    assert!(
        log.load_snapshot(partition("fits"), key("fits"))
            .await
            .unwrap()
            .is_some(),
        "the 6 MiB aggregate was snapshotted"
    );
    assert!(
        log.load_snapshot(partition("too-big"), key("too-big"))
            .await
            .unwrap()
            .is_none(),
        "the 10 MiB snapshot was not written"
    );
    drop(log);

    // A new instance serves both, from the snapshot and from the events.
    let (_log, runtime) = open().await;
    let blobs = runtime.aggregate::<Blob>();
    for (id, count) in [("fits", 12), ("too-big", 20)] {
        let chunks = blobs
            .query(id, |b| b.chunks.iter().map(|c| c.0[0]).collect::<Vec<u8>>())
            .await
            .expect("query");
        let expected: Vec<u8> = (0..count).map(|i| (i % 256) as u8).collect();
        assert_eq!(chunks, expected, "{id}");
        blobs
            .send(id, chunk(99))
            .await
            .expect("a command after restart");
    }
    runtime.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transactional_end_offset_is_the_last_stable_offset() {
    let Some(bootstrap) = kafka_bootstrap("kafka_topics::last_stable_offset") else {
        return;
    };
    let prefix = unique_topic_prefix("lso");
    let log = config(&bootstrap, &prefix)
        .transactional(true)
        .open()
        .await
        .expect("open");
    log.append(0, vec![record("a", b"1"), record("a", b"2")])
        .await
        .expect("append");
    // Two records and the commit marker, which the coordinator writes after the commit
    // returns: the end settles at 3.
    let mut committed_end = log.end_offset(0).await.expect("end offset");
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while committed_end < 3 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        committed_end = log.end_offset(0).await.expect("end offset");
    }
    assert_eq!(committed_end, 3, "two records and the commit marker");

    // Another producer opens a transaction on the partition and leaves it open.
    let topic = log.events_topic().to_owned();
    let open_txn = tokio::task::spawn_blocking(move || {
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("transactional.id", format!("{topic}-open"))
            .create()
            .expect("producer");
        producer.init_transactions(TIMEOUT).expect("init");
        producer.begin_transaction().expect("begin");
        for _ in 0..3 {
            producer
                .send(BaseRecord::to(&topic).partition(0).key("b").payload("open"))
                .map_err(|(e, _)| e)
                .expect("send");
        }
        producer.flush(TIMEOUT).expect("flush");
        producer
    })
    .await
    .unwrap();

    // The open transaction's records are below the high watermark but not below the last
    // stable offset: the end keel reports does not move past them.
    let end = log.end_offset(0).await.expect("end offset");
    assert_eq!(end, committed_end, "end offset with a transaction open");
    let read = log
        .read(0, 0, 100, Duration::from_millis(300))
        .await
        .expect("read");
    assert_eq!(read.len(), 2, "only committed records are read");

    tokio::task::spawn_blocking(move || open_txn.commit_transaction(TIMEOUT).expect("commit"))
        .await
        .unwrap();
    keel_tests::eventually("the end passes the committed transaction", || {
        futures_end(&log) > committed_end + 3
    })
    .await;
}

/// The end offset, blocking (for `eventually`).
fn futures_end(log: &keel::KafkaLog) -> u64 {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(log.end_offset(0)))
        .expect("end offset")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_checkpoints_of_a_quiet_partition_never_expire() {
    if kafka_bootstrap("kafka_topics::checkpoints_never_expire").is_none() {
        return;
    }
    // A broker that forgets committed offsets one minute after their last commit.
    let broker = Cluster::start(ClusterSpec {
        nodes: 1,
        overrides: vec![
            "offsets.retention.minutes=1".into(),
            "offsets.retention.check.interval.ms=1000".into(),
        ],
        ..ClusterSpec::default()
    })
    .await;
    let prefix = unique_topic_prefix("checkpoint-expiry");
    let log = Arc::new(
        config(broker.bootstrap(), &prefix)
            .open()
            .await
            .expect("open"),
    );
    let runtime = Runtime::builder()
        .backend(log.clone())
        .app_id(format!("{prefix}-app"))
        .checkpoint_refresh(Duration::from_secs(10))
        .start()
        .await
        .expect("start");
    let tallies = runtime.aggregate::<keel_tests::tally::Tally>();
    for i in 0..20 {
        tallies.send(&format!("t{i}"), 1).await.expect("command");
    }
    // A group nobody refreshes, committed at the same time: the broker's expiry is real.
    log.commit_checkpoint("unrefreshed".into(), 0, 1)
        .await
        .expect("commit");
    let group = format!("{prefix}-app.recovery");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut committed = 0;
        for partition in 0..2 {
            if log
                .load_checkpoint(group.clone(), partition)
                .await
                .unwrap()
                .is_some()
            {
                committed += 1;
            }
        }
        if committed == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the runtime committed no checkpoints (group {group})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Quiet for longer than the retention.
    tokio::time::sleep(Duration::from_secs(75)).await;
    assert_eq!(
        log.load_checkpoint("unrefreshed".into(), 0).await.unwrap(),
        None,
        "the broker expired the unrefreshed group's offsets"
    );
    for partition in 0..2 {
        let now = log.load_checkpoint(group.clone(), partition).await.unwrap();
        assert!(
            now.is_some(),
            "partition {partition}'s recovery checkpoint expired on a quiet partition"
        );
    }
    runtime.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_three_nodes_topics_get_the_default_replication_and_two_insync_replicas() {
    if kafka_bootstrap("kafka_topics::three_nodes").is_none() {
        return;
    }
    // Brokers whose own default min.insync.replicas (1) would let an acknowledged append
    // live on one broker only.
    let cluster = Cluster::start(ClusterSpec {
        nodes: 3,
        overrides: vec!["min.insync.replicas=1".into()],
        ..ClusterSpec::default()
    })
    .await;
    let bootstrap = cluster.bootstrap().to_owned();
    for (replication, expected_rf, expected_isr) in
        [(None, 3, "2"), (Some(2), 2, "2"), (Some(1), 1, "1")]
    {
        let prefix = unique_topic_prefix("three-nodes");
        let mut config = config(&bootstrap, &prefix);
        if let Some(rf) = replication {
            config = config.replication_factor(rf);
        }
        let log = config.open().await.expect("open");
        let metadata_client: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .unwrap();
        for topic in [
            log.events_topic().to_owned(),
            log.snapshots_topic().to_owned(),
        ] {
            let lookup = topic.clone();
            let client = &metadata_client;
            let replicas = tokio::task::block_in_place(|| {
                let metadata = client.fetch_metadata(Some(&lookup), TIMEOUT).unwrap();
                metadata.topics()[0]
                    .partitions()
                    .iter()
                    .map(|p| p.replicas().len())
                    .collect::<Vec<_>>()
            });
            assert!(
                replicas.iter().all(|&r| r == expected_rf),
                "{topic} ({replication:?}): replicas {replicas:?}"
            );
            let settings = settings(&bootstrap, &topic).await;
            assert_eq!(
                settings["min.insync.replicas"], expected_isr,
                "{topic} ({replication:?})"
            );
            if topic == log.events_topic() {
                // Setting min.insync.replicas kept the rest of the topic's settings.
                assert_eq!(settings["retention.ms"], "-1", "{topic}");
            }
        }
    }
}
