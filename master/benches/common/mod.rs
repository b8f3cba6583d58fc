//! What the benchmarks that run real agent processes share: a scratch
//! folder and the release agent binary.

use rand::Rng;
use skelpi_testkit::AgentProcess;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A private scratch folder (a fresh name, mode 0700: it holds the
/// cluster key), removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A fresh `$TMPDIR/skelpi-NAME-<random>`.
    pub fn new(name: &str) -> Scratch {
        let tag: u64 = rand::rng().random();
        let dir = std::env::temp_dir().join(format!("skelpi-{name}-{tag:016x}"));
        std::fs::create_dir(&dir).expect("a fresh scratch directory");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts `n` release agents named `NAME-i` on loopback with the key at
/// `key_path`, without mDNS, with `extra` flags.
pub fn start_agents(name: &str, n: usize, key_path: &Path, extra: &[&str]) -> Vec<AgentProcess> {
    let binary = agent_binary();
    (0..n)
        .map(|i| {
            let name = format!("{name}-{i}");
            let mut flags = vec![
                "--listen",
                "127.0.0.1:0",
                "--name",
                &name,
                "--key-file",
                key_path.to_str().expect("a UTF-8 path"),
                "--no-mdns",
            ];
            flags.extend_from_slice(extra);
            AgentProcess::start(&binary, &flags, Duration::from_secs(20)).expect("an agent")
        })
        .collect()
}

/// The release agent binary beside this bench's target directory, built
/// (or brought up to date) first: a stale one would measure old code.
pub fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("this bench's path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/release")
        .join("skelpi-agent");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "skelpi-agent",
            "--bin",
            "skelpi-agent",
        ])
        .status()
        .expect("cargo");
    assert!(status.success(), "building skelpi-agent failed");
    bin
}
