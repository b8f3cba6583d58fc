//! The `skelpi` CLI: placeholder until the master library lands.
fn main() {}
