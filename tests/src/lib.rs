//! Shared helpers for keel integration tests.

pub mod broker;
pub mod tally;
