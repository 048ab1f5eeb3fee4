//! A child process appends to an `EmbeddedLog` from many tasks and is killed with SIGKILL
//! mid-load. After reopening, every record it acknowledged is in the log exactly once at the
//! offset it was acknowledged with, and every partition's offsets are dense. Run twice on one
//! directory, so the second run also checks that offsets continue after a crash.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use keel::EmbeddedLog;
use keel::log::EventLog;

const PARTITIONS: u32 = 4;
/// Kill after this many acknowledged records, or after `LOAD_FOR`, whichever comes first.
const KILL_AFTER_ACKS: usize = 3000;
const LOAD_FOR: Duration = Duration::from_secs(3);

/// An acknowledged record: its partition, offset and key.
type Ack = (u32, u64, String);

/// Runs the writer on `dir`, SIGKILLs it mid-load, and returns every record it acknowledged.
fn run_and_kill(dir: &Path) -> Vec<Ack> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel-crash-writer"))
        .arg(dir)
        .arg(PARTITIONS.to_string())
        .arg("64")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the writer");
    let stdout = child.stdout.take().expect("writer stdout");
    let (lines, received) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });

    let mut acks = Vec::new();
    let started = Instant::now();
    let mut killed = false;
    loop {
        if !killed && (acks.len() >= KILL_AFTER_ACKS || started.elapsed() >= LOAD_FOR) {
            child.kill().expect("SIGKILL the writer"); // Child::kill is SIGKILL on Unix
            killed = true;
        }
        // After the kill, keep reading what the writer printed before it died: those records
        // were acknowledged too. The pipe closes when the process is gone.
        match received.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => acks.push(parse_ack(&line)),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait().expect("reap the writer");
    reader.join().expect("reader thread");
    assert!(
        status.code().is_none(),
        "the writer exited by itself ({status}) instead of being killed"
    );
    assert!(
        !acks.is_empty(),
        "the writer acknowledged nothing before the kill"
    );
    acks
}

fn parse_ack(line: &str) -> Ack {
    let mut parts = line.split_whitespace();
    assert_eq!(
        parts.next(),
        Some("ACK"),
        "unexpected writer output: {line}"
    );
    let partition = parts.next().and_then(|p| p.parse().ok());
    let offset = parts.next().and_then(|o| o.parse().ok());
    let key = parts.next();
    match (partition, offset, key) {
        (Some(partition), Some(offset), Some(key)) => (partition, offset, key.to_owned()),
        _ => panic!("malformed writer output: {line}"),
    }
}

/// Reopens `dir` and checks every acknowledged record is stored once, where it was acknowledged,
/// with dense offsets. Returns the total number of stored records.
fn check(dir: &Path, acks: &[Ack]) -> u64 {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let log = EmbeddedLog::open(dir, PARTITIONS).expect("reopen after SIGKILL");
        let mut stored: HashMap<String, Vec<(u32, u64)>> = HashMap::new();
        let mut total = 0;
        for partition in 0..PARTITIONS {
            let end = log.end_offset(partition).await.expect("end offset");
            let records = log
                .read(partition, 0, usize::MAX, Duration::ZERO)
                .await
                .expect("read back");
            for (expected, record) in (0u64..).zip(&records) {
                assert_eq!(
                    record.position.offset, expected,
                    "partition {partition}: offsets are not dense"
                );
                stored
                    .entry(record.key.clone())
                    .or_default()
                    .push((partition, expected));
            }
            assert_eq!(
                records.len() as u64,
                end,
                "partition {partition}: end offset"
            );
            total += end;
        }
        for (partition, offset, key) in acks {
            match stored.get(key).map(Vec::as_slice) {
                Some([(p, o)]) => assert_eq!(
                    (p, o),
                    (partition, offset),
                    "{key} was acknowledged at {partition}@{offset}"
                ),
                Some(many) => panic!("{key} is stored {} times: {many:?}", many.len()),
                None => panic!("acknowledged {key} ({partition}@{offset}) is missing"),
            }
        }
        total
    })
}

#[test]
fn every_acknowledged_record_survives_sigkill_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = run_and_kill(dir.path());
    let after_first = check(dir.path(), &first);
    assert!(after_first >= first.len() as u64);

    // A second crash on the same directory: offsets continue after the first run's records.
    let second = run_and_kill(dir.path());
    let after_second = check(dir.path(), &[first, second.clone()].concat());
    assert!(after_second >= after_first + second.len() as u64);
}
