//! Shared pieces of keel's benches: a minimal aggregate whose decide/evolve cost is
//! negligible, so the benches measure the runtime and the log.

use serde::{Deserialize, Serialize};

/// A counter: every command emits one event of about 100 bytes.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Counter {
    /// Events applied.
    pub count: u64,
}

/// The counter's only event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CounterEvent {
    /// The counter moved by one; `note` pads the event to a realistic size.
    Incremented {
        /// Padding.
        note: String,
    },
}

/// The counter never rejects.
#[derive(Debug, thiserror::Error)]
#[error("never")]
pub struct Never;

impl keel::Aggregate for Counter {
    const TYPE: &'static str = "Counter";
    type Command = ();
    type Event = CounterEvent;
    type Error = Never;

    fn handle(&self, _: ()) -> Result<Vec<CounterEvent>, Never> {
        Ok(vec![CounterEvent::Incremented {
            note: "x".repeat(64),
        }])
    }

    fn apply(&mut self, _: &CounterEvent) {
        self.count += 1;
    }
}

/// The raw ractor ask baseline's actor: it answers each ask with its count.
pub struct Echo;

impl ractor::Actor for Echo {
    type Msg = ractor::RpcReplyPort<u64>;
    type State = u64;
    type Arguments = ();

    async fn pre_start(
        &self,
        _: ractor::ActorRef<Self::Msg>,
        _: (),
    ) -> Result<u64, ractor::ActorProcessingErr> {
        Ok(0)
    }

    async fn handle(
        &self,
        _: ractor::ActorRef<Self::Msg>,
        reply: Self::Msg,
        count: &mut u64,
    ) -> Result<(), ractor::ActorProcessingErr> {
        *count += 1;
        let _ = reply.send(*count);
        Ok(())
    }
}

/// A runtime on `backend` for the command-rate benches: room for every aggregate they touch
/// to stay live.
pub async fn bench_runtime(backend: std::sync::Arc<dyn keel::log::LogBackend>) -> keel::Runtime {
    keel::Runtime::builder()
        .backend(backend)
        .max_live_actors(4096)
        .start()
        .await
        .expect("runtime")
}
