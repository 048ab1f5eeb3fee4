//! Opening the log the demo runs on: the embedded log in `--data-dir` by default, Kafka with
//! `--kafka`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use keel::{EmbeddedLog, LogBackend};

use super::Storage;

/// The opened log and where the persisted views go.
pub(crate) struct Opened {
    pub(crate) log: Arc<dyn LogBackend>,
    pub(crate) views_dir: PathBuf,
}

/// Opens the log of `storage`. Errors name the directory or the brokers.
pub(crate) async fn open(storage: &Storage) -> anyhow::Result<Opened> {
    let dir = &storage.data_dir;
    let log: Arc<dyn LogBackend> = match &storage.kafka {
        Some(bootstrap) => {
            let log = open_kafka(bootstrap).await?;
            check_data_dir(dir)?;
            log
        }
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
    Ok(Opened { log, views_dir })
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
async fn open_kafka(bootstrap: &str) -> anyhow::Result<Arc<dyn LogBackend>> {
    let log = keel::KafkaConfig::new(bootstrap)
        .app_id("inventory")
        .open()
        .await
        .with_context(|| format!("cannot open the Kafka log at {bootstrap}"))?;
    Ok(Arc::new(log))
}

#[cfg(not(feature = "kafka"))]
async fn open_kafka(bootstrap: &str) -> anyhow::Result<Arc<dyn LogBackend>> {
    bail!(
        "Kafka backend not available in this build (--kafka {bootstrap}); \
         rebuild with `cargo run --release -p inventory --features kafka`"
    )
}

/// Every event in the log: the sum of the end offsets of all partitions, read from the log
/// itself (not counted by the caller).
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
