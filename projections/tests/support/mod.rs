//! A small bank model for the projection tests: `Account` aggregates and projections over
//! them, plus helpers that append hand-built envelopes to a log.

#![allow(dead_code, unreachable_pub)]

use keel::Aggregate;
use keel::envelope::EventEnvelope;
use keel::log::Position;
use keel::log::{EventLog, LogRecord, aggregate_key, partition_for};
use keel_projections::{AggregateProjection, ApplyError, EventMeta, ViewMut};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub balance: i64,
}

#[derive(Debug)]
pub enum AccountCommand {
    Deposit(i64),
    Withdraw(i64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AccountEvent {
    Deposited { amount: i64 },
    Withdrawn { amount: i64 },
}

#[derive(Debug, thiserror::Error)]
#[error("insufficient funds")]
pub struct Insufficient;

impl Aggregate for Account {
    const TYPE: &'static str = "Account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = Insufficient;

    fn handle(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, Insufficient> {
        match command {
            AccountCommand::Deposit(amount) => Ok(vec![AccountEvent::Deposited { amount }]),
            AccountCommand::Withdraw(amount) if amount > self.balance => Err(Insufficient),
            AccountCommand::Withdraw(amount) => Ok(vec![AccountEvent::Withdrawn { amount }]),
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Deposited { amount } => self.balance += amount,
            AccountEvent::Withdrawn { amount } => self.balance -= amount,
        }
    }
}

/// One entry of the `balances` view.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Balance {
    pub balance: i64,
    /// Events applied to this entry: a second application of any event shows here.
    pub events: u64,
}

/// Balance per account id. `version` and `scale` let a test build a "v2" with other logic.
pub struct Balances {
    pub version: u32,
    pub scale: i64,
}

impl Balances {
    pub fn new() -> Self {
        Balances {
            version: 1,
            scale: 1,
        }
    }

    pub fn v2_scaled(scale: i64) -> Self {
        Balances { version: 2, scale }
    }
}

/// Adds `event`'s amount, times `scale`, to the entry of `key`.
fn add(view: &mut ViewMut<'_, String, Balance>, key: String, event: &AccountEvent, scale: i64) {
    let delta = match event {
        AccountEvent::Deposited { amount } => *amount,
        AccountEvent::Withdrawn { amount } => -amount,
    };
    view.upsert(key, |b| {
        b.balance += delta * scale;
        b.events += 1;
    });
}

impl AggregateProjection for Balances {
    type Aggregate = Account;
    type Key = String;
    type Value = Balance;
    type Error = ApplyError;

    fn name(&self) -> &str {
        "balances"
    }

    fn version(&self) -> u32 {
        self.version
    }

    fn apply(
        &self,
        view: &mut ViewMut<'_, String, Balance>,
        id: &str,
        event: &AccountEvent,
        _meta: &EventMeta<'_>,
    ) -> Result<(), ApplyError> {
        add(view, id.to_string(), event, self.scale);
        Ok(())
    }
}

/// One entry fed by every partition: the total of all deposits and withdrawals.
pub struct Totals;

impl AggregateProjection for Totals {
    type Aggregate = Account;
    type Key = String;
    type Value = Balance;
    type Error = ApplyError;

    fn name(&self) -> &str {
        "totals"
    }

    fn apply(
        &self,
        view: &mut ViewMut<'_, String, Balance>,
        _id: &str,
        event: &AccountEvent,
        _meta: &EventMeta<'_>,
    ) -> Result<(), ApplyError> {
        add(view, "all".to_string(), event, 1);
        Ok(())
    }
}

/// A projection that refuses deposits of 13 (an error) and panics on deposits of 666, after
/// first writing to the view — so a test can check that a failed event leaves no change.
pub struct Picky;

impl AggregateProjection for Picky {
    type Aggregate = Account;
    type Key = String;
    type Value = i64;
    type Error = ApplyError;

    fn name(&self) -> &str {
        "picky"
    }

    fn apply(
        &self,
        view: &mut ViewMut<'_, String, i64>,
        id: &str,
        event: &AccountEvent,
        _meta: &EventMeta<'_>,
    ) -> Result<(), ApplyError> {
        let AccountEvent::Deposited { amount } = *event else {
            return Ok(());
        };
        view.upsert(id.to_string(), |total| *total += amount);
        view.upsert("touched".to_string(), |n| *n += 1);
        match amount {
            13 => Err(ApplyError::Invalid("13 is unlucky".into())),
            666 => panic!("the beast"),
            _ => Ok(()),
        }
    }
}

/// The envelope of `event` as event `seq` of account `id`.
pub fn envelope(id: &str, seq: u64, event: &AccountEvent) -> EventEnvelope {
    let payload = rmp_serde::to_vec_named(event).expect("encode event");
    let event_type = match event {
        AccountEvent::Deposited { .. } => "Deposited",
        AccountEvent::Withdrawn { .. } => "Withdrawn",
    };
    EventEnvelope {
        aggregate_type: Account::TYPE.into(),
        aggregate_id: id.into(),
        seq,
        event_type: event_type.into(),
        event_version: 1,
        command_id: None,
        timestamp_ms: 1_000 * seq as i64,
        payload,
    }
}

/// Appends event `seq` of account `id` to its partition and returns its position.
pub async fn append(log: &dyn EventLog, id: &str, seq: u64, event: &AccountEvent) -> Position {
    let envelope = envelope(id, seq, event);
    let key = aggregate_key(Account::TYPE, id);
    let partition = partition_for(&key, log.partition_count());
    let offset = log
        .append(
            partition,
            vec![LogRecord {
                key,
                value: envelope.encode(),
            }],
        )
        .await
        .expect("append");
    Position { partition, offset }
}

/// Appends raw bytes that are no envelope, under account `id`'s key.
pub async fn append_garbage(log: &dyn EventLog, id: &str) -> Position {
    let key = aggregate_key(Account::TYPE, id);
    let partition = partition_for(&key, log.partition_count());
    let offset = log
        .append(
            partition,
            vec![LogRecord {
                key,
                value: vec![0xc1, 0xff, 0x00],
            }],
        )
        .await
        .expect("append");
    Position { partition, offset }
}

/// Every record of every partition of `log`, in partition then offset order.
pub async fn all_records(log: &dyn EventLog) -> Vec<keel::log::StoredRecord> {
    let mut all = Vec::new();
    for partition in 0..log.partition_count() {
        let end = log.end_offset(partition).await.expect("end offset");
        let mut from = 0;
        while from < end {
            let batch = log
                .read(partition, from, 4096, std::time::Duration::ZERO)
                .await
                .expect("read");
            from += batch.len() as u64;
            all.extend(batch);
        }
    }
    all
}
