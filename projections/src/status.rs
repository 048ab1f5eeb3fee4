//! [`ProjectionStatus`]: what a projection has done so far, published by its actor after every
//! batch and read by query handles without a round trip.

use std::sync::Arc;

use keel::log::Position;
use keel::log::{LogBackend, Offset};
use tokio::sync::watch;

use crate::error::ProjectionError;

/// Whether a projection is applying events.
#[derive(Debug, Clone)]
pub enum ProjectionState {
    /// Reading and applying events (catching up, or following the log's end).
    Running,
    /// Stopped by an error: a poison event under [`PoisonPolicy::Stop`](crate::PoisonPolicy),
    /// or a failed view store. The view still answers queries with what it had applied.
    Failed(ProjectionError),
    /// Shut down (every handle was dropped, or `stop` was called).
    Stopped,
}

/// A snapshot of a projection's progress.
#[derive(Debug, Clone)]
pub struct ProjectionStatus {
    /// The projection's name.
    pub name: String,
    /// Its version.
    pub version: u32,
    /// Whether it is running.
    pub state: ProjectionState,
    /// Per partition, the offset of the next event to apply: every event below it is applied
    /// (or was passed over).
    pub next_offsets: Vec<Offset>,
    /// Events applied since this process started the projection.
    pub applied: u64,
    /// Poison events skipped under [`PoisonPolicy::SkipAndCount`](crate::PoisonPolicy).
    pub poison_skipped: u64,
    /// The position of the last poison event skipped, if any.
    pub last_poison: Option<Position>,
    /// Events behind the end of the log, as last measured (every `lag_interval`).
    pub lag: Option<u64>,
}

impl ProjectionStatus {
    /// Whether the event at `position` has been applied (or passed over).
    pub fn has_reached(&self, position: Position) -> bool {
        self.next_offsets
            .get(position.partition as usize)
            .is_some_and(|next| *next > position.offset)
    }
}

/// What the actor, its reading tasks and the query handles share.
pub(crate) struct Shared {
    pub(crate) name: String,
    pub(crate) version: u32,
    /// `name@vN`, for errors, logs and metric labels.
    pub(crate) label: String,
    pub(crate) backend: Arc<dyn LogBackend>,
    pub(crate) status: watch::Sender<ProjectionStatus>,
}

impl Shared {
    pub(crate) fn new(name: &str, version: u32, backend: Arc<dyn LogBackend>) -> Self {
        let partitions = backend.partition_count() as usize;
        let status = ProjectionStatus {
            name: name.to_string(),
            version,
            state: ProjectionState::Running,
            next_offsets: vec![0; partitions],
            applied: 0,
            poison_skipped: 0,
            last_poison: None,
            lag: None,
        };
        Shared {
            name: name.to_string(),
            version,
            label: format!("{name}@v{version}"),
            backend,
            status: watch::channel(status).0,
        }
    }

    /// The events between each partition's next offset and its end.
    pub(crate) async fn measure_lag(&self) -> Result<u64, ProjectionError> {
        let next = self.status.borrow().next_offsets.clone();
        let mut lag = 0;
        for (partition, next) in next.iter().enumerate() {
            let end = self
                .backend
                .end_offset(partition as u32)
                .await
                .map_err(|source| ProjectionError::Log {
                    projection: self.label.clone(),
                    source,
                })?;
            lag += end.saturating_sub(*next);
        }
        Ok(lag)
    }
}
