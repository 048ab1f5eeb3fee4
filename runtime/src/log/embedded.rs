//! [`EmbeddedLog`]: the default, durable, single-process backend.
