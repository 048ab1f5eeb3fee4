//! A client keel did not write reads keel's topics: `tests/interop/read_events.py`
//! (confluent-kafka and msgpack, nothing else) decodes the events and snapshots topics by
//! `docs/event-format.md` alone, and what it decoded must be exactly what keel reads back.
//!
//! Runs against the broker named by `KEEL_KAFKA_BOOTSTRAP` (see `scripts/broker`), with the
//! Python client `scripts/broker install` puts into `$KEEL_CACHE/python`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keel::config::SnapshotPolicy;
use keel::envelope::{EventEnvelope, SnapshotEnvelope};
use keel::log::{EventLog, LogBackend, LogRecord, SnapshotStore};
use keel::upcast::Upcasters;
use keel::{Aggregate, KafkaConfig, KafkaLog, Runtime, SendOptions};
use keel_tests::broker::{kafka_bootstrap, unique_topic_prefix};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const PARTITIONS: u32 = 3;

/// An account ledger: four event types with strings, unsigned and negative integers, floats,
/// options, lists and a unit variant in their payloads.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Ledger {
    owner: Option<String>,
    balance: i64,
    frozen: bool,
    entries: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum LedgerEvent {
    Opened {
        owner: String,
        currency: String,
        overdraft: Option<i64>,
    },
    Credited {
        amount: u64,
        memo: String,
        tags: Vec<String>,
    },
    Debited {
        amount: u64,
        balance_after: i64,
        share: f64,
    },
    Frozen,
}

#[derive(Debug)]
enum LedgerCommand {
    Open(String, Option<i64>),
    Credit(u64, String, Vec<String>),
    Debit(u64),
    Freeze,
}

#[derive(Debug, thiserror::Error)]
enum LedgerError {
    #[error("not open")]
    NotOpen,
    #[error("frozen")]
    Frozen,
}

impl Aggregate for Ledger {
    const TYPE: &'static str = "Ledger";
    type Command = LedgerCommand;
    type Event = LedgerEvent;
    type Error = LedgerError;

    fn handle(&self, command: LedgerCommand) -> Result<Vec<LedgerEvent>, LedgerError> {
        if self.frozen {
            return Err(LedgerError::Frozen);
        }
        if self.owner.is_none() && !matches!(command, LedgerCommand::Open(..)) {
            return Err(LedgerError::NotOpen);
        }
        Ok(match command {
            LedgerCommand::Open(owner, overdraft) => vec![LedgerEvent::Opened {
                owner,
                currency: "EUR".into(),
                overdraft,
            }],
            LedgerCommand::Credit(amount, memo, tags) => {
                vec![LedgerEvent::Credited { amount, memo, tags }]
            }
            LedgerCommand::Debit(amount) => vec![LedgerEvent::Debited {
                amount,
                balance_after: self.balance - amount as i64,
                share: amount as f64 / 3.0,
            }],
            // Two events from one command: both carry its command id.
            LedgerCommand::Freeze => vec![
                LedgerEvent::Credited {
                    amount: 0,
                    memo: "closing".into(),
                    tags: vec![],
                },
                LedgerEvent::Frozen,
            ],
        })
    }

    fn apply(&mut self, event: &LedgerEvent) {
        self.entries += 1;
        match event {
            LedgerEvent::Opened { owner, .. } => self.owner = Some(owner.clone()),
            LedgerEvent::Credited { amount, .. } => self.balance += *amount as i64,
            LedgerEvent::Debited { balance_after, .. } => self.balance = *balance_after,
            LedgerEvent::Frozen => self.frozen = true,
        }
    }
}

fn config(bootstrap: &str, prefix: &str) -> KafkaConfig {
    keel_tests::kafka_config(bootstrap, format!("{prefix}-app"), prefix, PARTITIONS)
}

/// The interop client's interpreter: `$KEEL_CACHE/python/bin/python`.
fn python() -> PathBuf {
    let cache = std::env::var_os("KEEL_CACHE")
        .filter(|c| !c.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/keel")
        });
    let python = cache.join("python/bin/python");
    assert!(
        python.is_file(),
        "{} does not exist: run `scripts/broker install` (with the same KEEL_CACHE) to install \
         the interop client of tests/interop/requirements.txt",
        python.display()
    );
    python
}

/// Runs `read_events.py`; its exit status, stdout and stderr.
async fn read_events(
    bootstrap: &str,
    topic: &str,
    snapshots: Option<&str>,
) -> (i32, String, String) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/read_events.py");
    let mut command = tokio::process::Command::new(python());
    command
        .arg(&script)
        .args([
            "--bootstrap",
            bootstrap,
            "--topic",
            topic,
            "--timeout",
            "60",
        ])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(snapshots) = snapshots {
        command.args(["--snapshots", snapshots]);
    }
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("read_events.py did not finish within 120 s")
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A msgpack value as JSON, by the conventions of `read_events.py`.
fn to_json(value: &rmpv::Value) -> Value {
    use rmpv::Value as M;
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    match value {
        M::Nil => Value::Null,
        M::Boolean(b) => json!(b),
        M::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => json!(u),
            (None, Some(i)) => json!(i),
            _ => unreachable!("a msgpack integer fits u64 or i64"),
        },
        M::F32(f) => json!(f64::from(*f)),
        M::F64(f) => json!(f),
        M::String(s) => json!(s.as_str().expect("UTF-8 string")),
        M::Binary(b) => json!({ "$bin": hex(b) }),
        M::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        M::Map(entries) if entries.iter().all(|(k, _)| k.is_str()) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| (k.as_str().unwrap().to_owned(), to_json(v)))
                .collect(),
        ),
        M::Map(entries) => json!({
            "$map": entries.iter().map(|(k, v)| json!([to_json(k), to_json(v)])).collect::<Vec<_>>()
        }),
        M::Ext(code, data) => json!({ "$ext": [code, hex(data)] }),
    }
}

fn msgpack_json(bytes: &[u8]) -> Value {
    to_json(&rmpv::decode::read_value(&mut &bytes[..]).expect("msgpack"))
}

/// Every record of the events topic as keel reads it, in the shape of the script's lines.
async fn keel_reads(log: &KafkaLog) -> (BTreeMap<(u32, u64), Value>, Vec<(u32, EventEnvelope)>) {
    let mut lines = BTreeMap::new();
    let mut envelopes = Vec::new();
    for partition in 0..PARTITIONS {
        let end = log.end_offset(partition).await.unwrap();
        let mut from = 0;
        while from < end {
            let batch = log
                .read(partition, from, 500, Duration::from_secs(5))
                .await
                .unwrap();
            let Some(last) = batch.last() else { break };
            from = last.position.offset + 1;
            for record in batch {
                let location = format!("partition {partition}, offset {}", record.position.offset);
                let envelope = EventEnvelope::decode(&record.value, &location).unwrap();
                assert_eq!(record.key, envelope.key());
                lines.insert(
                    (partition, record.position.offset),
                    json!({
                        "topic": log.events_topic(),
                        "partition": partition,
                        "offset": record.position.offset,
                        "key": record.key,
                        "kind": "event",
                        "aggregate_type": envelope.aggregate_type,
                        "aggregate_id": envelope.aggregate_id,
                        "seq": envelope.seq,
                        "event_type": envelope.event_type,
                        "event_version": envelope.event_version,
                        "command_id": envelope.command_id,
                        "timestamp_ms": envelope.timestamp_ms,
                        "payload": msgpack_json(&envelope.payload),
                    }),
                );
                envelopes.push((partition, envelope));
            }
        }
    }
    (lines, envelopes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_decodes_every_event_and_snapshot_as_keel_reads_them() {
    let Some(bootstrap) = kafka_bootstrap("kafka_interop::python_client") else {
        return;
    };
    let python = python(); // fail early, before any work, when the client is missing
    eprintln!("interop client: {}", python.display());
    let prefix = unique_topic_prefix("interop");
    let log = Arc::new(config(&bootstrap, &prefix).open().await.unwrap());
    let runtime = Runtime::builder()
        .backend(log.clone())
        .app_id(format!("{prefix}-app"))
        .snapshots(SnapshotPolicy {
            every_events: 4,
            ..SnapshotPolicy::default()
        })
        .command_timeout(Duration::from_secs(20))
        .start()
        .await
        .unwrap();
    let ledgers = runtime.aggregate::<Ledger>();

    // What keel acknowledged: (key, seq) → (event, command id).
    let mut acked: HashMap<(String, u64), (LedgerEvent, Option<String>)> = HashMap::new();
    let ids = ["acc-1", "acc-2", "acc-3", "acc-4", "zähler/ß-5", "acc 6"];
    let mut n = 0;
    for (i, id) in ids.iter().enumerate() {
        let overdraft = (i % 2 == 0).then_some(-(100 * i as i64));
        let mut commands = vec![
            (
                Some(format!("open-{i}")),
                LedgerCommand::Open(format!("owner {i}"), overdraft),
            ),
            (
                Some(format!("credit-{i}")),
                LedgerCommand::Credit(
                    40 + i as u64,
                    format!("salary ✓ {i}"),
                    vec!["a".into(), "b".into()],
                ),
            ),
            (None, LedgerCommand::Debit(7)),
            (Some(format!("debit-{i}")), LedgerCommand::Debit(100)),
            (
                None,
                LedgerCommand::Credit(u64::from(u32::MAX) + 1, String::new(), vec![]),
            ),
        ];
        if i % 3 == 0 {
            commands.push((Some(format!("freeze-{i}")), LedgerCommand::Freeze));
        }
        for (command_id, command) in commands {
            let options = command_id
                .clone()
                .map(SendOptions::with_id)
                .unwrap_or_default();
            let done = ledgers.send_with(id, command, options).await.unwrap();
            let first = done.seq + 1 - done.events.len() as u64;
            for (j, event) in done.events.into_iter().enumerate() {
                acked.insert(
                    (keel::log::aggregate_key("Ledger", id), first + j as u64),
                    (event, command_id.clone()),
                );
                n += 1;
            }
        }
    }
    // A repeated command id appends nothing; a rejected command appends nothing.
    let repeated = ledgers
        .send_with(
            "acc-2",
            LedgerCommand::Debit(100),
            SendOptions::with_id("debit-1"),
        )
        .await
        .unwrap();
    assert!(repeated.deduplicated);
    assert!(
        ledgers
            .send("acc-1", LedgerCommand::Debit(1))
            .await
            .is_err(),
        "acc-1 is frozen"
    );
    assert!(
        ledgers
            .send("unopened", LedgerCommand::Debit(1))
            .await
            .is_err()
    );
    // Shutdown snapshots every live aggregate.
    runtime.shutdown().await.unwrap();

    // Read back by another log instance, as a restarted application would.
    let reader = config(&bootstrap, &prefix).open().await.unwrap();
    let (expected, envelopes) = keel_reads(&reader).await;
    assert_eq!(
        envelopes.len(),
        n,
        "keel reads back every acknowledged event"
    );
    for (partition, envelope) in &envelopes {
        let key = envelope.key();
        assert_eq!(*partition, keel::log::partition_for(&key, PARTITIONS));
        let (event, command_id) = acked
            .get(&(key.clone(), envelope.seq))
            .unwrap_or_else(|| panic!("{key} seq {} was never acknowledged", envelope.seq));
        assert_eq!(
            &envelope.command_id, command_id,
            "{key} seq {}",
            envelope.seq
        );
        let decoded = envelope
            .decode_event::<Ledger>(&Upcasters::new(), &key)
            .unwrap();
        assert_eq!(&decoded, event, "{key} seq {}", envelope.seq);
    }

    let (status, stdout, stderr) = read_events(
        &bootstrap,
        reader.events_topic(),
        Some(reader.snapshots_topic()),
    )
    .await;
    assert_eq!(status, 0, "read_events.py failed:\n{stderr}");
    let mut decoded: BTreeMap<(u32, u64), Value> = BTreeMap::new();
    let mut snapshots: HashMap<String, (u64, Value)> = HashMap::new();
    for line in stdout.lines() {
        let value: Value = serde_json::from_str(line).unwrap_or_else(|e| {
            panic!("read_events.py printed a line that is not JSON ({e}): {line}")
        });
        let partition = value["partition"].as_u64().unwrap() as u32;
        let offset = value["offset"].as_u64().unwrap();
        match value["kind"].as_str() {
            Some("event") => {
                assert!(decoded.insert((partition, offset), value).is_none());
            }
            Some("snapshot") => {
                let key = value["key"].as_str().unwrap().to_owned();
                // The compacted topic may still hold older snapshots of a key: the last counts.
                if snapshots.get(&key).is_none_or(|(seen, _)| *seen < offset) {
                    snapshots.insert(key, (offset, value));
                }
            }
            other => panic!("read_events.py printed a record of kind {other:?}: {line}"),
        }
    }
    assert_eq!(
        decoded.len(),
        expected.len(),
        "read_events.py decoded {} events, keel reads {}:\n{stderr}",
        decoded.len(),
        expected.len()
    );
    // A unit variant is a bare string; a struct variant a map of one entry.
    let payloads: Vec<&Value> = decoded.values().map(|line| &line["payload"]).collect();
    assert!(payloads.contains(&&json!("Frozen")), "{payloads:?}");
    assert!(
        payloads
            .iter()
            .any(|p| p["Opened"]["overdraft"] == json!(-200)),
        "{payloads:?}"
    );
    for (at, keel) in &expected {
        let python = decoded
            .get(at)
            .unwrap_or_else(|| panic!("read_events.py did not print the event at {at:?}: {keel}"));
        assert_eq!(
            python, keel,
            "the event at partition {}, offset {}",
            at.0, at.1
        );
    }

    // Snapshots: the latest of every key is what keel loads.
    assert!(!snapshots.is_empty(), "the shutdown wrote snapshots");
    for id in ids {
        let key = keel::log::aggregate_key("Ledger", id);
        let partition = keel::log::partition_for(&key, PARTITIONS);
        let stored = reader
            .load_snapshot(partition, key.clone())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no snapshot of {key}"));
        let envelope = SnapshotEnvelope::decode(&stored, &key).unwrap();
        let (_, python) = snapshots
            .get(&key)
            .unwrap_or_else(|| panic!("read_events.py printed no snapshot of {key}"));
        let keel = json!({
            "seq": envelope.seq,
            "covered_offset": envelope.covered_offset,
            "state_version": envelope.state_version,
            "state": msgpack_json(&envelope.state),
            "recent_commands": msgpack_json(&envelope.recent_commands),
        });
        for field in [
            "seq",
            "covered_offset",
            "state_version",
            "state",
            "recent_commands",
        ] {
            assert_eq!(python[field], keel[field], "snapshot of {key}: {field}");
        }
        assert_eq!(python["partition"], json!(partition));
        let state: Ledger = rmp_serde::from_slice(&envelope.state).unwrap();
        assert!(state.owner.is_some(), "{key}: {state:?}");
    }
    eprintln!(
        "read_events.py decoded {} events and {} snapshots as keel reads them",
        decoded.len(),
        snapshots.len()
    );
    reader.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_refuses_a_record_that_is_not_an_event_envelope() {
    let Some(bootstrap) = kafka_bootstrap("kafka_interop::refuses_garbage") else {
        return;
    };
    let prefix = unique_topic_prefix("interop-garbage");
    let log = config(&bootstrap, &prefix).open().await.unwrap();
    let key = keel::log::aggregate_key("Ledger", "acc-1");
    let partition = keel::log::partition_for(&key, PARTITIONS);
    // A map with every field, but `seq` as a string.
    let mut value = Vec::new();
    rmpv::encode::write_value(
        &mut value,
        &rmpv::Value::Map(vec![
            ("aggregate_type".into(), "Ledger".into()),
            ("aggregate_id".into(), "acc-1".into()),
            ("seq".into(), "1".into()),
            ("event_type".into(), "Frozen".into()),
            ("event_version".into(), 1.into()),
            ("command_id".into(), rmpv::Value::Nil),
            ("timestamp_ms".into(), 0.into()),
            (
                "payload".into(),
                rmpv::Value::Binary(vec![0xa6, b'F', b'r', b'o', b'z', b'e', b'n']),
            ),
        ]),
    )
    .unwrap();
    let offset = log
        .append(partition, vec![LogRecord { key, value }])
        .await
        .unwrap();
    let (status, stdout, stderr) = read_events(&bootstrap, log.events_topic(), None).await;
    assert_eq!(
        status, 2,
        "read_events.py must refuse the record:\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stdout.is_empty(), "{stdout}");
    let expected = format!("partition {partition} offset {offset}");
    assert!(
        stderr.contains(&expected),
        "the message names {expected}: {stderr}"
    );
    assert!(
        stderr.contains("field seq is str"),
        "the message says what is wrong: {stderr}"
    );
    log.close().await.unwrap();
}
