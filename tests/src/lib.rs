//! Shared helpers for keel integration tests.

pub mod broker;
pub mod tally;

use std::time::Duration;

/// Polls `check` every 50 ms until it holds; panics naming `what` after 90 s. The deadline only
/// turns a hang into a failure — nothing here depends on timing.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `KafkaConfig` of a test: its app id, topic prefix and partition count, and a short
/// linger so single commands do not wait for company.
pub fn kafka_config(
    bootstrap: &str,
    app: impl Into<String>,
    prefix: impl Into<String>,
    partitions: u32,
) -> keel::KafkaConfig {
    keel::KafkaConfig::new(bootstrap)
        .app_id(app)
        .topic_prefix(prefix)
        .partitions(partitions)
        .linger(Duration::from_millis(1))
}

/// Every event of `log`, in partition and offset order: each partition read from offset 0 to
/// its end offset. Panics when a partition stops before its end or a record does not decode.
pub async fn read_events(log: &dyn keel::log::EventLog) -> Vec<keel::envelope::EventEnvelope> {
    read_partitions(log, true).await
}

/// Every committed event of a transactional `KafkaLog`, whose offsets are not dense (commit
/// markers, aborted records): a partition ends where a read finds nothing more.
pub async fn read_committed_events(
    log: &dyn keel::log::EventLog,
) -> Vec<keel::envelope::EventEnvelope> {
    read_partitions(log, false).await
}

async fn read_partitions(
    log: &dyn keel::log::EventLog,
    dense: bool,
) -> Vec<keel::envelope::EventEnvelope> {
    let mut all = Vec::new();
    for partition in 0..log.partition_count() {
        let end = log.end_offset(partition).await.expect("end offset");
        let mut from = 0;
        while from < end {
            let batch = log
                .read(partition, from, 1000, Duration::from_secs(1))
                .await
                .expect("read");
            if batch.is_empty() && !dense {
                break;
            }
            assert!(
                !batch.is_empty(),
                "partition {partition} stops at {from} before its end {end}"
            );
            for r in &batch {
                all.push(
                    keel::envelope::EventEnvelope::decode(&r.value, &r.position)
                        .expect("decodable"),
                );
            }
            from = batch.last().map_or(end, |r| r.position.offset + 1);
        }
    }
    all
}
