//! Placeholder: the raw fleet reference client is being written.
fn main() {}
