//! skelpi-proto: the wire protocol, sans-IO.
#![forbid(unsafe_code)]

mod info;
pub use info::AgentInfo;

/// The wire protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;
