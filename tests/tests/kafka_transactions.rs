//! `KafkaLog` in the transactional (fencing) mode: appends commit in batched transactions and
//! are read `read_committed`; a new owner of a partition fences the old one, whose appends then
//! fail and never become visible.
//!
//! Runs against the broker named by `KEEL_KAFKA_BOOTSTRAP` (see `scripts/broker`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use keel::envelope::EventEnvelope;
use keel::log::StorageError;
use keel::log::{EventLog, LogBackend, LogRecord, SnapshotStore, StoredRecord};
use keel::{CommandError, KafkaConfig, KafkaLog, KafkaOwnership, Runtime, SendOptions};
use keel_tests::broker::{kafka_bootstrap, unique_topic_prefix};
use keel_tests::eventually;
use keel_tests::tally::Tally;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

fn config(bootstrap: &str, prefix: &str, app: &str, partitions: u32) -> KafkaConfig {
    keel_tests::kafka_config(bootstrap, app, prefix, partitions)
        .commit_interval(Duration::from_millis(5))
        .transactional(true)
}

fn record(key: &str, value: &str) -> LogRecord {
    LogRecord {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
    }
}

/// Every record of `partition` below its end offset.
async fn read_all(log: &KafkaLog, partition: u32) -> Vec<StoredRecord> {
    let end = log.end_offset(partition).await.unwrap();
    let mut all: Vec<StoredRecord> = Vec::new();
    let mut from = 0;
    while from < end {
        let batch = log
            .read(partition, from, 500, Duration::ZERO)
            .await
            .unwrap();
        let Some(last) = batch.last() else { break };
        from = last.position.offset + 1;
        all.extend(batch);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_transactions_and_are_read_committed() {
    let Some(bootstrap) = kafka_bootstrap("kafka_transactions::concurrent_appends") else {
        return;
    };
    let prefix = unique_topic_prefix("txn-appends");
    let app = format!("{prefix}-app");
    let log = Arc::new(config(&bootstrap, &prefix, &app, 2).open().await.unwrap());

    // 60 concurrent appends of 1..=3 records to partition 0.
    let mut appends = Vec::new();
    for i in 0..60usize {
        let log = log.clone();
        appends.push(tokio::spawn(async move {
            let records: Vec<LogRecord> = (0..=i % 3)
                .map(|j| record(&format!("k{i}"), &format!("a{i}-r{j}")))
                .collect();
            let count = records.len();
            let first = log.append(0, records).await.expect("append");
            (i, first, count)
        }));
    }
    let mut expected: HashMap<u64, String> = HashMap::new();
    for append in appends {
        let (i, first, count) = append.await.unwrap();
        for j in 0..count {
            expected.insert(first + j as u64, format!("a{i}-r{j}"));
        }
    }

    // A fresh log (empty caches) reads exactly the acknowledged records, read_committed.
    let reader = config(&bootstrap, &prefix, &format!("{app}-reader"), 2)
        .open()
        .await
        .unwrap();
    let records = read_all(&reader, 0).await;
    let read: HashMap<u64, String> = records
        .iter()
        .map(|r| {
            (
                r.position.offset,
                String::from_utf8(r.value.clone()).unwrap(),
            )
        })
        .collect();
    assert_eq!(read, expected);
    let end = reader.end_offset(0).await.unwrap();
    assert!(end > records.last().unwrap().position.offset, "end {end}");
    assert_eq!(read_all(&reader, 1).await.len(), 0);

    // Each commit leaves one marker offset; far fewer markers than appends means the appends
    // shared transactions.
    let offsets: BTreeSet<u64> = read.keys().copied().collect();
    let last = *offsets.last().unwrap();
    let markers = (0..=last).filter(|o| !offsets.contains(o)).count() + 1;
    assert!(
        markers < 60 / 2,
        "{markers} transactions for 60 concurrent appends"
    );
    println!("60 concurrent appends committed in {markers} transactions");

    // Snapshots go through the transactions too, and a fresh cache loads them.
    log.save_snapshot(1, "k1".into(), b"s1".to_vec())
        .await
        .unwrap();
    log.save_snapshot(1, "k1".into(), b"s2".to_vec())
        .await
        .unwrap();
    assert_eq!(
        reader.load_snapshot(1, "k1".into()).await.unwrap(),
        Some(b"s2".to_vec())
    );

    // An open transaction of some other producer is invisible until committed.
    let outsider: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("transactional.id", format!("{prefix}-outsider"))
        .create()
        .unwrap();
    let outsider = tokio::task::spawn_blocking(move || {
        outsider.init_transactions(Duration::from_secs(10)).unwrap();
        outsider.begin_transaction().unwrap();
        outsider
    })
    .await
    .unwrap();
    outsider
        .send(
            FutureRecord::to(log.events_topic())
                .partition(1)
                .key("open")
                .payload("uncommitted"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(read_all(&reader, 1).await.len(), 0);
    let outsider = tokio::task::spawn_blocking(move || {
        outsider
            .commit_transaction(Duration::from_secs(10))
            .unwrap();
        outsider
    })
    .await
    .unwrap();
    // The commit returns once the coordinator decided it; the partition's last stable offset
    // passes the records when the commit marker lands, a moment later.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let visible = loop {
        let visible = read_all(&reader, 1).await;
        if !visible.is_empty() || tokio::time::Instant::now() > deadline {
            break visible;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(visible.len(), 1);
    assert_eq!(visible[0].value, b"uncommitted");
    tokio::task::spawn_blocking(move || drop(outsider))
        .await
        .unwrap();

    log.close().await.unwrap();
    reader.close().await.unwrap();
}

/// The runtime of one instance on its own transactional log.
async fn runtime_on(log: Arc<KafkaLog>, app: &str, partitions: Vec<u32>) -> Runtime {
    Runtime::builder()
        .backend(log)
        .app_id(app)
        .owned_partitions(partitions)
        .command_timeout(Duration::from_secs(20))
        .start()
        .await
        .expect("start")
}

fn is_fenced(e: &CommandError<keel_tests::tally::ZeroAmount>) -> bool {
    matches!(
        e,
        CommandError::Storage {
            source: StorageError::Fenced { .. },
            ..
        }
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owner_fences_the_old_one() {
    let Some(bootstrap) = kafka_bootstrap("kafka_transactions::zombie_fencing") else {
        return;
    };
    let prefix = unique_topic_prefix("txn-fencing");
    let app = format!("{prefix}-app");
    let partitions = 2;
    let id = "zombie-target";
    let partition = keel::log::partition_for(&keel::log::aggregate_key("Tally", id), partitions);

    // A owns the partition and serves the aggregate.
    let log_a = Arc::new(
        config(&bootstrap, &prefix, &app, partitions)
            .open()
            .await
            .unwrap(),
    );
    log_a.acquire_partition(partition).await.unwrap();
    let a = runtime_on(log_a.clone(), &app, vec![partition]).await;
    for i in 0..3 {
        let done = a
            .aggregate::<Tally>()
            .send_with(id, 1, SendOptions::with_id(format!("a-before-{i}")))
            .await
            .unwrap();
        assert_eq!(done.seq, i + 1);
    }

    // B takes the partition over: its producer gets the same transactional id.
    let log_b = Arc::new(
        config(&bootstrap, &prefix, &app, partitions)
            .open()
            .await
            .unwrap(),
    );
    log_b.acquire_partition(partition).await.unwrap();

    // A, a zombie now, still has the aggregate live: its command fails, never succeeds.
    let err = a
        .aggregate::<Tally>()
        .send_with(id, 1, SendOptions::with_id("a-after-0"))
        .await
        .expect_err("a fenced owner's command must fail");
    assert!(is_fenced(&err), "{err}");
    // And it stays fenced: neither a reactivated actor nor a direct append gets through.
    let err = a
        .aggregate::<Tally>()
        .send_with(id, 1, SendOptions::with_id("a-after-1"))
        .await
        .expect_err("a fenced owner's command must fail");
    assert!(
        matches!(err, CommandError::Storage { .. }),
        "expected a storage error, got {err}"
    );
    let direct = log_a
        .append(partition, vec![record(&format!("Tally/{id}"), "zombie")])
        .await;
    assert!(
        matches!(direct, Err(StorageError::Fenced { partition: p, .. }) if p == partition),
        "{direct:?}"
    );

    // B serves the aggregate from the state A committed before the takeover.
    let b = runtime_on(log_b.clone(), &app, vec![partition]).await;
    let total = b.aggregate::<Tally>().query(id, |t| t.total).await.unwrap();
    assert_eq!(total, 3);
    for i in 0..2 {
        let done = b
            .aggregate::<Tally>()
            .send_with(id, 1, SendOptions::with_id(format!("b-{i}")))
            .await
            .unwrap();
        assert_eq!(done.seq, 4 + i);
    }
    // A's failed attempts did not fence B back.
    assert!(
        log_a
            .append(partition, vec![record("other", "zombie")])
            .await
            .is_err()
    );
    let done = b
        .aggregate::<Tally>()
        .send_with(id, 1, SendOptions::with_id("b-2"))
        .await
        .unwrap();
    assert_eq!(done.seq, 6);

    // A read_committed reader sees A's events from before the takeover and B's, nothing else.
    let reader = config(&bootstrap, &prefix, &format!("{app}-reader"), partitions)
        .open()
        .await
        .unwrap();
    let mut commands = Vec::new();
    let mut seqs = Vec::new();
    for r in read_all(&reader, partition).await {
        let envelope = EventEnvelope::decode(&r.value, &r.position).unwrap();
        assert_eq!(envelope.aggregate_id, id);
        commands.push(envelope.command_id.unwrap_or_default());
        seqs.push(envelope.seq);
    }
    assert_eq!(
        commands,
        [
            "a-before-0",
            "a-before-1",
            "a-before-2",
            "b-0",
            "b-1",
            "b-2"
        ]
    );
    assert_eq!(seqs, (1..=6).collect::<Vec<u64>>());

    b.shutdown().await.unwrap();
    a.abort().await;
    reader.close().await.unwrap();
}

struct Instance {
    runtime: Runtime,
    log: Arc<KafkaLog>,
}

async fn instance(bootstrap: &str, prefix: &str, app: &str, endpoint: &str) -> Instance {
    let log = Arc::new(config(bootstrap, prefix, app, 4).open().await.unwrap());
    let runtime = Runtime::builder()
        .ownership(KafkaOwnership::new(log.clone(), endpoint))
        .command_timeout(Duration::from_secs(20))
        .start()
        .await
        .expect("start");
    Instance { runtime, log }
}

async fn send(instances: &[&Runtime], id: &str, command_id: &str) -> u64 {
    keel_tests::tally::send_to_owner(instances, id, command_id)
        .await
        .seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_transactional_instances_hand_partitions_over() {
    let Some(bootstrap) = kafka_bootstrap("kafka_transactions::two_instances") else {
        return;
    };
    let prefix = unique_topic_prefix("txn-owners");
    let app = format!("{prefix}-app");
    let a = instance(&bootstrap, &prefix, &app, "node-a:7001").await;
    let b = instance(&bootstrap, &prefix, &app, "node-b:7002").await;
    eventually(
        "the group splits the partitions between both instances",
        || {
            let (pa, pb) = (a.runtime.owned_partitions(), b.runtime.owned_partitions());
            !pa.is_empty() && !pb.is_empty() && pa.len() + pb.len() == 4
        },
    )
    .await;

    let mut acked: Vec<(String, String, u64)> = Vec::new();
    let both = [&a.runtime, &b.runtime];
    for round in 0..2 {
        for i in 0..16 {
            let (id, command_id) = (format!("t{i}"), format!("r{round}-{i}"));
            let seq = send(&both, &id, &command_id).await;
            acked.push((command_id, id, seq));
        }
    }

    a.runtime.shutdown().await.unwrap();
    eventually("B owns every partition", || {
        b.runtime.owned_partitions().len() == 4
    })
    .await;
    for i in 0..16 {
        let id = format!("t{i}");
        let command_id = format!("r2-{i}");
        let seq = send(&[&b.runtime], &id, &command_id).await;
        assert_eq!(seq, 3, "{id}");
        acked.push((command_id, id, seq));
    }

    let mut by_command: HashMap<String, usize> = HashMap::new();
    let mut seqs: HashMap<String, Vec<u64>> = HashMap::new();
    for partition in 0..4 {
        for r in read_all(&b.log, partition).await {
            let env = EventEnvelope::decode(&r.value, &r.position).unwrap();
            *by_command
                .entry(env.command_id.clone().unwrap_or_default())
                .or_default() += 1;
            seqs.entry(env.aggregate_id.clone())
                .or_default()
                .push(env.seq);
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

    b.runtime.shutdown().await.unwrap();
    a.log.close().await.unwrap();
    b.log.close().await.unwrap();
}
