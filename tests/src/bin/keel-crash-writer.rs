//! Appends records to an `EmbeddedLog` from many tasks until killed, printing
//! `ACK <partition> <offset> <key>` for every acknowledged record as soon as its append
//! resolves. Used by the log-level SIGKILL crash test (`tests/embedded_crash.rs`).
//!
//! Usage: keel-crash-writer DIR PARTITIONS [TASKS]
//!
//! Every record key is unique (`{run}-{task}-{append}-{index}`, where `run` is taken from the
//! end offsets at start), so the test can check each acknowledged record is stored exactly once.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use keel::EmbeddedLog;
use keel::log::{EventLog, LogRecord, partition_for};

/// A guard against a parent that never kills us.
const MAX_RUN: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(dir), Some(partitions)) = (args.first(), args.get(1).and_then(|p| p.parse().ok()))
    else {
        eprintln!("usage: keel-crash-writer DIR PARTITIONS [TASKS]");
        std::process::exit(2);
    };
    let tasks: usize = args.get(2).and_then(|t| t.parse().ok()).unwrap_or(64);
    let log = match EmbeddedLog::open(dir, partitions) {
        Ok(log) => Arc::new(log),
        Err(e) => {
            eprintln!("cannot open {dir}: {e}");
            std::process::exit(1);
        }
    };
    let mut run = 0;
    for partition in 0..partitions {
        run += log.end_offset(partition).await.unwrap_or_default();
    }
    let mut handles = Vec::new();
    for task in 0..tasks {
        let log = log.clone();
        handles.push(tokio::spawn(async move {
            for append in 0u64.. {
                // Appends of 1 to 4 records, all with keys of one partition, as an aggregate's
                // command would produce.
                let stem = format!("{run}-{task}-{append}");
                let partition = partition_for(&stem, partitions);
                let records: Vec<LogRecord> = (0..1 + append % 4)
                    .map(|i| LogRecord {
                        key: format!("{stem}-{i}"),
                        value: vec![b'v'; 200],
                    })
                    .collect();
                let keys: Vec<String> = records.iter().map(|r| r.key.clone()).collect();
                match log.append(partition, records).await {
                    Ok(first) => {
                        let mut out = std::io::stdout().lock();
                        for (i, key) in keys.iter().enumerate() {
                            let _ = writeln!(out, "ACK {partition} {} {key}", first + i as u64);
                        }
                        let _ = out.flush();
                    }
                    Err(e) => {
                        eprintln!("append failed: {e}");
                        std::process::exit(1);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(MAX_RUN).await;
    eprintln!("keel-crash-writer: not killed within {MAX_RUN:?}, exiting");
    std::process::exit(3);
}
