//! Opening the log the demo runs on: the embedded log in `--data-dir` by default, Kafka with
//! `--kafka`; and starting the runtime on it.
//!
//! On Kafka the simulation joins the consumer group of the app id `inventory`: every demo
//! process on the same brokers serves the partitions the group assigns it, so two processes
//! share the stores' stock items between them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use keel::log::LogBackend;
use keel::{EmbeddedLog, Runtime};

use super::options::Storage;

/// The application id on Kafka: the topics' prefix and the consumer group's name.
#[cfg(feature = "kafka")]
const APP_ID: &str = "inventory";

/// How long a demo process on Kafka waits for the consumer group to assign it partitions.
#[cfg(feature = "kafka")]
const ASSIGNMENT_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The opened log and where the persisted views go.
pub(crate) struct Opened {
    pub(crate) log: Arc<dyn LogBackend>,
    pub(crate) views_dir: PathBuf,
    /// The same log as `log` when it is on Kafka, for joining the consumer group.
    #[cfg(feature = "kafka")]
    kafka: Option<Arc<keel::KafkaLog>>,
}

/// This process's share of the partitions: all of them on the embedded log; on Kafka, those
/// the consumer group assigns (until the runtime shuts down and leaves the group).
pub(crate) struct Membership {
    /// Whether partitions move between processes (Kafka) or all are always owned here.
    pub(crate) shared: bool,
}

impl Opened {
    /// Starts the runtime that sends the simulation's commands. On Kafka it joins the
    /// consumer group and returns once the group assigned it at least one partition.
    pub(crate) async fn start_runtime(&self) -> anyhow::Result<(Runtime, Membership)> {
        #[cfg(feature = "kafka")]
        if let Some(kafka) = &self.kafka {
            return start_in_group(kafka.clone()).await;
        }
        let runtime = Runtime::builder()
            .backend(self.log.clone())
            .register::<inventory::StockItem>()
            .start()
            .await
            .with_context(|| format!("starting the runtime on {}", self.log.describe()))?;
        Ok((runtime, Membership { shared: false }))
    }
}

/// Starts a runtime that owns no partition, joins the group, and waits (bounded) for the
/// group's assignment.
#[cfg(feature = "kafka")]
async fn start_in_group(log: Arc<keel::KafkaLog>) -> anyhow::Result<(Runtime, Membership)> {
    let describe = log.describe();
    // No other process connects to a demo; the endpoint only tells instances apart in
    // NotOwner errors and the broker's client list.
    let endpoint = format!("inventory-pid-{}", std::process::id());
    let runtime = Runtime::builder()
        .ownership(keel::KafkaOwnership::new(log.clone(), endpoint))
        .register::<inventory::StockItem>()
        .start()
        .await
        .with_context(|| {
            format!("starting the runtime on {describe} in the consumer group {APP_ID:?}")
        })?;
    let deadline = tokio::time::Instant::now() + ASSIGNMENT_WAIT;
    while runtime.owned_partitions().is_empty() {
        if tokio::time::Instant::now() >= deadline {
            let _ = runtime.shutdown().await;
            bail!(
                "the consumer group {APP_ID:?} on {describe} assigned this process no partition \
                 within {ASSIGNMENT_WAIT:?} (are more demo processes running than there are \
                 partitions?)"
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Ok((runtime, Membership { shared: true }))
}

/// Opens the log of `storage`. Errors name the directory or the brokers.
pub(crate) async fn open(storage: &Storage) -> anyhow::Result<Opened> {
    let dir = &storage.data_dir;
    #[cfg(feature = "kafka")]
    let mut kafka = None;
    let log: Arc<dyn LogBackend> = match &storage.kafka {
        #[cfg(feature = "kafka")]
        Some(bootstrap) => {
            let log = open_kafka(bootstrap).await?;
            check_data_dir(dir)?;
            kafka = Some(log.clone());
            log
        }
        #[cfg(not(feature = "kafka"))]
        Some(bootstrap) => bail!(
            "Kafka backend not available in this build (--kafka {bootstrap}); \
             rebuild with the `kafka` feature (on by default)"
        ),
        None => {
            check_data_dir(dir)?;
            let log_dir = dir.join("log");
            // Opening reads the store's journal from disk: keep it off the async workers.
            let opened = tokio::task::spawn_blocking(move || EmbeddedLog::builder(log_dir).open())
                .await
                .context("opening the embedded log")?;
            Arc::new(
                opened
                    .with_context(|| format!("cannot open the data directory {}", dir.display()))?,
            )
        }
    };
    let views_dir = dir.join("views");
    Ok(Opened {
        log,
        views_dir,
        #[cfg(feature = "kafka")]
        kafka,
    })
}

/// Fails early, naming the path, when `--data-dir` cannot be a directory.
fn check_data_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => bail!(
            "--data-dir {}: the path exists and is not a directory",
            dir.display()
        ),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(dir)
            .with_context(|| format!("--data-dir {}: cannot create the directory", dir.display())),
        Err(e) => {
            Err(e).with_context(|| format!("--data-dir {}: cannot read the path", dir.display()))
        }
    }
}

#[cfg(feature = "kafka")]
async fn open_kafka(bootstrap: &str) -> anyhow::Result<Arc<keel::KafkaLog>> {
    let log = keel::KafkaConfig::new(bootstrap)
        .app_id(APP_ID)
        .open()
        .await
        .with_context(|| format!("cannot open the Kafka log at {bootstrap}"))?;
    Ok(Arc::new(log))
}

/// Every event in the log: the sum of the end offsets of all partitions, read from the log
/// itself (not counted by the caller). On Kafka an end offset is the partition's high
/// watermark, so the count includes what other processes appended.
pub(crate) async fn events_in_log(log: &dyn LogBackend) -> anyhow::Result<u64> {
    let mut total = 0;
    for partition in 0..log.partition_count() {
        total += log
            .end_offset(partition)
            .await
            .with_context(|| format!("reading the end of partition {partition}"))?;
    }
    Ok(total)
}
