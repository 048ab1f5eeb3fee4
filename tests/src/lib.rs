//! Shared helpers for keel integration tests.

pub mod broker;
