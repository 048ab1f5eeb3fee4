//! The librdkafka client properties of every client keel creates: admin, producers, readers,
//! group consumers.

use rdkafka::ClientConfig;

use super::KafkaConfig;
use super::topics::max_message_bytes;

/// Properties every client gets: the brokers, a client id, and the user's own properties.
pub(super) fn base_client_config(config: &KafkaConfig, role: &str) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.bootstrap_servers)
        .set("client.id", format!("{}-keel-{role}", config.app_id))
        .set(
            "socket.timeout.ms",
            config.request_timeout.as_millis().to_string(),
        )
        // librdkafka backs off up to 10 s between reconnects by default; a restarted broker
        // should be in use again within a second.
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "1000");
    for (key, value) in &config.client_properties {
        client.set(key, value);
    }
    client
}

/// The one place producers are configured. `transactional_id` is for the transactional
/// producer; the plain log uses an idempotent one.
pub(super) fn producer_client_config(
    config: &KafkaConfig,
    transactional_id: Option<&str>,
) -> ClientConfig {
    let mut client = base_client_config(config, "producer");
    client
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", config.linger.as_millis().to_string())
        .set(
            "request.timeout.ms",
            config.request_timeout.as_millis().to_string(),
        )
        .set(
            "delivery.timeout.ms",
            config.delivery_timeout.as_millis().to_string(),
        )
        // Snapshots up to the configured limit; the snapshots topic accepts as much.
        .set("message.max.bytes", max_message_bytes(config).to_string())
        // keel chooses every partition itself; this only matters for records without one.
        .set("partitioner", "murmur2_random");
    if let Some(id) = transactional_id {
        // librdkafka refuses a delivery timeout longer than the transaction timeout.
        let delivery = config.delivery_timeout.min(config.transaction_timeout);
        client
            .set("transactional.id", id)
            .set(
                "transaction.timeout.ms",
                config.transaction_timeout.as_millis().to_string(),
            )
            .set("delivery.timeout.ms", delivery.as_millis().to_string())
            // Right after a commit the coordinator answers the next transaction's first
            // request with CONCURRENT_TRANSACTIONS until the commit markers are written (a
            // few ms). librdkafka retries AddOffsetsToTxn after `retry.backoff.ms` (default
            // 100 ms, doubling): every transaction under partition ownership begins with one,
            // so wait a few ms instead.
            .set("retry.backoff.ms", "2")
            .set("retry.backoff.max.ms", "100");
    }
    client
}

/// Consumers that read one assigned partition: no group, no offset commits.
pub(super) fn reader_client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = base_client_config(config, "reader");
    client
        // librdkafka refuses `assign` without a group id, though an assign-only consumer
        // never joins the group nor commits to it.
        .set("group.id", format!("{}.keel-reader", config.app_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // A read below the partition's log start (records deleted) or past its end is an
        // error, never a silent jump to another offset.
        .set("auto.offset.reset", "error")
        // The longest a fetch waits at the broker for new records. Kafka answers a parked
        // fetch as soon as records arrive, but a reader moved to another offset waits for its
        // parked fetch to return first, so keep it short.
        .set("fetch.wait.max.ms", "100")
        // Prefetch per consumer; one consumer per partition being read.
        .set("queued.max.messages.kbytes", "8192");
    if config.transactional {
        client
            .set("isolation.level", "read_committed")
            // A read_committed consumer skips commit markers and aborted records silently;
            // its end-of-partition events are how a reader knows it has read everything
            // committed (see `reader.rs`).
            .set("enable.partition.eof", "true");
    }
    client
}
