//! Commands/s through keel on `KafkaLog`, at 1, 64 and 256 concurrently active aggregates,
//! beside the baseline measured in the same run against the same broker:
//! - `raw_producer`: an rdkafka idempotent producer (`acks=all`, the same linger) sending
//!   records of the size of keel's event records to a topic with the same partition count,
//!   from as many tasks as there are aggregates, each awaiting its own delivery — what a
//!   durable command cannot do faster than.
//! - `keel_hot`: 64 senders on one aggregate, beside `keel/64` (64 senders on 64 aggregates).
//!
//! Then the transactional mode (`txn`): at 1, 12 and 128 partitions, keel's commands/s with
//! `KafkaConfig::transactional(true)` beside keel's idempotent log on topics of the same
//! partition count (both at 256 aggregates), the commits (transactions) per second overall and
//! per partition and the records per commit, in both fencing modes: standalone (one log,
//! fenced by its transactional id) and under partition ownership (one instance in the group,
//! every transaction carrying the group offsets of its partitions, KIP-447). Also what
//! acquiring every partition at once costs standalone (wall time, each `acquire_partition`'s
//! latency, the threads and sockets added), and how long the group takes to assign and
//! serve them all. Commit markers are counted: the events topic's end offsets moved by the
//! events appended plus one marker per partition per transaction that wrote to it (so a
//! transaction over 12 partitions leaves 12).
//!
//! Then activation and handoff on Kafka:
//! - `activation/tail`: the latency of activating an aggregate with a snapshot plus 99
//!   events after it (interleaved with other aggregates' events), in a runtime that
//!   recovered the partition (so the events are in its in-memory tail). Beside it, in the same
//!   run: `activation/no_tail` (the tail turned off: each activation reads its events in one
//!   sequential pass) and `activation/per_event_reads` (the snapshot load plus one log read
//!   per event, as activations read before the tail existed).
//! - `handoff`: one instance serving 10 000 live aggregates of a partition leaves the group;
//!   the time until the other instance has the partition and serves a command on it.
//!
//! Needs a broker: `KEEL_KAFKA_BOOTSTRAP=HOST:PORT` (`eval "$(scripts/broker start)"`);
//! without it the bench says so and does nothing. `KEEL_BENCH_ONLY=commands,txn` (any of
//! `commands`, `txn`, `activation`, `handoff`) runs only those groups;
//! `KEEL_BENCH_PARTITIONS` sets the commands group's partition count (default 8) and
//! `KEEL_BENCH_TXN_PARTITIONS=1,12,128` the txn group's. The tables name the broker count: run
//! the bench once per cluster (one node, three nodes) to compare. `RUST_LOG` turns logging on
//! (stderr); `KEEL_BENCH_RDKAFKA_DEBUG` sets librdkafka's `debug` on the transactional log.
//! Criterion reports time per command; at the end tables give commands/s, the raw producer's
//! messages/s, their ratio, and the
//! latency percentiles of both (over every iteration criterion ran, warm-up included).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{BenchmarkId, Criterion, Throughput};
use hdrhistogram::Histogram;
use keel::config::SnapshotPolicy;
use keel::log::{EventLog, LogBackend, Offset, SnapshotStore};
use keel::{CommandError, KafkaConfig, KafkaLog, KafkaOwnership, Runtime};
use keel_benches::Counter;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

const CONCURRENCY: [usize; 3] = [1, 64, 256];
/// The senders of the hot-aggregate case (`keel_hot`): all on one aggregate, against the same
/// number on as many aggregates.
const HOT_SENDERS: usize = 64;
/// The partition count of the commands bench (`KEEL_BENCH_PARTITIONS` overrides it) and of the
/// activation bench.
const PARTITIONS: u32 = 8;

fn commands_partitions() -> u32 {
    std::env::var("KEEL_BENCH_PARTITIONS")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(PARTITIONS)
}
/// The group-commit window of both keel's producer and the raw one.
const LINGER: Duration = Duration::from_millis(2);

/// What every run of one benchmark added up to.
struct Measured {
    operations: u64,
    elapsed: Duration,
    /// Microseconds from send to acknowledgement.
    latency: Histogram<u64>,
}

impl Measured {
    fn new() -> Self {
        Measured {
            operations: 0,
            elapsed: Duration::ZERO,
            latency: Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds"),
        }
    }

    fn per_second(&self) -> f64 {
        self.operations as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

/// (what, concurrency) → totals.
type Results = Arc<Mutex<BTreeMap<(&'static str, usize), Measured>>>;

fn tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs `iters` operations spread over `n` tasks, task `i` driving its own target `i`, and
/// adds them to `results[key]`. Returns the time criterion sees, normalized to `iters`.
async fn spread<F, Fut>(
    n: usize,
    iters: u64,
    results: Results,
    key: (&'static str, usize),
    op: F,
) -> Duration
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let per_task = iters.div_ceil(n as u64);
    let start = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut latency = Measured::new().latency;
                for _ in 0..per_task {
                    let sent = Instant::now();
                    op(i).await;
                    latency.saturating_record(sent.elapsed().as_micros() as u64);
                }
                latency
            })
        })
        .collect();
    let mut latency = Measured::new().latency;
    for t in tasks {
        latency
            .add(t.await.expect("bench task"))
            .expect("same histogram bounds");
    }
    let elapsed = start.elapsed();
    let operations = per_task * n as u64;
    {
        let mut results = results.lock().expect("results");
        let measured = results.entry(key).or_insert_with(Measured::new);
        measured.operations += operations;
        measured.elapsed += elapsed;
        measured
            .latency
            .add(&latency)
            .expect("same histogram bounds");
    }
    elapsed.mul_f64(iters as f64 / operations as f64)
}

fn unique_prefix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("keel-bench.{}-{nanos:x}", std::process::id())
}

async fn open_log(bootstrap: &str, prefix: &str, partitions: u32) -> KafkaLog {
    KafkaConfig::new(bootstrap)
        .app_id(prefix)
        .topic_prefix(prefix)
        .partitions(partitions)
        .linger(LINGER)
        .open()
        .await
        .expect("open the kafka log")
}

/// The key and value sizes of the records one `Counter` command appends.
async fn record_size(runtime: &Runtime, log: &KafkaLog) -> (usize, usize) {
    let done = runtime
        .aggregate::<Counter>()
        .send("size-probe", ())
        .await
        .expect("a command");
    let position = done.position.expect("the command appended an event");
    let records = log
        .read(
            position.partition,
            position.offset,
            1,
            Duration::from_secs(5),
        )
        .await
        .expect("read the event back");
    let record = records.first().expect("the event is in the log");
    (record.key.len(), record.value.len())
}

fn raw_producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", LINGER.as_millis().to_string())
        .create()
        .expect("raw producer")
}

/// How many brokers the cluster at `bootstrap` has.
fn broker_count(bootstrap: &str) -> usize {
    raw_producer(bootstrap)
        .client()
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("cluster metadata")
        .brokers()
        .len()
}

fn bench_kafka(c: &mut Criterion, bootstrap: &str, results: &Results) {
    let rt = tokio();
    let prefix = unique_prefix();
    let partitions = commands_partitions();
    let keel_log =
        Arc::new(rt.block_on(open_log(bootstrap, &format!("{prefix}.keel"), partitions)));
    rt.block_on(await_leaders(&keel_log));
    let runtime = rt.block_on(async {
        Runtime::builder()
            .backend(keel_log.clone())
            .app_id(format!("{prefix}.keel"))
            .max_live_actors(4096)
            .start()
            .await
            .expect("runtime")
    });
    let (key_len, value_len) = rt.block_on(record_size(&runtime, &keel_log));
    // The raw producer's topic: created the same way, with the same partition count.
    let raw_log = rt.block_on(open_log(bootstrap, &format!("{prefix}.raw"), partitions));
    rt.block_on(await_leaders(&raw_log));
    let raw_topic: Arc<str> = raw_log.events_topic().into();
    let producer = raw_producer(bootstrap);
    let value: Arc<[u8]> = vec![b'x'; value_len].into();
    eprintln!(
        "kafka bench on {bootstrap}: {partitions} partitions, linger {LINGER:?}, \
         records of {key_len} + {value_len} bytes (key + value)"
    );

    let mut group = c.benchmark_group("kafka");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    let ids: Arc<Vec<String>> = Arc::new((0..1024).map(|i| format!("c{i}")).collect());
    for n in CONCURRENCY {
        let handle = runtime.aggregate::<Counter>();
        group.bench_with_input(BenchmarkId::new("keel", n), &n, |b, &n| {
            b.to_async(&rt).iter_custom(|iters| {
                let handle = handle.clone();
                let ids = ids.clone();
                spread(n, iters, results.clone(), ("keel", n), move |i| {
                    let handle = handle.clone();
                    let ids = ids.clone();
                    async move {
                        handle.send(&ids[i], ()).await.expect("command");
                    }
                })
            })
        });
        if n == HOT_SENDERS {
            // The same number of senders, all on one aggregate: its queued commands are
            // appended as one batch per produce.
            group.bench_with_input(BenchmarkId::new("keel_hot", n), &n, |b, &n| {
                b.to_async(&rt).iter_custom(|iters| {
                    let handle = handle.clone();
                    spread(n, iters, results.clone(), ("keel_hot", n), move |_| {
                        let handle = handle.clone();
                        async move {
                            handle.send("hot", ()).await.expect("command");
                        }
                    })
                })
            });
        }
        group.bench_with_input(BenchmarkId::new("raw_producer", n), &n, |b, &n| {
            b.to_async(&rt).iter_custom(|iters| {
                let producer = producer.clone();
                let topic = raw_topic.clone();
                let value = value.clone();
                let ids = ids.clone();
                spread(n, iters, results.clone(), ("raw_producer", n), move |i| {
                    let producer = producer.clone();
                    let topic = topic.clone();
                    let value = value.clone();
                    let key = format!("Counter/{}", ids[i]);
                    async move {
                        let partition = keel::log::partition_for(&key, partitions);
                        let record = FutureRecord::to(&topic)
                            .partition(partition as i32)
                            .key(&key)
                            .payload(&value[..]);
                        producer
                            .send(record, Duration::from_secs(30))
                            .await
                            .expect("delivery");
                    }
                })
            })
        });
    }
    group.finish();
    rt.block_on(async {
        runtime.shutdown().await.expect("shutdown");
        keel_log.close().await.expect("close");
        raw_log.close().await.expect("close");
    });
    drop(producer);
}

fn print_table(results: &Results, brokers: usize) {
    let results = results.lock().expect("results");
    if !CONCURRENCY
        .iter()
        .any(|&n| results.contains_key(&("keel", n)))
    {
        return;
    }
    println!();
    println!(
        "keel on KafkaLog vs a raw idempotent producer (acks=all, linger {LINGER:?}), \
         {} partitions, {brokers} broker(s)",
        commands_partitions()
    );
    println!(
        "{:>11} | {:>10} | {:>13} | {:>5} | {:>17} | {:>17}",
        "aggregates", "commands/s", "raw msgs/s", "ratio", "keel p50/p99 ms", "raw p50/p99 ms"
    );
    for n in CONCURRENCY {
        let (Some(keel), Some(raw)) =
            (results.get(&("keel", n)), results.get(&("raw_producer", n)))
        else {
            continue;
        };
        println!(
            "{n:>11} | {:>10.0} | {:>13.0} | {:>4.0}% | {:>7.2} / {:>7.2} | {:>7.2} / {:>7.2}",
            keel.per_second(),
            raw.per_second(),
            100.0 * keel.per_second() / raw.per_second(),
            keel.percentile_ms(0.5),
            keel.percentile_ms(0.99),
            raw.percentile_ms(0.5),
            raw.percentile_ms(0.99),
        );
    }
}

/// The hot aggregate against the same senders spread over as many aggregates.
fn print_hot(results: &Results) {
    let results = results.lock().expect("results");
    let (Some(hot), Some(wide)) = (
        results.get(&("keel_hot", HOT_SENDERS)),
        results.get(&("keel", HOT_SENDERS)),
    ) else {
        return;
    };
    println!();
    println!(
        "hot aggregate: {HOT_SENDERS} senders on 1 aggregate {:.0} commands/s (p50/p99 {:.2} / {:.2} ms) \
         vs {HOT_SENDERS} senders on {HOT_SENDERS} aggregates {:.0} commands/s: {:.0}%",
        hot.per_second(),
        hot.percentile_ms(0.5),
        hot.percentile_ms(0.99),
        wide.per_second(),
        100.0 * hot.per_second() / wide.per_second()
    );
}

/// Partition counts of the transactional bench, and its concurrently active aggregates.
/// `KEEL_BENCH_TXN_PARTITIONS=12,128` runs a subset (or other counts).
const TXN_PARTITIONS: [u32; 3] = [1, 12, 128];

fn txn_partitions() -> Vec<u32> {
    std::env::var("KEEL_BENCH_TXN_PARTITIONS")
        .ok()
        .map(|list| {
            list.split(',')
                .map(|p| {
                    p.trim()
                        .parse()
                        .expect("KEEL_BENCH_TXN_PARTITIONS: numbers")
                })
                .collect()
        })
        .unwrap_or_else(|| TXN_PARTITIONS.to_vec())
}
const TXN_AGGREGATES: usize = 256;
/// The transactions' group-commit window (keel's default).
const TXN_COMMIT_INTERVAL: Duration = Duration::from_millis(5);

/// What the transactional bench found at one partition count (besides the commands).
struct TxnFacts {
    /// Wall time of acquiring every partition at once.
    acquire: Duration,
    /// Each partition's `acquire_partition` (its producer's creation and
    /// `init_transactions`), microseconds.
    init: Histogram<u64>,
    /// Threads and sockets of the process the acquired producers added.
    threads: isize,
    sockets: isize,
    /// Per mode (`"transactional"`: standalone, fenced by the transactional id; `"grouped"`:
    /// under partition ownership, fenced by the group): what its commands committed.
    commits: BTreeMap<&'static str, Commits>,
    /// Under ownership: from starting the runtime until it served every partition.
    assigned: Duration,
}

/// What one mode's commands committed over the whole bench.
#[derive(Clone, Copy)]
struct Commits {
    /// Commit markers (one per partition a transaction wrote events to), and events appended.
    markers: u64,
    events: u64,
    /// Partitions that got events.
    partitions_used: usize,
}

type TxnResults = Arc<Mutex<BTreeMap<u32, TxnFacts>>>;

/// The threads of this process.
fn threads() -> isize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(-1)
}

/// The open sockets of this process.
fn sockets() -> isize {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return -1;
    };
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count() as isize
}

/// Waits until every partition of a just-created topic answers ListOffsets: `open` returns
/// once the partitions are in the metadata, which can be before each has a leader (seen with
/// 128 partitions on one broker: `NotLeaderForPartition` from the runtime's recovery).
async fn await_leaders(log: &KafkaLog) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for partition in 0..log.partition_count() {
        while let Err(e) = log.end_offset(partition).await {
            assert!(Instant::now() < deadline, "partition {partition}: {e}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn end_offsets(log: &KafkaLog) -> Vec<Offset> {
    let mut ends = Vec::new();
    for partition in 0..log.partition_count() {
        ends.push(log.end_offset(partition).await.expect("end offset"));
    }
    ends
}

/// Benches `runtime`'s commands at `TXN_AGGREGATES` aggregates as `results[(what, partitions)]`.
fn bench_txn_commands(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    runtime: &Runtime,
    results: &Results,
    what: &'static str,
    partitions: u32,
) {
    let handle = runtime.aggregate::<Counter>();
    let ids: Arc<Vec<String>> = Arc::new((0..TXN_AGGREGATES).map(|i| format!("t{i}")).collect());
    let key = (what, partitions as usize);
    group.bench_with_input(BenchmarkId::new(what, partitions), &partitions, |b, _| {
        b.to_async(rt).iter_custom(|iters| {
            let handle = handle.clone();
            let ids = ids.clone();
            spread(TXN_AGGREGATES, iters, results.clone(), key, move |i| {
                let handle = handle.clone();
                let ids = ids.clone();
                async move {
                    handle.send(&ids[i], ()).await.expect("command");
                }
            })
        })
    });
}

/// The transactional bench's log configuration.
fn txn_config(bootstrap: &str, app: &str, partitions: u32) -> KafkaConfig {
    let mut config = KafkaConfig::new(bootstrap)
        .app_id(app)
        .topic_prefix(app)
        .partitions(partitions)
        .linger(LINGER)
        .transactional(true)
        .commit_interval(TXN_COMMIT_INTERVAL);
    // librdkafka's debug contexts (`eos` says what each transaction waits for); shown with
    // RUST_LOG=librdkafka=debug.
    if let Ok(debug) = std::env::var("KEEL_BENCH_RDKAFKA_DEBUG") {
        config = config.client_property("debug", debug);
    }
    config
}

/// Benches `runtime`'s commands as `what`, and counts the transactions they committed: the
/// end offsets moved by the events appended plus one commit marker per transaction.
fn bench_counting_commits(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    runtime: &Runtime,
    log: &KafkaLog,
    results: &Results,
    what: &'static str,
    partitions: u32,
) -> Commits {
    let operations = || {
        results
            .lock()
            .expect("results")
            .get(&(what, partitions as usize))
            .map_or(0, |m| m.operations)
    };
    let before = rt.block_on(end_offsets(log));
    let events_before = operations();
    bench_txn_commands(group, rt, runtime, results, what, partitions);
    let events = operations() - events_before;
    let after = rt.block_on(end_offsets(log));
    let moved: u64 = after.iter().zip(&before).map(|(a, b)| a - b).sum();
    Commits {
        markers: moved.saturating_sub(events),
        events,
        partitions_used: after.iter().zip(&before).filter(|(a, b)| a > b).count(),
    }
}

fn bench_txn(c: &mut Criterion, bootstrap: &str, results: &Results, facts: &TxnResults) {
    let rt = tokio();
    let mut group = c.benchmark_group("txn");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    for partitions in txn_partitions() {
        let prefix = unique_prefix();
        // The baseline: keel on the idempotent log, same partition count.
        let app = format!("{prefix}.idem");
        let (log, runtime) = rt.block_on(async {
            let log = Arc::new(
                KafkaConfig::new(bootstrap)
                    .app_id(&app)
                    .topic_prefix(&app)
                    .partitions(partitions)
                    .linger(LINGER)
                    .open()
                    .await
                    .expect("open the kafka log"),
            );
            await_leaders(&log).await;
            let runtime = Runtime::builder()
                .backend(log.clone())
                .app_id(&app)
                .max_live_actors(4096)
                .start()
                .await
                .expect("runtime");
            (log, runtime)
        });
        bench_txn_commands(&mut group, &rt, &runtime, results, "idempotent", partitions);
        rt.block_on(async {
            runtime.shutdown().await.expect("shutdown");
            log.close().await.expect("close");
        });

        let app = format!("{prefix}.txn");
        let (threads_before, sockets_before) = (threads(), sockets());
        let log = Arc::new(
            rt.block_on(txn_config(bootstrap, &app, partitions).open())
                .expect("open the kafka log"),
        );
        rt.block_on(await_leaders(&log));
        let (threads_opened, sockets_opened) = (threads(), sockets());
        // Every partition at once, as partition ownership acquires what it was assigned.
        let (acquire, init) = rt.block_on(async {
            let started = Instant::now();
            let each = (0..partitions).map(|partition| {
                let log = log.clone();
                async move {
                    let started = Instant::now();
                    log.acquire_partition(partition).await.expect("acquire");
                    started.elapsed()
                }
            });
            let each = futures::future::join_all(each).await;
            let mut init = Measured::new().latency;
            for d in each {
                init.saturating_record(d.as_micros() as u64);
            }
            (started.elapsed(), init)
        });
        let (threads_acquired, sockets_acquired) = (threads(), sockets());
        eprintln!(
            "txn bench, {partitions} partitions: acquired in {acquire:?}; threads {threads_before} \
             -> {threads_opened} (opened) -> {threads_acquired} (acquired), sockets \
             {sockets_before} -> {sockets_opened} -> {sockets_acquired}"
        );
        let runtime = rt.block_on(async {
            Runtime::builder()
                .backend(log.clone())
                .app_id(&app)
                .max_live_actors(4096)
                .start()
                .await
                .expect("runtime")
        });
        let mut commits = BTreeMap::new();
        let what = "transactional";
        let counted =
            bench_counting_commits(&mut group, &rt, &runtime, &log, results, what, partitions);
        commits.insert(what, counted);
        rt.block_on(async {
            runtime.shutdown().await.expect("shutdown");
            log.close().await.expect("close");
        });

        // The same under partition ownership: one instance in the group, every transaction
        // carrying the group offsets of its partitions (KIP-447).
        let app = format!("{prefix}.grp");
        let log = Arc::new(
            rt.block_on(txn_config(bootstrap, &app, partitions).open())
                .expect("open the kafka log"),
        );
        rt.block_on(await_leaders(&log));
        let started = Instant::now();
        let runtime = rt.block_on(async {
            let runtime = Runtime::builder()
                .ownership(KafkaOwnership::new(log.clone(), "txn-bench:1"))
                .max_live_actors(4096)
                .start()
                .await
                .expect("runtime");
            while runtime.owned_partitions().len() < partitions as usize {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            runtime
        });
        let assigned = started.elapsed();
        let what = "grouped";
        let counted =
            bench_counting_commits(&mut group, &rt, &runtime, &log, results, what, partitions);
        commits.insert(what, counted);
        facts.lock().expect("facts").insert(
            partitions,
            TxnFacts {
                acquire,
                init,
                threads: threads_acquired - threads_opened,
                sockets: sockets_acquired - sockets_opened,
                commits,
                assigned,
            },
        );
        rt.block_on(async {
            runtime.shutdown().await.expect("shutdown");
            log.close().await.expect("close");
        });
    }
    group.finish();
}

fn print_txn(results: &Results, facts: &TxnResults, brokers: usize) {
    let results = results.lock().expect("results");
    let facts = facts.lock().expect("facts");
    if facts.is_empty() {
        return;
    }
    println!();
    println!(
        "keel in the transactional mode vs keel on the idempotent log, {TXN_AGGREGATES} \
         aggregates, {brokers} broker(s), linger {LINGER:?}, commit interval \
         {TXN_COMMIT_INTERVAL:?}"
    );
    println!(
        "{:>10} | {:>13} | {:>9} | {:>10} | {:>5} | {:>15} | {:>9} | {:>14} | {:>7}",
        "partitions",
        "mode",
        "txn cmd/s",
        "idem cmd/s",
        "ratio",
        "txn p50/p99 ms",
        "markers/s",
        "markers/s/part",
        "cmd/marker"
    );
    for (&partitions, f) in facts.iter() {
        let Some(idem) = results.get(&("idempotent", partitions as usize)) else {
            continue;
        };
        for (&what, commits) in &f.commits {
            let Some(txn) = results.get(&(what, partitions as usize)) else {
                continue;
            };
            let commits_per_second = commits.markers as f64 / txn.elapsed.as_secs_f64();
            let mode = if what == "grouped" {
                "group-fenced"
            } else {
                "id-fenced"
            };
            println!(
                "{partitions:>10} | {mode:>13} | {:>9.0} | {:>10.0} | {:>4.0}% | {:>6.1} / {:>6.1} | {:>9.0} | {:>14.1} | {:>7.1}",
                txn.per_second(),
                idem.per_second(),
                100.0 * txn.per_second() / idem.per_second(),
                txn.percentile_ms(0.5),
                txn.percentile_ms(0.99),
                commits_per_second,
                commits_per_second / commits.partitions_used.max(1) as f64,
                commits.events as f64 / commits.markers.max(1) as f64,
            );
        }
    }
    println!();
    println!(
        "acquiring every partition at once (standalone), and a group assigning them all \
         (ownership: join, wait for stable offsets, recover)"
    );
    println!(
        "{:>10} | {:>10} | {:>17} | {:>13} | {:>13} | {:>14}",
        "partitions", "wall ms", "acquire p50/max ms", "added threads", "added sockets", "group ms"
    );
    for (&partitions, f) in facts.iter() {
        println!(
            "{partitions:>10} | {:>10.0} | {:>8.0} / {:>7.0} | {:>13} | {:>13} | {:>14.0}",
            f.acquire.as_secs_f64() * 1000.0,
            f.init.value_at_quantile(0.5) as f64 / 1000.0,
            f.init.max() as f64 / 1000.0,
            f.threads,
            f.sockets,
            f.assigned.as_secs_f64() * 1000.0,
        );
    }
}

/// Aggregates of the activation bench, and the events each gets after its snapshot.
const ACTIVATION_AGGREGATES: usize = 256;
const TAIL_EVENTS: u64 = 99;
/// Snapshots every 100 events and never on the way out: 199 events leave a snapshot at
/// 100 and 99 events after it.
const ACTIVATION_SNAPSHOTS: SnapshotPolicy = SnapshotPolicy {
    every_events: 100,
    on_passivation: false,
    after_long_replay: false,
};

/// Latencies of the activation bench, by variant.
type Latencies = Arc<Mutex<BTreeMap<&'static str, Histogram<u64>>>>;

fn record_latency(latencies: &Latencies, what: &'static str, micros: u64) {
    latencies
        .lock()
        .expect("latencies")
        .entry(what)
        .or_insert_with(|| Measured::new().latency)
        .saturating_record(micros);
}

/// A runtime on the activation topics that keeps at most a few aggregates live, so that the
/// next activation of each replays its tail again.
async fn activation_runtime(log: Arc<KafkaLog>, app: &str, tail: bool) -> Runtime {
    let mut builder = Runtime::builder()
        .backend(log)
        .app_id(app)
        .snapshots(ACTIVATION_SNAPSHOTS)
        .max_live_actors(8);
    if !tail {
        builder = builder.tail_cache_bytes(0);
    }
    builder.start().await.expect("runtime")
}

fn bench_activation(c: &mut Criterion, bootstrap: &str, latencies: &Latencies) {
    let rt = tokio();
    let prefix = unique_prefix();
    let app = format!("{prefix}.act");
    let ids: Arc<Vec<String>> = Arc::new(
        (0..ACTIVATION_AGGREGATES)
            .map(|i| format!("a{i}"))
            .collect(),
    );
    // The history: every aggregate 199 events, all aggregates at once so they interleave.
    let tails: Arc<Vec<(u32, Vec<Offset>)>> = rt.block_on(async {
        let log = Arc::new(open_log(bootstrap, &app, PARTITIONS).await);
        let runtime = Runtime::builder()
            .backend(log.clone())
            .app_id(&app)
            .snapshots(ACTIVATION_SNAPSHOTS)
            .start()
            .await
            .expect("runtime");
        let counters = runtime.aggregate::<Counter>();
        let writers: Vec<_> = ids
            .iter()
            .cloned()
            .map(|id| {
                let counters = counters.clone();
                tokio::spawn(async move {
                    let mut partition = 0;
                    let mut tail = Vec::new();
                    for seq in 1..=100 + TAIL_EVENTS {
                        let done = counters.send(&id, ()).await.expect("command");
                        let position = done.position.expect("an event");
                        partition = position.partition;
                        if seq > 100 {
                            tail.push(position.offset);
                        }
                    }
                    (partition, tail)
                })
            })
            .collect();
        let mut tails = Vec::new();
        for writer in writers {
            tails.push(writer.await.expect("writer"));
        }
        // A crash: no snapshot on the way out, so the events after the snapshots stay.
        runtime.abort().await;
        Arc::new(tails)
    });
    eprintln!(
        "activation bench: {ACTIVATION_AGGREGATES} aggregates, each a snapshot plus \
         {TAIL_EVENTS} interleaved events"
    );
    let mut group = c.benchmark_group("activation");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    for (what, tail) in [("tail", true), ("no_tail", false)] {
        let log = Arc::new(rt.block_on(open_log(bootstrap, &app, PARTITIONS)));
        let runtime = rt.block_on(activation_runtime(log.clone(), &app, tail));
        let counters = runtime.aggregate::<Counter>();
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        group.bench_function(what, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let counters = counters.clone();
                let ids = ids.clone();
                let next = next.clone();
                let latencies = latencies.clone();
                async move {
                    let started = Instant::now();
                    for _ in 0..iters {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let id = &ids[i % ids.len()];
                        let sent = Instant::now();
                        let count = counters.query(id, |s| s.count).await.expect("query");
                        record_latency(&latencies, what, sent.elapsed().as_micros() as u64);
                        assert_eq!(count, 100 + TAIL_EVENTS, "activated with the whole history");
                    }
                    started.elapsed()
                }
            })
        });
        rt.block_on(async {
            runtime.abort().await;
            log.close().await.expect("close");
        });
    }
    // The old way: the snapshot, then one read per event (each of another aggregate's
    // neighbours, so no two are adjacent).
    let log = Arc::new(rt.block_on(open_log(bootstrap, &app, PARTITIONS)));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    group.bench_function("per_event_reads", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let log = log.clone();
            let ids = ids.clone();
            let tails = tails.clone();
            let next = next.clone();
            let latencies = latencies.clone();
            async move {
                let started = Instant::now();
                for _ in 0..iters {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % ids.len();
                    let (partition, offsets) = &tails[i];
                    let sent = Instant::now();
                    let snapshot = log
                        .load_snapshot(*partition, format!("Counter/{}", ids[i]))
                        .await
                        .expect("snapshot");
                    assert!(snapshot.is_some());
                    for &offset in offsets {
                        let records = log
                            .read(*partition, offset, 1, Duration::ZERO)
                            .await
                            .expect("read");
                        assert_eq!(records.len(), 1);
                    }
                    record_latency(
                        &latencies,
                        "per_event_reads",
                        sent.elapsed().as_micros() as u64,
                    );
                }
                started.elapsed()
            }
        })
    });
    group.finish();
    rt.block_on(async { log.close().await.expect("close") });
}

/// Live aggregates on the partition handed over.
const HANDOFF_AGGREGATES: usize = 10_000;

/// One handoff; prints the time the old owner took to let go, and the time until the new
/// owner served a command. Returns (leave, served).
fn handoff(bootstrap: &str) -> (Duration, Duration) {
    let rt = tokio();
    rt.block_on(async {
        let prefix = unique_prefix();
        let app = format!("{prefix}.handoff");
        let open = || async {
            Arc::new(
                KafkaConfig::new(bootstrap)
                    .app_id(&app)
                    .topic_prefix(&app)
                    .partitions(1)
                    .linger(LINGER)
                    .open()
                    .await
                    .expect("open the kafka log"),
            )
        };
        let instance = |log: Arc<KafkaLog>, endpoint: &'static str| async move {
            Runtime::builder()
                .ownership(KafkaOwnership::new(log, endpoint))
                .max_live_actors(2 * HANDOFF_AGGREGATES)
                .start()
                .await
                .expect("runtime")
        };
        let a = instance(open().await, "node-a").await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while a.owned_partitions().is_empty() {
            assert!(
                Instant::now() < deadline,
                "the first instance never got the partition"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let counters = a.aggregate::<Counter>();
        let ids: Vec<String> = (0..HANDOFF_AGGREGATES).map(|i| format!("h{i}")).collect();
        for chunk in ids.chunks(512) {
            let sends = chunk.iter().map(|id| counters.send(id, ()));
            for done in futures::future::join_all(sends).await {
                done.expect("command");
            }
        }
        assert!(a.live_actors() >= HANDOFF_AGGREGATES);
        let b = instance(open().await, "node-b").await;
        // Let the second member join (it gets nothing: one partition, sticky assignment).
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(b.owned_partitions().is_empty());
        let started = Instant::now();
        // Shutting down leaves the group: the partition is drained, snapshotted, committed
        // and handed over.
        a.shutdown().await.expect("shutdown");
        let left = started.elapsed();
        let b_counters = b.aggregate::<Counter>();
        loop {
            match b_counters.send(&ids[HANDOFF_AGGREGATES / 2], ()).await {
                Ok(done) => {
                    assert_eq!(done.seq, 2, "served from the old owner's snapshot");
                    break;
                }
                Err(e) if e.not_owner().is_some() || e.is_retryable() => {
                    assert!(
                        started.elapsed() < Duration::from_secs(60),
                        "no handoff: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(e @ CommandError::Storage { .. }) => panic!("handoff: {e}"),
                Err(e) => panic!("handoff: {e}"),
            }
        }
        let served = started.elapsed();
        eprintln!(
            "handoff of a partition with {HANDOFF_AGGREGATES} live aggregates: the old owner \
             let go in {left:?}; the new owner served a command {served:?} after the leave began"
        );
        b.shutdown().await.expect("shutdown");
        (left, served)
    })
}

fn print_activation(latencies: &Latencies, handoff: Option<(Duration, Duration)>) {
    let latencies = latencies.lock().expect("latencies");
    if latencies.is_empty() && handoff.is_none() {
        return;
    }
    println!();
    println!("activation of an aggregate with a snapshot plus {TAIL_EVENTS} events, on KafkaLog");
    println!(
        "{:>16} | {:>8} | {:>8} | {:>8} | {:>8}",
        "path", "samples", "p50 ms", "p99 ms", "max ms"
    );
    for (what, histogram) in latencies.iter() {
        println!(
            "{what:>16} | {:>8} | {:>8.2} | {:>8.2} | {:>8.2}",
            histogram.len(),
            histogram.value_at_quantile(0.5) as f64 / 1000.0,
            histogram.value_at_quantile(0.99) as f64 / 1000.0,
            histogram.max() as f64 / 1000.0,
        );
    }
    if let Some((left, served)) = handoff {
        println!();
        println!(
            "handoff of a partition with {HANDOFF_AGGREGATES} live aggregates: old owner let \
             go in {:.0} ms; new owner served a command after {:.0} ms",
            left.as_secs_f64() * 1000.0,
            served.as_secs_f64() * 1000.0
        );
    }
}

fn main() {
    let bootstrap = match std::env::var("KEEL_KAFKA_BOOTSTRAP") {
        Ok(b) if !b.trim().is_empty() => b,
        _ => {
            eprintln!(
                "kafka bench skipped: KEEL_KAFKA_BOOTSTRAP is not set \
                 (start a broker with `eval \"$(scripts/broker start)\"`)"
            );
            return;
        }
    };
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let brokers = broker_count(&bootstrap);
    let results: Results = Arc::default();
    let txn: TxnResults = Arc::default();
    let latencies: Latencies = Arc::default();
    let mut criterion = Criterion::default().configure_from_args();
    let only = std::env::var("KEEL_BENCH_ONLY").unwrap_or_default();
    let only: Vec<&str> = only
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .collect();
    let run = |group: &str| only.is_empty() || only.contains(&group);
    if run("commands") {
        bench_kafka(&mut criterion, &bootstrap, &results);
    }
    if run("txn") {
        bench_txn(&mut criterion, &bootstrap, &results, &txn);
    }
    if run("activation") {
        bench_activation(&mut criterion, &bootstrap, &latencies);
    }
    let handoff = run("handoff").then(|| handoff(&bootstrap));
    criterion.final_summary();
    print_table(&results, brokers);
    print_hot(&results);
    print_txn(&results, &txn, brokers);
    print_activation(&latencies, handoff);
}
