//! The broker is killed with SIGKILL in the middle of a command load and restarted two
//! seconds later on the same port and data. Commands in flight get errors or succeed; the
//! runtime recovers on its own (no restart): new commands succeed once the broker is back.
//! Callers retry a failed command with the same command id, so a command whose
//! acknowledgement was lost is deduplicated, not doubled. At the end, every acknowledged
//! command is in the log exactly once, no command id is in it twice, and every aggregate's
//! sequence is dense.
//!
//! The test starts its own broker (`scripts/broker` with a private `KEEL_BROKER_DIR`, so on
//! its own port), because killing the shared one would break the other Kafka tests of the
//! run. It runs when the environment provides Kafka (`KEEL_KAFKA_BOOTSTRAP`, as
//! `scripts/test` does) and, like the other Kafka tests, fails instead of skipping when
//! `KEEL_REQUIRE_KAFKA=1` and no broker is reachable.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel::{
    AggregateHandle, CommandError, EventEnvelope, EventLog, KafkaConfig, KafkaLog, Runtime,
    SendOptions, SnapshotPolicy,
};
use keel_tests::broker::{Cluster, ClusterSpec, kafka_bootstrap, unique_topic_prefix};
use keel_tests::tally::Tally;
use tokio::time::Instant;

const PARTITIONS: u32 = 4;
const AGGREGATES: usize = 16;
/// Three tasks per aggregate: commands to one aggregate are queued behind each other.
const TASKS: usize = 48;
/// Short enough that commands in flight when the broker dies time out and are retried.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
const OUTAGE: Duration = Duration::from_secs(2);
/// Commands every task must complete after the restart before the load stops.
const ACKS_AFTER_RESTART: usize = 10;
/// How long a command may keep failing before the test decides the runtime did not recover.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(60);

/// One acknowledged command.
#[derive(Debug)]
struct Ack {
    command_id: String,
    aggregate: String,
    seq: u64,
    /// Attempts it took; more than one means earlier attempts failed and the retry reused
    /// the command id.
    attempts: usize,
    deduplicated: bool,
}

/// What the load tasks saw besides acknowledgements.
#[derive(Default)]
struct Observed {
    /// Failed attempts by kind of error.
    errors: Mutex<BTreeMap<&'static str, usize>>,
}

impl Observed {
    fn failed(&self, error: &CommandError<keel_tests::tally::ZeroAmount>) {
        let kind = match error {
            CommandError::Timeout(..) => "timeout",
            CommandError::Storage { .. } => "storage",
            CommandError::Overloaded(_) => "overloaded",
            CommandError::Panicked { .. } => "panicked",
            _ => "other",
        };
        *self.errors.lock().unwrap().entry(kind).or_default() += 1;
    }
}

/// Sends `command_id` to `aggregate` until it is acknowledged, always with the same command
/// id. Panics on a non-retryable error, or when the command keeps failing past the recovery
/// deadline.
async fn send_until_acked(
    tallies: &AggregateHandle<Tally>,
    aggregate: &str,
    command_id: &str,
    observed: &Observed,
) -> Ack {
    let deadline = Instant::now() + RECOVERY_DEADLINE;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let options = SendOptions::with_id(command_id).timeout(ATTEMPT_TIMEOUT);
        match tallies.send_with(aggregate, 1, options).await {
            Ok(done) => {
                return Ack {
                    command_id: command_id.to_string(),
                    aggregate: aggregate.to_string(),
                    seq: done.seq,
                    attempts,
                    deduplicated: done.deduplicated,
                };
            }
            Err(e) if e.is_retryable() => {
                observed.failed(&e);
                assert!(
                    Instant::now() < deadline,
                    "command {command_id} to {aggregate} still failing after \
                     {RECOVERY_DEADLINE:?}: the runtime did not recover ({e})"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("command {command_id} to {aggregate}: {e}"),
        }
    }
}

/// One load task: commands to its aggregates, round robin, until told to stop.
async fn drive(
    tallies: AggregateHandle<Tally>,
    task: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    observed: Arc<Observed>,
) -> Vec<Ack> {
    let mut acks = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let aggregate = format!("t{}", (task + n) % AGGREGATES);
        let command_id = format!("w{task}-{n}");
        acks.push(send_until_acked(&tallies, &aggregate, &command_id, &observed).await);
        acked.fetch_add(1, Ordering::Relaxed);
        n += 1;
    }
    acks
}

/// Every event of the log, in partition and offset order.
async fn read_all(log: &KafkaLog) -> Vec<EventEnvelope> {
    let mut all = Vec::new();
    for partition in 0..PARTITIONS {
        let end = log.end_offset(partition).await.expect("end offset");
        let mut from = 0;
        while from < end {
            let batch = log
                .read(partition, from, 1000, Duration::from_secs(1))
                .await
                .expect("read");
            assert!(
                !batch.is_empty(),
                "partition {partition} stops at {from} before its end {end}"
            );
            for r in &batch {
                all.push(EventEnvelope::decode(&r.value, &r.position).expect("decodable"));
            }
            from = batch.last().map_or(end, |r| r.position.offset + 1);
        }
    }
    all
}

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_sigkill_under_load_loses_and_doubles_nothing() {
    // The shared broker is only the signal that Kafka tests should run; this test kills a
    // broker of its own.
    if kafka_bootstrap("kafka_broker_crash").is_none() {
        return;
    }
    let started = Instant::now();
    let broker = Cluster::start(ClusterSpec::default()).await;
    let prefix = unique_topic_prefix("broker-crash");
    let log = Arc::new(
        KafkaConfig::new(broker.bootstrap())
            .app_id(format!("{prefix}-app"))
            .topic_prefix(&prefix)
            .partitions(PARTITIONS)
            .linger(Duration::from_millis(2))
            .open()
            .await
            .expect("open the kafka log"),
    );
    let runtime = Runtime::builder()
        .backend(log.clone())
        .app_id(format!("{prefix}-app"))
        // Snapshots every few events, so some are written across the outage too.
        .snapshots(SnapshotPolicy {
            every_events: 20,
            ..SnapshotPolicy::default()
        })
        .start()
        .await
        .expect("start the runtime");
    let tallies = runtime.aggregate::<Tally>();

    let stop = Arc::new(AtomicBool::new(false));
    let observed = Arc::new(Observed::default());
    let counters: Vec<Arc<AtomicUsize>> = (0..TASKS).map(|_| Arc::default()).collect();
    let tasks: Vec<_> = counters
        .iter()
        .enumerate()
        .map(|(task, acked)| {
            tokio::spawn(drive(
                tallies.clone(),
                task,
                stop.clone(),
                acked.clone(),
                observed.clone(),
            ))
        })
        .collect();
    let total = || {
        counters
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<usize>()
    };

    wait_until("the load gets going", Duration::from_secs(60), || {
        total() >= 20 * TASKS
    })
    .await;
    broker.kill(None).await;
    let before_kill = total();
    tokio::time::sleep(OUTAGE).await;
    let during_outage = total() - before_kill;
    broker.restart(None).await;
    let restarted = Instant::now();

    // The same runtime, never restarted, serves every task again.
    let at_restart: Vec<usize> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    wait_until(
        "every load task completes commands after the broker restart",
        RECOVERY_DEADLINE,
        || {
            counters
                .iter()
                .zip(&at_restart)
                .all(|(c, &then)| c.load(Ordering::Relaxed) >= then + ACKS_AFTER_RESTART)
        },
    )
    .await;
    let recovered_after = restarted.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut acks = Vec::new();
    for task in tasks {
        acks.extend(task.await.expect("load task"));
    }

    // Fresh commands succeed at the first attempt now.
    for i in 0..AGGREGATES {
        let aggregate = format!("t{i}");
        let done = tallies
            .send_with(&aggregate, 1, SendOptions::with_id(format!("after-{i}")))
            .await
            .unwrap_or_else(|e| panic!("a new command to {aggregate} after recovery: {e}"));
        acks.push(Ack {
            command_id: format!("after-{i}"),
            aggregate,
            seq: done.seq,
            attempts: 1,
            deduplicated: done.deduplicated,
        });
    }

    // Resending an acknowledged command id returns its original outcome, appending nothing.
    let mut last_per_aggregate: HashMap<&str, &Ack> = HashMap::new();
    for ack in &acks {
        last_per_aggregate.insert(&ack.aggregate, ack);
    }
    for ack in last_per_aggregate.values() {
        let again = tallies
            .send_with(&ack.aggregate, 1, SendOptions::with_id(&ack.command_id))
            .await
            .expect("resend an acknowledged command");
        assert!(again.deduplicated, "{} resent", ack.command_id);
        assert_eq!(again.seq, ack.seq, "{} resent", ack.command_id);
    }

    // The log: every acknowledged command exactly once, at the sequence number it was
    // acknowledged with; no command id twice; every aggregate's sequence dense.
    let events = read_all(&log).await;
    let mut by_command: HashMap<&str, Vec<(&str, u64)>> = HashMap::new();
    let mut seqs: HashMap<&str, Vec<u64>> = HashMap::new();
    for env in &events {
        let command_id = env.command_id.as_deref().expect("every command has an id");
        by_command
            .entry(command_id)
            .or_default()
            .push((&env.aggregate_id, env.seq));
        seqs.entry(&env.aggregate_id).or_default().push(env.seq);
    }
    for (command_id, found) in &by_command {
        assert_eq!(
            found.len(),
            1,
            "command {command_id} is in the log {found:?}"
        );
    }
    for ack in &acks {
        assert_eq!(
            by_command.get(ack.command_id.as_str()),
            Some(&vec![(ack.aggregate.as_str(), ack.seq)]),
            "acknowledged command {} ({} seq {}, {} attempts)",
            ack.command_id,
            ack.aggregate,
            ack.seq,
            ack.attempts
        );
    }
    // Every command was retried until acknowledged, so nothing else is in the log.
    assert_eq!(
        events.len(),
        acks.len(),
        "events in the log vs acknowledged commands"
    );
    assert_eq!(seqs.len(), AGGREGATES);
    for (aggregate, seqs) in &seqs {
        let dense: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(
            seqs, &dense,
            "{aggregate}: sequence numbers dense and in order"
        );
        let total = tallies.query(aggregate, |t| t.total).await.expect("query");
        assert_eq!(
            total,
            seqs.len() as u64,
            "{aggregate}: state matches the log"
        );
    }

    let retried = acks.iter().filter(|a| a.attempts > 1).count();
    let deduplicated = acks.iter().filter(|a| a.deduplicated).count();
    let errors = observed.errors.lock().unwrap().clone();
    eprintln!(
        "kafka_broker_crash: {} commands acknowledged ({before_kill} before the kill, \
         {during_outage} during the {OUTAGE:?} outage), {} events in the log; failed \
         attempts {errors:?}; {retried} commands acknowledged after a retry, {deduplicated} \
         of them deduplicated; every task recovered {recovered_after:?} after the restart; \
         {:?} in all",
        acks.len(),
        events.len(),
        started.elapsed()
    );
    // The kill hit commands in flight, and their retries (same command ids) went through.
    assert!(retried > 0, "no command was in flight when the broker died");

    runtime.shutdown().await.expect("shutdown");
    drop(log);
    drop(broker);
}
