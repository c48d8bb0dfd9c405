//! The benchmark harness (filled in by the data-plane issue's benchmark step).
fn main() {}
