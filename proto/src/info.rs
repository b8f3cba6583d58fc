//! What an agent says about itself: in its mDNS TXT record and in its
//! handshake reply.

use serde::{Deserialize, Serialize};

/// Facts about one agent, as announced over DNS-SD and returned by
/// [`crate::Message::Welcome`].
///
/// `id` is the identity: names can be renamed on mDNS clashes, ids cannot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// Stable agent id (16 lower-case hex digits), unique per agent.
    pub id: String,
    /// Human-readable name (by default the host name).
    pub name: String,
    /// Wire protocol version the agent speaks.
    pub version: u16,
    /// CPU architecture, as `std::env::consts::ARCH` (`x86_64`, `aarch64`, `arm`).
    pub arch: String,
    /// Number of worker threads the agent runs kernels on.
    pub cores: u32,
    /// Total physical memory of the board, bytes.
    pub memory_bytes: u64,
    /// TCP port the agent listens on.
    pub port: u16,
    /// The kernels it offers, sorted (in its handshake reply; not in its
    /// TXT record). Empty: not said (an older agent, or mDNS).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernels: Vec<String>,
    /// Its build: version, deployed binary, last deploy (in its handshake
    /// reply; in its TXT record only the version). Absent: not said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Box<crate::deploy::Build>>,
    /// Small tasks (see [`crate::SMALL_TASK_BYTES`]) it queues per worker
    /// beyond [`crate::TASKS_PER_WORKER`]: a master keeps at most
    /// `TASKS_PER_WORKER + queued_per_worker` out per worker. Absent (an
    /// older agent, or mDNS): none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub queued_per_worker: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
