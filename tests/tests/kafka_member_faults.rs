//! An instance of an application on Kafka, in a process of its own (`keel-kafka-member`),
//! dies or freezes while another instance runs in this process:
//! - **SIGKILL**: its partitions move to the survivor once its group session expires; the
//!   survivor serves its aggregates from the log with every acknowledged command exactly once.
//! - **SIGSTOP past the session timeout, then SIGCONT**: the group has given its partitions to
//!   the survivor. When the frozen instance wakes, librdkafka reports the partitions *lost*,
//!   not revoked: it stops them without writing a snapshot (a revoke would snapshot every live
//!   aggregate into partitions it no longer owns). Its overdue maintenance tick may run before
//!   librdkafka has told it so: having noticed its own pause, it writes nothing of its own
//!   (settling, snapshots, checkpoints) until the group has answered. It then rejoins and may
//!   be given partitions again; what it writes after that is a new owner's right.
//! - **SIGSTOP under command load, in the transactional mode**: the frozen instance is a
//!   zombie with commands in flight. The group fences it (KIP-447): when it wakes, none of
//!   what it had not committed reaches the log, and every acknowledged command of either
//!   instance is in the log exactly once, each aggregate's sequence numbers dense.
//!
//! Runs against the broker named by `KEEL_KAFKA_BOOTSTRAP` (see `scripts/broker`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keel::{KafkaLog, KafkaOwnership, Runtime, SendOptions};

use keel::config::SnapshotPolicy;
use keel_tests::broker::{kafka_bootstrap, unique_topic_prefix};
use keel_tests::eventually;
use keel_tests::tally::Tally;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use tokio::io::{AsyncBufReadExt, BufReader};

const PARTITIONS: u32 = 4;

/// One test at a time: each runs instances in two processes and judges what the member
/// printed by when it printed it, which a machine loaded by another test's instances blurs.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const COMMANDS: usize = 40;

/// The instance in a process of its own, and what it printed.
struct Member {
    child: tokio::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Member {
    fn start(bootstrap: &str, prefix: &str, app: &str) -> Member {
        Member::start_with(bootstrap, prefix, app, COMMANDS, false)
    }

    fn start_with(
        bootstrap: &str,
        prefix: &str,
        app: &str,
        commands: usize,
        transactional: bool,
    ) -> Member {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_keel-kafka-member"))
            .args([
                bootstrap,
                prefix,
                app,
                "member-k:7009",
                &PARTITIONS.to_string(),
                &commands.to_string(),
            ])
            .env("RUST_LOG", "keel=info")
            .env(
                "KEEL_MEMBER_TRANSACTIONAL",
                if transactional { "1" } else { "0" },
            )
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
    survivor_with(bootstrap, prefix, app, false).await
}

async fn survivor_with(
    bootstrap: &str,
    prefix: &str,
    app: &str,
    transactional: bool,
) -> (Arc<KafkaLog>, Runtime) {
    let log = Arc::new(
        keel_tests::kafka_config(bootstrap, app, prefix, PARTITIONS)
            .transactional(transactional)
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
async fn events_by_command(
    log: &KafkaLog,
    transactional: bool,
) -> HashMap<String, Vec<(String, u64)>> {
    let events = if transactional {
        keel_tests::read_committed_events(log).await
    } else {
        keel_tests::read_events(log).await
    };
    let mut found: HashMap<String, Vec<(String, u64)>> = HashMap::new();
    for env in events {
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
    let _serial = ONE_AT_A_TIME.lock().await;
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
    let events = events_by_command(&log, false).await;
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
    let _serial = ONE_AT_A_TIME.lock().await;
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
    // Frozen for longer than its session: on waking, it held its own writes back until the
    // group had told it the partitions were lost (its overdue maintenance would otherwise
    // settle and snapshot them as a zombie).
    assert!(
        stderr.contains("paused for longer than half a group session"),
        "the member noticed its pause: {}",
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

/// Whether the application's group is stable with `client_id` as its only member.
fn group_is_only(bootstrap: &str, app: &str, client_id: &str) -> bool {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let Ok(groups) = consumer.fetch_group_list(Some(app), Duration::from_secs(5)) else {
        return false;
    };
    groups.groups().iter().any(|g| {
        g.name() == app
            && g.state() == "Stable"
            && g.members().len() == 1
            && g.members()[0].client_id() == client_id
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_transactional_member_is_fenced_by_the_group() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let test = "member-zombie";
    let Some(bootstrap) = kafka_bootstrap(test) else {
        return;
    };
    let prefix = unique_topic_prefix(test);
    let app = format!("{prefix}-app");
    // The member alone owns every partition and sends commands until it is killed. Its
    // transactions may stay open for a minute, so the one open when it freezes is still open
    // when it wakes: only the group stands between it and the log.
    let mut member = Member::start_with(&bootstrap, &prefix, &app, usize::MAX, true);
    eventually("the member acknowledges commands", || {
        member.acks().len() >= 30
    })
    .await;
    member.signal("-STOP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let frozen = member.acks().len();
    let mut ids: Vec<String> = member.acks().into_iter().map(|(_, id, _)| id).collect();
    ids.sort();
    ids.dedup();

    let (log, runtime) = survivor_with(&bootstrap, &prefix, &app, true).await;
    let joined = std::time::Instant::now();
    eventually("the group drops the frozen member", || {
        group_is_only(&bootstrap, &app, "survivor:7001")
    })
    .await;
    eprintln!(
        "{test}: the group dropped the frozen member {:?} after the survivor joined",
        joined.elapsed()
    );
    // The survivor goes on with the member's aggregates as soon as it serves them, while the
    // zombie wakes with a transaction open and goes on sending.
    let sender = {
        let runtime = runtime.clone();
        let ids = ids.clone();
        tokio::spawn(async move {
            let tallies = runtime.aggregate::<Tally>();
            let mut acked = Vec::new();
            for id in &ids {
                for i in 0..3 {
                    let command_id = format!("survivor-{id}-{i}");
                    loop {
                        match tallies
                            .send_with(id, 1, SendOptions::with_id(&command_id))
                            .await
                        {
                            Ok(done) => {
                                acked.push((command_id, id.clone(), done.seq));
                                break;
                            }
                            // The woken member rejoined and the group gave it the
                            // aggregate back: its own right now.
                            Err(e)
                                if e.not_owner()
                                    .is_some_and(|(_, o)| o == Some("member-k:7009")) =>
                            {
                                break;
                            }
                            Err(e) if e.is_retryable() || e.not_owner().is_some() => {
                                assert!(
                                    joined.elapsed() < Duration::from_secs(120),
                                    "{command_id}: still failing: {e}"
                                );
                                tokio::time::sleep(Duration::from_millis(20)).await
                            }
                            Err(e) => panic!("{command_id}: {e}"),
                        }
                    }
                }
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    member.signal("-CONT");
    let mut acked = sender.await.unwrap();
    eprintln!(
        "{test}: the survivor served the member's aggregates {:?} after joining",
        joined.elapsed()
    );
    // Until its commands fail with `NotOwner`: it has learnt that its partitions were lost.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let gave_up =
        |l: &String| l.starts_with("FAIL ") && l.contains("is not owned by this instance");
    while !member.lines.lock().unwrap().iter().any(gave_up) {
        assert!(
            std::time::Instant::now() < deadline,
            "the woken member never learnt that it lost its partitions\n{}",
            member.describe()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = member.child.start_kill();
    let _ = member.child.wait().await;
    let failures: Vec<String> = member
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("FAIL "))
        .cloned()
        .collect();
    eprintln!(
        "{test}: {frozen} commands acknowledged before the freeze, {} in all; the woken member's failures: {failures:?}",
        member.acks().len()
    );

    // Every acknowledged command of either instance is in the log once, where it was
    // acknowledged; no aggregate has two events with one sequence number.
    acked.extend(member.acks());
    let events = events_by_command(&log, true).await;
    for (command_id, id, seq) in &acked {
        assert_eq!(
            events.get(command_id),
            Some(&vec![(id.clone(), *seq)]),
            "acknowledged command {command_id}\n{}",
            member.describe()
        );
    }
    let mut seqs: HashMap<String, Vec<u64>> = HashMap::new();
    for found in events.values() {
        for (id, seq) in found {
            seqs.entry(id.clone()).or_default().push(*seq);
        }
    }
    for (id, mut seqs) in seqs {
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "the sequence numbers of {id}"
        );
    }
    runtime.shutdown().await.unwrap();
}
