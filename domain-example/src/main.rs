//! The `inventory` demo binary.
fn main() {}
