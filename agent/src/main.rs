//! skelpi-agent binary: placeholder until the node runtime lands.
fn main() {}
