//! Regression tests of the runtime's correctness guarantees: ids that no backend can store,
//! shards that must not outlive a failed start, checkpoints, deduplication, panics and
//! settling.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{Account, AccountCommand as Cmd};
use futures::future::BoxFuture;
use keel::{
    CheckpointStore, CommandError, EmbeddedLog, Error, EventLog, LogBackend, LogRecord, MemoryLog,
    Offset, Runtime, SendOptions, SnapshotPolicy, SnapshotStore, StorageError, StoredRecord,
    aggregate_key, partition_for,
};

async fn start(log: Arc<MemoryLog>) -> Runtime {
    Runtime::builder().backend(log).start().await.unwrap()
}

#[tokio::test]
async fn an_id_no_backend_can_store_is_refused_before_anything_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(EmbeddedLog::open(dir.path(), 2).unwrap());
    let runtime = Runtime::builder()
        .backend(log.clone())
        .snapshots(SnapshotPolicy {
            every_events: 1,
            ..SnapshotPolicy::default()
        })
        .start()
        .await
        .unwrap();
    let accounts = runtime.aggregate::<Account>();
    let long = "x".repeat(70_000);
    for id in [long.as_str(), ""] {
        let err = accounts.send(id, Cmd::Deposit(1)).await.unwrap_err();
        assert!(matches!(err, CommandError::InvalidId { .. }), "{err}");
        assert!(!err.is_retryable());
        assert!(err.to_string().len() < 200, "the error carries the id: {err}");
        let err = accounts.query(id, |s| s.balance).await.unwrap_err();
        assert!(matches!(err, CommandError::InvalidId { .. }), "{err}");
    }
    let err = accounts
        .send_with("a", Cmd::Deposit(1), SendOptions::with_id(long.clone()))
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::InvalidId { .. }), "{err}");
    // Nothing reached the log, and the store still takes every other aggregate's writes.
    for partition in 0..2 {
        assert_eq!(log.end_offset(partition).await.unwrap(), 0);
    }
    assert_eq!(accounts.send("b", Cmd::Deposit(1)).await.unwrap().seq, 1);
    assert_eq!(accounts.send("b", Cmd::Deposit(1)).await.unwrap().seq, 2);
    // An id at the limit works end to end, snapshots included.
    let at_limit = "y".repeat(runtime.config().max_id_bytes);
    assert_eq!(accounts.send(&at_limit, Cmd::Deposit(1)).await.unwrap().seq, 1);
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn errors_about_a_long_id_show_only_its_prefix() {
    let log = Arc::new(MemoryLog::new(1));
    let runtime = start(log.clone()).await;
    let accounts = runtime.aggregate::<Account>();
    let long = "z".repeat(4000);
    accounts.send(&long, Cmd::Deposit(1)).await.unwrap();
    let err = accounts.send(&long, Cmd::Explode).await.unwrap_err();
    assert!(matches!(err, CommandError::Panicked { .. }), "{err}");
    assert!(err.to_string().len() < 300, "{err}");
    assert!(err.to_string().contains("(4008 bytes)"), "{err}");
    runtime.shutdown().await.unwrap();
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Slashed;

impl keel::Aggregate for Slashed {
    const TYPE: &'static str = "Sla/shed";
    type Command = ();
    type Event = common::AccountEvent;
    type Error = common::AccountError;
    fn handle(&self, _: ()) -> Result<Vec<common::AccountEvent>, common::AccountError> {
        Ok(vec![])
    }
    fn apply(&mut self, _: &common::AccountEvent) {}
}

#[tokio::test]
#[should_panic(expected = "invalid Aggregate::TYPE")]
async fn a_type_name_with_a_slash_is_refused_at_registration() {
    let runtime = start(Arc::new(MemoryLog::new(1))).await;
    let _ = runtime.aggregate::<Slashed>();
}
