//! Who this agent is: its stable id, name, and the facts it announces.

use skelpi_proto::{AgentInfo, PROTOCOL_VERSION};

/// A stable agent id: 16 hex digits of SHA-256 over the machine id, the
/// agent's name and its port. The same agent keeps its id across restarts;
/// two agents on one machine (different names or ports) get different ids.
pub fn agent_id(name: &str, port: u16) -> String {
    let machine = machine_id().unwrap_or_else(default_name);
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [
        b"skelpi-agent-id\0".as_slice(),
        machine.as_bytes(),
        b"\0",
        name.as_bytes(),
    ] {
        ctx.update(part);
    }
    ctx.update(&port.to_be_bytes());
    ctx.finish().as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The systemd machine id, if the machine has one.
pub fn machine_id() -> Option<String> {
    ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The host name, used as the default agent name.
pub use skelpi_wire::host_name as default_name;

/// Total physical memory in bytes, from `/proc/meminfo` (0 if unreadable).
pub fn total_memory() -> u64 {
    let Ok(info) = std::fs::read_to_string("/proc/meminfo") else {
        return 0;
    };
    info.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Number of cores available to this process.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The [`AgentInfo`] of an agent on this machine.
pub fn local_info(name: &str, id: Option<&str>, workers: usize, port: u16) -> AgentInfo {
    AgentInfo {
        id: id.map_or_else(|| agent_id(name, port), str::to_owned),
        name: name.to_owned(),
        version: PROTOCOL_VERSION,
        arch: std::env::consts::ARCH.to_owned(),
        cores: workers as u32,
        memory_bytes: total_memory(),
        port,
        kernels: Vec::new(),
        build: None,
        queued_per_worker: (skelpi_proto::MAX_TASKS_PER_WORKER - skelpi_proto::TASKS_PER_WORKER)
            as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct_per_name_and_port() {
        assert_eq!(agent_id("pi1", 7871), agent_id("pi1", 7871));
        assert_ne!(agent_id("pi1", 7871), agent_id("pi1", 7872));
        assert_ne!(agent_id("pi1", 7871), agent_id("pi2", 7871));
        let id = agent_id("pi1", 7871);
        assert_eq!(id.len(), 16);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn memory_and_cores_are_read() {
        assert!(
            total_memory() > 64 << 20,
            "this machine has more than 64 MiB"
        );
        assert!(cores() >= 1);
    }
}
