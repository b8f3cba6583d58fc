//! Integration tests of skelpi: the library against in-process agents, and
//! the real `skelpi` and `skelpi-agent` binaries.

mod agents;
mod autonomic;
mod boards;
mod cli;
mod client;
mod cross;
mod deploy;
mod discovery;
mod faults;
mod hardening;
mod hot_swap;
mod image;
mod lab;
mod liveness;
#[path = "../../../examples/wasm-guest/locate.rs"]
mod locate;
mod memory;
mod ports;
mod skeleton_cli;
mod skeletons;
mod support;
mod top;
mod trace;
mod wasm;
