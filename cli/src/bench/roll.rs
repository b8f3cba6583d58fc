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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use thiserror::Error;

/// What to measure.
#[derive(Debug, Clone)]
pub struct RollBenchOptions {
    /// The agent build to roll (tagged anew for each roll).
    pub binary: Binary,
    /// Pool sizes to roll: the first N agents of the pool, each size once.
    pub sizes: Vec<usize>,
    /// Task time of the farm that runs during the rolls, milliseconds.
    pub task_ms: f64,
    /// How long the farm runs (after a warm-up) before each raw copy and
    /// roll: the window of its throughput before them.
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
    /// A board's upgrade did not succeed.
    #[error(
        "rolling {}: {board}: {why} ({upgraded} upgraded before it; the others keep their \
         binary)",
        skelpi::pool::agents(*n)
    )]
    Roll {
        /// The pool size rolled.
        n: usize,
        /// Agents upgraded before the failure.
        upgraded: usize,
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

/// How long the farm runs before the window of its throughput "before"
/// opens (its credits settle).
const WARM_UP: Duration = Duration::from_secs(1);

/// The shortest window of the throughput before a roll.
pub const MIN_BEFORE: Duration = Duration::from_millis(200);

/// Runs the benchmark on `cluster`'s pool, signing with `key`; `said`
/// hears what it is doing. Everything that can be refused is, before
/// anything is sent.
pub async fn run(
    cluster: &Cluster,
    origin: &str,
    opts: &RollBenchOptions,
    key: &DeployKey,
    mut said: impl FnMut(&str),
) -> Result<RollReport, RollBenchError> {
    let addrs: Vec<SocketAddr> = cluster.agents().iter().map(|c| c.addr()).collect();
    check(opts)?;
    check_pool(opts, addrs.len())?;
    let given = &opts.binary;
    // Agents that take no deploy, or of another architecture.
    let most = opts
        .sizes
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .min(addrs.len());
    let boards: Vec<Board> = cluster.agents()[..most].iter().map(Board::of).collect();
    deploy::plan(&boards, std::slice::from_ref(given))?;
    let pool = Pool {
        addrs,
        key: cluster.key().clone(),
        connect: cluster.connect_options().clone(),
    };
    let mut rows = Vec::new();
    for &n in &opts.sizes {
        if n > pool.addrs.len() {
            said(&format!(
                "roll of {n} agents skipped: the pool has {}",
                pool.addrs.len()
            ));
            continue;
        }
        let binary = tagged(given, n);
        said(&format!(
            "{}: a farm on all, then raw TCP carries {} bytes to each, then the roll",
            skelpi::pool::agents(n),
            binary.bytes.len()
        ));
        rows.push(measure(&pool, n, &binary, key, opts).await?);
    }
    Ok(RollReport {
        origin: origin.to_owned(),
        pool: pool.addrs.len(),
        task_ms: opts.task_ms,
        rows,
    })
}

/// Refuses options the benchmark cannot measure with.
pub fn check(opts: &RollBenchOptions) -> Result<(), RollBenchError> {
    let bad = |what: String| Err(RollBenchError::Invalid(what));
    if !(opts.task_ms > 0.0 && opts.task_ms <= 1000.0) {
        return bad(format!(
            "--farm-task-ms {}: the farm's task time must be above 0 and at most 1000 ms",
            opts.task_ms
        ));
    }
    if opts.before < MIN_BEFORE {
        return bad(format!(
            "--before {:?}: the window before a roll must be at least {MIN_BEFORE:?}",
            opts.before
        ));
    }
    if opts.sizes.is_empty() || opts.sizes.contains(&0) {
        return bad("--roll-sizes: give one or more pool sizes of 1 or more, e.g. 1,3,8".into());
    }
    Ok(())
}

/// Refuses a pool of `pool` agents the options cannot be measured on.
fn check_pool(opts: &RollBenchOptions, pool: usize) -> Result<(), RollBenchError> {
    let bad = |what: String| Err(RollBenchError::Invalid(what));
    if opts.sizes.iter().all(|&n| n > pool) {
        return bad(format!(
            "--roll-sizes: every size is above the pool's {} agents",
            pool
        ));
    }
    if pool < 2 {
        return bad(format!(
            "the pool has {}: the farm needs an agent that is not restarting (2 or more)",
            skelpi::pool::agents(pool)
        ));
    }
    Ok(())
}

/// The agents of the pool and how to reach them.
struct Pool {
    addrs: Vec<SocketAddr>,
    key: ClusterKey,
    connect: ConnectOptions,
}

/// One row: the farm on the whole pool; after [`WARM_UP`] and
/// `opts.before`, raw TCP carries `binary`'s bytes to the first `n`
/// agents, then `binary` is rolled onto them.
async fn measure(
    pool: &Pool,
    n: usize,
    binary: &Binary,
    key: &DeployKey,
    opts: &RollBenchOptions,
) -> Result<RollRow, RollBenchError> {
    let targets = &pool.addrs[..n];
    let farm = Farm::start(
        pool.addrs.clone(),
        (pool.key.clone(), pool.connect.clone()),
        opts.task_ms,
    );
    farm.first_result().await;
    async_io::Timer::after(WARM_UP + opts.before).await;
    if farm.ended() {
        // It failed: nothing is copied or rolled.
        farm.stop()?;
        return Err(RollBenchError::Invalid("the farm ended by itself".into()));
    }
    let copying = Instant::now();
    let raw = raw_copy(targets, &pool.key, &pool.connect, &binary.bytes).await;
    let began = Instant::now();
    let rolled = match raw {
        Ok(_) => roll(targets, (&pool.key, &pool.connect), binary, key).await,
        Err(_) => Ok(Vec::new()),
    };
    let ended = Instant::now();
    // The copy's or the roll's failure first: the farm may have failed
    // because of it.
    let done = farm.stop();
    let raw = raw?;
    let took = rolled.map_err(|(upgraded, board, why)| RollBenchError::Roll {
        n,
        upgraded,
        board,
        why,
    })?;
    let done = done?;
    let rate = |from: Instant, to: Instant| {
        let k = done.iter().filter(|&&t| t >= from && t < to).count();
        k as f64 / to.duration_since(from).as_secs_f64().max(1e-9)
    };
    let before = rate(copying - opts.before, copying);
    if before == 0.0 {
        return Err(RollBenchError::Invalid(format!(
            "the farm finished no task in the {:?} before the copy: nothing to compare with \
             (a longer --before, or shorter --farm-task-ms)",
            opts.before
        )));
    }
    let (during_raw, during) = (rate(copying, began), rate(began, ended));
    let roll_s = ended.duration_since(began).as_secs_f64();
    Ok(RollRow {
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
    })
}

/// `binary` with a tag appended: the same code (its version and
/// architecture), a SHA-256 no agent runs.
fn tagged(binary: &Binary, n: usize) -> Binary {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut bytes = binary.bytes.to_vec();
    bytes.extend_from_slice(format!("\nskelpi bench roll {n} {nanos}\n").as_bytes());
    Binary {
        sha256: deploy::sha256_hex(&bytes),
        bytes: bytes.into(),
        ..binary.clone()
    }
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
/// time from its restart to answering on the new binary, or how many were
/// upgraded before the first board that failed, and why it failed.
async fn roll(
    addrs: &[SocketAddr],
    (key, connect): (&ClusterKey, &ConnectOptions),
    binary: &Binary,
    deploy_key: &DeployKey,
) -> Result<Vec<Duration>, (usize, String, String)> {
    let mut cluster = Cluster::connect(addrs, key, connect)
        .await
        .map_err(|e| (0, "the pool".to_owned(), e.to_string()))?;
    let boards: Vec<Board> = cluster.agents().iter().map(Board::of).collect();
    let binaries = std::slice::from_ref(binary);
    let steps = match deploy::plan(&boards, binaries) {
        Ok(steps) => steps,
        Err(e) => {
            cluster.close().await;
            return Err((0, "the plan".to_owned(), e.to_string()));
        }
    };
    let opts = RollOptions::default();
    let quiet = |_: &Board, _: Progress| {};
    let outcomes = deploy::roll(&mut cluster, &steps, binaries, deploy_key, &opts, quiet).await;
    cluster.close().await;
    let mut took = Vec::new();
    for (board, outcome) in outcomes {
        match outcome {
            Outcome::Upgraded { took: t, .. } => took.push(t),
            Outcome::Failed(why) => return Err((took.len(), board.name, why)),
            Outcome::AlreadyCurrent => {
                let why = "it runs that build already".to_owned();
                return Err((took.len(), board.name, why));
            }
            Outcome::NotReached => {
                let why = "the roll stopped before it".to_owned();
                return Err((took.len(), board.name, why));
            }
        }
    }
    Ok(took)
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

    /// Whether it ended (it ends only when stopped, or when it failed).
    fn ended(&self) -> bool {
        self.thread.is_finished()
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
