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

/// A child process killed (and reaped) on drop: a test that fails leaves
/// none behind.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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

/// A loopback port free now (for an agent that must come back on it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A [`paced_farm`]'s thread: its results, with their input's index.
pub type FarmThread =
    std::thread::JoinHandle<Result<Vec<(u64, Vec<f64>)>, skelpi::runtime::JobError>>;

/// A farm of `square` over `0..items` on the agents at `addrs`, on a
/// thread of its own, while the test does something to the agents: its
/// inputs are drawn every 2 ms until `done` is set, and input `hold_at`
/// waits for it (at most 120 s), so that the job spans what the test
/// does. The results, with their input's index, in the order they came.
pub fn paced_farm(
    addrs: Vec<std::net::SocketAddr>,
    key: skelpi_wire::key::ClusterKey,
    items: u32,
    hold_at: u32,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> FarmThread {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};
    std::thread::spawn(move || {
        smol::block_on(async {
            let mut cluster = skelpi::cluster::Cluster::connect(&addrs, &key, &Default::default())
                .await
                .map_err(skelpi::runtime::JobError::from)?;
            let tree = "farm(seq(square))".parse().unwrap();
            let inputs = (0..items).map(move |i| {
                if i == hold_at {
                    let deadline = Instant::now() + Duration::from_secs(120);
                    while !done.load(Ordering::SeqCst) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                } else if !done.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(2));
                }
                skelpi_proto::Array::list(vec![f64::from(i)])
            });
            let mut results = Vec::new();
            let ran = cluster
                .run_each(&tree, inputs, |i, out| results.push((i, out.data)))
                .await;
            cluster.close().await;
            ran.map(|()| results)
        })
    })
}

/// Checks a [`paced_farm`]'s results: `items` of them, each once, in
/// order, each its input squared.
pub fn assert_squares(results: &[(u64, Vec<f64>)], items: usize) {
    assert_eq!(results.len(), items);
    for (n, (i, data)) in results.iter().enumerate() {
        assert_eq!(*i, n as u64, "results in order, each once");
        assert_eq!(data, &[(n * n) as f64]);
    }
}

pub use skelpi_testkit::signal;
