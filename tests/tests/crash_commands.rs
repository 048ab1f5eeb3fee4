//! A child process runs commands against a runtime on an `EmbeddedLog` and is killed with
//! SIGKILL mid-load. After reopening, every command it acknowledged is in the log exactly
//! once, every aggregate's sequence is dense, and a new runtime serves the right totals.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;

use keel::envelope::EventEnvelope;
use keel::log::EventLog;
use keel::{EmbeddedLog, Runtime};
use keel_tests::tally::Tally;

const KILL_AFTER_ACKS: usize = 1500;

fn run_and_kill(dir: &std::path::Path) -> Vec<(String, String, u64)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel-crash-commands"))
        .arg(dir)
        .arg("32")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut acks = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read child output");
        let mut parts = line.split_whitespace();
        if parts.next() != Some("ACK") {
            continue;
        }
        let command_id = parts.next().expect("command id").to_string();
        let aggregate = parts.next().expect("aggregate").to_string();
        let seq = parts.next().expect("seq").parse().expect("seq number");
        acks.push((command_id, aggregate, seq));
        if acks.len() == KILL_AFTER_ACKS {
            child.kill().expect("SIGKILL the child"); // Child::kill is SIGKILL on Unix
            break;
        }
    }
    child.wait().expect("reap the child");
    acks
}

async fn read_all(log: &EmbeddedLog) -> Vec<(u32, u64, EventEnvelope)> {
    let mut all = Vec::new();
    for partition in 0..log.partition_count() {
        let end = log.end_offset(partition).await.expect("end offset");
        let mut from = 0;
        while from < end {
            let batch = log
                .read(partition, from, 1000, std::time::Duration::ZERO)
                .await
                .expect("read");
            assert!(
                !batch.is_empty(),
                "partition {partition} ends early at {from}"
            );
            for r in &batch {
                let env = EventEnvelope::decode(&r.value, &r.position).expect("decodable");
                all.push((partition, r.position.offset, env));
            }
            from = batch.last().map(|r| r.position.offset + 1).unwrap_or(end);
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_command_survives_sigkill_exactly_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Two crashes in a row: the second run starts from the first one's crashed state.
    let mut acks = run_and_kill(dir.path());
    acks.extend(run_and_kill(dir.path()));
    assert_eq!(acks.len(), 2 * KILL_AFTER_ACKS);

    let log = Arc::new(EmbeddedLog::open(dir.path(), 4).expect("reopen after SIGKILL"));
    let events = read_all(&log).await;
    let mut by_command: HashMap<&str, usize> = HashMap::new();
    let mut seqs: HashMap<String, Vec<u64>> = HashMap::new();
    for (_, _, env) in &events {
        if let Some(id) = &env.command_id {
            *by_command.entry(id.as_str()).or_default() += 1;
        }
        seqs.entry(env.aggregate_id.clone())
            .or_default()
            .push(env.seq);
    }
    for (command_id, aggregate, seq) in &acks {
        assert_eq!(
            by_command.get(command_id.as_str()),
            Some(&1),
            "acknowledged command {command_id} ({aggregate} seq {seq}) must be in the log once"
        );
    }
    for (aggregate, seqs) in &seqs {
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(
            seqs, &expected,
            "{aggregate}: sequence numbers dense and in order"
        );
    }

    // A runtime on the crashed store serves every aggregate's full history.
    let runtime = Runtime::builder()
        .backend(log.clone())
        .start()
        .await
        .expect("restart");
    let tallies = runtime.aggregate::<Tally>();
    for (aggregate, seqs) in &seqs {
        let total = tallies.query(aggregate, |t| t.total).await.expect("query");
        assert_eq!(total, seqs.len() as u64, "{aggregate}");
    }
    let next = tallies
        .send("t0", 1)
        .await
        .expect("a command after recovery");
    assert_eq!(next.seq, seqs["t0"].len() as u64 + 1);
    runtime.shutdown().await.expect("shutdown");
}
