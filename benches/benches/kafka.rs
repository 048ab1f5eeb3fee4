//! Commands/s through keel on `KafkaLog`, at 64 and 256 concurrently active aggregates,
//! beside the baseline measured in the same run against the same broker:
//! - `raw_producer`: an rdkafka idempotent producer (`acks=all`, the same linger) sending
//!   records of the size of keel's event records to a topic with the same partition count,
//!   from as many tasks as there are aggregates, each awaiting its own delivery — what a
//!   durable command cannot do faster than.
//!
//! Needs a broker: `KEEL_KAFKA_BOOTSTRAP=HOST:PORT` (`eval "$(scripts/broker start)"`);
//! without it the bench says so and does nothing. Criterion reports time per command; at
//! the end a table gives commands/s, the raw producer's messages/s, their ratio, and the
//! latency percentiles of both (over every iteration criterion ran, warm-up included).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{BenchmarkId, Criterion, Throughput};
use hdrhistogram::Histogram;
use keel::{EventLog, KafkaConfig, KafkaLog, LogBackend, Runtime};
use keel_benches::Counter;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

const CONCURRENCY: [usize; 2] = [64, 256];
const PARTITIONS: u32 = 8;
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

async fn open_log(bootstrap: &str, prefix: &str) -> KafkaLog {
    KafkaConfig::new(bootstrap)
        .app_id(prefix)
        .topic_prefix(prefix)
        .partitions(PARTITIONS)
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

fn bench_kafka(c: &mut Criterion, bootstrap: &str, results: &Results) {
    let rt = tokio();
    let prefix = unique_prefix();
    let keel_log = Arc::new(rt.block_on(open_log(bootstrap, &format!("{prefix}.keel"))));
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
    let raw_log = rt.block_on(open_log(bootstrap, &format!("{prefix}.raw")));
    let raw_topic: Arc<str> = raw_log.events_topic().into();
    let producer = raw_producer(bootstrap);
    let value: Arc<[u8]> = vec![b'x'; value_len].into();
    eprintln!(
        "kafka bench on {bootstrap}: {PARTITIONS} partitions, linger {LINGER:?}, \
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
                        let partition = keel::partition_for(&key, PARTITIONS);
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

fn print_table(results: &Results) {
    let results = results.lock().expect("results");
    println!();
    println!("keel on KafkaLog vs a raw idempotent producer (acks=all, linger {LINGER:?})");
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
    let results: Results = Arc::default();
    let mut criterion = Criterion::default().configure_from_args();
    bench_kafka(&mut criterion, &bootstrap, &results);
    criterion.final_summary();
    print_table(&results);
}
