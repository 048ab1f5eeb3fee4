//! Creating keel's topics with the admin API, and checking topics that already exist.
//!
//! keel never relies on broker-side auto-creation: a topic created by the first produce would
//! get the broker's default partition count and no compaction.

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::error::{Error, StorageError};

/// One topic keel needs.
pub(super) struct TopicSpec<'a> {
    pub(super) name: &'a str,
    pub(super) partitions: u32,
    pub(super) replication_factor: u16,
    pub(super) configs: &'a [(&'a str, &'a str)],
}

/// Creates the topics that do not exist and checks the partition count of all of them.
pub(super) async fn ensure_topics(
    client_config: &ClientConfig,
    bootstrap: &str,
    topics: &[TopicSpec<'_>],
    timeout: Duration,
) -> Result<(), Error> {
    let admin: AdminClient<DefaultClientContext> = client_config.create().map_err(|e| {
        StorageError::io(format!("kafka {bootstrap}: creating the admin client"), e)
    })?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            t.configs.iter().fold(
                NewTopic::new(
                    t.name,
                    t.partitions as i32,
                    TopicReplication::Fixed(i32::from(t.replication_factor)),
                ),
                |topic, (k, v)| topic.set(k, v),
            )
        })
        .collect();
    let options = AdminOptions::new()
        .request_timeout(Some(timeout))
        .operation_timeout(Some(timeout));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .map_err(|e| {
            StorageError::io(
                format!(
                    "kafka {bootstrap}: creating topics {}",
                    names(topics).join(", ")
                ),
                e,
            )
        })?;
    let mut created = Vec::new();
    for result in results {
        match result {
            Ok(name) => {
                tracing::info!(topic = %name, bootstrap, "created kafka topic");
                created.push(name);
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(StorageError::io(
                    format!("kafka {bootstrap}: creating topic {name}"),
                    rdkafka::error::KafkaError::AdminOp(code),
                )
                .into());
            }
        }
    }

    // A just-created topic can take a moment to show up in metadata, partitions possibly one
    // by one; an existing one shows up at once. Either way its partition count must be the
    // configured one.
    let admin = std::sync::Arc::new(admin);
    for topic in topics {
        let name = topic.name.to_owned();
        let expected = topic.partitions as usize;
        let just_created = created.iter().any(|c| c == topic.name);
        let deadline = Instant::now() + timeout;
        loop {
            let admin = admin.clone();
            let lookup = name.clone();
            let found = tokio::task::spawn_blocking(move || {
                let metadata = admin.inner().fetch_metadata(Some(&lookup), timeout)?;
                Ok::<_, rdkafka::error::KafkaError>(
                    metadata
                        .topics()
                        .iter()
                        .find(|t| t.name() == lookup && t.error().is_none())
                        .map(|t| t.partitions().len()),
                )
            })
            .await
            .map_err(|e| StorageError::io(format!("kafka {bootstrap}: metadata of {name}"), e))?
            .map_err(|e| StorageError::io(format!("kafka {bootstrap}: metadata of {name}"), e))?;
            match found {
                Some(count) if count == expected => break,
                Some(count) if !just_created || Instant::now() >= deadline => {
                    return Err(Error::Config(format!(
                        "kafka {bootstrap}: topic {name} has {count} partitions, but the log is \
                         configured for {expected}; partitions cannot change without moving \
                         aggregates, so use the topic's count or another topic prefix"
                    )));
                }
                None if Instant::now() >= deadline => {
                    return Err(StorageError::io(
                        format!("kafka {bootstrap}: topic {name}"),
                        std::io::Error::other(format!(
                            "not visible in metadata within {timeout:?}"
                        )),
                    )
                    .into());
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
    Ok(())
}

fn names<'a>(topics: &'a [TopicSpec<'_>]) -> Vec<&'a str> {
    topics.iter().map(|t| t.name).collect()
}
