//! Shared helpers for keel benches.
