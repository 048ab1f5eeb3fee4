//! keel's command rate against its two floors, measured in alternating rounds so that both
//! sides of each ratio see the same machine (these machines are noisy: a baseline measured a
//! minute apart from its subject can be 30% off).
//!
//! ```text
//! cargo run --release -p keel-benches --bin ratios              # 5 rounds of 1 s per side
//! cargo run --release -p keel-benches --bin ratios -- 9 2       # 9 rounds of 2 s
//! cargo run --release -p keel-benches --bin ratios -- 5 1 1024  # only at 1024 aggregates
//! cargo run --release -p keel-benches --bin ratios -- 5 1 1024 memory  # and only MemoryLog
//! ```
//!
//! At 1, 64 and 1024 concurrently active aggregates (one sending task each):
//! - keel on `MemoryLog` against the raw ractor ask (an actor per "aggregate");
//! - keel on `EmbeddedLog` against a raw `EmbeddedLog` append of one event-sized record.
//!
//! Each round measures the baseline, then keel, for the same time; the table gives the
//! median ratio over the rounds, with the lowest and highest, and the median rates.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use keel::log::{EventLog, LogRecord, MemoryLog};
use keel::{EmbeddedLog, Runtime};
use keel_benches::{Counter, Echo, bench_runtime};
use ractor::Actor;

const CONCURRENCY: [usize; 3] = [1, 64, 1024];
const PARTITIONS: u32 = 8;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(5);
    let seconds: f64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1.0);
    let round = Duration::from_secs_f64(seconds);
    let only: Option<usize> = args.get(2).and_then(|a| a.parse().ok());
    let backends = args.get(3).map_or("all", String::as_str);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run(rounds, round, only, backends));
}

/// `only`: one of [`CONCURRENCY`]; `backends`: `memory`, `embedded` or `all`.
async fn run(rounds: usize, round: Duration, only: Option<usize>, backends: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let actors: Arc<Vec<_>> = Arc::new({
        let mut actors = Vec::new();
        for _ in 0..1024 {
            actors.push(Actor::spawn(None, Echo, ()).await.expect("echo actor").0);
        }
        actors
    });
    let raw = Arc::new(EmbeddedLog::open(dir.path().join("raw"), PARTITIONS).expect("raw log"));
    let embedded = bench_runtime(Arc::new(
        EmbeddedLog::open(dir.path().join("keel"), PARTITIONS).expect("keel log"),
    ))
    .await;
    let ids: Arc<Vec<String>> = Arc::new((0..1024).map(|i| format!("c{i}")).collect());
    let value = vec![0u8; 180];

    println!(
        "| aggregates | keel on | baseline | keel cmd/s | baseline ops/s | ratio (median) | lowest | highest |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for n in CONCURRENCY
        .into_iter()
        .filter(|n| only.is_none_or(|only| only == *n))
    {
        // Each task clones what it needs once, then loops until told to stop.
        let ask = |i: usize, stop: Stop| {
            let actor = actors[i].clone();
            async move {
                let mut count = 0;
                while !stop.load(Ordering::Relaxed) {
                    actor.call(|reply| reply, None).await.expect("ask");
                    count += 1;
                }
                count
            }
        };
        let append = |i: usize, stop: Stop| {
            let raw = raw.clone();
            let key = format!("Counter/c{i}");
            let value = value.clone();
            async move {
                let partition = keel::log::partition_for(&key, PARTITIONS);
                let mut count = 0;
                while !stop.load(Ordering::Relaxed) {
                    let record = LogRecord {
                        key: key.clone(),
                        value: value.clone(),
                    };
                    raw.append(partition, vec![record]).await.expect("append");
                    count += 1;
                }
                count
            }
        };
        let command = |runtime: &Runtime| {
            let handle = runtime.aggregate::<Counter>();
            let ids = ids.clone();
            move |i: usize, stop: Stop| {
                let handle = handle.clone();
                let id = ids[i].clone();
                async move {
                    let mut count = 0;
                    while !stop.load(Ordering::Relaxed) {
                        handle.send(&id, ()).await.expect("command");
                        count += 1;
                    }
                    count
                }
            }
        };
        if backends != "embedded" {
            // A fresh MemoryLog for each row: it keeps every record in memory, and the
            // millions an earlier row left would weigh on this row's allocations, not on
            // the ask's.
            let memory = bench_runtime(Arc::new(MemoryLog::new(PARTITIONS))).await;
            let on_memory = compare(n, rounds, round, ask, command(&memory)).await;
            on_memory.print(n, "MemoryLog", "ractor ask");
            memory.shutdown().await.expect("shutdown");
        }
        if backends != "memory" {
            let on_embedded = compare(n, rounds, round, append, command(&embedded)).await;
            on_embedded.print(n, "EmbeddedLog", "raw append");
        }
    }
    embedded.shutdown().await.expect("shutdown");
    for actor in actors.iter() {
        actor.stop(None);
    }
}

/// The rates of a baseline and keel over alternating rounds.
struct Comparison {
    baseline: Vec<f64>,
    keel: Vec<f64>,
}

impl Comparison {
    fn print(&self, n: usize, backend: &str, baseline: &str) {
        let mut ratios: Vec<f64> = self
            .keel
            .iter()
            .zip(&self.baseline)
            .map(|(k, b)| k / b)
            .collect();
        ratios.sort_by(f64::total_cmp);
        println!(
            "| {n} | {backend} | {baseline} | {:.0} | {:.0} | {:.0}% | {:.0}% | {:.0}% |",
            median(&self.keel),
            median(&self.baseline),
            100.0 * median(&ratios),
            100.0 * ratios[0],
            100.0 * ratios[ratios.len() - 1],
        );
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// Tells a bench task to stop.
type Stop = Arc<AtomicBool>;

/// A warm-up round of each, then `rounds` rounds of baseline and keel in turn.
async fn compare<B, BF, K, KF>(
    n: usize,
    rounds: usize,
    round: Duration,
    baseline: B,
    keel: K,
) -> Comparison
where
    B: Fn(usize, Stop) -> BF,
    BF: Future<Output = u64> + Send + 'static,
    K: Fn(usize, Stop) -> KF,
    KF: Future<Output = u64> + Send + 'static,
{
    rate(n, round, &baseline).await;
    rate(n, round, &keel).await;
    let mut comparison = Comparison {
        baseline: Vec::new(),
        keel: Vec::new(),
    };
    for _ in 0..rounds {
        comparison.baseline.push(rate(n, round, &baseline).await);
        comparison.keel.push(rate(n, round, &keel).await);
    }
    comparison
}

/// Operations per second of `n` tasks `task(i, stop)`, each looping until `stop` is set
/// after `round` and returning how many operations it ran.
async fn rate<F, Fut>(n: usize, round: Duration, task: &F) -> f64
where
    F: Fn(usize, Stop) -> Fut,
    Fut: Future<Output = u64> + Send + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| tokio::spawn(task(i, stop.clone())))
        .collect();
    tokio::time::sleep(round).await;
    stop.store(true, Ordering::Relaxed);
    let mut done = 0;
    for t in tasks {
        done += t.await.expect("bench task");
    }
    done as f64 / started.elapsed().as_secs_f64()
}
