//! An instance of an application on Kafka, in a process of its own (`keel-kafka-member`),
//! dies or freezes while another instance runs in this process:
//! - **SIGKILL**: its partitions move to the survivor once its group session expires; the
//!   survivor serves its aggregates from the log with every acknowledged command exactly once.
//! - **SIGSTOP past the session timeout, then SIGCONT**: the group has given its partitions to
//!   the survivor. When the frozen instance wakes, librdkafka reports the partitions *lost*,
//!   not revoked: it stops them without writing a snapshot (a revoke would snapshot every live
//!   aggregate into partitions it no longer owns). It then rejoins and may be given partitions
//!   again; what it writes after that is a new owner's right.
//!
//! Runs against the broker named by `KEEL_KAFKA_BOOTSTRAP` (see `scripts/broker`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keel::{KafkaLog, KafkaOwnership, Runtime};

use keel::config::SnapshotPolicy;
use keel_tests::broker::{kafka_bootstrap, unique_topic_prefix};
use keel_tests::eventually;
use keel_tests::tally::Tally;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use tokio::io::{AsyncBufReadExt, BufReader};

const PARTITIONS: u32 = 4;
const COMMANDS: usize = 40;

/// The instance in a process of its own, and what it printed.
struct Member {
    child: tokio::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Member {
    fn start(bootstrap: &str, prefix: &str, app: &str) -> Member {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_keel-kafka-member"))
            .args([
                bootstrap,
                prefix,
                app,
                "member-k:7009",
                &PARTITIONS.to_string(),
                &COMMANDS.to_string(),
            ])
            .env("RUST_LOG", "keel=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn keel-kafka-member");
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let stderr: Arc<Mutex<Vec<String>>> = Arc::default();
        for (stream, sink) in [
            (
                Box::new(child.stdout.take().unwrap())
                    as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                lines.clone(),
            ),
            (Box::new(child.stderr.take().unwrap()), stderr.clone()),
        ] {
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    sink.lock().unwrap().push(line);
                }
            });
        }
        Member {
            child,
            lines,
            stderr,
        }
    }

    fn printed(&self, what: &str) -> bool {
        self.lines.lock().unwrap().iter().any(|l| l == what)
    }

    /// Every `OWNED` line: the partitions, and when (unix ms; 0 for the first line).
    fn owned(&self) -> Vec<(String, i64)> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| {
                let rest = l.strip_prefix("OWNED ")?;
                let (list, at) = match rest.rsplit_once(' ') {
                    Some((list, at)) if list.ends_with(']') => (list, at.parse().ok()?),
                    _ => (rest, 0),
                };
                Some((list.to_owned(), at))
            })
            .collect()
    }

    /// (command id, aggregate id, seq) of every command it acknowledged.
    fn acks(&self) -> Vec<(String, String, u64)> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| {
                let mut parts = l.strip_prefix("ACK ")?.split(' ');
                Some((
                    parts.next()?.to_owned(),
                    parts.next()?.to_owned(),
                    parts.next()?.parse().ok()?,
                ))
            })
            .collect()
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("member running").to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    fn describe(&self) -> String {
        format!(
            "stdout: {:?}\nstderr (last lines): {:?}",
            self.lines.lock().unwrap(),
            self.stderr
                .lock()
                .unwrap()
                .iter()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
        )
    }
}

async fn survivor(bootstrap: &str, prefix: &str, app: &str) -> (Arc<KafkaLog>, Runtime) {
    let log = Arc::new(
        keel_tests::kafka_config(bootstrap, app, prefix, PARTITIONS)
            .open()
            .await
            .expect("open"),
    );
    // No snapshots from the survivor: any snapshot written later is the other member's.
    let runtime = Runtime::builder()
        .ownership(KafkaOwnership::new(log.clone(), "survivor:7001"))
        .snapshots(SnapshotPolicy {
            every_events: 1_000_000,
            on_passivation: false,
            after_long_replay: false,
        })
        .start()
        .await
        .expect("start");
    (log, runtime)
}

/// Every event of the log, by command id.
async fn events_by_command(log: &KafkaLog) -> HashMap<String, Vec<(String, u64)>> {
    let mut found: HashMap<String, Vec<(String, u64)>> = HashMap::new();
    for env in keel_tests::read_events(log).await {
        found
            .entry(env.command_id.clone().unwrap_or_default())
            .or_default()
            .push((env.aggregate_id, env.seq));
    }
    found
}

async fn member_and_survivor_split(test: &str) -> Option<(Member, Arc<KafkaLog>, Runtime, String)> {
    let bootstrap = kafka_bootstrap(test)?;
    let prefix = unique_topic_prefix(test);
    let app = format!("{prefix}-app");
    let (log, runtime) = survivor(&bootstrap, &prefix, &app).await;
    let member = Member::start(&bootstrap, &prefix, &app);
    eventually("the member acknowledges its commands", || {
        member.printed("DONE")
    })
    .await;
    assert!(
        runtime.owned_partitions().len() < PARTITIONS as usize,
        "the survivor kept every partition: {}",
        member.describe()
    );
    Some((member, log, runtime, bootstrap))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_killed_with_sigkill_is_replaced_and_loses_nothing() {
    let Some((mut member, log, runtime, _)) = member_and_survivor_split("member-sigkill").await
    else {
        return;
    };
    let acks = member.acks();
    assert_eq!(acks.len(), COMMANDS, "{}", member.describe());
    member.child.start_kill().expect("SIGKILL");
    let _ = member.child.wait().await;
    eventually(
        "the survivor serves every partition after the session expired",
        || runtime.owned_partitions().len() == PARTITIONS as usize,
    )
    .await;

    // The survivor serves the dead member's aggregates from the log.
    let mut per_aggregate: HashMap<&str, u64> = HashMap::new();
    for (_, id, seq) in &acks {
        let last = per_aggregate.entry(id).or_default();
        *last = (*last).max(*seq);
    }
    let tallies = runtime.aggregate::<Tally>();
    for (id, last) in &per_aggregate {
        assert_eq!(tallies.query(id, |t| t.total).await.unwrap(), *last, "{id}");
        let next = tallies.send(id, 1).await.unwrap();
        assert_eq!(next.seq, last + 1, "{id}");
    }
    let events = events_by_command(&log).await;
    for (command_id, id, seq) in &acks {
        assert_eq!(
            events.get(command_id),
            Some(&vec![(id.clone(), *seq)]),
            "acknowledged command {command_id}"
        );
    }
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_member_stops_its_lost_partitions_without_writing_snapshots() {
    let Some((member, log, runtime, bootstrap)) = member_and_survivor_split("member-sigstop").await
    else {
        return;
    };
    let member_owned = member
        .owned()
        .first()
        .cloned()
        .expect("the member owned partitions")
        .0;
    member.signal("-STOP");
    eventually(
        "the survivor serves every partition after the member's session expired",
        || runtime.owned_partitions().len() == PARTITIONS as usize,
    )
    .await;
    let woke = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    member.signal("-CONT");
    eventually("the woken member gives its partitions up", || {
        member.owned().iter().any(|(list, _)| list == "[]")
    })
    .await;
    // Give a wrongly handled loss time to write what a revoke writes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // From when it woke until the group gave it partitions again (if it did), the member
    // owned nothing and must have written nothing.
    let owned = member.owned();
    let gone = owned.iter().position(|(list, _)| list == "[]").unwrap();
    // (It prints its partitions up to 100 ms after it starts serving them, by which time a
    // new owner may already have settled some aggregates: leave that out.)
    let regained = owned[gone + 1..]
        .iter()
        .find(|(list, _)| list != "[]")
        .map_or(i64::MAX, |(_, at)| *at - 500);

    // Nothing in the snapshots topic was written while the woken member owned nothing: the
    // survivor writes no snapshots, and the member must not either.
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "snapshot-inspector")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = rdkafka::TopicPartitionList::new();
    for p in 0..PARTITIONS {
        assignment
            .add_partition_offset(log.snapshots_topic(), p as i32, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    // Read every partition up to its end offset as the broker reports it now.
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    for p in 0..PARTITIONS as i32 {
        let (low, high) = consumer
            .fetch_watermarks(log.snapshots_topic(), p, Duration::from_secs(10))
            .unwrap();
        if high > low {
            remaining.insert(p, high);
        }
    }
    let mut late = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !remaining.is_empty() && std::time::Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            let written = message.timestamp().to_millis().unwrap_or_default();
            if written >= woke && written < regained {
                late.push(format!(
                    "{} at {written} (woke {woke}, owned again {regained})",
                    String::from_utf8_lossy(message.key().unwrap_or_default())
                ));
            }
            if remaining
                .get(&message.partition())
                .is_some_and(|&end| message.offset() + 1 >= end)
            {
                remaining.remove(&message.partition());
            }
        }
    }
    assert!(
        remaining.is_empty(),
        "read the snapshots topic to its end: {remaining:?} left"
    );
    assert!(
        late.is_empty(),
        "snapshots written after the member woke, before it owned partitions again: {late:?}\n{}",
        member.describe()
    );

    let stderr = member.stderr.lock().unwrap().join("\n");
    assert!(
        stderr.contains("partitions lost"),
        "the member saw its partitions {member_owned} lost: {}",
        member.describe()
    );

    // And the survivor serves the member's aggregates with everything acknowledged.
    let tallies = runtime.aggregate::<Tally>();
    let mut per_aggregate: HashMap<String, u64> = HashMap::new();
    for (_, id, seq) in member.acks() {
        let last = per_aggregate.entry(id).or_default();
        *last = (*last).max(seq);
    }
    // (Those on partitions the woken member got back are its to serve.)
    let survivor_owns = runtime.owned_partitions();
    for (id, last) in &per_aggregate {
        let partition =
            keel::log::partition_for(&keel::log::aggregate_key("Tally", id), PARTITIONS);
        if survivor_owns.contains(&partition) {
            assert_eq!(tallies.query(id, |t| t.total).await.unwrap(), *last, "{id}");
        }
    }
    drop(member);
    runtime.shutdown().await.unwrap();
}
