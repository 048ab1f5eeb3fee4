//! keel on a cluster that requires SASL/SCRAM-SHA-512 (in plain text and over TLS) and
//! enforces ACLs (`scripts/broker start --sasl`): credentials given only as client properties
//! reach every client keel creates (the admin client, producers, readers, checkpoint
//! consumers and the ownership group member);
//! missing, wrong and unauthorized credentials fail in bounded time with errors that say
//! where and why; and no password ever shows in a log line or an error.
//!
//! The test starts a cluster of its own. It runs when the environment provides Kafka
//! (`KEEL_KAFKA_BOOTSTRAP`, as `scripts/test` does) and, like the other Kafka tests, fails
//! instead of skipping when `KEEL_REQUIRE_KAFKA=1` and no broker is reachable.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel::envelope::EventEnvelope;
use keel::log::EventLog;
use keel::{KafkaConfig, KafkaLog, KafkaOwnership, Runtime};
use keel_tests::broker::{Cluster, ClusterSpec, kafka_bootstrap, unique_topic_prefix};
use keel_tests::eventually;
use keel_tests::tally::send_to_owner;

const PARTITIONS: u32 = 2;
/// An open that cannot authenticate must fail well within this.
const BOUND: Duration = Duration::from_secs(30);

/// Everything the tracing subscriber wrote (keel's own events and librdkafka's log lines,
/// which rdkafka emits through the `log` crate and the subscriber's `LogTracer` picks up).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// keel's SASL settings, as an application gives them: client properties only. librdkafka's
/// `security` and `conf` debug contexts are on, so the handshake and the configuration dump
/// are logged too (and checked for the password).
fn with_credentials(config: KafkaConfig, user: &str, password: &str) -> KafkaConfig {
    config
        .client_property("security.protocol", "SASL_PLAINTEXT")
        .client_property("sasl.mechanism", "SCRAM-SHA-512")
        .client_property("sasl.username", user)
        .client_property("sasl.password", password)
        .client_property("debug", "security,conf")
}

/// A fresh app id (also the topic prefix) inside the `keel` user's ACLs.
fn sasl_app(name: &str) -> String {
    format!("keel-sasl-{}", unique_topic_prefix(name))
}

fn base(bootstrap: &str, app: &str) -> KafkaConfig {
    keel_tests::kafka_config(bootstrap, app, app, PARTITIONS)
        .request_timeout(Duration::from_secs(5))
}

/// Every event of every partition.
async fn read_all(log: &KafkaLog) -> Vec<EventEnvelope> {
    let mut all = Vec::new();
    for partition in 0..PARTITIONS {
        let end = log.end_offset(partition).await.unwrap();
        let mut from = 0;
        while from < end {
            let batch = log
                .read(partition, from, 500, Duration::ZERO)
                .await
                .unwrap();
            let Some(last) = batch.last() else { break };
            from = last.position.offset + 1;
            for record in batch {
                all.push(EventEnvelope::decode(&record.value, &record.position).unwrap());
            }
        }
    }
    all
}

/// (a): a runtime on the authenticated log, its partitions assigned by the consumer group,
/// serves commands; a second log instance reads every event back.
async fn serve_commands(config: KafkaConfig, app: &str, endpoint: &str) {
    let started = Instant::now();
    let log = Arc::new(
        config
            .clone()
            .open()
            .await
            .unwrap_or_else(|e| panic!("{app}: open with the keel user's credentials: {e}")),
    );
    let runtime = Runtime::builder()
        .ownership(KafkaOwnership::new(log.clone(), endpoint))
        .command_timeout(Duration::from_secs(20))
        .start()
        .await
        .unwrap();
    eventually(
        "the authenticated group member is assigned every partition",
        || runtime.owned_partitions().len() == PARTITIONS as usize,
    )
    .await;
    for i in 0..12 {
        let done = send_to_owner(&[&runtime], &format!("t{}", i % 4), &format!("c{i}")).await;
        assert_eq!(done.seq, 1 + i / 4, "command c{i}");
    }
    // A repeated command id is answered from the window, not appended again.
    let again = send_to_owner(&[&runtime], "t0", "c0").await;
    assert!(again.deduplicated);
    runtime.shutdown().await.unwrap();

    let reader = config.open().await.unwrap();
    let events = read_all(&reader).await;
    assert_eq!(
        events.len(),
        12,
        "{app}: every acknowledged event is in the log"
    );
    let mut ids: Vec<_> = events.iter().filter_map(|e| e.command_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 12, "{app}: each command id once");
    eprintln!("{app}: served and read back in {:?}", started.elapsed());
}

/// Opens `config`, which must fail within [`BOUND`]; the error.
async fn open_fails(config: KafkaConfig, what: &str) -> keel::Error {
    let started = Instant::now();
    let result = tokio::time::timeout(BOUND, config.open())
        .await
        .unwrap_or_else(|_| panic!("{what}: open still pending after {BOUND:?}"));
    let error = match result {
        Ok(_) => panic!("{what}: open succeeded"),
        Err(e) => e,
    };
    eprintln!("{what}: failed after {:?}: {error}", started.elapsed());
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_credentials_reach_every_client_and_never_show() {
    // The shared broker is only the signal that Kafka tests should run; this test needs a
    // SASL cluster of its own.
    if kafka_bootstrap("kafka_sasl").is_none() {
        return;
    }
    let captured = Captured::default();
    tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new("debug,keel=trace"))
        .try_init()
        .expect("the test's tracing subscriber is the only one");

    let cluster = Cluster::start(ClusterSpec {
        nodes: 1,
        sasl: true,
        ..ClusterSpec::default()
    })
    .await;
    let bootstrap = cluster.bootstrap().to_owned();
    assert!(
        !bootstrap.is_empty(),
        "the SASL cluster exported no bootstrap"
    );
    let password = cluster.export("KEEL_KAFKA_SASL_PASSWORD").to_owned();
    let stranger_password = cluster
        .export("KEEL_KAFKA_SASL_STRANGER_PASSWORD")
        .to_owned();
    let wrong_password = format!("not-the-password-{}", std::process::id());
    let secrets = [&password, &stranger_password, &wrong_password];
    let mut texts: Vec<(String, String)> = Vec::new(); // (what, text) of every error and config

    // (a) The keel user, credentials as client properties only: commands through a runtime
    // whose partitions the consumer group assigns, without and with transactions.
    let plain_app = sasl_app("plain");
    let plain = with_credentials(base(&bootstrap, &plain_app), "keel", &password);
    texts.push(("the plain config".into(), format!("{plain:?}")));
    serve_commands(plain.clone(), &plain_app, "sasl-plain:1").await;

    let txn_app = sasl_app("txn");
    let txn = with_credentials(base(&bootstrap, &txn_app), "keel", &password).transactional(true);
    texts.push(("the transactional config".into(), format!("{txn:?}")));
    serve_commands(txn, &txn_app, "sasl-txn:1").await;

    // The same over TLS (SASL_SSL), the brokers' certificate checked against the cluster's
    // own CA; without that CA the certificate is refused, and the error says so.
    let tls_bootstrap = cluster.export("KEEL_KAFKA_SASL_SSL_BOOTSTRAP").to_owned();
    let ca = cluster.export("KEEL_KAFKA_SASL_CA").to_owned();
    let tls_app = sasl_app("tls");
    let over_tls = |app: &str| {
        with_credentials(base(&tls_bootstrap, app), "keel", &password)
            .client_property("security.protocol", "SASL_SSL")
    };
    let tls = over_tls(&tls_app).client_property("ssl.ca.location", &ca);
    texts.push(("the TLS config".into(), format!("{tls:?}")));
    serve_commands(tls, &tls_app, "sasl-tls:1").await;
    let error = open_fails(over_tls(&sasl_app("untrusted")), "over TLS without the CA").await;
    let text = error.to_string();
    assert!(
        text.contains(&tls_bootstrap),
        "names the bootstrap servers: {text}"
    );
    assert!(
        text.contains("certificate verify failed"),
        "says the brokers' certificate was not trusted: {text}"
    );
    texts.push((
        "the error over TLS without the CA".into(),
        format!("{error} / {error:?}"),
    ));

    // (b) No credentials: the listener speaks SASL only, so nothing ever answers.
    let error = open_fails(
        base(&bootstrap, &sasl_app("anonymous")),
        "without credentials",
    )
    .await;
    let text = error.to_string();
    assert!(
        text.contains(&bootstrap),
        "names the bootstrap servers: {text}"
    );
    assert!(
        text.contains("the brokers cannot be used") && text.contains("Disconnected"),
        "says why the brokers do not answer: {text}"
    );
    texts.push((
        "the error without credentials".into(),
        format!("{error} / {error:?}"),
    ));

    // A wrong password: authentication fails.
    let wrong = with_credentials(
        base(&bootstrap, &sasl_app("wrong")),
        "keel",
        &wrong_password,
    );
    let error = open_fails(wrong, "with a wrong password").await;
    let text = error.to_string();
    assert!(
        text.contains(&bootstrap),
        "names the bootstrap servers: {text}"
    );
    assert!(
        text.contains("SASL authentication error: Authentication failed"),
        "says that authentication failed: {text}"
    );
    texts.push((
        "the error with a wrong password".into(),
        format!("{error} / {error:?}"),
    ));

    // (c) Valid credentials without any ACL: refused, naming the broker, the topic and why;
    // for new topics and for the keel user's existing ones alike.
    for (what, app) in [
        ("the stranger on new topics", sasl_app("stranger")),
        ("the stranger on keel's topics", plain_app.clone()),
    ] {
        let stranger = with_credentials(base(&bootstrap, &app), "stranger", &stranger_password);
        let error = open_fails(stranger, what).await;
        let text = error.to_string();
        assert!(
            text.contains(&bootstrap),
            "{what}: names the broker: {text}"
        );
        assert!(
            text.contains(&format!("{app}.")),
            "{what}: names the topic: {text}"
        );
        assert!(
            text.to_lowercase().contains("authorization failed"),
            "{what}: says that authorization was refused: {text}"
        );
        texts.push((
            format!("the error of {what}"),
            format!("{error} / {error:?}"),
        ));
    }

    // (d) No password in any error, config dump or log line.
    let logs = captured.text();
    let dump = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("kafka_sasl.log");
    let mut redacted = logs.clone();
    for secret in secrets {
        redacted = redacted.replace(secret.as_str(), "<PASSWORD>");
    }
    std::fs::write(&dump, redacted).unwrap();
    eprintln!("captured log (passwords replaced): {}", dump.display());
    assert!(
        logs.contains("librdkafka"),
        "librdkafka's log lines reach the tracing subscriber"
    );
    assert!(
        logs.contains("SCRAM-SHA-512"),
        "the SASL handshake is in the captured log"
    );
    assert!(
        !logs.contains("checkpoint commit failed"),
        "checkpoints are committed with the credentials"
    );
    for secret in secrets {
        for (what, text) in &texts {
            assert!(
                !text.contains(secret.as_str()),
                "{what} shows a password: {}",
                text.replace(secret.as_str(), "<PASSWORD>")
            );
        }
        let leaks: Vec<String> = logs
            .lines()
            .filter(|line| line.contains(secret.as_str()))
            .map(|line| line.replace(secret.as_str(), "<PASSWORD>"))
            .collect();
        assert!(
            leaks.is_empty(),
            "{} captured log lines show a password:\n{}",
            leaks.len(),
            leaks.join("\n")
        );
    }
    eprintln!(
        "no password in {} captured log lines and {} errors and configs",
        logs.lines().count(),
        texts.len()
    );
}
