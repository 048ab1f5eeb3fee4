//! Creating keel's topics with the admin API, and checking topics that already exist.
//!
//! keel never relies on broker-side auto-creation: a topic created by the first produce would
//! get the broker's default partition count, retention and no compaction. Every topic keel
//! needs is created with the settings it relies on, and an existing topic is checked for them:
//! a wrong partition count or a setting that would lose data (finite retention on the events,
//! no compaction on the snapshots) is refused with an error naming the topic and the setting.
//!
//! The replication factor is the configured one, or the brokers' default; once a new topic's
//! replicas are known, its `min.insync.replicas` is set to `min(2, replication factor)`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use super::KafkaConfig;
use crate::error::{Error, StorageError};

/// A setting an existing topic must have.
pub(super) enum Required {
    /// Nothing: the setting is only a good default for a new topic.
    Nothing,
    /// Exactly this value.
    Equals(&'static str),
    /// A number at least this large.
    AtLeast(u64),
}

/// One topic keel needs.
pub(super) struct TopicSpec {
    pub(super) name: String,
    pub(super) partitions: u32,
    /// `None`: the brokers' `default.replication.factor`.
    pub(super) replication_factor: Option<u16>,
    /// Settings the topic is created with, and must have when it exists: (name, value, why).
    pub(super) configs: Vec<(&'static str, String, Required, &'static str)>,
}

/// The brokers' answer for one topic.
struct Described {
    partitions: usize,
    replication_factor: usize,
}

/// Creates the topics that do not exist, sets their `min.insync.replicas`, and checks the
/// partition count and required settings of all of them.
pub(super) async fn ensure_topics(
    client_config: &ClientConfig,
    bootstrap: &str,
    topics: &[TopicSpec],
    timeout: Duration,
) -> Result<(), Error> {
    let admin: AdminClient<DefaultClientContext> = client_config.create().map_err(|e| {
        StorageError::io(format!("kafka {bootstrap}: creating the admin client"), e)
    })?;
    let options = AdminOptions::new()
        .request_timeout(Some(timeout))
        .operation_timeout(Some(timeout));
    let created = create_missing(&admin, bootstrap, topics, &options).await?;

    let admin = std::sync::Arc::new(admin);
    for topic in topics {
        let just_created = created.iter().any(|c| c == &topic.name);
        let described = await_metadata(&admin, bootstrap, topic, just_created, timeout).await?;
        let settings = describe(&admin, bootstrap, &topic.name, &options).await?;
        let min_isr = described.replication_factor.clamp(1, 2);
        if just_created {
            set_min_insync(&admin, bootstrap, topic, &settings, min_isr, &options).await?;
        } else {
            check_settings(bootstrap, topic, &settings)?;
            let current = settings
                .get("min.insync.replicas")
                .and_then(|v| v.parse::<usize>().ok());
            if current.is_some_and(|c| c < min_isr) {
                tracing::warn!(
                    topic = %topic.name,
                    bootstrap,
                    min_insync_replicas = current,
                    replication_factor = described.replication_factor,
                    "kafka topic has min.insync.replicas below min(2, replication factor): an \
                     acknowledged append may be on one broker only"
                );
            }
        }
    }
    Ok(())
}

/// Creates every topic of `topics` that does not exist yet; the names of those it created.
async fn create_missing(
    admin: &AdminClient<DefaultClientContext>,
    bootstrap: &str,
    topics: &[TopicSpec],
    options: &AdminOptions,
) -> Result<Vec<String>, Error> {
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            let replication = TopicReplication::Fixed(t.replication_factor.map_or(-1, i32::from));
            t.configs.iter().fold(
                NewTopic::new(&t.name, t.partitions as i32, replication),
                |topic, (k, v, _, _)| topic.set(k, v),
            )
        })
        .collect();
    let names = topics
        .iter()
        .map(|t| t.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let results = admin
        .create_topics(&new_topics, options)
        .await
        .map_err(|e| StorageError::io(format!("kafka {bootstrap}: creating topics {names}"), e))?;
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
    Ok(created)
}

/// Waits until `topic` shows up in metadata with all its partitions (a just-created topic can
/// take a moment, partitions possibly one by one) and checks its partition count.
async fn await_metadata(
    admin: &std::sync::Arc<AdminClient<DefaultClientContext>>,
    bootstrap: &str,
    topic: &TopicSpec,
    just_created: bool,
    timeout: Duration,
) -> Result<Described, Error> {
    let name = topic.name.clone();
    let expected = topic.partitions as usize;
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
                    .map(|t| Described {
                        partitions: t.partitions().len(),
                        replication_factor: t
                            .partitions()
                            .iter()
                            .map(|p| p.replicas().len())
                            .max()
                            .unwrap_or_default(),
                    }),
            )
        })
        .await
        .map_err(|e| StorageError::io(format!("kafka {bootstrap}: metadata of {name}"), e))?
        .map_err(|e| StorageError::io(format!("kafka {bootstrap}: metadata of {name}"), e))?;
        match found {
            Some(described) if described.partitions == expected => return Ok(described),
            Some(described) if !just_created || Instant::now() >= deadline => {
                return Err(Error::Config(format!(
                    "kafka {bootstrap}: topic {name} has {} partitions, but the log is \
                     configured for {expected}; partitions cannot change without moving \
                     aggregates, so use the topic's count or another topic prefix",
                    described.partitions
                )));
            }
            None if Instant::now() >= deadline => {
                return Err(StorageError::io(
                    format!("kafka {bootstrap}: topic {name}"),
                    std::io::Error::other(format!("not visible in metadata within {timeout:?}")),
                )
                .into());
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The current settings of topic `name` (name → value; unset values left out).
async fn describe(
    admin: &AdminClient<DefaultClientContext>,
    bootstrap: &str,
    name: &str,
    options: &AdminOptions,
) -> Result<HashMap<String, String>, Error> {
    let context = || format!("kafka {bootstrap}: describing the settings of topic {name}");
    let results = admin
        .describe_configs([&ResourceSpecifier::Topic(name)], options)
        .await
        .map_err(|e| StorageError::io(context(), e))?;
    let resource = results
        .into_iter()
        .next()
        .ok_or_else(|| StorageError::io(context(), std::io::Error::other("no answer")))?
        .map_err(|e| StorageError::io(context(), e))?;
    Ok(resource
        .entries
        .into_iter()
        .filter_map(|entry| Some((entry.name, entry.value?)))
        .collect())
}

/// Refuses an existing topic whose settings would lose data or break keel.
fn check_settings(
    bootstrap: &str,
    topic: &TopicSpec,
    settings: &HashMap<String, String>,
) -> Result<(), Error> {
    for (key, wanted, required, why) in &topic.configs {
        let actual = settings.get(*key).map(String::as_str);
        let ok = match required {
            Required::Nothing => true,
            Required::Equals(value) => actual == Some(*value),
            Required::AtLeast(min) => actual
                .and_then(|a| a.parse::<u64>().ok())
                .is_some_and(|a| a >= *min),
        };
        if !ok {
            let need = match required {
                Required::Nothing => continue,
                Required::Equals(value) => format!("{key}={value}"),
                Required::AtLeast(min) => format!("{key} of at least {min}"),
            };
            return Err(Error::Config(format!(
                "kafka {bootstrap}: topic {} has {key}={}, but {why}, so keel needs {need} \
                 (change it with `kafka-configs.sh --bootstrap-server {bootstrap} --alter \
                 --entity-type topics --entity-name {} --add-config {key}={wanted}`, or use \
                 another topic prefix)",
                topic.name,
                actual.unwrap_or("(unset)"),
                topic.name,
            )));
        }
    }
    Ok(())
}

/// Sets `min.insync.replicas` on a topic keel just created, unless it already has that value
/// (the brokers' default). AlterConfigs replaces a topic's whole dynamic configuration, so the
/// request repeats every setting the topic was created with.
async fn set_min_insync(
    admin: &AdminClient<DefaultClientContext>,
    bootstrap: &str,
    topic: &TopicSpec,
    settings: &HashMap<String, String>,
    min_isr: usize,
    options: &AdminOptions,
) -> Result<(), Error> {
    let wanted = min_isr.to_string();
    if settings.get("min.insync.replicas") == Some(&wanted) {
        return Ok(());
    }
    let alter = topic.configs.iter().fold(
        AlterConfig::new(ResourceSpecifier::Topic(&topic.name)).set("min.insync.replicas", &wanted),
        |alter, (k, v, _, _)| alter.set(k, v),
    );
    let context = || {
        format!(
            "kafka {bootstrap}: setting min.insync.replicas={wanted} on topic {}",
            topic.name
        )
    };
    let results = admin
        .alter_configs([&alter], options)
        .await
        .map_err(|e| StorageError::io(context(), e))?;
    for result in results {
        result.map_err(|(_, code)| {
            StorageError::io(context(), rdkafka::error::KafkaError::AdminOp(code))
        })?;
    }
    tracing::info!(topic = %topic.name, bootstrap, min_insync_replicas = min_isr, "set kafka topic min.insync.replicas");
    Ok(())
}

/// Room for the record batch framing and key around the largest snapshot.
pub(super) const SNAPSHOT_FRAMING_BYTES: usize = 64 << 10;

/// The largest record (batch) keel's producers send and its snapshots topic accepts.
pub(super) fn max_message_bytes(config: &KafkaConfig) -> usize {
    config.max_snapshot_bytes + SNAPSHOT_FRAMING_BYTES
}

/// The topics keel needs, with the settings it creates them with and relies on.
pub(super) fn topic_specs(config: &KafkaConfig, events: &str, snapshots: &str) -> Vec<TopicSpec> {
    use Required::{AtLeast, Equals, Nothing};
    // Compaction only runs on closed segments: hourly segments keep a first snapshot load
    // from reading a week of superseded snapshots.
    let compacted = |why: &'static str| {
        vec![
            (
                "cleanup.policy",
                "compact".to_owned(),
                Equals("compact"),
                why,
            ),
            ("segment.ms", "3600000".to_owned(), Nothing, ""),
            ("min.cleanable.dirty.ratio", "0.1".to_owned(), Nothing, ""),
        ]
    };
    let mut snapshot_configs = compacted(
        "a snapshot stands for every event before the recovery checkpoint and must never \
         expire",
    );
    let max_message = max_message_bytes(config);
    snapshot_configs.push((
        "max.message.bytes",
        max_message.to_string(),
        AtLeast(max_message as u64),
        "snapshots up to KafkaConfig::max_snapshot_bytes must fit",
    ));
    let forever = "keel keeps every event forever (aggregates are rebuilt from them)";
    vec![
        TopicSpec {
            name: events.to_owned(),
            partitions: config.partitions,
            replication_factor: config.replication_factor,
            configs: vec![
                (
                    "cleanup.policy",
                    "delete".to_owned(),
                    Equals("delete"),
                    forever,
                ),
                ("retention.ms", "-1".to_owned(), Equals("-1"), forever),
                ("retention.bytes", "-1".to_owned(), Equals("-1"), forever),
            ],
        },
        TopicSpec {
            name: snapshots.to_owned(),
            partitions: config.partitions,
            replication_factor: config.replication_factor,
            configs: snapshot_configs,
        },
    ]
}
