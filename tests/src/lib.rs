//! Shared helpers for keel integration tests.
