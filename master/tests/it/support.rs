//! Shared helpers of the master's integration tests.

use std::process::Command;

/// Runs the `skelpi` binary; returns (exit code, stdout, stderr).
pub fn skelpi(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_skelpi"))
        .args(args)
        .env_remove("SKELPI_KEY_FILE")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
