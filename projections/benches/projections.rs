//! Projection throughput (events/s applied) for an in-memory and a persisted view, and
//! append-to-view visibility latency on the embedded log with an in-memory view.
//!
//! `cargo bench -p keel-projections --bench projections`; the visibility percentiles are
//! printed after criterion's own report.

#![allow(missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keel::envelope::EventEnvelope;
use keel::log::Position;
use keel::log::{EventLog, LogBackend, LogRecord, MemoryLog, aggregate_key, partition_for};
use keel::{Aggregate, EmbeddedLog};
use keel_projections::{AggregateProjection, ApplyError, EventMeta, ProjectionRunner, ViewMut};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
struct Item;

#[derive(Debug, Clone, Serialize, Deserialize)]
enum ItemEvent {
    Sold { quantity: i64 },
}

impl Aggregate for Item {
    const TYPE: &'static str = "Item";
    type Command = ();
    type Event = ItemEvent;
    type Error = std::io::Error;
    fn handle(&self, _: ()) -> Result<Vec<ItemEvent>, std::io::Error> {
        Ok(vec![])
    }
    fn apply(&mut self, _: &ItemEvent) {}
}

/// Units sold per item.
struct Sales;

impl AggregateProjection for Sales {
    type Aggregate = Item;
    type Key = String;
    type Value = i64;
    type Error = ApplyError;

    fn name(&self) -> &str {
        "sales"
    }

    fn apply(
        &self,
        view: &mut ViewMut<'_, String, i64>,
        id: &str,
        event: &ItemEvent,
        _meta: &EventMeta<'_>,
    ) -> Result<(), ApplyError> {
        let ItemEvent::Sold { quantity } = *event;
        view.upsert(id.to_string(), |sold| *sold += quantity);
        Ok(())
    }
}

const PARTITIONS: u32 = 4;
const ITEMS: u64 = 1_000;

fn record(i: u64, seq: u64) -> (u32, LogRecord) {
    let id = format!("item-{}", i % ITEMS);
    let envelope = EventEnvelope {
        aggregate_type: Item::TYPE.into(),
        aggregate_id: id.clone(),
        seq,
        event_type: "Sold".into(),
        event_version: 1,
        command_id: None,
        timestamp_ms: 0,
        payload: rmp_serde::to_vec_named(&ItemEvent::Sold { quantity: 1 }).unwrap_or_default(),
    };
    let key = aggregate_key(Item::TYPE, &id);
    let partition = partition_for(&key, PARTITIONS);
    (
        partition,
        LogRecord {
            key,
            value: envelope.encode(),
        },
    )
}

async fn fill(log: &dyn EventLog, events: u64) {
    let mut batches: Vec<Vec<LogRecord>> = vec![Vec::new(); PARTITIONS as usize];
    for i in 0..events {
        let (partition, record) = record(i, i / ITEMS + 1);
        batches[partition as usize].push(record);
    }
    for (partition, records) in batches.into_iter().enumerate() {
        for chunk in records.chunks(4096) {
            log.append(partition as u32, chunk.to_vec())
                .await
                .expect("append");
        }
    }
}

fn throughput(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    const EVENTS: u64 = 200_000;
    let log = Arc::new(MemoryLog::new(PARTITIONS));
    rt.block_on(fill(&*log, EVENTS));
    let backend: Arc<dyn LogBackend> = log;

    let mut group = c.benchmark_group("projection_apply");
    group.sample_size(10);
    group.throughput(Throughput::Elements(EVENTS));
    group.bench_function("in_memory", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let started = Instant::now();
                    let view = ProjectionRunner::new(backend.clone())
                        .start_in_memory(Sales)
                        .await
                        .expect("start");
                    view.caught_up(Duration::from_secs(120))
                        .await
                        .expect("caught up");
                    total += started.elapsed();
                    view.shutdown(Duration::from_secs(10))
                        .await
                        .expect("shutdown");
                }
                total
            })
        })
    });
    group.bench_function("persisted", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let dir = tempfile::tempdir().expect("tempdir");
                    let started = Instant::now();
                    let view = ProjectionRunner::new(backend.clone())
                        .batch_size(4096)
                        .start_persisted(Sales, dir.path())
                        .await
                        .expect("start");
                    view.caught_up(Duration::from_secs(300))
                        .await
                        .expect("caught up");
                    total += started.elapsed();
                    view.shutdown(Duration::from_secs(10))
                        .await
                        .expect("shutdown");
                }
                total
            })
        })
    });
    group.finish();
}

fn visibility(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EmbeddedLog::open(dir.path(), PARTITIONS).expect("open");
    let backend: Arc<dyn LogBackend> = Arc::new(log);
    let view = rt
        .block_on(ProjectionRunner::new(backend.clone()).start_in_memory(Sales))
        .expect("start");
    let mut histogram = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
    let mut next = 0u64;
    c.bench_function("append_to_view_visible_embedded", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    next += 1;
                    let (partition, record) = record(next, next);
                    let offset = backend
                        .append(partition, vec![record])
                        .await
                        .expect("append");
                    // From the append's acknowledgement (the command's reply) to the view.
                    let acked = Instant::now();
                    view.wait_for(Position { partition, offset }, Duration::from_secs(10))
                        .await
                        .expect("visible");
                    let visible = acked.elapsed();
                    histogram.record(visible.as_nanos() as u64).ok();
                    total += visible;
                }
                total
            })
        })
    });
    println!(
        "append-to-view visibility on the embedded log ({} samples): p50 {:?}, p99 {:?}, max {:?}",
        histogram.len(),
        Duration::from_nanos(histogram.value_at_quantile(0.50)),
        Duration::from_nanos(histogram.value_at_quantile(0.99)),
        Duration::from_nanos(histogram.max()),
    );
}

criterion_group!(benches, throughput, visibility);
criterion_main!(benches);
