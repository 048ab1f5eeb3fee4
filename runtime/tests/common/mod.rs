//! A small aggregate for the runtime's tests, and a log wrapper that can hold appends back.

#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::sync::Arc;

use futures::future::BoxFuture;
use keel::Aggregate;
use keel::log::StorageError;
use keel::log::testing::Intercept;
use keel::log::{EventLog, LogBackend, LogRecord, MemoryLog, Offset};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub balance: i64,
    pub operations: u64,
}

#[derive(Debug, Clone)]
pub enum AccountCommand {
    Deposit(i64),
    Withdraw(i64),
    /// Emits `n` deposits of 1 in one command.
    Burst(u32),
    /// Panics inside `handle`.
    Explode,
    /// Changes nothing.
    Noop,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AccountEvent {
    Deposited { amount: i64 },
    Withdrawn { amount: i64 },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AccountError {
    #[error("amount must be positive, got {0}")]
    NotPositive(i64),
    #[error("insufficient funds: balance {balance}, requested {requested}")]
    Insufficient { balance: i64, requested: i64 },
}

impl Aggregate for Account {
    const TYPE: &'static str = "Account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;

    fn handle(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Deposit(amount) if amount <= 0 => {
                Err(AccountError::NotPositive(amount))
            }
            AccountCommand::Deposit(amount) => Ok(vec![AccountEvent::Deposited { amount }]),
            AccountCommand::Withdraw(amount) if amount <= 0 => {
                Err(AccountError::NotPositive(amount))
            }
            AccountCommand::Withdraw(amount) if amount > self.balance => {
                Err(AccountError::Insufficient {
                    balance: self.balance,
                    requested: amount,
                })
            }
            AccountCommand::Withdraw(amount) => Ok(vec![AccountEvent::Withdrawn { amount }]),
            AccountCommand::Burst(n) => Ok((0..n)
                .map(|_| AccountEvent::Deposited { amount: 1 })
                .collect()),
            AccountCommand::Explode => panic!("boom"),
            AccountCommand::Noop => Ok(vec![]),
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Deposited { amount } => self.balance += amount,
            AccountEvent::Withdrawn { amount } => self.balance -= amount,
        }
        self.operations += 1;
    }
}

/// `Account` under a new state version: its old snapshots no longer decode as its state.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct AccountV2(pub Account);

impl Aggregate for AccountV2 {
    const TYPE: &'static str = "Account";
    const STATE_VERSION: u32 = 2;
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;
    fn handle(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        self.0.handle(command)
    }
    fn apply(&mut self, event: &AccountEvent) {
        self.0.apply(event)
    }
}

/// Folds every event of `key` in the log into a fresh state: the reference for replay checks.
pub fn replay_from_log(log: &MemoryLog, key: &str) -> (Account, u64) {
    let mut state = Account::default();
    let mut seq = 0;
    for record in log.all_records().iter().filter(|r| r.key == key) {
        let env = keel::envelope::EventEnvelope::decode(&record.value, &record.position).unwrap();
        assert_eq!(env.seq, seq + 1, "sequence gap or duplicate in {key}");
        seq = env.seq;
        let event = env
            .decode_event::<Account>(&keel::upcast::Upcasters::new(), &record.position)
            .unwrap();
        state.apply(&event);
    }
    (state, seq)
}

/// A backend that delegates to a [`MemoryLog`] but makes every append wait for a permit, so
/// tests can hold commands in flight deterministically.
pub struct GatedLog {
    pub inner: Arc<MemoryLog>,
    pub gate: Arc<Semaphore>,
    /// Appends called so far (each call is one unit: one batch of records).
    pub appends: std::sync::atomic::AtomicUsize,
}

impl GatedLog {
    pub fn new(partitions: u32) -> Self {
        GatedLog {
            inner: Arc::new(MemoryLog::new(partitions)),
            gate: Arc::new(Semaphore::new(0)),
            appends: std::sync::atomic::AtomicUsize::new(0),
        }
    }
}

impl Intercept for GatedLog {
    fn inner(&self) -> &dyn LogBackend {
        &*self.inner
    }
    fn append(
        &self,
        partition: u32,
        records: Vec<LogRecord>,
    ) -> BoxFuture<'_, Result<Offset, StorageError>> {
        self.appends
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            self.gate.acquire().await.unwrap().forget();
            self.inner.append(partition, records).await
        })
    }
    fn describe(&self) -> String {
        "gated memory".into()
    }
}

/// Runs `future` to completion on a fresh two-worker tokio runtime: for property tests,
/// whose cases are plain functions.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(future)
}
