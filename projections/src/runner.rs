//! [`ProjectionRunner`]: the settings of projections over a log backend; starts them and hands
//! back their views.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keel::log::LogBackend;
use ractor::Actor;

use crate::actor::{ActorArgs, ProjectionActor, Settings};
use crate::error::ProjectionError;
use crate::projection::{PoisonPolicy, Projection};
use crate::query::ViewHandle;
use crate::status::Shared;
use crate::view::memory::MemoryStore;
use crate::view::persisted::PersistedStore;
use crate::view::store::ViewStore;

/// The entry point of the read side: the settings of the projections to start over one log,
/// and the way to start them.
///
/// Cheap to clone; every projection started from it gets the settings it had then.
#[derive(Clone)]
pub struct ProjectionRunner {
    backend: Arc<dyn LogBackend>,
    settings: Settings,
}

impl std::fmt::Debug for ProjectionRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionRunner")
            .field("backend", &self.backend.describe())
            .field("settings", &self.settings)
            .finish()
    }
}

impl ProjectionRunner {
    /// Projections reading the events of `backend`, with the default settings.
    pub fn new(backend: Arc<dyn LogBackend>) -> Self {
        ProjectionRunner {
            backend,
            settings: Settings {
                batch_size: 1024,
                prefetch: 2,
                poll_wait: Duration::from_millis(500),
                poison_policy: PoisonPolicy::Stop,
                lag_interval: Duration::from_secs(1),
            },
        }
    }

    /// The most events read, and applied (one atomic write for a persisted view), at once.
    /// Default = 1024.
    pub fn batch_size(mut self, events: usize) -> Self {
        self.settings.batch_size = events.max(1);
        self
    }

    /// Batches read ahead per partition while the projection is applying. Default = 2.
    pub fn prefetch(mut self, batches: usize) -> Self {
        self.settings.prefetch = batches.max(1);
        self
    }

    /// How long a read waits for new events before asking again. New events wake it at once;
    /// this only bounds an idle poll. Default = 500 ms.
    pub fn poll_wait(mut self, wait: Duration) -> Self {
        self.settings.poll_wait = wait;
        self
    }

    /// What to do with a poison event. Default = [`PoisonPolicy::Stop`].
    pub fn poison_policy(mut self, policy: PoisonPolicy) -> Self {
        self.settings.poison_policy = policy;
        self
    }

    /// How often the lag is measured for the status and the `keel_projection_lag` gauge.
    /// Default = 1 s.
    pub fn lag_interval(mut self, interval: Duration) -> Self {
        self.settings.lag_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Starts `projection` into an in-memory view, rebuilt from the start of the log, and
    /// returns its view. The view fills in the background: wait on
    /// [`ViewHandle::caught_up`] or [`ViewHandle::wait_for`] before relying on it.
    pub async fn start_in_memory<P: Projection>(
        &self,
        projection: P,
    ) -> Result<ViewHandle<P::Key, P::Value>, ProjectionError> {
        spawn(self, projection, MemoryStore::new()).await
    }

    /// Starts `projection` into a view persisted under `dir` (directory `{name}-v{version}`)
    /// and returns its view. It resumes from its checkpoints; every event is applied exactly
    /// once, across crashes.
    pub async fn start_persisted<P: Projection>(
        &self,
        projection: P,
        dir: impl Into<PathBuf>,
    ) -> Result<ViewHandle<P::Key, P::Value>, ProjectionError> {
        let dir = dir.into();
        let (name, version) = (projection.name().to_string(), projection.version());
        let store = tokio::task::spawn_blocking(move || PersistedStore::open(&dir, &name, version))
            .await
            .map_err(|e| ProjectionError::store("opening the view store", e))??;
        spawn(self, projection, store).await
    }
}

async fn spawn<P, S>(
    runner: &ProjectionRunner,
    projection: P,
    store: S,
) -> Result<ViewHandle<P::Key, P::Value>, ProjectionError>
where
    P: Projection,
    S: ViewStore<P::Key, P::Value>,
{
    let shared = Arc::new(Shared::new(
        projection.name(),
        projection.version(),
        runner.backend.clone(),
    ));
    let store = Arc::new(store);
    let reader = store.reader();
    let args = ActorArgs {
        projection: Arc::new(projection),
        store,
        shared: shared.clone(),
        settings: runner.settings.clone(),
    };
    let (actor, _join) = Actor::spawn(None, ProjectionActor::<P, S>::new(), args)
        .await
        .map_err(|e| ProjectionError::Start {
            projection: shared.label.clone(),
            reason: e.to_string(),
        })?;
    Ok(ViewHandle::new(reader, shared, actor))
}
