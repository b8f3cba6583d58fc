//! The roll benchmark (`skelpi bench roll`): how long `skelpi deploy`
//! takes to roll N agents, against the time raw TCP takes to carry the
//! same bytes to the same agents (their raw echo socket,
//! [`super::baseline`]), and what the pool keeps doing meanwhile: the
//! throughput of a farm over the whole pool during the roll, as a
//! fraction of its throughput just before it, in the same run — and
//! during the raw copy, which tells what carrying the bytes costs the farm
//! by itself (a master's link is shared by the upload and the tasks).
//!
//! Each roll sends a build no agent runs yet: the binary given with a tag
//! appended (the same code, a new SHA-256), so that the same binary can
//! be rolled once per pool size. It changes the agents' binaries: it runs
//! only when asked by name, never in the default suite, and only on agents
//! started with a deploy public key (a lab made with `skelpi lab up
//! --deploy-pubkey`).

use super::baseline::RawClient;
use serde::Serialize;
use skelpi::client::{AgentConn, ClientError};
use skelpi::cluster::Cluster;
use skelpi::deploy::{self, Binary, Board, DeployError, Outcome, Progress, RollOptions};
use skelpi::runtime::JobError;
use skelpi::stats::median;
use skelpi_proto::Array;
use skelpi_wire::deploy_key::DeployKey;
use skelpi_wire::handshake::ConnectOptions;
use skelpi_wire::key::ClusterKey;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use thiserror::Error;

/// What to measure.
#[derive(Debug, Clone)]
pub struct RollBenchOptions {
    /// The agent build to roll (tagged anew for each roll).
    pub binary: PathBuf,
    /// Pool sizes to roll: the first N agents of the pool, each size once.
    pub sizes: Vec<usize>,
    /// Task time of the farm that runs during the rolls, milliseconds.
    pub task_ms: f64,
    /// How long the farm runs before each roll: the throughput before it.
    pub before: Duration,
}

/// Why the benchmark stopped.
#[derive(Debug, Error)]
pub enum RollBenchError {
    /// The binary could not be read or a roll could not be planned.
    #[error(transparent)]
    Deploy(#[from] DeployError),
    /// An agent could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The raw TCP baseline failed.
    #[error("raw TCP to {addr}: {source}")]
    Baseline {
        /// The agent.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A tagged build could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A board's upgrade did not succeed.
    #[error("rolling {}: {board}: {why}", skelpi::pool::agents(*n))]
    Roll {
        /// The pool size rolled.
        n: usize,
        /// The board.
        board: String,
        /// Its outcome.
        why: String,
    },
    /// The farm running during the roll failed.
    #[error("the farm running during the roll failed: {0}")]
    Farm(JobError),
    /// Bad options.
    #[error("{0}")]
    Invalid(String),
}

/// One roll.
#[derive(Debug, Clone, Serialize)]
pub struct RollRow {
    /// Agents rolled, one at a time.
    pub agents: usize,
    /// Bytes of the binary sent to each.
    pub binary_bytes: u64,
    /// The whole roll, seconds: uploads, restarts, checks.
    pub roll_s: f64,
    /// Raw TCP carrying the same bytes to the same agents one after the
    /// other, seconds.
    pub raw_copy_s: f64,
    /// `roll_s / raw_copy_s`.
    pub ratio: f64,
    /// Median time from an agent's restart to its answering on the new
    /// binary, seconds.
    pub restart_s: f64,
    /// The farm's throughput over the window before the raw copy and the
    /// roll, tasks/s.
    pub before_tasks_per_s: f64,
    /// Its throughput while raw TCP carried the bytes, as a fraction of
    /// before: what sending that much costs the farm by itself.
    pub during_raw_fraction: f64,
    /// Its throughput during the roll, tasks/s.
    pub during_tasks_per_s: f64,
    /// `during / before`.
    pub during_fraction: f64,
}

/// The benchmark's report.
#[derive(Debug, Clone, Serialize)]
pub struct RollReport {
    /// Where the agents came from.
    pub origin: String,
    /// Agents in the pool (the farm runs on all of them).
    pub pool: usize,
    /// The farm's task time, milliseconds.
    pub task_ms: f64,
    /// One row per pool size rolled.
    pub rows: Vec<RollRow>,
}

/// Runs the benchmark on `cluster`'s pool, signing with `key`; `said`
/// hears what it is doing.
pub async fn run(
    cluster: &Cluster,
    origin: &str,
    opts: &RollBenchOptions,
    key: &DeployKey,
    mut said: impl FnMut(&str),
) -> Result<RollReport, RollBenchError> {
    if !(opts.task_ms > 0.0 && opts.task_ms <= 1000.0) {
        return Err(RollBenchError::Invalid(format!(
            "a farm task time of {} ms is not above 0 and at most 1000",
            opts.task_ms
        )));
    }
    let addrs: Vec<SocketAddr> = cluster.agents().iter().map(|c| c.addr()).collect();
    let (cluster_key, connect) = (cluster.key().clone(), cluster.connect_options().clone());
    let given = Binary::read(&opts.binary)?;
    // Refused before anything is sent: agents that take no deploy, or of
    // another architecture.
    let most = opts
        .sizes
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .min(addrs.len());
    let boards: Vec<Board> = cluster.agents()[..most].iter().map(Board::of).collect();
    if !boards.is_empty() {
        deploy::plan(&boards, std::slice::from_ref(&given))?;
    }
    let mut rows = Vec::new();
    for &n in &opts.sizes {
        if n == 0 || n > addrs.len() {
            said(&format!(
                "roll of {n} agents skipped: the pool has {}",
                addrs.len()
            ));
            continue;
        }
        let binary = tagged(&given, n)?;
        said(&format!(
            "{}: a farm on all, then raw TCP carries {} bytes to each, then the roll",
            skelpi::pool::agents(n),
            binary.bytes.len()
        ));
        let farm = Farm::start(
            addrs.clone(),
            (cluster_key.clone(), connect.clone()),
            opts.task_ms,
        );
        farm.first_result().await;
        async_io::Timer::after(opts.before).await;
        let copying = Instant::now();
        let raw = raw_copy(&addrs[..n], &cluster_key, &connect, &binary.bytes).await;
        let began = Instant::now();
        let rolled = match raw {
            Ok(_) => roll(&addrs[..n], (&cluster_key, &connect), &binary, key).await,
            Err(_) => Ok(Vec::new()),
        };
        let ended = Instant::now();
        let done = farm.stop()?;
        let raw = raw?;
        let took = rolled.map_err(|(board, why)| RollBenchError::Roll { n, board, why })?;
        let rate = |from: Instant, to: Instant| {
            let k = done.iter().filter(|&&t| t >= from && t < to).count();
            k as f64 / to.duration_since(from).as_secs_f64().max(1e-9)
        };
        let before = rate(copying - opts.before, copying).max(1e-9);
        let (during_raw, during) = (rate(copying, began), rate(began, ended));
        let roll_s = ended.duration_since(began).as_secs_f64();
        rows.push(RollRow {
            agents: n,
            binary_bytes: binary.bytes.len() as u64,
            roll_s,
            raw_copy_s: raw.as_secs_f64(),
            ratio: roll_s / raw.as_secs_f64().max(1e-9),
            restart_s: median(&took).as_secs_f64(),
            before_tasks_per_s: before,
            during_raw_fraction: during_raw / before,
            during_tasks_per_s: during,
            during_fraction: during / before,
        });
    }
    Ok(RollReport {
        origin: origin.to_owned(),
        pool: addrs.len(),
        task_ms: opts.task_ms,
        rows,
    })
}

/// `binary` with a tag appended: the same code, a SHA-256 no agent runs.
fn tagged(binary: &Binary, n: usize) -> Result<Binary, RollBenchError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut bytes = binary.bytes.to_vec();
    bytes.extend_from_slice(format!("\nskelpi bench roll {n} {nanos}\n").as_bytes());
    let path = std::env::temp_dir().join(format!("skelpi-bench-roll-{}-{n}", std::process::id()));
    let io = |source| RollBenchError::Io {
        path: path.clone(),
        source,
    };
    std::fs::write(&path, &bytes).map_err(io)?;
    let mut perms = std::fs::metadata(&path).map_err(io)?.permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&path, perms).map_err(io)?;
    let read = Binary::read(&path);
    let _ = std::fs::remove_file(&path);
    Ok(read?)
}

/// Time for raw TCP to carry `bytes` to each agent at `addrs`, one after
/// the other (as a roll of one board at a time does): each agent's raw
/// echo socket gets them while they come back, so on a full-duplex link
/// this is the time of a one-way copy.
async fn raw_copy(
    addrs: &[SocketAddr],
    key: &ClusterKey,
    connect: &ConnectOptions,
    bytes: &[u8],
) -> Result<Duration, RollBenchError> {
    let mut total = Duration::ZERO;
    let mut back = vec![0u8; bytes.len()];
    for &addr in addrs {
        let mut conn = AgentConn::connect(addr, key, connect).await?;
        let raw = RawClient::open(&mut conn).await;
        let took = match raw {
            Ok(mut raw) => raw.echo(bytes, &mut back).await,
            Err(e) => {
                conn.close().await;
                return Err(e.into());
            }
        };
        conn.close().await;
        total += took.map_err(|source| RollBenchError::Baseline { addr, source })?;
        if back != bytes {
            return Err(RollBenchError::Baseline {
                addr,
                source: std::io::Error::other("the echo differs from what was sent"),
            });
        }
    }
    Ok(total)
}

/// Rolls `binary` onto the agents at `addrs`, one at a time; each one's
/// time from its restart to answering on the new binary, or the first
/// board that failed and why.
async fn roll(
    addrs: &[SocketAddr],
    (key, connect): (&ClusterKey, &ConnectOptions),
    binary: &Binary,
    deploy_key: &DeployKey,
) -> Result<Vec<Duration>, (String, String)> {
    let mut cluster = Cluster::connect(addrs, key, connect)
        .await
        .map_err(|e| ("the pool".to_owned(), e.to_string()))?;
    let boards: Vec<Board> = cluster.agents().iter().map(Board::of).collect();
    let binaries = std::slice::from_ref(binary);
    let steps = match deploy::plan(&boards, binaries) {
        Ok(steps) => steps,
        Err(e) => {
            cluster.close().await;
            return Err(("the plan".to_owned(), e.to_string()));
        }
    };
    let opts = RollOptions::default();
    let quiet = |_: &Board, _: Progress| {};
    let outcomes = deploy::roll(&mut cluster, &steps, binaries, deploy_key, &opts, quiet).await;
    cluster.close().await;
    outcomes
        .into_iter()
        .map(|(board, outcome)| match outcome {
            Outcome::Upgraded { took, .. } => Ok(took),
            other => Err((board.name, format!("{other:?}"))),
        })
        .collect()
}

/// A farm of `sleep_ms` tasks over the whole pool on a thread of its own,
/// drawing inputs until stopped; it notes when each result came.
struct Farm {
    stop: Arc<AtomicBool>,
    first: smol::channel::Receiver<()>,
    thread: std::thread::JoinHandle<Result<Vec<Instant>, JobError>>,
}

impl Farm {
    fn start(
        addrs: Vec<SocketAddr>,
        (key, connect): (ClusterKey, ConnectOptions),
        task_ms: f64,
    ) -> Farm {
        let stop = Arc::new(AtomicBool::new(false));
        let (first_tx, first) = smol::channel::bounded(1);
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            smol::block_on(async {
                let mut cluster = Cluster::connect(&addrs, &key, &connect).await?;
                let tree = format!("farm(seq(sleep_ms({task_ms})))").parse().map_err(
                    |e: skelpi_proto::skeleton_text::ParseError| JobError::Invalid(e.to_string()),
                )?;
                let inputs = std::iter::from_fn(|| {
                    (!stopped.load(Ordering::SeqCst)).then(|| Array::list(vec![1.0]))
                });
                let mut done = Vec::new();
                let ran = cluster
                    .run_each(&tree, inputs, |_, _| {
                        done.push(Instant::now());
                        let _ = first_tx.try_send(());
                    })
                    .await;
                cluster.close().await;
                ran.map(|()| done)
            })
        });
        Farm {
            stop,
            first,
            thread,
        }
    }

    /// Completes once the first result is in (or the farm ended).
    async fn first_result(&self) {
        let _ = self.first.recv().await;
    }

    /// Stops drawing inputs; when each result came.
    fn stop(self) -> Result<Vec<Instant>, RollBenchError> {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.join() {
            Ok(done) => done.map_err(RollBenchError::Farm),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}
