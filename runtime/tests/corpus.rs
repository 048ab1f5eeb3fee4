//! A committed corpus of encoded envelopes: decoding it must keep working, and encoding must
//! keep producing the same bytes, so a change of the stored format cannot pass unnoticed.
//!
//! To add a file after an intended format change (with upcasters or a new state version for
//! the old one), run with `KEEL_WRITE_CORPUS=1` once and commit what it wrote.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;

use common::{Account, AccountEvent};
use keel::envelope::{EventEnvelope, SnapshotEnvelope};
use keel::upcast::Upcasters;

fn corpus(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(name)
}

fn check(name: &str, encoded: &[u8]) -> Vec<u8> {
    let path = corpus(name);
    if std::env::var("KEEL_WRITE_CORPUS").is_ok_and(|v| v == "1") && !path.exists() {
        std::fs::write(&path, encoded).unwrap();
    }
    let stored = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (KEEL_WRITE_CORPUS=1 writes it)", path.display()));
    assert_eq!(
        stored,
        encoded,
        "{}: the encoding changed; old data must still decode (add an upcaster or bump the state version) before changing the corpus",
        path.display()
    );
    stored
}

#[test]
fn event_envelope_v1_decodes_and_encodes_to_the_same_bytes() {
    let event = AccountEvent::Deposited { amount: 42 };
    let envelope = EventEnvelope {
        aggregate_type: "Account".into(),
        aggregate_id: "acc-7".into(),
        seq: 3,
        event_type: "Deposited".into(),
        event_version: 1,
        command_id: Some("cmd-9".into()),
        timestamp_ms: 1_764_000_000_000,
        payload: rmp_serde::to_vec_named(&event).unwrap(),
    };
    let stored = check("event-envelope-v1.msgpack", &envelope.encode());
    let decoded = EventEnvelope::decode(&stored, &"corpus").unwrap();
    assert_eq!(decoded, envelope);
    let typed = decoded
        .decode_event::<Account>(&Upcasters::new(), &"corpus")
        .unwrap();
    assert_eq!(typed, event);
}

#[test]
fn snapshot_envelope_v1_decodes_and_encodes_to_the_same_bytes() {
    let state = Account {
        balance: 120,
        operations: 4,
    };
    let snapshot = SnapshotEnvelope {
        seq: 4,
        covered_offset: Some(17),
        state_version: 1,
        state: rmp_serde::to_vec_named(&state).unwrap(),
        recent_commands: rmp_serde::to_vec_named(&Vec::<()>::new()).unwrap(),
    };
    let stored = check("snapshot-envelope-v1.msgpack", &snapshot.encode());
    let decoded = SnapshotEnvelope::decode(&stored, &"corpus").unwrap();
    assert_eq!(decoded, snapshot);
    let restored: Account = rmp_serde::from_slice(&decoded.state).unwrap();
    assert_eq!(restored, state);
}
