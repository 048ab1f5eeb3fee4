//! keel at scale, through the public API on the embedded log, each case beside its baseline
//! from the same run (ratios: these machines are noisy). Every case runs in a child process
//! of its own, so its peak RSS is its own.
//!
//! ```text
//! cargo run --release -p keel-benches --bin scale            # every case, a markdown table
//! cargo run --release -p keel-benches --bin scale -- hot     # one case
//! ```
//!
//! Cases:
//! - `cap`: one command to each of 20 000 new aggregates from 256 senders, with
//!   `max_live_actors` 100 000 (the baseline) and 5 000.
//! - `hot`: 64 senders on one aggregate, against 64 senders on 64 aggregates.
//! - `million`: 1 000 000 distinct aggregates with a cap of 50 000; RSS retained per
//!   passivated aggregate.
//! - `live`: RSS per live aggregate (50 000 live), beyond its state.
//! - `reopen`: opening the log and the runtime after a clean shutdown, 10 000 against
//!   1 000 000 events.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keel::{EmbeddedLog, Runtime};
use keel_benches::Counter;

const PARTITIONS: u32 = 8;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("all") => {
            for case in ["cap", "hot", "live", "reopen", "million"] {
                run_child(&[case]);
            }
        }
        Some("cap") => {
            run_child(&["cap-run", "100000"]);
            run_child(&["cap-run", "5000"]);
        }
        Some("cap-run") => case_cap(parse(args.get(1))),
        Some("hot") => case_hot(),
        Some("live") => case_live(),
        Some("ractor") => case_ractor(),
        Some("reopen") => case_reopen(),
        Some("reopen-write") => {
            case_reopen_write(parse(args.get(1)) as u64, std::path::Path::new(&args[2]))
        }
        Some("open") => {
            let dir = std::path::PathBuf::from(&args[1]);
            let started = Instant::now();
            let log = open(&dir);
            eprintln!("opened {} in {:?}", dir.display(), started.elapsed());
            drop(log);
        }
        Some("reopen-open") => case_reopen_open(std::path::Path::new(&args[1])),
        Some("million") => case_million(),
        Some(other) => {
            eprintln!("unknown case {other:?}: cap, hot, live, reopen, million or all");
            std::process::exit(2);
        }
    }
}

fn parse(arg: Option<&String>) -> usize {
    arg.and_then(|a| a.parse().ok()).unwrap_or_else(|| {
        eprintln!("expected a number, got {arg:?}");
        std::process::exit(2)
    })
}

fn run_child(args: &[&str]) {
    let exe = std::env::current_exe().expect("the bench's own path");
    let status = Command::new(exe)
        .args(args)
        .status()
        .expect("starting a bench case");
    if !status.success() {
        eprintln!("case {args:?} failed: {status}");
        std::process::exit(1);
    }
}

fn tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A field of `/proc/self/status` in bytes (`VmRSS`, `VmHWM`).
fn proc_status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1024.0 * 1024.0))
}

async fn start(log: Arc<EmbeddedLog>, cap: usize) -> Runtime {
    Runtime::builder()
        .backend(log)
        .max_live_actors(cap)
        .max_in_flight(1 << 20)
        .idle_timeout(Duration::from_secs(3600))
        .register::<Counter>()
        .start()
        .await
        .expect("runtime")
}

fn open(dir: &std::path::Path) -> Arc<EmbeddedLog> {
    Arc::new(EmbeddedLog::open(dir, PARTITIONS).expect("embedded log"))
}

/// Sends one command to each of `ids` (`"{prefix}{i}"` for i in 0..count) from `senders`
/// tasks; returns commands/s.
async fn one_each(runtime: &Runtime, prefix: &str, count: u64, senders: u64) -> f64 {
    let handle = runtime.aggregate::<Counter>();
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..senders)
        .map(|_| {
            let handle = handle.clone();
            let next = next.clone();
            let prefix = prefix.to_owned();
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    handle
                        .send(&format!("{prefix}{i}"), ())
                        .await
                        .expect("command");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("sender");
    }
    count as f64 / started.elapsed().as_secs_f64()
}

/// `senders` tasks, sender `s` sending `per_sender` commands to aggregate `s % aggregates`;
/// returns commands/s.
async fn spread(runtime: &Runtime, aggregates: u64, senders: u64, per_sender: u64) -> f64 {
    let handle = runtime.aggregate::<Counter>();
    let started = Instant::now();
    let tasks: Vec<_> = (0..senders)
        .map(|s| {
            let handle = handle.clone();
            let id = format!("hot-{}", s % aggregates);
            tokio::spawn(async move {
                for _ in 0..per_sender {
                    handle.send(&id, ()).await.expect("command");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("sender");
    }
    (senders * per_sender) as f64 / started.elapsed().as_secs_f64()
}

fn case_cap(cap: usize) {
    let rt = tokio();
    let dir = tempfile::tempdir().expect("temp dir");
    rt.block_on(async {
        let runtime = start(open(dir.path()), cap).await;
        let rate = one_each(&runtime, "new-", 20_000, 256).await;
        let peak = proc_status_bytes("VmHWM");
        println!(
            "| cap: 20 000 new aggregates, max_live_actors {cap} | {rate:.0} commands/s | peak RSS {} |",
            mib(peak)
        );
        runtime.shutdown().await.expect("shutdown");
    });
}

fn case_hot() {
    let rt = tokio();
    let dir = tempfile::tempdir().expect("temp dir");
    rt.block_on(async {
        let runtime = start(open(dir.path()), 100_000).await;
        // Warm both shapes up (activations, the store), then measure each twice, alternating.
        spread(&runtime, 64, 64, 20).await;
        let (mut hot, mut wide) = (0.0f64, 0.0f64);
        for _ in 0..2 {
            wide = wide.max(spread(&runtime, 64, 64, 200).await);
            hot = hot.max(spread(&runtime, 1, 64, 200).await);
        }
        println!(
            "| hot: 64 senders on 1 aggregate | {hot:.0} commands/s | baseline 64 senders on 64 aggregates {wide:.0} commands/s | {:.0}% |",
            100.0 * hot / wide
        );
        runtime.shutdown().await.expect("shutdown");
    });
}

fn case_live() {
    let rt = tokio();
    let dir = tempfile::tempdir().expect("temp dir");
    rt.block_on(async {
        let runtime = start(open(dir.path()), 1_000_000).await;
        // The store's own memory first: the same number of events, to aggregates that stay
        // live, measured in two steps so the second step's RSS growth is per live aggregate.
        one_each(&runtime, "warm-", 10_000, 256).await;
        let before = proc_status_bytes("VmRSS");
        let count = 50_000;
        one_each(&runtime, "live-", count, 256).await;
        let after = proc_status_bytes("VmRSS");
        assert!(runtime.live_actors() >= count as usize, "all stay live");
        let per = after.saturating_sub(before) / count;
        println!(
            "| live: RSS per live aggregate ({count} live) | {per} bytes | state {} bytes |",
            std::mem::size_of::<Counter>()
        );
        runtime.shutdown().await.expect("shutdown");
    });
}

/// The floor under `live`: RSS per bare ractor actor holding a `u64`.
fn case_ractor() {
    struct Idle;
    impl ractor::Actor for Idle {
        type Msg = ();
        type State = u64;
        type Arguments = ();
        async fn pre_start(
            &self,
            _: ractor::ActorRef<()>,
            _: (),
        ) -> Result<u64, ractor::ActorProcessingErr> {
            Ok(0)
        }
    }
    let rt = tokio();
    rt.block_on(async {
        let count = 50_000u64;
        let before = proc_status_bytes("VmRSS");
        let mut actors = Vec::with_capacity(count as usize);
        for _ in 0..count {
            actors.push(ractor::Actor::spawn(None, Idle, ()).await.expect("actor").0);
        }
        let per = proc_status_bytes("VmRSS").saturating_sub(before) / count;
        println!("| ractor: RSS per idle actor ({count}) | {per} bytes |");
        for actor in actors {
            actor.stop(None);
        }
    });
}

/// Writes `events` events to a log in a new directory under `base` and shuts down cleanly;
/// then opens it again in a fresh process (as a restart does) and times the open, the
/// runtime's start and a first command.
fn case_reopen() {
    let base = tempfile::tempdir().expect("temp dir");
    let mut times = Vec::new();
    for events in [10_000u64, 1_000_000] {
        let dir = base.path().join(format!("log-{events}"));
        let dir_arg = dir.display().to_string();
        run_child(&["reopen-write", &events.to_string(), &dir_arg]);
        let out = Command::new(std::env::current_exe().expect("the bench's own path"))
            .args(["reopen-open", &dir_arg])
            .output()
            .expect("starting the reopen case");
        if !out.status.success() {
            eprintln!(
                "reopening {dir_arg} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::process::exit(1);
        }
        let seconds: f64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("the reopen time");
        times.push(seconds);
    }
    println!(
        "| reopen after a clean shutdown | 1 000 000 events {:.4} s | baseline 10 000 events {:.4} s | {:.2}× |",
        times[1],
        times[0],
        times[1] / times[0]
    );
}

fn case_reopen_write(events: u64, dir: &std::path::Path) {
    tokio().block_on(async {
        let runtime = start(open(dir), 100_000).await;
        // Few aggregates, many events each: the log's size, not the key count, grows.
        spread(&runtime, 1000, 1000, events / 1000).await;
        runtime.shutdown().await.expect("shutdown");
    });
}

fn case_reopen_open(dir: &std::path::Path) {
    let rt = tokio();
    let started = Instant::now();
    rt.block_on(async {
        let runtime = start(open(dir), 100_000).await;
        runtime
            .aggregate::<Counter>()
            .send("hot-1", ())
            .await
            .expect("first command after reopening");
        println!("{}", started.elapsed().as_secs_f64());
        runtime.shutdown().await.expect("shutdown");
    });
}

fn case_million() {
    let rt = tokio();
    let dir = tempfile::tempdir().expect("temp dir");
    rt.block_on(async {
        let cap = 50_000;
        let runtime = start(open(dir.path()), cap).await;
        // The live set first, then 950 000 more: every one of those passivates another, so
        // what the resident set grows by from there is what passivated aggregates keep plus
        // the store's bounded buffers and caches filling up; a second million, in the same
        // process, shows which of the two it is.
        let started = Instant::now();
        one_each(&runtime, "m-", cap as u64, 256).await;
        let full = proc_status_bytes("VmRSS");
        let rest = 1_000_000 - cap as u64;
        one_each(&runtime, "n-", rest, 256).await;
        let rate = 1_000_000.0 / started.elapsed().as_secs_f64();
        let peak = proc_status_bytes("VmHWM");
        let first_million = proc_status_bytes("VmRSS");
        let per_first = first_million.saturating_sub(full) / rest;
        one_each(&runtime, "o-", 1_000_000, 256).await;
        let second_million = proc_status_bytes("VmRSS");
        let per_second = second_million.saturating_sub(first_million) / 1_000_000;
        println!(
            "| million: 1 000 000 aggregates, cap {cap} | {rate:.0} commands/s | peak RSS {} | RSS growth per passivated aggregate: {per_first} bytes over the first million, {per_second} bytes over a second million |",
            mib(peak)
        );
        runtime.shutdown().await.expect("shutdown");
    });
}
