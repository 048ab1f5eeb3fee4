//! The retail inventory domain.
