//! Running `ip` and `tc` (iproute2), with errors that say which command
//! failed and what it printed.

use super::LabError;
use std::process::{Command, Stdio};

/// Runs `program args...`; fails with its stderr if it exits non-zero.
pub fn run(program: &str, args: &[&str]) -> Result<String, LabError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| LabError::Command {
            command: line(program, args),
            message: format!("cannot start it: {e}"),
        })?;
    if !out.status.success() {
        return Err(LabError::Command {
            command: line(program, args),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip args...`.
pub fn ip(args: &[&str]) -> Result<String, LabError> {
    run("ip", args)
}

/// Runs `ip -n NS args...` (in a namespace).
pub fn ip_in(ns: &str, args: &[&str]) -> Result<String, LabError> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Runs `tc args...` in a namespace.
pub fn tc_in(ns: &str, args: &[&str]) -> Result<String, LabError> {
    let mut all = vec!["netns", "exec", ns, "tc"];
    all.extend_from_slice(args);
    run("ip", &all)
}

fn line(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}
