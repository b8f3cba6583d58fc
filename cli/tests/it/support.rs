//! Shared helpers of the master's integration tests.

use std::process::Command;

/// Runs the `skelpi` binary; returns (exit code, stdout, stderr).
pub fn skelpi(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_skelpi"))
        .args(args)
        .env_remove("SKELPI_KEY_FILE")
        // Default output folders (bench's `skelpi-bench`) land there, not
        // in the source tree.
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A fresh scratch folder for one test, removed on drop.
pub struct Scratch(pub std::path::PathBuf);

impl Scratch {
    /// Creates `$TMPDIR/skelpi-<name>-<pid>`.
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("skelpi-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// A path inside it, as a string for command lines.
    pub fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The lines of a results file (`skelpi run --out`), sorted: jobs may
/// finish items out of order.
pub fn sorted_lines(path: &str) -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// Writes a job file at `path`: `skeleton` over `items` arrays of `length`
/// consecutive numbers (`generate = "range"`).
pub fn write_range_job(
    path: impl AsRef<std::path::Path>,
    skeleton: &str,
    items: usize,
    length: usize,
) {
    let text = format!(
        "skeleton = \"{skeleton}\"\n[input]\ngenerate = \"range\"\nitems = {items}\nlength = {length}\n"
    );
    std::fs::write(path, text).unwrap();
}

/// Asserts that no agent of `cluster` was taken for lost.
pub fn assert_no_agent_lost(cluster: &skelpi::cluster::Cluster) {
    for a in cluster.agents() {
        assert!(
            a.broken().is_none(),
            "agent {} lost: {:?}",
            a.addr(),
            a.broken()
        );
    }
}

/// The kernel calls a trace recorded.
pub fn kernel_calls(trace: &skelpi::trace::Trace) -> usize {
    let kernel = skelpi_proto::trace::TraceKind::Kernel;
    trace.events.iter().filter(|e| e.kind == kernel).count()
}
