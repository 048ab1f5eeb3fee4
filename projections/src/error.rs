//! [`ProjectionError`]: the one error enum of this crate. Each variant says what happened and,
//! through its name, what the caller can do about it.

use std::sync::Arc;
use std::time::Duration;

use keel::envelope::DecodeError;
use keel::log::Offset;
use keel::log::{Position, StorageError};

/// Why a projection or a query on its view failed.
///
/// Cheap to clone: a stopped projection reports the same error to every waiting query.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProjectionError {
    /// A poison event stopped the projection (policy [`PoisonPolicy::Stop`]): the event at
    /// `partition`/`offset` cannot be decoded or its handler failed. The view keeps serving
    /// what it had applied before it; fix the event or the code and restart.
    ///
    /// [`PoisonPolicy::Stop`]: crate::PoisonPolicy::Stop
    #[error(
        "projection {projection} stopped on a poison event at partition {partition}, offset {offset}: {reason}"
    )]
    Poisoned {
        /// The projection, `name@vN`.
        projection: String,
        /// The partition of the poison event.
        partition: u32,
        /// Its offset.
        offset: Offset,
        /// Why it could not be applied.
        reason: String,
    },
    /// The view did not reach `position` within the timeout. It may still: retry or wait longer.
    #[error("projection {projection} did not reach {position} within {waited:?}")]
    Timeout {
        /// The projection, `name@vN`.
        projection: String,
        /// The position waited for.
        position: Position,
        /// How long the caller waited.
        waited: Duration,
    },
    /// The events log failed (reading, or asking for its end offsets).
    #[error("log failed for projection {projection}: {source}")]
    Log {
        /// The projection, `name@vN`.
        projection: String,
        /// The failure.
        #[source]
        source: StorageError,
    },
    /// The store of a persisted view failed; the view's last committed batch is intact.
    #[error("view store {context}: {source}")]
    Store {
        /// What was being done, and where (file, table).
        context: String,
        /// The underlying failure.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// A stored view entry does not decode as the view's key or value type: the file was written
    /// by a projection with another shape. Bump the projection's version to rebuild it.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The projection could not start: its view store could not be read, or its actor could
    /// not be spawned.
    #[error("cannot start projection {projection}: {reason}")]
    Start {
        /// The projection, `name@vN`.
        projection: String,
        /// Why.
        reason: String,
    },
    /// The projection is no longer running (shut down, or its actor died).
    #[error("projection {0} is not running")]
    NotRunning(String),
    /// A setting or argument is out of range (a partition the log does not have, a zero batch).
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl ProjectionError {
    pub(crate) fn store(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        ProjectionError::Store {
            context: context.into(),
            source: Arc::new(source),
        }
    }
}
