//! Errors: [`StorageError`] from the log backends, [`DecodeError`] for bytes that do not
//! decode, and [`CommandError`] — what a caller of a command gets, with variants that say
//! what to do next.

use std::sync::Arc;

/// A failure of a log backend (the events log, the snapshot store or the checkpoint store).
///
/// Cheap to clone: one failed group commit answers every command in the batch with it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// The backend failed to read or write; `context` names what and where (file, topic,
    /// partition, offset).
    #[error("{context}: {source}")]
    Io {
        /// What was being done, and where.
        context: String,
        /// The underlying failure.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// Stored data is damaged; `context` names the file or partition and offset.
    #[error("corrupt data at {context}: {detail}")]
    Corrupt {
        /// Where the damage is.
        context: String,
        /// What is wrong with it.
        detail: String,
    },
    /// Another instance has taken over this partition; this instance must stop writing to it.
    #[error("fenced: partition {partition} is now owned by another instance ({detail})")]
    Fenced {
        /// The partition this instance lost.
        partition: u32,
        /// What the backend reported.
        detail: String,
    },
    /// The partition does not exist in this log (its partition count is `count`).
    #[error("{context}: no such partition {partition} (the log has {count})")]
    NoSuchPartition {
        /// The log (directory, brokers and topic).
        context: String,
        /// The partition asked for.
        partition: u32,
        /// The log's partition count.
        count: u32,
    },
    /// The backend was closed.
    #[error("log backend is closed ({0})")]
    Closed(String),
    /// A record is larger than the backend is configured to store; nothing was written.
    #[error("{context}: {size} bytes exceed the limit of {limit} bytes ({setting})")]
    TooLarge {
        /// What was being written, and where.
        context: String,
        /// The record's size in bytes.
        size: usize,
        /// The configured limit in bytes.
        limit: usize,
        /// The setting that sets the limit.
        setting: &'static str,
    },
}

impl StorageError {
    /// Wraps a backend error with the context it happened in.
    pub fn io(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StorageError::Io {
            context: context.into(),
            source: Arc::new(source),
        }
    }
}

/// Bytes from the log that cannot be turned back into an event or a snapshot.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot decode {what} at {location}: {reason}")]
pub struct DecodeError {
    /// What was being decoded ("event envelope", "event ShipmentReceived v3", "snapshot").
    pub what: String,
    /// Where it came from: aggregate key, partition and offset.
    pub location: String,
    /// Why it failed.
    pub reason: String,
}

/// Why a command did not commit. Each variant says what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error + 'static> {
    /// The aggregate rejected the command; nothing was appended. Do not retry as is.
    #[error("rejected: {0}")]
    Rejected(#[source] E),
    /// Too many commands in flight (globally, or queued for this aggregate). Back off and retry.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// No reply within the timeout. The command may or may not have committed: retry with the
    /// same command id to find out without appending twice.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(std::time::Duration, String),
    /// This instance does not own the aggregate's partition; send it to `owner`.
    #[error("partition {partition} is not owned by this instance (owner: {})", owner.as_deref().unwrap_or("unknown"))]
    NotOwner {
        /// The aggregate's partition.
        partition: u32,
        /// The owning instance's endpoint, when known.
        owner: Option<String>,
    },
    /// The log failed; nothing from this command is acknowledged. Retry with the same command id.
    #[error("storage failed for {aggregate}: {source}")]
    Storage {
        /// The aggregate key.
        aggregate: String,
        /// The failure.
        #[source]
        source: StorageError,
    },
    /// The aggregate's stored history cannot be decoded; it cannot serve commands until fixed.
    #[error("aggregate {aggregate} cannot be loaded: {source}")]
    Corrupt {
        /// The aggregate key.
        aggregate: String,
        /// What failed to decode, and where.
        #[source]
        source: DecodeError,
    },
    /// The aggregate's code panicked; the command failed and the actor was restarted.
    #[error("aggregate {aggregate} panicked: {message}")]
    Panicked {
        /// The aggregate key.
        aggregate: String,
        /// The panic message.
        message: String,
    },
    /// The aggregate's actor cannot take the command right now: it stopped without answering,
    /// is restarting after a failure, or could not be started. Nothing from this command is
    /// acknowledged. Retry with the same command id.
    #[error("aggregate {aggregate} is unavailable: {reason}")]
    Unavailable {
        /// The aggregate key.
        aggregate: String,
        /// What happened to its actor.
        reason: String,
    },
    /// The runtime is shutting down and takes no more commands.
    #[error("runtime is shutting down")]
    ShuttingDown,
    /// The aggregate id or the command id is not one keel can store (empty, or longer than
    /// [`RuntimeConfig::max_id_bytes`](crate::config::RuntimeConfig::max_id_bytes)); nothing was
    /// touched. Do not retry as is.
    #[error("invalid id: {reason}")]
    InvalidId {
        /// What is wrong with it (the id itself shortened).
        reason: String,
    },
}

impl<E: std::error::Error + 'static> CommandError<E> {
    /// True when retrying the same command (with the same command id) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            CommandError::Overloaded(_)
                | CommandError::Timeout(..)
                | CommandError::Storage { .. }
                | CommandError::Panicked { .. }
                | CommandError::Unavailable { .. }
        )
    }

    /// Where the aggregate lives, when the error is about ownership.
    pub fn not_owner(&self) -> Option<(u32, Option<&str>)> {
        match self {
            CommandError::NotOwner { partition, owner } => Some((*partition, owner.as_deref())),
            _ => None,
        }
    }
}

/// Errors of the runtime itself (start-up, recovery, shutdown).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The log failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Stored data did not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// An actor could not be started.
    #[error("cannot start {what}: {reason}")]
    Spawn {
        /// Which actor.
        what: String,
        /// Why.
        reason: String,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// How many characters of an id or key error messages and log lines show.
const SHOWN_CHARS: usize = 64;

/// `id` as error messages and log lines show it: whole when short, else its first
/// characters and its length, so a huge id never floods a log or an error.
pub(crate) fn short(id: &str) -> std::borrow::Cow<'_, str> {
    match id.char_indices().nth(SHOWN_CHARS) {
        None => std::borrow::Cow::Borrowed(id),
        Some((end, _)) => std::borrow::Cow::Owned(format!("{}…({} bytes)", &id[..end], id.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_id_is_shown_as_a_prefix_and_its_length() {
        assert_eq!(short("abc"), "abc");
        let long = "é".repeat(100);
        let shown = short(&long);
        assert_eq!(shown, format!("{}…(200 bytes)", "é".repeat(64)));
    }
}
