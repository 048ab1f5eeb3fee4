//! The backend conformance suite: one set of cases, run against every log backend.
//!
//! Each case is a generic function over a [`Harness`] (how to open and reopen one backend on
//! fresh storage); the `conformance!` macro at the bottom instantiates every case for
//! `MemoryLog`, `EmbeddedLog` (a temp dir) and `KafkaLog` (the broker named by
//! `KEEL_KAFKA_BOOTSTRAP`, a unique topic prefix per test).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel::log::{
    CheckpointStore, EventLog, LogBackend, LogRecord, MemoryLog, Offset, SnapshotStore,
};
use keel::{EmbeddedLog, KafkaConfig, KafkaLog};
use keel_tests::broker::{kafka_bootstrap, unique_topic_prefix};

/// Partitions of every log in this suite.
const PARTITIONS: u32 = 4;
/// The most any one case may take; a hung broker fails the case instead of the whole run.
const CASE_TIMEOUT: Duration = Duration::from_secs(120);
/// A long-poll window long enough that the records a case waits for arrive within it.
const PATIENT: Duration = Duration::from_secs(10);

/// How a case gets at a backend: open it on fresh storage, and reopen it on the same storage.
trait Harness {
    type Log: LogBackend;

    /// Opens the log (the first call creates it).
    async fn open(&mut self) -> Arc<Self::Log>;

    /// Closes `log` and opens it again on the same storage. A backend without durable storage
    /// (`MemoryLog`) hands back the same log.
    async fn reopen(&mut self, log: Arc<Self::Log>) -> Arc<Self::Log>;
}

struct MemoryHarness;

impl Harness for MemoryHarness {
    type Log = MemoryLog;

    async fn open(&mut self) -> Arc<MemoryLog> {
        Arc::new(MemoryLog::new(PARTITIONS))
    }

    async fn reopen(&mut self, log: Arc<MemoryLog>) -> Arc<MemoryLog> {
        log
    }
}

struct EmbeddedHarness {
    dir: tempfile::TempDir,
}

impl EmbeddedHarness {
    fn new() -> Self {
        EmbeddedHarness {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }
}

impl Harness for EmbeddedHarness {
    type Log = EmbeddedLog;

    async fn open(&mut self) -> Arc<EmbeddedLog> {
        Arc::new(EmbeddedLog::open(self.dir.path(), PARTITIONS).expect("open embedded log"))
    }

    async fn reopen(&mut self, log: Arc<EmbeddedLog>) -> Arc<EmbeddedLog> {
        log.close().await.expect("close embedded log");
        drop(Arc::into_inner(log).expect("the case holds the only reference to the log"));
        self.open().await
    }
}

struct KafkaHarness {
    bootstrap: String,
    prefix: String,
    transactional: bool,
}

impl KafkaHarness {
    /// `None` (after a notice) when no broker is configured and none is required.
    fn from_env(test: &str) -> Option<Self> {
        Some(KafkaHarness {
            bootstrap: kafka_bootstrap(test)?,
            prefix: unique_topic_prefix(test),
            transactional: false,
        })
    }
}

impl Harness for KafkaHarness {
    type Log = KafkaLog;

    async fn open(&mut self) -> Arc<KafkaLog> {
        let log = KafkaConfig::new(&self.bootstrap)
            // A standalone transactional log's id is its app id: one app per case, or the
            // cases would fence each other.
            .app_id(if self.transactional {
                format!("{}-app", self.prefix)
            } else {
                "keel-conformance".to_owned()
            })
            .topic_prefix(&self.prefix)
            .partitions(PARTITIONS)
            .linger(Duration::from_millis(1))
            .transactional(self.transactional)
            .open()
            .await
            .unwrap_or_else(|e| panic!("open kafka log on {}: {e}", self.bootstrap));
        Arc::new(log)
    }

    async fn reopen(&mut self, log: Arc<KafkaLog>) -> Arc<KafkaLog> {
        log.close().await.expect("close kafka log");
        drop(log);
        self.open().await
    }
}

fn record(key: &str, value: impl Into<Vec<u8>>) -> LogRecord {
    LogRecord {
        key: key.to_owned(),
        value: value.into(),
    }
}

fn records(key: &str, values: &[&str]) -> Vec<LogRecord> {
    values.iter().map(|v| record(key, *v)).collect()
}

/// Reads `partition` from `from` until `count` records arrived (or the long polls time out).
async fn read_n(
    log: &impl LogBackend,
    partition: u32,
    from: Offset,
    count: usize,
) -> Vec<(Offset, String, Vec<u8>)> {
    let mut out = Vec::new();
    let deadline = Instant::now() + PATIENT;
    while out.len() < count && Instant::now() < deadline {
        let next = from + out.len() as Offset;
        let batch = log
            .read(partition, next, count - out.len(), Duration::from_secs(1))
            .await
            .expect("read");
        for r in batch {
            assert_eq!(
                r.position.partition, partition,
                "record from another partition"
            );
            out.push((r.position.offset, r.key, r.value));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// cases

async fn append_then_read_in_order(mut h: impl Harness) {
    let log = h.open().await;
    assert_eq!(log.partition_count(), PARTITIONS);
    assert_eq!(
        log.append(0, records("a/1", &["e0", "e1", "e2"]))
            .await
            .expect("append"),
        0
    );
    assert_eq!(
        log.append(0, records("a/2", &["e3"]))
            .await
            .expect("append"),
        3
    );
    assert_eq!(
        log.append(0, records("a/1", &["e4", "e5"]))
            .await
            .expect("append"),
        4
    );

    let read = read_n(&*log, 0, 0, 6).await;
    let offsets: Vec<Offset> = read.iter().map(|r| r.0).collect();
    assert_eq!(offsets, vec![0, 1, 2, 3, 4, 5]);
    let values: Vec<&[u8]> = read.iter().map(|r| r.2.as_slice()).collect();
    assert_eq!(values, vec![&b"e0"[..], b"e1", b"e2", b"e3", b"e4", b"e5"]);
    let keys: Vec<&str> = read.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(keys, vec!["a/1", "a/1", "a/1", "a/2", "a/1", "a/1"]);
}

async fn end_offset_tracks_appends(mut h: impl Harness) {
    let log = h.open().await;
    assert_eq!(log.end_offset(1).await.expect("end"), 0);
    log.append(1, records("k", &["a", "b", "c"]))
        .await
        .expect("append");
    // A multi-record append: the end is past all of its records.
    assert_eq!(log.end_offset(1).await.expect("end"), 3);
    log.append(1, records("k", &["d"])).await.expect("append");
    assert_eq!(log.end_offset(1).await.expect("end"), 4);
    log.append(1, records("k", &["e", "f", "g", "h", "i"]))
        .await
        .expect("append");
    assert_eq!(log.end_offset(1).await.expect("end"), 9);
    // The next append gets the end offset.
    assert_eq!(
        log.append(1, records("k", &["j"])).await.expect("append"),
        9
    );
    assert_eq!(
        log.end_offset(0).await.expect("end"),
        0,
        "other partitions untouched"
    );
}

async fn partitions_are_independent(mut h: impl Harness) {
    let log = h.open().await;
    assert_eq!(
        log.append(0, records("p0", &["x", "y"]))
            .await
            .expect("append"),
        0
    );
    assert_eq!(
        log.append(2, records("p2", &["z"])).await.expect("append"),
        0
    );
    assert_eq!(
        log.append(0, records("p0", &["w"])).await.expect("append"),
        2
    );

    let p2 = read_n(&*log, 2, 0, 1).await;
    assert_eq!(p2, vec![(0, "p2".to_owned(), b"z".to_vec())]);
    let more = log
        .read(2, 1, 10, Duration::from_millis(200))
        .await
        .expect("read");
    assert!(more.is_empty(), "partition 2 has one record, read {more:?}");
    let p3 = log
        .read(3, 0, 10, Duration::from_millis(200))
        .await
        .expect("read");
    assert!(p3.is_empty());
    assert_eq!(log.end_offset(0).await.expect("end"), 3);
    assert_eq!(log.end_offset(3).await.expect("end"), 0);
}

/// Concurrent appends to one partition never interleave: every append's records are at
/// consecutive offsets starting at the offset it returned, in its order.
async fn appends_get_consecutive_offsets_under_concurrency(mut h: impl Harness) {
    const WRITERS: usize = 8;
    const APPENDS: usize = 5;
    const PER_APPEND: usize = 4;
    let log = h.open().await;
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let log = log.clone();
        writers.spawn(async move {
            let mut firsts = Vec::new();
            for a in 0..APPENDS {
                let batch: Vec<LogRecord> = (0..PER_APPEND)
                    .map(|i| record(&format!("w/{w}"), format!("{w}-{a}-{i}")))
                    .collect();
                firsts.push((a, log.append(3, batch).await.expect("append")));
            }
            (w, firsts)
        });
    }
    let mut appends = Vec::new();
    while let Some(done) = writers.join_next().await {
        let (w, firsts) = done.expect("writer task");
        appends.extend(firsts.into_iter().map(|(a, first)| (w, a, first)));
    }
    let total = WRITERS * APPENDS * PER_APPEND;
    let read = read_n(&*log, 3, 0, total).await;
    assert_eq!(read.len(), total);
    let by_offset: HashMap<Offset, &[u8]> =
        read.iter().map(|(o, _, v)| (*o, v.as_slice())).collect();
    for (w, a, first) in appends {
        for i in 0..PER_APPEND {
            let offset = first + i as Offset;
            assert_eq!(
                by_offset.get(&offset).copied(),
                Some(format!("{w}-{a}-{i}").as_bytes()),
                "append {a} of writer {w} starts at {first}; offset {offset} should hold its record {i}"
            );
        }
    }
    // Each writer's appends are in its own order, too.
    let mut last_seen: HashMap<String, usize> = HashMap::new();
    for (_, key, value) in &read {
        let value = String::from_utf8(value.clone()).expect("utf8");
        let mut parts = value.split('-');
        let _w = parts.next();
        let a: usize = parts
            .next()
            .and_then(|p| p.parse().ok())
            .expect("append index");
        let previous = last_seen.insert(key.clone(), a).unwrap_or(0);
        assert!(
            a >= previous,
            "writer {key}: append {a} after append {previous}"
        );
    }
    assert_eq!(log.end_offset(3).await.expect("end"), total as Offset);
}

async fn read_from_the_middle_respects_max(mut h: impl Harness) {
    let log = h.open().await;
    let values: Vec<String> = (0..10).map(|i| format!("v{i}")).collect();
    let refs: Vec<&str> = values.iter().map(String::as_str).collect();
    log.append(1, records("m", &refs)).await.expect("append");

    let read = log.read(1, 4, 3, PATIENT).await.expect("read");
    let got: Vec<(Offset, Vec<u8>)> = read
        .into_iter()
        .map(|r| (r.position.offset, r.value))
        .collect();
    assert!(
        !got.is_empty() && got.len() <= 3,
        "read(from 4, max 3) gave {got:?}"
    );
    for (offset, value) in &got {
        assert_eq!(value, format!("v{offset}").as_bytes());
    }
    assert_eq!(got[0].0, 4, "a read starts at `from`");

    // Jumping back and forth: every read starts exactly at its `from`.
    for from in [7, 2, 9, 0, 5] {
        let read = log.read(1, from, 2, PATIENT).await.expect("read");
        assert_eq!(
            read.first().map(|r| r.position.offset),
            Some(from),
            "read(from {from})"
        );
        assert!(read.len() <= 2);
    }

    let tail = read_n(&*log, 1, 7, 3).await;
    assert_eq!(tail.iter().map(|r| r.0).collect::<Vec<_>>(), vec![7, 8, 9]);
    let past_end = log
        .read(1, 10, 100, Duration::from_millis(300))
        .await
        .expect("read");
    assert!(
        past_end.is_empty(),
        "nothing at the end offset, read {past_end:?}"
    );
    let none = log
        .read(1, 0, 0, Duration::from_millis(300))
        .await
        .expect("read");
    assert!(none.is_empty(), "max 0 reads nothing");
}

async fn long_poll_waits_then_wakes_on_append(mut h: impl Harness) {
    let log = h.open().await;
    // Nothing there: the read waits about `wait`, then returns nothing.
    let started = Instant::now();
    let empty = log
        .read(2, 0, 10, Duration::from_millis(500))
        .await
        .expect("read");
    assert!(empty.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "returned after {:?}",
        started.elapsed()
    );

    // A record appended while a read waits wakes it well before its wait is over.
    let reader = {
        let log = log.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let read = log
                .read(2, 0, 10, Duration::from_secs(30))
                .await
                .expect("read");
            (read, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    log.append(2, records("lp", &["wake"]))
        .await
        .expect("append");
    let (read, waited) = reader.await.expect("reader task");
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].value, b"wake");
    assert!(
        waited < Duration::from_secs(10),
        "the append woke the reader after {waited:?}"
    );

    // A waiting read at the end sees the next record too.
    let reader = {
        let log = log.clone();
        tokio::spawn(async move {
            log.read(2, 1, 10, Duration::from_secs(30))
                .await
                .expect("read")
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    log.append(2, records("lp", &["again"]))
        .await
        .expect("append");
    let read = reader.await.expect("reader task");
    assert_eq!(
        read.iter().map(|r| r.position.offset).collect::<Vec<_>>(),
        vec![1]
    );
}

async fn events_survive_reopen(mut h: impl Harness) {
    let log = h.open().await;
    log.append(0, records("r", &["a", "b"]))
        .await
        .expect("append");
    log.append(1, records("s", &["c"])).await.expect("append");
    let log = h.reopen(log).await;
    assert_eq!(log.end_offset(0).await.expect("end"), 2);
    assert_eq!(log.end_offset(1).await.expect("end"), 1);
    let read = read_n(&*log, 0, 0, 2).await;
    assert_eq!(
        read.iter().map(|r| r.2.as_slice()).collect::<Vec<_>>(),
        vec![&b"a"[..], b"b"]
    );
    // Appends continue after the recovered end.
    assert_eq!(
        log.append(0, records("r", &["d"])).await.expect("append"),
        2
    );
    let read = read_n(&*log, 0, 2, 1).await;
    assert_eq!(read, vec![(2, "r".to_owned(), b"d".to_vec())]);
}

async fn snapshots_latest_wins(mut h: impl Harness) {
    let log = h.open().await;
    let key = |id: &str| keel::log::aggregate_key("Thing", id);
    let p = |k: &str| keel::log::partition_for(k, PARTITIONS);
    let (k1, k2, k3) = (key("1"), key("2"), key("3"));
    assert_eq!(
        log.load_snapshot(p(&k1), k1.clone()).await.expect("load"),
        None
    );
    log.save_snapshot(p(&k1), k1.clone(), b"one-v1".to_vec())
        .await
        .expect("save");
    log.save_snapshot(p(&k2), k2.clone(), b"two-v1".to_vec())
        .await
        .expect("save");
    log.save_snapshot(p(&k1), k1.clone(), b"one-v2".to_vec())
        .await
        .expect("save");
    assert_eq!(
        log.load_snapshot(p(&k1), k1.clone()).await.expect("load"),
        Some(b"one-v2".to_vec())
    );
    assert_eq!(
        log.load_snapshot(p(&k2), k2.clone()).await.expect("load"),
        Some(b"two-v1".to_vec())
    );
    assert_eq!(
        log.load_snapshot(p(&k3), k3.clone()).await.expect("load"),
        None
    );
    // A save after a load is seen by the next load.
    log.save_snapshot(p(&k2), k2.clone(), b"two-v2".to_vec())
        .await
        .expect("save");
    assert_eq!(
        log.load_snapshot(p(&k2), k2.clone()).await.expect("load"),
        Some(b"two-v2".to_vec())
    );
    // Snapshots do not show up in the events.
    for partition in 0..PARTITIONS {
        assert_eq!(log.end_offset(partition).await.expect("end"), 0);
    }
}

async fn snapshots_survive_reopen(mut h: impl Harness) {
    let log = h.open().await;
    let mut latest = HashMap::new();
    for round in 0..3 {
        for id in 0..6 {
            let key = keel::log::aggregate_key("Thing", &id.to_string());
            let value = format!("{id}@{round}").into_bytes();
            let partition = keel::log::partition_for(&key, PARTITIONS);
            log.save_snapshot(partition, key.clone(), value.clone())
                .await
                .expect("save");
            latest.insert(key, value);
        }
    }
    let log = h.reopen(log).await;
    for (key, value) in &latest {
        let partition = keel::log::partition_for(key, PARTITIONS);
        assert_eq!(
            log.load_snapshot(partition, key.clone())
                .await
                .expect("load")
                .as_ref(),
            Some(value),
            "snapshot of {key} after reopen"
        );
    }
}

async fn checkpoints_commit_and_load(mut h: impl Harness) {
    let log = h.open().await;
    let group = "projection-a".to_owned();
    assert_eq!(
        log.load_checkpoint(group.clone(), 0).await.expect("load"),
        None
    );
    log.commit_checkpoint(group.clone(), 0, 5)
        .await
        .expect("commit");
    assert_eq!(
        log.load_checkpoint(group.clone(), 0).await.expect("load"),
        Some(5)
    );
    log.commit_checkpoint(group.clone(), 0, 7)
        .await
        .expect("commit");
    assert_eq!(
        log.load_checkpoint(group.clone(), 0).await.expect("load"),
        Some(7)
    );
    log.commit_checkpoint(group.clone(), 2, 0)
        .await
        .expect("commit");
    assert_eq!(
        log.load_checkpoint(group.clone(), 2).await.expect("load"),
        Some(0)
    );
    // Other partitions and other groups are separate.
    assert_eq!(
        log.load_checkpoint(group.clone(), 1).await.expect("load"),
        None
    );
    assert_eq!(
        log.load_checkpoint("projection-b".to_owned(), 0)
            .await
            .expect("load"),
        None
    );
    log.commit_checkpoint("projection-b".to_owned(), 0, 3)
        .await
        .expect("commit");
    assert_eq!(
        log.load_checkpoint(group.clone(), 0).await.expect("load"),
        Some(7)
    );
    assert_eq!(
        log.load_checkpoint("projection-b".to_owned(), 0)
            .await
            .expect("load"),
        Some(3)
    );
}

async fn checkpoints_survive_reopen(mut h: impl Harness) {
    let log = h.open().await;
    log.commit_checkpoint("app".to_owned(), 1, 11)
        .await
        .expect("commit");
    log.commit_checkpoint("app".to_owned(), 3, 4)
        .await
        .expect("commit");
    log.commit_checkpoint("view".to_owned(), 1, 2)
        .await
        .expect("commit");
    let log = h.reopen(log).await;
    assert_eq!(
        log.load_checkpoint("app".to_owned(), 1)
            .await
            .expect("load"),
        Some(11)
    );
    assert_eq!(
        log.load_checkpoint("app".to_owned(), 3)
            .await
            .expect("load"),
        Some(4)
    );
    assert_eq!(
        log.load_checkpoint("view".to_owned(), 1)
            .await
            .expect("load"),
        Some(2)
    );
    assert_eq!(
        log.load_checkpoint("view".to_owned(), 3)
            .await
            .expect("load"),
        None
    );
}

// ---------------------------------------------------------------------------------------
// instantiation

async fn run(case: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(CASE_TIMEOUT, case)
        .await
        .unwrap_or_else(|_| panic!("case did not finish within {CASE_TIMEOUT:?}"));
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::run(super::$case(super::MemoryHarness)).await;
                }
            )*
        }

        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::run(super::$case(super::EmbeddedHarness::new())).await;
                }
            )*
        }

        mod kafka {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let test = concat!("conformance::kafka::", stringify!($case));
                    if let Some(harness) = super::KafkaHarness::from_env(test) {
                        super::run(super::$case(harness)).await;
                    }
                }
            )*
        }

    };
}

conformance!(
    append_then_read_in_order,
    end_offset_tracks_appends,
    partitions_are_independent,
    appends_get_consecutive_offsets_under_concurrency,
    read_from_the_middle_respects_max,
    long_poll_waits_then_wakes_on_append,
    events_survive_reopen,
    snapshots_latest_wins,
    snapshots_survive_reopen,
    checkpoints_commit_and_load,
    checkpoints_survive_reopen,
);

/// The transactional `KafkaLog` runs the cases that hold whatever the offsets are: every
/// transaction leaves a commit marker, so its offsets are not dense (the other cases assert
/// exact offsets; `kafka_transactions.rs` covers the transactional appends and reads).
macro_rules! conformance_transactional {
    ($($case:ident),* $(,)?) => {
        mod kafka_transactional {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let test = concat!("conformance::kafka_transactional::", stringify!($case));
                    if let Some(mut harness) = super::KafkaHarness::from_env(test) {
                        harness.transactional = true;
                        super::run(super::$case(harness)).await;
                    }
                }
            )*
        }
    };
}

conformance_transactional!(
    read_from_the_middle_respects_max,
    snapshots_latest_wins,
    snapshots_survive_reopen,
    checkpoints_commit_and_load,
    checkpoints_survive_reopen,
);
