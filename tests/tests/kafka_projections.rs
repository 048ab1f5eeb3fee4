//! Projections on the Kafka backend: a view fed from a runtime on `KafkaLog` equals a fresh
//! replay of the log, and a query that waits on a command's position sees that command.
//!
//! Every instance of an application runs its projections over all partitions, so each one
//! can answer every query (replicated read models).
//!
//! Runs against the broker named by `KEEL_KAFKA_BOOTSTRAP` (see `scripts/broker`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use keel::Runtime;
use keel::log::LogBackend;
use keel_projections::{AggregateProjection, ApplyError, EventMeta, ProjectionRunner, ViewMut};
use keel_tests::broker::{kafka_bootstrap, unique_topic_prefix};
use keel_tests::tally::{Tally, TallyEvent};

/// The total of every tally, by aggregate id.
struct Totals;

impl AggregateProjection for Totals {
    type Aggregate = Tally;
    type Key = String;
    type Value = u64;
    type Error = ApplyError;

    fn name(&self) -> &str {
        "tally-totals"
    }

    fn apply(
        &self,
        view: &mut ViewMut<'_, String, u64>,
        id: &str,
        event: &TallyEvent,
        _meta: &EventMeta<'_>,
    ) -> Result<(), ApplyError> {
        let TallyEvent::Added { amount } = event;
        view.upsert(id.to_string(), |total| *total += amount);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_over_kafka_reads_its_own_writes_and_equals_the_log() {
    let Some(bootstrap) = kafka_bootstrap("kafka_projections::read_your_writes") else {
        return;
    };
    let prefix = unique_topic_prefix("views");
    let log = Arc::new(
        keel_tests::kafka_config(&bootstrap, format!("{prefix}-app"), &prefix, 3)
            .open()
            .await
            .expect("open"),
    );
    let backend: Arc<dyn LogBackend> = log.clone();
    let runtime = Runtime::builder()
        .backend(backend.clone())
        .start()
        .await
        .unwrap();
    let view = ProjectionRunner::new(backend)
        .start_in_memory(Totals)
        .await
        .unwrap();
    let tallies = runtime.aggregate::<Tally>();
    for round in 1..=5u64 {
        for i in 0..12 {
            let id = format!("t{i}");
            let done = tallies.send(&id, round).await.unwrap();
            if i % 4 == 0 {
                // Read your write: the view has applied this very command.
                view.wait_for(done.position.unwrap(), Duration::from_secs(30))
                    .await
                    .unwrap();
                let expected: u64 = (1..=round).sum();
                assert_eq!(
                    view.get(&id).unwrap(),
                    Some(expected),
                    "{id} after round {round}"
                );
            }
        }
    }
    view.caught_up(Duration::from_secs(30)).await.unwrap();
    assert_eq!(view.lag().await.unwrap(), 0);
    for i in 0..12 {
        let id = format!("t{i}");
        let served = tallies.query(&id, |t| t.total).await.unwrap();
        assert_eq!(view.get(&id).unwrap(), Some(served), "{id}");
    }
    runtime.shutdown().await.unwrap();
}
