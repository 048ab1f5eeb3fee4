//! [`Upcasters`]: the steps that lift an event type's stored payload from one version to the
//! next, so an aggregate reads events written by older code. An aggregate declares its own in
//! [`Aggregate::upcasters`](crate::Aggregate::upcasters).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// A function that lifts one event type's payload from version `v` to `v + 1`, on the raw
/// msgpack value (the externally tagged enum: `{"VariantName": {fields…}}`).
pub type UpcastFn = Arc<dyn Fn(rmpv::Value) -> Result<rmpv::Value, String> + Send + Sync>;

/// The upcasters of one aggregate type, keyed by (event type, from version).
#[derive(Clone, Default)]
pub struct Upcasters {
    steps: HashMap<(String, u32), UpcastFn>,
    current: HashMap<String, u32>,
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upcasters")
            .field("current", &self.current)
            .finish()
    }
}

impl Upcasters {
    /// No upcasters: every event type is at version 1.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the step from `from_version` to `from_version + 1` of `event_type`. Steps must
    /// be registered for every version from 1 up; the last one defines the current version.
    pub fn register(
        mut self,
        event_type: &str,
        from_version: u32,
        step: impl Fn(rmpv::Value) -> Result<rmpv::Value, String> + Send + Sync + 'static,
    ) -> Self {
        self.steps
            .insert((event_type.to_string(), from_version), Arc::new(step));
        let current = self.current.entry(event_type.to_string()).or_insert(1);
        *current = (*current).max(from_version + 1);
        self
    }

    /// The version new events of `event_type` are written with.
    pub fn current_version(&self, event_type: &str) -> u32 {
        self.current.get(event_type).copied().unwrap_or(1)
    }

    pub(crate) fn upcast(
        &self,
        event_type: &str,
        from_version: u32,
        value: rmpv::Value,
    ) -> Result<rmpv::Value, String> {
        let step = self
            .steps
            .get(&(event_type.to_string(), from_version))
            .ok_or_else(|| format!("no upcaster registered from v{from_version}"))?;
        step(value)
    }
}
