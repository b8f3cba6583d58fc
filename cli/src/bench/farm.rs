//! Farm dispatch overhead: T tasks of a no-op kernel (`identity` on one
//! float; `sleep_ms(MS)` with a task time) through an unordered farm over
//! the whole pool, against the same tasks sent one at a time (a `seq`:
//! each waits for the previous result) in the same run. The ratio is what
//! on-demand dispatch with credits buys over stop-and-wait.
//!
//! Runs are timed from their first result to their last (the steady
//! state). With tracing, every repeat also runs the farm traced,
//! alternating which goes first, and reports the traced throughput against
//! the untraced one: the cost of tracing while a job runs (its clock probes
//! and collection, before and after, come on top). The last traced run's trace is left in the
//! cluster ([`Cluster::take_trace`]). With `watch`, every repeat also runs
//! the farm watched as `skelpi top` watches a job, at ten times its
//! default rate: the job's status kept and published (see
//! [`skelpi::watch`]), every agent asked for its health and the jobs'
//! files read every 100 ms over connections of their own; the watched
//! throughput against the plain one is what watching costs.

use crate::cmd::health;
use indicatif::ProgressBar;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use skelpi::cluster::Cluster;
use skelpi::runtime::JobError;
use skelpi::stats::median;
use skelpi::watch::{self, Publisher, Watch};
use skelpi_proto::Array;
use skelpi_proto::skeleton::{Kernel, Skeleton};
use std::collections::HashMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What to measure.
#[derive(Debug, Clone)]
pub struct FarmOptions {
    /// Tasks per run (at least 2: runs are timed first to last result).
    pub tasks: usize,
    /// Timed repeats (the median is reported); at least 1.
    pub repeats: usize,
    /// Seed of the random inputs.
    pub seed: u64,
    /// Task time, milliseconds: 0 for no-op tasks, else `sleep_ms` tasks.
    pub task_ms: f64,
    /// Also run the farm traced, to measure what tracing costs.
    pub trace: bool,
    /// Also run the farm watched, to measure what `skelpi top` costs.
    pub watch: bool,
}

impl Default for FarmOptions {
    fn default() -> Self {
        FarmOptions {
            tasks: 20_000,
            repeats: 3,
            seed: 2010,
            task_ms: 0.0,
            trace: false,
            watch: false,
        }
    }
}

/// The result.
#[derive(Debug, Clone, Serialize)]
pub struct FarmReport {
    /// Where the agents came from.
    pub origin: String,
    /// Agents in the pool.
    pub agents: usize,
    /// Worker threads of the pool.
    pub workers: usize,
    /// Tasks per run.
    pub tasks: usize,
    /// Timed repeats.
    pub repeats: usize,
    /// Farm: tasks per second (median run).
    pub farm_tasks_per_s: f64,
    /// Farm: wall time per task, microseconds.
    pub farm_us_per_task: f64,
    /// One at a time: tasks per second (median run).
    pub sequential_tasks_per_s: f64,
    /// Farm tasks/s over one-at-a-time tasks/s.
    pub vs_sequential: f64,
    /// The kernel of the tasks.
    pub kernel: String,
    /// Traced farm: tasks per second (median run), if measured.
    pub traced_tasks_per_s: Option<f64>,
    /// Traced over untraced time per task, minus 1 (0.03: tracing costs
    /// 3% of the farm's throughput), if measured.
    pub trace_cost: Option<f64>,
    /// Watched farm: tasks per second (median run), if measured.
    pub watched_tasks_per_s: Option<f64>,
    /// Watched over plain time per task, minus 1, if measured.
    pub watch_cost: Option<f64>,
}

/// How one run of the farm is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Plain,
    Traced,
    Watched,
}

/// Number of progress steps [`run`] will report.
pub fn steps(opts: &FarmOptions) -> u64 {
    (2 + u64::from(opts.trace) + u64::from(opts.watch)) * opts.repeats.max(1) as u64
}

/// Runs the measurement; the one-at-a-time runs use a tenth of the tasks
/// (at least 100) to keep the run short.
pub async fn run(
    cluster: &mut Cluster,
    origin: &str,
    opts: &FarmOptions,
    progress: &ProgressBar,
) -> Result<FarmReport, JobError> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    if !(opts.task_ms >= 0.0 && opts.task_ms <= 60_000.0) {
        return Err(JobError::Invalid(format!(
            "a task time of {} ms is not between 0 and 60000",
            opts.task_ms
        )));
    }
    let kernel = if opts.task_ms > 0.0 {
        Kernel::new("sleep_ms", [opts.task_ms])
    } else {
        Kernel::new("identity", [])
    };
    let noop = Skeleton::seq(kernel.clone());
    let farm = Skeleton::Farm {
        worker: Box::new(noop.clone()),
        replicas: None,
        ordered: false,
    };
    let repeats = opts.repeats.max(1);
    let tasks = opts.tasks.max(2);
    let seq_tasks = (tasks / 10).max(100);
    let mut farm_times = Vec::new();
    let mut traced_times = Vec::new();
    let mut watched_times = Vec::new();
    let mut seq_times = Vec::new();
    let watcher = if opts.watch {
        Some(Watcher::start(cluster)?)
    } else {
        None
    };
    for repeat in 0..repeats {
        let mut runs = vec![
            (&farm, tasks, Variant::Plain, &mut farm_times),
            (&noop, seq_tasks, Variant::Plain, &mut seq_times),
        ];
        // Alternate which of the plain and measured farms runs first.
        let at = if repeat % 2 == 0 { 1 } else { 0 };
        if opts.trace {
            runs.insert(at, (&farm, tasks, Variant::Traced, &mut traced_times));
        }
        if opts.watch {
            runs.insert(at, (&farm, tasks, Variant::Watched, &mut watched_times));
        }
        for (tree, n, variant, times) in runs {
            let traced = variant == Variant::Traced;
            let how = match variant {
                Variant::Plain => "",
                Variant::Traced => " (traced)",
                Variant::Watched => " (watched)",
            };
            progress.set_message(format!("farm: {n} tasks through {tree}{how}"));
            let inputs: Vec<Array> = (0..n)
                .map(|_| Array::list(vec![rng.random::<f64>()]))
                .collect();
            let want: f64 = inputs.iter().map(|a| a.data[0]).sum();
            let mut got = 0.0;
            let mut count = 0;
            cluster.set_tracing(traced);
            let watched = match (&watcher, variant) {
                (Some(w), Variant::Watched) => Some(w.watch(cluster, &tree.to_string())?),
                _ => None,
            };
            // Timed from the first result to the last: a traced job's clock
            // probes and collection, before and after, are not its cost
            // per task.
            let (mut first, mut last) = (None, None);
            let ran = cluster
                .run_each(tree, inputs, |_, a| {
                    let now = Instant::now();
                    first.get_or_insert(now);
                    last = Some(now);
                    got += a.data.first().copied().unwrap_or(f64::NAN);
                    count += 1;
                })
                .await;
            cluster.set_tracing(false);
            cluster.set_watch(None);
            drop(watched);
            ran?;
            black_box(got);
            // Unordered: compare the multiset by count and a sum that any
            // lost, duplicated or altered result would change.
            if count != n || (got - want).abs() > 1e-9 * want.abs().max(1.0) {
                return Err(JobError::Invalid(format!(
                    "{tree}: {count} results for {n} tasks, or wrong values"
                )));
            }
            let elapsed = match (first, last) {
                (Some(a), Some(b)) => b - a,
                _ => Duration::ZERO,
            };
            times.push(elapsed.div_f64(n.saturating_sub(1).max(1) as f64));
            progress.inc(1);
        }
    }
    let per_task = median(&farm_times);
    let seq_per_task = median(&seq_times);
    let rate = |d: Duration| 1.0 / d.as_secs_f64().max(1e-12);
    drop(watcher);
    let traced = (!traced_times.is_empty()).then(|| median(&traced_times));
    let watched = (!watched_times.is_empty()).then(|| median(&watched_times));
    let cost = |t: Duration| t.as_secs_f64() / per_task.as_secs_f64().max(1e-12) - 1.0;
    Ok(FarmReport {
        origin: origin.to_owned(),
        agents: cluster.agents().len(),
        workers: cluster.cores(),
        tasks,
        repeats,
        farm_tasks_per_s: rate(per_task),
        farm_us_per_task: per_task.as_secs_f64() * 1e6,
        sequential_tasks_per_s: rate(seq_per_task),
        vs_sequential: rate(per_task) / rate(seq_per_task),
        kernel: kernel.to_string(),
        traced_tasks_per_s: traced.map(rate),
        trace_cost: traced.map(cost),
        watched_tasks_per_s: watched.map(rate),
        watch_cost: watched.map(cost),
    })
}

/// What watches the watched runs: a thread asking every agent for its
/// health and reading the jobs' status files every [`WATCH_EVERY`], over
/// connections of its own, as `skelpi top` does; it stops when dropped.
struct Watcher {
    dir: PathBuf,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How often the watcher asks: ten times `skelpi top`'s default.
const WATCH_EVERY: Duration = Duration::from_millis(100);

impl Watcher {
    /// Connects to `cluster`'s agents and starts asking.
    fn start(cluster: &Cluster) -> Result<Watcher, JobError> {
        let addrs: Vec<_> = cluster.agents().iter().map(|a| a.addr()).collect();
        let (key, opts) = (cluster.key().clone(), cluster.connect_options().clone());
        let dir = std::env::temp_dir().join(format!("skelpi-bench-watch-{}", std::process::id()));
        let (stop, stopped) = mpsc::channel::<()>();
        let (ready_tx, ready) = mpsc::channel();
        let jobs = dir.clone();
        let thread = std::thread::spawn(move || {
            smol::block_on(async {
                let mut pool = match Cluster::connect(&addrs, &key, &opts).await {
                    Ok(pool) => pool,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let mut tried = HashMap::new();
                while let Err(mpsc::TryRecvError::Empty) = stopped.try_recv() {
                    let rows = health::ask_all(pool.agents_mut(), &mut tried).await;
                    black_box((rows, watch::running(&jobs)));
                    async_io::Timer::after(WATCH_EVERY).await;
                }
                pool.close().await;
            });
        });
        match ready.recv() {
            Ok(Ok(())) => Ok(Watcher {
                dir,
                stop: Some(stop),
                thread: Some(thread),
            }),
            Ok(Err(why)) => Err(JobError::Invalid(format!(
                "the watcher cannot connect: {why}"
            ))),
            Err(_) => Err(JobError::Invalid("the watcher stopped".into())),
        }
    }

    /// Watches the next job on `cluster`: its status kept and published
    /// until the publisher returned is dropped.
    fn watch(&self, cluster: &mut Cluster, name: &str) -> Result<Publisher, JobError> {
        let w = Watch::new(name, name);
        cluster.set_watch(Some(w.clone()));
        Publisher::start(w, &self.dir).map_err(|e| {
            JobError::Invalid(format!("cannot publish in {}: {e}", self.dir.display()))
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
