//! Why the brokers do not answer. When opening the log fails on a timeout, the admin request
//! only says "timed out"; librdkafka reports the cause (refused connections, a SASL
//! handshake the broker does not expect, failed authentication) as client-level errors that
//! the admin client never surfaces. A short-lived probe client with the same properties
//! collects the first such error, and the open error names it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};

use super::KafkaConfig;
use super::clients::base_client_config;
use crate::error::{Error, StorageError};

/// Records the first client-level error, and the first connection failure librdkafka logged
/// (a disconnect is only logged; the error that follows says no more than "brokers are down").
#[derive(Default)]
struct FirstError(Mutex<(Option<String>, Option<String>)>);

impl FirstError {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<String>, Option<String>)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The reason, once a client-level error was reported.
    fn reason(&self) -> Option<String> {
        let (error, failure) = &*self.lock();
        let error = error.as_ref()?;
        Some(match failure {
            Some(failure) if failure != error => format!("{failure}; {error}"),
            _ => error.clone(),
        })
    }
}

impl ClientContext for FirstError {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        tracing::debug!(target: "librdkafka", ?level, "librdkafka: {fac} {log_message}");
        if fac == "FAIL" {
            // "[thrd:NAME]: " names librdkafka's thread; the rest is the broker and the reason.
            let message = match log_message.split_once("]: ") {
                Some((thread, rest)) if thread.starts_with("[thrd:") => rest,
                _ => log_message,
            };
            self.lock().1.get_or_insert_with(|| message.to_owned());
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(%error, reason, "kafka client error while diagnosing the connection");
        self.lock().0.get_or_insert_with(|| reason.to_owned());
    }
}

impl ProducerContext for FirstError {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

/// Adds the reason the brokers gave (or that none answered) to a failed open's storage
/// error. Other errors, and storage errors when a fresh client reaches the brokers after
/// all, are returned as they are.
pub(super) async fn explain(error: Error, config: &KafkaConfig) -> Error {
    let Error::Storage(StorageError::Io { context, source }) = &error else {
        return error;
    };
    let probe = base_client_config(config, "probe");
    let timeout = config.request_timeout;
    let reason = tokio::task::spawn_blocking(move || {
        let producer: BaseProducer<FirstError> =
            probe.create_with_context(FirstError::default()).ok()?;
        let deadline = Instant::now() + timeout;
        loop {
            // Serves the queued log lines and errors for a while (a zero timeout would serve
            // one), then asks for metadata, which also makes the client connect.
            producer.poll(Duration::from_millis(100));
            if let Some(reason) = producer.context().reason() {
                return Some(reason);
            }
            let answered = producer
                .client()
                .fetch_metadata(None, Duration::from_millis(100))
                .is_ok();
            if answered {
                return None;
            }
            if Instant::now() >= deadline {
                return Some(format!("no broker answered within {timeout:?}"));
            }
        }
    })
    .await
    .ok()
    .flatten();
    match reason {
        Some(reason) => StorageError::io(
            context.clone(),
            std::io::Error::other(format!(
                "{source}; the brokers cannot be used: {reason} (check the bootstrap servers, \
                 security.protocol and the sasl.* or ssl.* client properties)"
            )),
        )
        .into(),
        None => error,
    }
}
