//! Sends commands to a keel runtime on an `EmbeddedLog` from many tasks until killed, printing
//! `ACK <command-id> <aggregate-id> <seq>` for every acknowledged command, as soon as it is
//! acknowledged. Used by the SIGKILL crash test.
//!
//! Usage: keel-crash-commands DIR [TASKS]

use std::io::Write;
use std::sync::Arc;

use keel::{EmbeddedLog, Runtime, SendOptions};
use keel_tests::tally::Tally;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: keel-crash-commands DIR [TASKS]");
        std::process::exit(2);
    };
    let tasks: usize = args.next().and_then(|t| t.parse().ok()).unwrap_or(32);
    let log = match EmbeddedLog::open(&dir, 4) {
        Ok(log) => Arc::new(log),
        Err(e) => {
            eprintln!("cannot open {dir}: {e}");
            std::process::exit(1);
        }
    };
    let runtime = match Runtime::builder()
        .backend(log)
        .snapshots(keel::config::SnapshotPolicy {
            every_events: 7,
            ..Default::default()
        })
        .max_live_actors(8)
        .start()
        .await
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start: {e}");
            std::process::exit(1);
        }
    };
    let tallies = runtime.aggregate::<Tally>();
    let run = std::process::id();
    let workers: Vec<_> = (0..tasks)
        .map(|t| {
            let tallies = tallies.clone();
            tokio::spawn(async move {
                for n in 0u64.. {
                    let aggregate = format!("t{}", (t as u64 * 7 + n) % 40);
                    let command_id = format!("{run}-{t}-{n}");
                    match tallies
                        .send_with(&aggregate, 1, SendOptions::with_id(command_id.clone()))
                        .await
                    {
                        Ok(done) => {
                            let line = format!("ACK {command_id} {aggregate} {}\n", done.seq);
                            let mut out = std::io::stdout().lock();
                            let _ = out.write_all(line.as_bytes());
                            let _ = out.flush();
                        }
                        Err(e) => eprintln!("command {command_id} failed: {e}"),
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
}
