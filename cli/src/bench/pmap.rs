//! The seed's pmap benchmark: D random floats split into N chunks, `erf`
//! applied C times to every element, on the first 1, 2, ... agents of the
//! pool, against the best sequential version (one call of the same kernel
//! over all D floats) run in this process.
//!
//! Every distributed result is compared bit for bit with the sequential
//! one, outside the timed region. A second baseline runs the same chunks on
//! as many threads in this process as the agents have workers: the speedup
//! this machine allows without a network, so that `vs_threads` separates
//! skelpi's overhead from the machine's limits (on an embedded cluster the
//! agents share this machine's cores).

use indicatif::ProgressBar;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use skelpi::cluster::Cluster;
use skelpi::runtime::handoff::{Inputs, Results};
use skelpi::runtime::job;
use skelpi::runtime::{JobError, TaskError};
use skelpi::stats::median;
use skelpi_agent::kernels::Registry;
use skelpi_proto::Array;
use skelpi_proto::skeleton::{Kernel, Skeleton};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// What to measure.
#[derive(Debug, Clone)]
pub struct PmapOptions {
    /// Floats in the input (D).
    pub d: usize,
    /// Times `erf` is applied to each element (C).
    pub c: u32,
    /// Numbers of chunks (N) to try.
    pub chunks: Vec<usize>,
    /// Numbers of agents to try (the first k of the pool); empty: 1 to all.
    pub agents: Vec<usize>,
    /// Timed repeats per point (the median is reported); at least 1.
    pub repeats: usize,
    /// Seed of the random input.
    pub seed: u64,
}

impl Default for PmapOptions {
    fn default() -> Self {
        PmapOptions {
            d: 200_000,
            c: 50,
            chunks: vec![2, 4, 8, 16, 32],
            agents: Vec::new(),
            repeats: 5,
            seed: 2010,
        }
    }
}

/// One point: k agents, N chunks.
#[derive(Debug, Clone, Serialize)]
pub struct PmapRow {
    /// Agents used (the first k of the pool).
    pub agents: usize,
    /// Worker threads of those agents together.
    pub workers: usize,
    /// Chunks (N).
    pub chunks: usize,
    /// Median wall time of the pmap, seconds.
    pub time_s: f64,
    /// Median over repeats of sequential time / pmap time, the sequential
    /// run timed just before each pmap.
    pub speedup: f64,
    /// Speedup / workers.
    pub efficiency: f64,
    /// Speedup of the same chunks on as many threads in this process (no
    /// network, no agents): what this machine allows.
    pub threads_speedup: f64,
    /// speedup / threads_speedup: the fraction of the machine's parallel
    /// speedup that pmap over agents achieves.
    pub vs_threads: f64,
}

/// The whole table.
#[derive(Debug, Clone, Serialize)]
pub struct PmapReport {
    /// Where the agents came from.
    pub origin: String,
    /// Floats in the input.
    pub d: usize,
    /// erf applications per element.
    pub c: u32,
    /// Timed repeats per point.
    pub repeats: usize,
    /// Median time of the sequential runs in this process, seconds.
    pub sequential_s: f64,
    /// The points.
    pub rows: Vec<PmapRow>,
}

/// The agent counts [`run`] will try on a pool of `pool` agents.
pub fn agent_counts(opts: &PmapOptions, pool: usize) -> Vec<usize> {
    if opts.agents.is_empty() {
        (1..=pool).collect()
    } else {
        opts.agents
            .iter()
            .copied()
            .filter(|&k| k >= 1 && k <= pool)
            .collect()
    }
}

/// Number of progress steps [`run`] will report on a pool of `pool` agents.
pub fn steps(opts: &PmapOptions, pool: usize) -> u64 {
    let points = agent_counts(opts, pool).len() * opts.chunks.len();
    (points * opts.repeats.max(1) + 1) as u64
}

/// Runs the table.
pub async fn run(
    cluster: &mut Cluster,
    origin: &str,
    opts: &PmapOptions,
    progress: &ProgressBar,
) -> Result<PmapReport, JobError> {
    if let Some(&bad) = opts.chunks.iter().find(|&&n| n == 0 || n > 1 << 20) {
        return Err(JobError::Invalid(format!(
            "pmap: {bad} chunks (expected 1 to {})",
            1 << 20
        )));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    let input: Vec<f64> = (0..opts.d).map(|_| rng.random_range(-3.0..3.0)).collect();
    let kernel = Kernel::new("erf_burn", [f64::from(opts.c)]);
    let repeats = opts.repeats.max(1);

    progress.set_message("pmap: sequential");
    let registry = Registry::builtin();
    let erf = registry
        .get(&kernel.name)
        .ok_or_else(|| JobError::Invalid("this build has no erf_burn kernel".into()))?;
    // The sequential run, timed; it also gives the reference result.
    let run_sequential = || -> Result<(Duration, Vec<f64>), JobError> {
        let data = Array::list(input.clone());
        let start = Instant::now();
        let out = erf.call(&kernel.args, black_box(data)).map_err(|e| {
            JobError::Task(TaskError {
                job: None,
                task: "sequential".into(),
                kernel: kernel.name.clone(),
                agent: "this process".into(),
                message: e.to_string(),
                panicked: false,
            })
        })?;
        Ok((start.elapsed(), black_box(out).data))
    };
    let (first, reference) = run_sequential()?;
    let mut seq_times = vec![first];
    progress.inc(1);

    let mut rows = Vec::new();
    for k in agent_counts(opts, cluster.agents().len()) {
        let conns = &mut cluster.agents_mut()[..k];
        let workers: usize = conns.iter().map(|c| c.info().cores as usize).sum();
        for &n in &opts.chunks {
            progress.set_message(format!("pmap: {}, {n} chunks", skelpi::pool::agents(k)));
            let tree = Skeleton::map(n as u32, Skeleton::seq(kernel.clone()));
            let mut times = Vec::with_capacity(repeats);
            let mut ratios = Vec::with_capacity(repeats);
            let mut thread_ratios = Vec::with_capacity(repeats);
            for _ in 0..repeats {
                // The same chunks on `workers` threads here, on demand.
                let (seq_time, _) = run_sequential()?;
                let thread_time = on_threads(&*erf, &kernel.args, &input, n, workers)?;
                thread_ratios.push(ratio(seq_time, thread_time));
                // Sequential and distributed alternate, so that drift in
                // the machine's speed hits both.
                let (seq_time, _) = run_sequential()?;
                seq_times.push(seq_time);
                let data = Array::list(input.clone());
                let mut out = None;
                let start = Instant::now();
                let limits = job::Limits {
                    stall: Some(skelpi::runtime::stall::DEFAULT_STALL_TIMEOUT),
                    ..Default::default()
                };
                // One input, one result: handled on the job's thread.
                let (input, result) = (Inputs::here([data]), Results::here(|_, a| out = Some(a)));
                job::run(conns, &tree, input, result, limits).await?;
                let time = start.elapsed();
                times.push(time);
                ratios.push(ratio(seq_time, time));
                let out = black_box(out).map(|a| a.data);
                if out.as_deref() != Some(&reference[..]) {
                    return Err(JobError::Invalid(format!(
                        "pmap on {} with {n} chunks gave a result that differs from the sequential one",
                        skelpi::pool::agents(k)
                    )));
                }
                progress.inc(1);
            }
            let time = median(&times);
            let speedup = median_f64(&mut ratios);
            let threads_speedup = median_f64(&mut thread_ratios);
            rows.push(PmapRow {
                agents: k,
                workers,
                chunks: n,
                time_s: time.as_secs_f64(),
                speedup,
                efficiency: speedup / workers.max(1) as f64,
                threads_speedup,
                vs_threads: speedup / threads_speedup.max(1e-12),
            });
        }
    }
    Ok(PmapReport {
        origin: origin.to_owned(),
        d: opts.d,
        c: opts.c,
        repeats,
        sequential_s: median(&seq_times).as_secs_f64(),
        rows,
    })
}

fn median_f64(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Runs `kernel` over `input` split into `chunks` chunks on `threads`
/// threads of this process, each taking the next chunk when it is free;
/// returns the wall time. The results are consumed.
fn on_threads(
    kernel: &dyn skelpi_agent::kernels::Kernel,
    args: &[f64],
    input: &[f64],
    chunks: usize,
    threads: usize,
) -> Result<Duration, JobError> {
    let parts: Vec<Vec<f64>> = skelpi::runtime::split(input, chunks);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::Mutex::new(None);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(part) = parts.get(i) else { break };
                    match kernel.call(args, Array::list(part.clone())) {
                        Ok(out) => {
                            black_box(out);
                        }
                        Err(e) => {
                            *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                        }
                    }
                }
            });
        }
    });
    let elapsed = start.elapsed();
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(message) => Err(JobError::Invalid(format!("threads baseline: {message}"))),
        None => Ok(elapsed),
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-12)
}
