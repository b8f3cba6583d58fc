//! Real `skelpi-agent` processes on 127.0.0.1, found by mDNS or named with
//! `--agents`, driven by the real `skelpi` binary.

use super::support::skelpi;
use skelpi_testkit::AgentProcess;
use skelpi_wire::key::ClusterKey;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The agent binary of this workspace's target directory, built if missing.
pub fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("skelpi-agent");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "skelpi-agent", "--bin", "skelpi-agent"])
            .status()
            .unwrap();
        assert!(status.success(), "building skelpi-agent failed");
    }
    bin
}

struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let mut r = [0u8; 6];
        getrandom::fill(&mut r).unwrap();
        let tag: String = r.iter().map(|b| format!("{b:02x}")).collect();
        let p = std::env::temp_dir().join(format!("skelpi-agents-{tag}"));
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts this workspace's agent on 127.0.0.1 with the key at `key`,
/// named `name`, with `extra` flags (`--no-mdns`, `--workers N`...).
pub fn start_agent(key: &Path, name: &str, extra: &[&str]) -> AgentProcess {
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--name",
        name,
        "--key-file",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    AgentProcess::start(&agent_binary(), &args, Duration::from_secs(20)).unwrap()
}

#[test]
fn three_agents_are_discovered_and_a_silent_one_is_reachable_by_address() {
    let dir = Scratch::new();
    let key_path = dir.0.join("cluster.key");
    ClusterKey::generate()
        .unwrap()
        .write(&key_path, false)
        .unwrap();
    let tag = dir
        .0
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .replace("skelpi-agents-", "");
    let loud: Vec<_> = (0..3)
        .map(|i| start_agent(&key_path, &format!("disc-{tag}-{i}"), &[]))
        .collect();
    let quiet = start_agent(&key_path, &format!("quiet-{tag}"), &["--no-mdns"]);

    let started = Instant::now();
    let (code, out, err) = skelpi(&["discover", "--json", "--timeout", "3s", "--interface", "lo"]);
    let took = started.elapsed();
    assert_eq!(code, Some(0), "{err}");
    let found: serde_json::Value = serde_json::from_str(&out).unwrap();
    let found = found.as_array().unwrap();
    for agent in &loud {
        let hit = found
            .iter()
            .find(|a| a["id"] == agent.id.as_str())
            .unwrap_or_else(|| panic!("agent {} not discovered in {out}", agent.id));
        assert_eq!(hit["address"], agent.addr.to_string());
        assert_eq!(hit["protocol"], skelpi_proto::PROTOCOL_VERSION);
        // The agent's own version, from its TXT record.
        assert_eq!(hit["version"], env!("CARGO_PKG_VERSION"));
        assert!(hit["cores"].as_u64().unwrap() >= 1);
    }
    assert!(
        found.iter().all(|a| a["id"] != quiet.id.as_str()),
        "--no-mdns agent was announced"
    );
    // `--timeout 3s` bounds the browse; allow process start and shutdown.
    assert!(took < Duration::from_secs(10), "discover took {took:?}");

    // The silent agent works when named.
    let addr = quiet.addr.to_string();
    let (code, out, err) = skelpi(&[
        "ping",
        "--agents",
        &addr,
        "--key-file",
        key_path.to_str().unwrap(),
        "--count",
        "3",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&format!("quiet-{tag}")), "{out}");

    // A wrong key is refused with a message that says so.
    let wrong = dir.0.join("wrong.key");
    ClusterKey::generate()
        .unwrap()
        .write(&wrong, false)
        .unwrap();
    let (code, _, err) = skelpi(&[
        "ping",
        "--agents",
        &addr,
        "--key-file",
        wrong.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("rejected our cluster key"), "{err}");
}
