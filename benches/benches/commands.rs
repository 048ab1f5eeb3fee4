//! Commands/s through keel at 1, 64 and 1024 concurrently active aggregates, on `MemoryLog`
//! and `EmbeddedLog`, beside two baselines measured in the same run:
//! - `ractor_ask`: the raw ractor ask round trip at the same concurrency (an actor per
//!   "aggregate", one asking task each) — keel's floor is this plus its own work;
//! - `embedded_append`: a raw `EmbeddedLog` append of one event-sized record per task at the
//!   same concurrency — the fsync cost a durable command cannot avoid.
//!
//! Criterion reports time per command; commands/s = 1 / that.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use keel::EmbeddedLog;
use keel::log::{EventLog, LogBackend, LogRecord, MemoryLog};
use keel_benches::{Counter, Echo, bench_runtime};
use ractor::{Actor, ActorRef, RpcReplyPort};

const CONCURRENCY: [usize; 3] = [1, 64, 1024];

fn tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs `iters` operations spread over `n` tasks, each driving its own target `i`: task `i`
/// runs `task(i, count)`, which performs `count` operations. Whatever a task needs (a handle,
/// an actor reference) is cloned once per task, not per operation, on both sides of a
/// comparison.
async fn spread<F, Fut>(n: usize, iters: u64, task: F) -> Duration
where
    F: Fn(usize, u64) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let per_task = iters.div_ceil(n as u64);
    let start = Instant::now();
    let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(task(i, per_task))).collect();
    for t in tasks {
        t.await.expect("bench task");
    }
    // Normalize to exactly `iters` operations.
    start
        .elapsed()
        .mul_f64(iters as f64 / (per_task * n as u64) as f64)
}

fn bench_keel(c: &mut Criterion) {
    let rt = tokio();
    let mut group = c.benchmark_group("commands");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    let dir = tempfile::tempdir().expect("temp dir");
    let backends: Vec<(&str, Arc<dyn LogBackend>)> = vec![
        ("memory", Arc::new(MemoryLog::new(8))),
        (
            "embedded",
            Arc::new(EmbeddedLog::open(dir.path().join("log"), 8).expect("embedded log")),
        ),
    ];
    for (name, backend) in backends {
        let runtime = rt.block_on(bench_runtime(backend));
        let ids: Arc<Vec<String>> = Arc::new((0..1024).map(|i| format!("c{i}")).collect());
        for n in CONCURRENCY {
            let handle = runtime.aggregate::<Counter>();
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, &n| {
                b.to_async(&rt).iter_custom(|iters| {
                    let handle = handle.clone();
                    let ids = ids.clone();
                    spread(n, iters, move |i, count| {
                        let handle = handle.clone();
                        let id = ids[i].clone();
                        async move {
                            for _ in 0..count {
                                handle.send(&id, ()).await.expect("command");
                            }
                        }
                    })
                })
            });
        }
        rt.block_on(runtime.shutdown()).expect("shutdown");
    }
    group.finish();
}

fn bench_baselines(c: &mut Criterion) {
    let rt = tokio();
    let mut group = c.benchmark_group("baseline");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    let actors: Arc<Vec<ActorRef<RpcReplyPort<u64>>>> = Arc::new(rt.block_on(async {
        let mut actors = Vec::new();
        for _ in 0..1024 {
            actors.push(Actor::spawn(None, Echo, ()).await.expect("echo actor").0);
        }
        actors
    }));
    for n in CONCURRENCY {
        let actors = actors.clone();
        group.bench_with_input(BenchmarkId::new("ractor_ask", n), &n, |b, &n| {
            b.to_async(&rt).iter_custom(|iters| {
                let actors = actors.clone();
                spread(n, iters, move |i, count| {
                    let actor = actors[i].clone();
                    async move {
                        for _ in 0..count {
                            actor.call(|reply| reply, None).await.expect("ask");
                        }
                    }
                })
            })
        });
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Arc::new(EmbeddedLog::open(dir.path().join("raw"), 8).expect("embedded log"));
    let value = vec![0u8; 180];
    for n in CONCURRENCY {
        let log = log.clone();
        let value = value.clone();
        group.bench_with_input(BenchmarkId::new("embedded_append", n), &n, |b, &n| {
            b.to_async(&rt).iter_custom(|iters| {
                let log = log.clone();
                let value = value.clone();
                spread(n, iters, move |i, count| {
                    let log = log.clone();
                    let key = format!("Counter/c{i}");
                    let value = value.clone();
                    async move {
                        let partition = keel::log::partition_for(&key, 8);
                        for _ in 0..count {
                            let record = LogRecord {
                                key: key.clone(),
                                value: value.clone(),
                            };
                            log.append(partition, vec![record]).await.expect("append");
                        }
                    }
                })
            })
        });
    }
    for actor in actors.iter() {
        actor.stop(None);
    }
    group.finish();
}

criterion_group!(benches, bench_baselines, bench_keel);
criterion_main!(benches);
