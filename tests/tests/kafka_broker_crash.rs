//! Brokers are killed with SIGKILL in the middle of a command load:
//! - a one-node cluster, restarted two seconds later on the same port and data;
//! - the leader of the busiest partitions of a three-node cluster (replication factor 3,
//!   `min.insync.replicas` 2): the other two elect a new leader and commands resume without
//!   a restart (the pause is measured and printed);
//! - every node of a three-node cluster at once, restarted two seconds later;
//! - a one-node cluster in the transactional mode, kept down until the start of a
//!   replacement producer has failed too, then restarted.
//!
//! Commands in flight get errors or succeed; the runtime recovers on its own (it is never
//! restarted). Callers retry a failed command with the same command id, so a command whose
//! acknowledgement was lost is deduplicated, not doubled. At the end, every acknowledged
//! command is in the log exactly once, no command id is in it twice, and every aggregate's
//! sequence is dense.
//!
//! Each test starts its own cluster (`scripts/broker` with a private `KEEL_BROKER_DIR`, so on
//! its own ports), because killing the shared one would break the other Kafka tests of the
//! run; one at a time, as three JVMs per cluster fill the machine. It runs when the environment provides Kafka (`KEEL_KAFKA_BOOTSTRAP`, as
//! `scripts/test` does) and, like the other Kafka tests, fails instead of skipping when
//! `KEEL_REQUIRE_KAFKA=1` and no broker is reachable.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel::{
    AggregateHandle, CommandError, KafkaConfig, KafkaLog, Runtime, RuntimeBuilder, SendOptions,
};

use keel::config::SnapshotPolicy;
use keel_tests::broker::{Cluster, ClusterSpec, kafka_bootstrap, unique_topic_prefix};
use keel_tests::tally::Tally;
use rdkafka::consumer::Consumer;
use tokio::time::Instant;

const PARTITIONS: u32 = 4;
const AGGREGATES: usize = 16;
/// Three tasks per aggregate: commands to one aggregate are queued behind each other.
const TASKS: usize = 48;
/// Short enough that commands in flight when the broker dies time out and are retried.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
const OUTAGE: Duration = Duration::from_secs(2);
/// Commands every task must complete after the fault before the load stops.
const ACKS_AFTER_FAULT: usize = 10;
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

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What is done to the cluster while the load runs.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGKILL every node, restart them after [`OUTAGE`].
    WholeCluster,
    /// SIGKILL the node leading the most events partitions; it stays down.
    Leader,
}

/// A cluster of its own, a Kafka log on it and a runtime over that log.
struct Rig {
    broker: Cluster,
    log: Arc<KafkaLog>,
    runtime: Runtime,
}

impl Rig {
    async fn start(
        name: &str,
        nodes: u32,
        partitions: u32,
        log: impl FnOnce(KafkaConfig) -> KafkaConfig,
        runtime: impl FnOnce(RuntimeBuilder) -> RuntimeBuilder,
    ) -> Rig {
        let broker = Cluster::start(ClusterSpec {
            nodes,
            ..ClusterSpec::default()
        })
        .await;
        let prefix = unique_topic_prefix(&format!("broker-crash-{name}"));
        let app = format!("{prefix}-app");
        let config = keel_tests::kafka_config(broker.bootstrap(), &app, &prefix, partitions);
        let log = Arc::new(log(config).open().await.expect("open the kafka log"));
        let runtime = runtime(Runtime::builder().backend(log.clone()).app_id(app))
            .start()
            .await
            .expect("start the runtime");
        Rig {
            broker,
            log,
            runtime,
        }
    }
}

/// One test at a time in this binary: each runs a cluster of its own.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_sigkill_under_load_loses_and_doubles_nothing() {
    crash_under_load("one-node", 1, Fault::WholeCluster, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_on_three_nodes_loses_and_doubles_nothing() {
    crash_under_load("leader", 3, Fault::Leader, false).await;
}

/// The transactional mode: the killed node may also be the transaction coordinator (its
/// `__transaction_state` partitions move to another node) or lead the group's offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_on_three_nodes_in_the_transactional_mode_loses_and_doubles_nothing() {
    crash_under_load("txn-leader", 3, Fault::Leader, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_sigkill_on_three_nodes_loses_and_doubles_nothing() {
    crash_under_load("three-nodes", 3, Fault::WholeCluster, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_sigkill_on_three_nodes_in_the_transactional_mode_loses_and_doubles_nothing()
{
    crash_under_load("txn-three-nodes", 3, Fault::WholeCluster, true).await;
}

/// The transactional producer fails while the only broker is down, and so does the start of
/// its replacement (`init_transactions` finds no coordinator). Once the broker is back, the
/// next append starts a producer: an outage that outlasts a producer start does not leave the
/// log answering "closed" for good.
///
/// The broker is killed while a transaction is open and registered with its coordinator (a
/// long commit interval holds it open), so that transaction can neither commit nor abort and
/// its producer stops. A transaction the coordinator never heard of aborts locally, and its
/// producer goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_that_cannot_start_during_an_outage_is_started_after_it() {
    if kafka_bootstrap("kafka_broker_crash").is_none() {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let Rig {
        broker,
        log,
        runtime,
    } = Rig::start(
        "txn-start",
        1,
        1,
        |log| {
            log.transactional(true)
                // A producer start gives up after this while the broker is down.
                .delivery_timeout(Duration::from_secs(2))
                .commit_interval(COMMIT_INTERVAL)
        },
        |runtime| runtime,
    )
    .await;
    let tallies = runtime.aggregate::<Tally>();
    let observed = Observed::default();
    // Live aggregates: after the first failed append, the next one still live reaches the
    // stopped producer and starts a replacement (an aggregate whose append failed restarts
    // from the log, which needs the broker first).
    const LIVE: usize = 8;
    const COMMIT_INTERVAL: Duration = Duration::from_millis(600);
    for i in 0..LIVE {
        send_until_acked(
            &tallies,
            &format!("t{i}"),
            &format!("before-{i}"),
            &observed,
        )
        .await;
    }

    let outage_options = |id: String| SendOptions::with_id(id).timeout(Duration::from_secs(20));
    let open = tokio::spawn({
        let tallies = tallies.clone();
        async move {
            tallies
                .send_with("t0", 1, outage_options("during-0".into()))
                .await
        }
    });
    // Its record and partition are acknowledged long before the commit is due.
    tokio::time::sleep(COMMIT_INTERVAL / 3).await;
    broker.kill(None).await;
    let mut errors = Vec::new();
    match open.await.expect("the command sent before the kill") {
        Ok(done) => panic!("a transaction committed with the only broker down: {done:?}"),
        Err(e) if e.is_retryable() => errors.push(e.to_string()),
        Err(e) => panic!("the command whose transaction the kill cut: {e}"),
    }
    // Commands fail until a replacement producer's start has failed too (the first one
    // should: its producer stopped).
    let outage = Instant::now();
    for i in (1..LIVE).cycle() {
        if errors
            .iter()
            .any(|e: &String| e.contains("initialising transactional producer"))
        {
            break;
        }
        assert!(
            outage.elapsed() < RECOVERY_DEADLINE,
            "no producer start failed during the outage; the commands failed with {errors:#?}"
        );
        let options = outage_options(format!("during-{i}"));
        match tallies.send_with(&format!("t{i}"), 1, options).await {
            Ok(done) => panic!("a command committed with the only broker down: {done:?}"),
            Err(e) if e.is_retryable() => errors.push(e.to_string()),
            Err(e) => panic!("a command during the outage: {e}"),
        }
    }
    broker.restart(None).await;

    // The same runtime and log serve again: each retried command once, then a new one.
    for i in 0..LIVE {
        for (command, seq) in [("during", 2), ("after", 3)] {
            let ack = send_until_acked(
                &tallies,
                &format!("t{i}"),
                &format!("{command}-{i}"),
                &observed,
            )
            .await;
            assert_eq!(ack.seq, seq, "{command}-{i} acknowledged");
        }
    }
    let events = keel_tests::read_committed_events(log.as_ref()).await;
    let mut found: Vec<(&str, &str, u64)> = events
        .iter()
        .map(|e| {
            let id = e.command_id.as_deref().unwrap_or("?");
            (e.aggregate_id.as_str(), id, e.seq)
        })
        .collect();
    found.sort_unstable();
    let commands: Vec<(String, String, u64)> = (0..LIVE)
        .flat_map(|i| {
            [("before", 1), ("during", 2), ("after", 3)]
                .map(|(c, seq)| (format!("t{i}"), format!("{c}-{i}"), seq))
        })
        .collect();
    let mut expected: Vec<(&str, &str, u64)> = commands
        .iter()
        .map(|(a, c, seq)| (a.as_str(), c.as_str(), *seq))
        .collect();
    expected.sort_unstable();
    assert_eq!(found, expected, "the log after the outage");
    eprintln!(
        "kafka_broker_crash[txn-start]: {} failed attempts during the outage, recovered",
        errors.len()
    );
    runtime.shutdown().await.expect("shutdown");
}

/// The broker id (= `scripts/broker` node number) leading the most partitions of `topic`.
async fn busiest_leader(bootstrap: &str, topic: &str) -> u32 {
    let client: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("metadata client");
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let metadata = client
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .expect("metadata");
        let mut led: BTreeMap<i32, usize> = BTreeMap::new();
        for partition in metadata.topics()[0].partitions() {
            *led.entry(partition.leader()).or_default() += 1;
        }
        let (leader, _) = led.into_iter().max_by_key(|(_, n)| *n).expect("a leader");
        u32::try_from(leader).expect("a broker id")
    })
    .await
    .unwrap()
}

async fn crash_under_load(name: &str, nodes: u32, fault: Fault, transactional: bool) {
    // The shared broker is only the signal that Kafka tests should run; this test kills a
    // cluster of its own.
    if kafka_bootstrap("kafka_broker_crash").is_none() {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    let Rig {
        broker,
        log,
        runtime,
    } = Rig::start(
        name,
        nodes,
        PARTITIONS,
        |log| log.transactional(transactional),
        // Snapshots every few events, so some are written across the outage too.
        |runtime| {
            runtime.snapshots(SnapshotPolicy {
                every_events: 20,
                ..SnapshotPolicy::default()
            })
        },
    )
    .await;
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
    let before_kill = total();
    let killed_at = Instant::now();
    let at_kill: Vec<usize> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let (during_outage, resumed_from) = match fault {
        Fault::WholeCluster => {
            broker.kill(None).await;
            tokio::time::sleep(OUTAGE).await;
            let during = total() - before_kill;
            broker.restart(None).await;
            (during, Instant::now())
        }
        Fault::Leader => {
            let leader = busiest_leader(broker.bootstrap(), log.events_topic()).await;
            broker.kill(Some(leader)).await;
            eprintln!("kafka_broker_crash[{name}]: killed node {leader}, the busiest leader");
            (0, killed_at)
        }
    };

    // The same runtime, never restarted, serves every task again.
    let first_acks: Arc<Mutex<Vec<Option<Duration>>>> = Arc::new(Mutex::new(vec![None; TASKS]));
    wait_until(
        "every load task completes commands after the fault",
        RECOVERY_DEADLINE,
        || {
            let mut first = first_acks.lock().unwrap();
            let mut all = true;
            for (task, (c, &then)) in counters.iter().zip(&at_kill).enumerate() {
                let now = c.load(Ordering::Relaxed);
                // Two commands after the kill: the first may have been acknowledged just
                // before it.
                if now >= then + 2 && first[task].is_none() {
                    first[task] = Some(killed_at.elapsed());
                }
                all &= now >= then + ACKS_AFTER_FAULT;
            }
            all
        },
    )
    .await;
    let restarted = resumed_from;
    let pauses: Vec<Duration> = first_acks
        .lock()
        .unwrap()
        .iter()
        .flatten()
        .copied()
        .collect();
    let longest_pause = pauses.iter().max().copied().unwrap_or_default();
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
    let events = if transactional {
        keel_tests::read_committed_events(log.as_ref()).await
    } else {
        keel_tests::read_events(log.as_ref()).await
    };
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
        "kafka_broker_crash[{name}, {fault:?}]: {} commands acknowledged ({before_kill} before \
         the kill, {during_outage} during the outage), {} events in the log; failed attempts \
         {errors:?}; {retried} commands acknowledged after a retry, {deduplicated} of them \
         deduplicated; every task acknowledged commands again {longest_pause:?} after the \
         kill ({recovered_after:?} after the restart or kill); {:?} in all",
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
