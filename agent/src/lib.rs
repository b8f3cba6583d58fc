//! skelpi-agent: the node daemon of skelpi.
#![forbid(unsafe_code)]

pub mod announce;
pub mod key;
pub mod logging;
