//! The write-side seam: [`Aggregate`] decides (`handle`) and evolves (`apply`).

use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::upcast::Upcasters;

/// An event-sourced aggregate: its state, the commands it accepts and the events it emits.
///
/// `handle` and `apply` are pure — no I/O, no clock, no randomness — so replaying the same
/// events always rebuilds the same state, and [`TestFramework`](crate::TestFramework) can run
/// them without a runtime. Events are serialized with their enum variant name as the event
/// type; name them in the past tense (`ShipmentReceived`), commands in the imperative
/// (`ReceiveShipment`).
pub trait Aggregate: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The aggregate type name: the first half of every aggregate key `"{TYPE}/{id}"`.
    /// Changing it orphans the stored history.
    const TYPE: &'static str;

    /// The version of the serialized state. Bump it when the state's shape changes: older
    /// snapshots are then ignored (with a warning) and the state is rebuilt from the events.
    const STATE_VERSION: u32 = 1;

    /// The commands this aggregate accepts.
    type Command: Debug + Send + 'static;
    /// The events it emits. Must serialize as an enum (externally tagged, the serde default).
    type Event: Serialize + DeserializeOwned + Clone + Debug + Send + Sync + 'static;
    /// Why a command is rejected.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Decides: validates `command` against the current state and returns the events it
    /// causes, or why it is rejected. A rejection appends nothing.
    fn handle(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Evolves: applies one event to the state. Must not fail: the event already happened.
    fn apply(&mut self, event: &Self::Event);

    /// Upcasters that read older versions of this aggregate's events. The current version of
    /// an event type is one more than the number of upcasters registered for it.
    fn upcasters() -> Upcasters {
        Upcasters::new()
    }
}
