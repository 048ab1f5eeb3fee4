//! [`KafkaConfig`]: where the broker is, what the topics are called, and how the clients
//! behave. A consuming builder; every setter documents its default.

use std::time::Duration;

use crate::error::Error;

/// The default [`KafkaConfig::max_snapshot_bytes`].
pub(crate) const DEFAULT_MAX_SNAPSHOT_BYTES: usize = 8 << 20;
/// The largest [`KafkaConfig::max_snapshot_bytes`]: well below librdkafka's 1e9 ceiling of
/// `message.max.bytes`, and what a broker can hold in one request without trouble.
const MAX_SNAPSHOT_BYTES_LIMIT: usize = 256 << 20;

/// The configuration of a [`KafkaLog`](crate::KafkaLog).
///
/// ```no_run
/// # async fn demo() -> Result<(), keel::Error> {
/// use std::time::Duration;
/// let log = keel::KafkaConfig::new("127.0.0.1:9092")
///     .app_id("inventory")
///     .partitions(12)
///     .linger(Duration::from_millis(2))
///     .open()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct KafkaConfig {
    pub(crate) bootstrap_servers: String,
    pub(crate) app_id: String,
    pub(crate) topic_prefix: Option<String>,
    pub(crate) partitions: u32,
    pub(crate) replication_factor: Option<u16>,
    pub(crate) max_snapshot_bytes: usize,
    pub(crate) linger: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) delivery_timeout: Duration,
    pub(crate) client_properties: Vec<(String, String)>,
    pub(crate) transactional: bool,
    pub(crate) commit_interval: Duration,
    pub(crate) transaction_timeout: Duration,
}

impl KafkaConfig {
    /// A configuration for the brokers at `bootstrap_servers` (`"host:port[,host:port…]"`),
    /// with every other setting at its default.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        KafkaConfig {
            bootstrap_servers: bootstrap_servers.into(),
            app_id: "keel".to_owned(),
            topic_prefix: None,
            partitions: 12,
            replication_factor: None,
            max_snapshot_bytes: DEFAULT_MAX_SNAPSHOT_BYTES,
            linger: Duration::from_millis(5),
            request_timeout: Duration::from_secs(10),
            delivery_timeout: Duration::from_secs(30),
            client_properties: Vec::new(),
            transactional: false,
            commit_interval: Duration::from_millis(5),
            transaction_timeout: Duration::from_secs(10),
        }
    }

    /// The application id. Instances with the same id share the topics and split their
    /// partitions; it is also the default topic prefix and the prefix of client ids.
    ///
    /// Default = `"keel"`.
    pub fn app_id(mut self, app_id: impl Into<String>) -> Self {
        self.app_id = app_id.into();
        self
    }

    /// The topic prefix: events go to `{prefix}.events`, snapshots to `{prefix}.snapshots`.
    ///
    /// Default = the app id.
    pub fn topic_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.topic_prefix = Some(prefix.into());
        self
    }

    /// The partition count of both topics. Fixed for the life of the topics: opening existing
    /// topics with a different count is an error, because it would move aggregates between
    /// partitions.
    ///
    /// Default = 12.
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions;
        self
    }

    /// The replication factor of topics created on open (existing topics keep theirs).
    /// Every topic keel creates gets `min.insync.replicas = min(2, replication factor)`, so
    /// with `acks=all` an acknowledged append is on at least two brokers whenever the topic
    /// has two replicas or more.
    ///
    /// Default = the brokers' `default.replication.factor`.
    pub fn replication_factor(mut self, factor: u16) -> Self {
        self.replication_factor = Some(factor);
        self
    }

    /// The largest snapshot (encoded envelope) the log stores. The snapshots topic is created
    /// with a matching `max.message.bytes` (an existing one must allow it), and the producer
    /// with a matching `message.max.bytes`. A larger snapshot is not written: saving it fails
    /// with [`StorageError::TooLarge`](crate::log::StorageError::TooLarge) naming this limit, and
    /// the aggregate goes on from its events.
    ///
    /// Default = 8 MiB.
    pub fn max_snapshot_bytes(mut self, bytes: usize) -> Self {
        self.max_snapshot_bytes = bytes;
        self
    }

    /// How long the producer waits to fill a batch before sending it (`linger.ms`): the
    /// group-commit window. Appends from many aggregates in this window share one request.
    ///
    /// Default = 5 ms.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// How long one request to the broker (a fetch of metadata or offsets, a topic creation,
    /// an offset commit, a produce request) may take before it fails.
    ///
    /// Default = 10 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long an append may take in total, retries included, before it fails
    /// (`delivery.timeout.ms`). While the broker is unreachable, appends wait this long.
    ///
    /// Default = 30 s.
    pub fn delivery_timeout(mut self, timeout: Duration) -> Self {
        self.delivery_timeout = timeout;
        self
    }

    /// Sets a librdkafka property on every client keel creates (for security settings and
    /// the like). Properties keel relies on (idempotence, `acks`, offsets handling) are set
    /// after these and win.
    ///
    /// Default = none.
    pub fn client_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.client_properties.push((key.into(), value.into()));
        self
    }

    /// The transactional (fencing) mode. The log writes through one transactional producer,
    /// and every append (events and snapshots) is answered once the transaction holding it
    /// committed; every read is `read_committed`. A stale owner of a partition (a "zombie":
    /// an instance that lost its group session in a long pause) is fenced, and its later
    /// appends fail with [`StorageError::Fenced`](crate::log::StorageError::Fenced) instead of
    /// reaching the log:
    /// - with partition ownership ([`KafkaOwnership`](crate::KafkaOwnership)) by the consumer
    ///   group (KIP-447): each transaction carries the group's metadata, which the group
    ///   coordinator refuses once the group has moved on, and a partition's new owner waits
    ///   until every transaction of the old owner that touched it has ended. The
    ///   transactional id is `"{app_id}-{endpoint}"`;
    /// - without ownership, by the transactional id `app_id`: a second log opened with the
    ///   same app id fences the first.
    ///
    /// Checkpoints stay outside the transactions.
    ///
    /// Costs: an append waits for the commit interval ([`KafkaConfig::commit_interval`]) and
    /// a commit round trip, and offsets are no longer dense (each commit leaves a marker
    /// record that readers skip).
    ///
    /// Default = `false` (one idempotent producer; no fencing).
    pub fn transactional(mut self, transactional: bool) -> Self {
        self.transactional = transactional;
        self
    }

    /// In the transactional mode, how long a transaction stays open for more
    /// appends after its first one: the group-commit window. Every append in the window is
    /// answered after the one commit.
    ///
    /// Default = 5 ms.
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval;
        self
    }

    /// In the transactional mode, how long a transaction may stay open before the broker
    /// aborts it (`transaction.timeout.ms`). It bounds how long a crashed or frozen
    /// instance's open transaction holds up the partitions it touched: readers wait at its
    /// first record, and a new owner waits for it to end before it recovers. In this mode an
    /// append's delivery timeout is at most this long. It must be at least the request
    /// timeout, and the broker's `transaction.max.timeout.ms` (15 minutes by default) at
    /// least this.
    ///
    /// Default = 10 s.
    pub fn transaction_timeout(mut self, timeout: Duration) -> Self {
        self.transaction_timeout = timeout;
        self
    }

    /// Opens the log: connects, creates missing topics, checks existing ones.
    pub async fn open(self) -> Result<super::KafkaLog, Error> {
        super::KafkaLog::open(self).await
    }

    pub(crate) fn prefix(&self) -> &str {
        self.topic_prefix.as_deref().unwrap_or(&self.app_id)
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(Error::Config("kafka bootstrap servers are empty".into()));
        }
        if self.partitions == 0 || self.partitions > i32::MAX as u32 {
            return Err(Error::Config(format!(
                "kafka partition count {} is out of range",
                self.partitions
            )));
        }
        if self.replication_factor == Some(0) {
            return Err(Error::Config(
                "kafka replication factor must be at least 1".into(),
            ));
        }
        if self.max_snapshot_bytes == 0 || self.max_snapshot_bytes > MAX_SNAPSHOT_BYTES_LIMIT {
            return Err(Error::Config(format!(
                "kafka max_snapshot_bytes {} is out of range (1 to {MAX_SNAPSHOT_BYTES_LIMIT})",
                self.max_snapshot_bytes
            )));
        }
        if self.transactional && self.transaction_timeout < self.request_timeout {
            return Err(Error::Config(format!(
                "kafka transaction_timeout {:?} is shorter than request_timeout {:?}: a \
                 transaction must outlast one request",
                self.transaction_timeout, self.request_timeout
            )));
        }
        if self.prefix().is_empty() {
            return Err(Error::Config("kafka topic prefix is empty".into()));
        }
        Ok(())
    }
}
