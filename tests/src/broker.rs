//! Finding the Kafka-protocol brokers the Kafka tests run against.
//!
//! `scripts/broker start` (sqlite tansu) exports `KEEL_KAFKA_BOOTSTRAP`;
//! `scripts/broker start --txn` (the transaction-capable tansu) exports
//! `KEEL_KAFKA_TXN_BOOTSTRAP`. When `KEEL_REQUIRE_KAFKA=1` is set, a missing or unreachable
//! broker fails the test; otherwise the test prints a notice and skips.

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The variable naming the durable (sqlite) broker.
pub const BOOTSTRAP_VAR: &str = "KEEL_KAFKA_BOOTSTRAP";
/// The variable naming the transaction-capable broker.
pub const TXN_BOOTSTRAP_VAR: &str = "KEEL_KAFKA_TXN_BOOTSTRAP";
/// Set to `1` to make a missing broker a test failure instead of a skip.
pub const REQUIRE_VAR: &str = "KEEL_REQUIRE_KAFKA";

/// The bootstrap address of the durable broker, or `None` (after printing why) when the test
/// should skip.
///
/// # Panics
/// When `KEEL_REQUIRE_KAFKA=1` and the broker is not configured or not reachable.
pub fn kafka_bootstrap(test: &str) -> Option<String> {
    bootstrap_from(BOOTSTRAP_VAR, test)
}

/// The bootstrap address of the transaction-capable broker, or `None` (after printing why)
/// when the test should skip.
///
/// # Panics
/// When `KEEL_REQUIRE_KAFKA=1` and the broker is not configured or not reachable.
pub fn kafka_txn_bootstrap(test: &str) -> Option<String> {
    bootstrap_from(TXN_BOOTSTRAP_VAR, test)
}

/// True when the test command asked for the Kafka tests to run (`KEEL_REQUIRE_KAFKA=1`).
pub fn kafka_required() -> bool {
    std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1")
}

fn bootstrap_from(var: &str, test: &str) -> Option<String> {
    let problem = match std::env::var(var) {
        Ok(bootstrap) if !bootstrap.trim().is_empty() => match reachable(&bootstrap) {
            Ok(()) => return Some(bootstrap),
            Err(e) => format!("{var}={bootstrap} is not reachable: {e}"),
        },
        _ => format!("{var} is not set (start a broker with `eval \"$(scripts/broker start)\"`)"),
    };
    if kafka_required() {
        panic!("{REQUIRE_VAR}=1 but {problem}");
    }
    eprintln!("skipping {test}: {problem}");
    None
}

/// Whether some address of the first bootstrap server accepts a TCP connection.
fn reachable(bootstrap: &str) -> Result<(), String> {
    let first = bootstrap.split(',').next().unwrap_or_default().trim();
    let addrs = first
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {first}: {e}"))?;
    let mut last = format!("{first} resolves to no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(last)
}

/// A topic prefix no other test (in this or an earlier run against the same broker) uses.
pub fn unique_topic_prefix(test: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let name: String = test
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!(
        "keel-test.{name}.{}-{nanos:x}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
