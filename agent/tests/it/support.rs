//! Shared test helpers: temporary key files, a running agent binary.

pub use skelpi_testkit::AgentProcess;
use skelpi_wire::key::ClusterKey;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).unwrap();
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let p = std::env::temp_dir().join(format!("skelpi-test-{tag}-{hex}"));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `key` to `dir/name` with mode 0600 and returns the path.
pub fn key_file(dir: &Path, name: &str, key: &ClusterKey) -> PathBuf {
    let p = dir.join(name);
    key.write(&p, false).unwrap();
    assert_eq!(
        std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o600
    );
    p
}

/// Starts the agent binary built with these tests.
pub fn start_agent(args: &[&str]) -> AgentProcess {
    AgentProcess::start(
        Path::new(env!("CARGO_BIN_EXE_skelpi-agent")),
        args,
        Duration::from_secs(20),
    )
    .expect("agent starts")
}

/// Runs a command and returns (exit code, stderr).
pub fn run_agent(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_skelpi-agent"))
        .args(args)
        .env_remove("JOURNAL_STREAM")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A child process killed and reaped when the test ends, pass or fail.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
