//! One instance of a keel application on Kafka, in a process of its own, for tests that kill
//! or freeze an instance (SIGKILL, SIGSTOP). It joins the application's consumer group, waits
//! for partitions, sends COMMANDS commands to aggregates `k…` on the partitions it owns and
//! prints `ACK <command-id> <aggregate-id> <seq>` for each as soon as it is acknowledged, then
//! `DONE`, then keeps serving and prints `OWNED [p, …] <unix ms>` whenever its partitions
//! change. A command that fails is retried; each new kind of failure is printed as
//! `FAIL <command-id> <error>`. With `KEEL_MEMBER_TRANSACTIONAL=1` the log is transactional,
//! its transaction timeout `KEEL_MEMBER_TRANSACTION_TIMEOUT_MS` (default 60 000).
//!
//! Usage: keel-kafka-member BOOTSTRAP PREFIX APP ENDPOINT PARTITIONS COMMANDS

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use keel::{KafkaConfig, KafkaOwnership, Runtime, SendOptions};
use keel_tests::tally::Tally;

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn fail(what: &str) -> ! {
    eprintln!("keel-kafka-member: {what}");
    std::process::exit(1);
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bootstrap, prefix, app, endpoint, partitions, commands] = args.as_slice() else {
        eprintln!("usage: keel-kafka-member BOOTSTRAP PREFIX APP ENDPOINT PARTITIONS COMMANDS");
        std::process::exit(2);
    };
    let partitions: u32 = partitions.parse().unwrap_or_else(|_| fail("PARTITIONS"));
    let commands: usize = commands.parse().unwrap_or_else(|_| fail("COMMANDS"));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "keel=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let log = KafkaConfig::new(bootstrap)
        .app_id(app)
        .topic_prefix(prefix)
        .partitions(partitions)
        .linger(Duration::from_millis(2))
        .transactional(std::env::var("KEEL_MEMBER_TRANSACTIONAL").is_ok_and(|v| v == "1"))
        .transaction_timeout(Duration::from_millis(
            std::env::var("KEEL_MEMBER_TRANSACTION_TIMEOUT_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(60_000),
        ))
        .open()
        .await
        .unwrap_or_else(|e| fail(&format!("open: {e}")));
    let log = Arc::new(log);
    let runtime = Runtime::builder()
        .ownership(KafkaOwnership::new(log, endpoint.as_str()))
        .idle_timeout(Duration::from_secs(600))
        .start()
        .await
        .unwrap_or_else(|e| fail(&format!("start: {e}")));
    let mut owned = Vec::new();
    while owned.is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        owned = runtime.owned_partitions();
    }
    say(&format!("OWNED {owned:?}"));

    // Ten aggregates on this instance's partitions.
    let ids: Vec<String> = (0..10_000)
        .map(|i| format!("k{i}"))
        .filter(|id| {
            owned.contains(&keel::log::partition_for(
                &keel::log::aggregate_key("Tally", id),
                partitions,
            ))
        })
        .take(10)
        .collect();
    let tallies = runtime.aggregate::<Tally>();
    let mut n = 0;
    let mut last_failure = String::new();
    while n < commands {
        let id = &ids[n % ids.len()];
        let command_id = format!("{endpoint}-{n}");
        match tallies
            .send_with(id, 1, SendOptions::with_id(&command_id))
            .await
        {
            Ok(done) => {
                say(&format!("ACK {command_id} {id} {}", done.seq));
                n += 1;
            }
            Err(e) if e.is_retryable() || e.not_owner().is_some() => {
                let failure = e.to_string();
                if failure != last_failure {
                    say(&format!("FAIL {command_id} {failure}"));
                    last_failure = failure;
                }
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => fail(&format!("command {command_id} to {id}: {e}")),
        }
    }
    say("DONE");
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = runtime.owned_partitions();
        if now != owned {
            owned = now;
            let ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or_default();
            say(&format!("OWNED {owned:?} {ms}"));
        }
    }
}
