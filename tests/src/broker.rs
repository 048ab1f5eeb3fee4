//! The Apache Kafka brokers the Kafka tests run against.
//!
//! `scripts/broker start` (as `scripts/test` runs it) exports `KEEL_KAFKA_BOOTSTRAP`, the
//! shared one-node cluster. When `KEEL_REQUIRE_KAFKA=1` is set, a missing or unreachable
//! broker fails the test; otherwise the test prints a notice and skips. Tests that kill
//! brokers or need three nodes or SASL start a [`Cluster`] of their own.

use std::collections::HashMap;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The variable naming the shared broker.
pub const BOOTSTRAP_VAR: &str = "KEEL_KAFKA_BOOTSTRAP";
/// Set to `1` to make a missing broker a test failure instead of a skip.
pub const REQUIRE_VAR: &str = "KEEL_REQUIRE_KAFKA";

/// The bootstrap address of the shared broker, or `None` (after printing why) when the test
/// should skip.
///
/// # Panics
/// When `KEEL_REQUIRE_KAFKA=1` and the broker is not configured or not reachable.
pub fn kafka_bootstrap(test: &str) -> Option<String> {
    bootstrap_from(BOOTSTRAP_VAR, test)
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

/// What a [`Cluster`] of its own is started with.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterSpec {
    /// Nodes (each broker and controller); 0 means 1.
    pub nodes: u32,
    /// The client listener requires SASL/SCRAM-SHA-512 and ACLs are enforced (see
    /// `scripts/broker`).
    pub sasl: bool,
}

/// An Apache Kafka cluster of a test's own, started, killed and restarted through
/// `scripts/broker` with a private state directory. Stopped (and its data deleted) when
/// dropped.
pub struct Cluster {
    dir: tempfile::TempDir,
    exports: HashMap<String, String>,
}

impl Cluster {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/broker")
    }

    async fn run(dir: &Path, args: &[String]) -> String {
        let output = tokio::process::Command::new(Self::script())
            .args(args)
            .env("KEEL_BROKER_DIR", dir)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .unwrap_or_else(|e| panic!("scripts/broker {args:?}: {e}"));
        assert!(
            output.status.success(),
            "scripts/broker {args:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Starts a cluster and waits until every node serves.
    ///
    /// # Panics
    /// When `scripts/broker start` fails.
    pub async fn start(spec: ClusterSpec) -> Cluster {
        let dir = tempfile::tempdir().expect("broker state dir");
        let mut args = vec![
            "start".to_owned(),
            "--nodes".to_owned(),
            spec.nodes.max(1).to_string(),
        ];
        if spec.sasl {
            args.push("--sasl".to_owned());
        }
        let out = Self::run(dir.path(), &args).await;
        let exports = out
            .lines()
            .filter_map(|line| line.strip_prefix("export "))
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
            .collect();
        Cluster { dir, exports }
    }

    /// A value `scripts/broker start` exported (`KEEL_KAFKA_BOOTSTRAP`,
    /// `KEEL_KAFKA_SASL_PASSWORD`, …).
    ///
    /// # Panics
    /// When it exported no such value.
    pub fn export(&self, name: &str) -> &str {
        self.exports.get(name).unwrap_or_else(|| {
            panic!(
                "scripts/broker start exported no {name}: {:?}",
                self.exports.keys()
            )
        })
    }

    /// The bootstrap servers (every node).
    pub fn bootstrap(&self) -> &str {
        self.exports
            .get("KEEL_KAFKA_BOOTSTRAP")
            .or_else(|| self.exports.get("KEEL_KAFKA_SASL_BOOTSTRAP"))
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// SIGKILLs node `node` (1-based; its `node.id` and broker id), or every node.
    pub async fn kill(&self, node: Option<u32>) {
        let mut args = vec!["kill".to_owned()];
        args.extend(node.map(|n| n.to_string()));
        Self::run(self.dir.path(), &args).await;
    }

    /// Starts node `node` again (or every stopped node) and waits until it serves.
    pub async fn restart(&self, node: Option<u32>) {
        let mut args = vec!["restart".to_owned()];
        args.extend(node.map(|n| n.to_string()));
        Self::run(self.dir.path(), &args).await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Its data is thrown away, so `stop` SIGKILLs the nodes and removes the state.
        let _ = std::process::Command::new(Self::script())
            .arg("stop")
            .env("KEEL_BROKER_DIR", self.dir.path())
            .stdin(std::process::Stdio::null())
            .output();
    }
}
