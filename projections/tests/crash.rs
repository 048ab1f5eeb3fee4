//! A persisted projection killed with SIGKILL mid-stream and restarted ends with every event
//! applied exactly once.
//!
//! The parent test writes an `EmbeddedLog`, then runs this same test binary as a worker
//! process (`worker_process`, selected with `--exact` and told its directory through
//! `KEEL_PROJECTION_WORKER_DIR`) that projects the log into a persisted view with small
//! batches, printing how many events it applied as it goes. The parent kills it with SIGKILL
//! once it has made progress (at a different amount each time, so kills land before, during
//! and after batch commits), restarts it, and after a few kills lets one catch up. Each view entry counts the events applied to it, so an
//! event applied twice, or lost, shows as a count that differs from the log's.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel::EmbeddedLog;
use keel::log::{EventLog, LogBackend, LogRecord, aggregate_key, partition_for};
use keel_projections::{ProjectionRunner, replay};
use support::{Account, AccountEvent, Balances, all_records, envelope};

const WORKER_ENV: &str = "KEEL_PROJECTION_WORKER_DIR";
const PARTITIONS: u32 = 4;
const ACCOUNTS: u64 = 40;
const EVENTS: u64 = 12_000;

fn log_dir(root: &Path) -> PathBuf {
    root.join("log")
}

fn view_dir(root: &Path) -> PathBuf {
    root.join("views")
}

/// The worker: projects the log under `$KEEL_PROJECTION_WORKER_DIR` until caught up, then
/// exits. Does nothing when run as an ordinary test.
#[test]
fn worker_process() {
    let Some(root) = std::env::var_os(WORKER_ENV).map(PathBuf::from) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let log = EmbeddedLog::open(log_dir(&root), PARTITIONS).expect("open log");
        let backend: Arc<dyn LogBackend> = Arc::new(log);
        let view = ProjectionRunner::new(backend.clone())
            .batch_size(32)
            .start_persisted(Balances::new(), view_dir(&root))
            .await
            .expect("start");
        let progress = {
            let view = view.clone();
            tokio::spawn(async move {
                loop {
                    println!("APPLIED {}", view.status().applied);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        };
        view.caught_up(Duration::from_secs(120))
            .await
            .expect("caught up");
        progress.abort();
        println!("CAUGHT-UP applied={}", view.status().applied);
        view.shutdown(Duration::from_secs(10))
            .await
            .expect("shutdown");
        backend.close().await.expect("close");
    });
}

async fn write_log(root: &Path) {
    let log = EmbeddedLog::open(log_dir(root), PARTITIONS).expect("open log");
    let mut by_partition: HashMap<u32, Vec<LogRecord>> = HashMap::new();
    let mut seqs = HashMap::new();
    for i in 0..EVENTS {
        let id = format!("acc-{}", i % ACCOUNTS);
        let seq = seqs.entry(id.clone()).or_insert(0u64);
        *seq += 1;
        let amount = (i % 17) as i64 + 1;
        let key = aggregate_key("Account", &id);
        let partition = partition_for(&key, PARTITIONS);
        by_partition.entry(partition).or_default().push(LogRecord {
            key,
            value: envelope(&id, *seq, &AccountEvent::Deposited { amount }).encode(),
        });
    }
    for (partition, records) in by_partition {
        for chunk in records.chunks(1000) {
            log.append(partition, chunk.to_vec()).await.expect("append");
        }
    }
    log.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persisted_view_killed_mid_stream_applies_every_event_exactly_once() {
    let root = tempfile::tempdir().expect("tempdir");
    write_log(root.path()).await;
    let exe = std::env::current_exe().expect("test binary");

    let mut kills = 0;
    let mut finished = false;
    // Kill once this many events were applied in the worker's run (it resumes from its
    // checkpoint each time); then let one run finish.
    let kill_after = [300u64, 517, 733, 1021, 1250];
    for attempt in 0..=kill_after.len() {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "worker_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(WORKER_ENV, root.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn worker");
        let lines = {
            let stdout = child.stdout.take().expect("stdout");
            let (tx, rx) = std::sync::mpsc::channel::<String>();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stdout)
                    .lines()
                    .map_while(Result::ok)
                {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        };
        let target = kill_after.get(attempt).copied();
        let started = Instant::now();
        let mut output = Vec::new();
        let killed = loop {
            let reached = lines.try_iter().fold(false, |reached, line| {
                let applied = line
                    .strip_prefix("APPLIED ")
                    .and_then(|n| n.parse::<u64>().ok());
                output.push(line);
                reached || target.is_some_and(|t| applied.is_some_and(|a| a >= t))
            });
            if reached && child.try_wait().expect("try_wait").is_none() {
                // `Child::kill` sends SIGKILL on Unix: no destructor, no flush, no goodbye.
                child.kill().expect("kill");
                child.wait().expect("reap");
                break true;
            }
            if let Some(status) = child.try_wait().expect("try_wait") {
                // What it printed before it ended.
                std::thread::sleep(Duration::from_millis(50));
                output.extend(lines.try_iter());
                let mut stderr = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
                }
                let stdout = output.join("\n");
                assert!(status.success(), "worker failed: {stdout}\n{stderr}");
                assert!(
                    stdout.contains("CAUGHT-UP"),
                    "worker exited without catching up: {stdout}"
                );
                finished = true;
                break false;
            }
            assert!(started.elapsed() < Duration::from_secs(120), "worker hung");
            std::thread::sleep(Duration::from_millis(1));
        };
        if killed {
            kills += 1;
        }
        if finished {
            break;
        }
    }
    assert!(finished, "no worker ever caught up");
    assert!(
        kills >= 3,
        "the worker finished before it could be killed often enough ({kills})"
    );

    // Every event applied exactly once: the view equals a replay of the whole log.
    let log = EmbeddedLog::open(log_dir(root.path()), PARTITIONS).expect("reopen log");
    let records = all_records(&log).await;
    assert_eq!(records.len() as u64, EVENTS);
    let expected = replay(&Balances::new(), &records).expect("replay");
    let backend: Arc<dyn LogBackend> = Arc::new(log);
    let view = ProjectionRunner::new(backend.clone())
        .start_persisted(Balances::new(), view_dir(root.path()))
        .await
        .expect("reopen view");
    view.caught_up(Duration::from_secs(30))
        .await
        .expect("caught up");
    assert_eq!(
        view.status().applied,
        0,
        "the last worker had applied everything"
    );
    let actual: HashMap<_, _> = view.all().expect("all").into_iter().collect();
    let applied: u64 = actual.values().map(|b| b.events).sum();
    assert_eq!(
        applied, EVENTS,
        "events applied in total after {kills} kills"
    );
    assert_eq!(actual, expected);
    let _ = Account::default();
}
