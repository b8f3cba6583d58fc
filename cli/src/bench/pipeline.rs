//! The seed's pipeline benchmark: S stages of `matmul_power(c, d)` (each
//! multiplies c copies of a d×d matrix and passes its input through), fed M
//! random D×D matrices at a chosen inter-arrival time or as fast as
//! possible. Stage i is placed on agent i mod (agents), as `get_nodes`.
//!
//! Per stage, from the master's timing of every call: the service time Ts
//! (mean time from sending an item to the stage to its result), the
//! inter-arrival time Ta (mean spacing of the items reaching the stage:
//! the previous stage's results, or the feed for the first one; when
//! unpaced, the first stage takes items as fast as it can and Ta is its own
//! cycle), and the utilisation rho = Ts/Ta. The measured throughput is
//! compared with the model 1/max(Ts).

use indicatif::ProgressBar;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use skelpi::cluster::Cluster;
use skelpi::runtime::JobError;
use skelpi_proto::Array;
use skelpi_proto::Shape;
use skelpi_proto::skeleton::{Kernel, Skeleton};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// What to measure.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Stages (S).
    pub stages: usize,
    /// Matrices fed (M).
    pub items: usize,
    /// Size D of the D×D matrices fed.
    pub size: usize,
    /// Multiplications per stage (c of `matmul_power(c, d)`), one entry per
    /// stage or one for all.
    pub work: Vec<u32>,
    /// Size d of the matrices each stage multiplies.
    pub work_size: u32,
    /// Inter-arrival time of the feed; `None`: as fast as possible.
    pub interval: Option<Duration>,
    /// Seed of the random matrices.
    pub seed: u64,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            stages: 3,
            items: 200,
            size: 100,
            work: vec![4],
            work_size: 100,
            interval: None,
            seed: 2010,
        }
    }
}

/// One stage.
#[derive(Debug, Clone, Serialize)]
pub struct StageRow {
    /// Stage number, from 0.
    pub stage: usize,
    /// The kernel.
    pub kernel: String,
    /// The agent it was placed on.
    pub agent: String,
    /// Mean service time, seconds.
    pub ts_s: f64,
    /// Mean inter-arrival time, seconds.
    pub ta_s: f64,
    /// Ts / Ta.
    pub rho: f64,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineReport {
    /// Where the agents came from.
    pub origin: String,
    /// Matrices fed.
    pub items: usize,
    /// Their size D.
    pub size: usize,
    /// The feed's inter-arrival time, seconds (`None`: as fast as possible).
    pub interval_s: Option<f64>,
    /// The stages.
    pub stages: Vec<StageRow>,
    /// Items per second leaving the last stage, first to last result.
    pub throughput: f64,
    /// 1 / max(Ts).
    pub model_throughput: f64,
    /// throughput / model.
    pub vs_model: f64,
    /// Wall time of the whole job, seconds.
    pub wall_s: f64,
}

/// The tree measured.
pub fn tree(opts: &PipelineOptions) -> Skeleton {
    Skeleton::pipe((0..opts.stages.max(1)).map(|i| {
        let c = opts.work.get(i).or(opts.work.last()).copied().unwrap_or(1);
        Skeleton::seq(Kernel::new(
            "matmul_power",
            [f64::from(c), f64::from(opts.work_size)],
        ))
    }))
}

/// Runs the measurement (one run; M items give the averages).
pub async fn run(
    cluster: &mut Cluster,
    origin: &str,
    opts: &PipelineOptions,
    progress: &ProgressBar,
) -> Result<PipelineReport, JobError> {
    if opts.items < 2 {
        return Err(JobError::Invalid(
            "the pipeline benchmark needs at least 2 items to measure spacing".into(),
        ));
    }
    let n = opts
        .size
        .checked_mul(opts.size)
        .filter(|&n| n <= 1 << 28)
        .ok_or_else(|| JobError::Invalid(format!("--size {} is too large", opts.size)))?;
    let tree = tree(opts);
    let Skeleton::Pipe(stages) = &tree else {
        unreachable!("tree() builds a pipe")
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    let d = opts.size as u64;
    // Generated as the pipeline asks for them: M matrices never sit in
    // memory at once. Each result is checked against its input (the stages
    // pass their input through) by a running checksum.
    let mut sum_in = 0.0f64;
    let inputs = (0..opts.items).map(|_| {
        let data: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        sum_in += data.iter().sum::<f64>();
        Array {
            shape: Shape::Matrix { rows: d, cols: d },
            data,
        }
    });
    let kernels: Vec<Kernel> = stages
        .iter()
        .map(|s| match s {
            Skeleton::Seq(k) => k.clone(),
            _ => unreachable!("tree() builds seq stages"),
        })
        .collect();
    let mut sum_out = 0.0f64;
    let mut count = 0usize;
    let mut in_order = true;
    let mut arrivals = Vec::with_capacity(opts.items);
    progress.set_message(format!("pipeline: {tree}"));
    let start = Instant::now();
    let reports = cluster
        .stream_pipeline(&kernels, inputs, opts.interval, |index, a| {
            arrivals.push(Instant::now());
            sum_out += black_box(a.data.iter().sum::<f64>());
            in_order &= index == count as u64;
            count += 1;
            progress.inc(1);
        })
        .await?;
    let wall = start.elapsed();
    if !in_order || count != opts.items || (sum_out - sum_in).abs() > 1e-6 * sum_in.abs().max(1.0) {
        return Err(JobError::Invalid(format!(
            "the pipeline returned {count} of {} items, out of order, or altered",
            opts.items
        )));
    }
    let rows: Vec<StageRow> = reports
        .iter()
        .map(|r| {
            let items = r.items.max(1) as u32;
            let ts = r.busy / items;
            let ta = r.span / (items.max(2) - 1);
            StageRow {
                stage: r.stage,
                kernel: stages[r.stage].to_string(),
                agent: r.agent.clone(),
                ts_s: ts.as_secs_f64(),
                ta_s: ta.as_secs_f64(),
                rho: ts.as_secs_f64() / ta.as_secs_f64().max(1e-12),
            }
        })
        .collect();
    let throughput = 1.0 / spacing(&arrivals).as_secs_f64().max(1e-12);
    let max_ts = rows.iter().map(|r| r.ts_s).fold(0.0, f64::max);
    let model = 1.0 / max_ts.max(1e-12);
    Ok(PipelineReport {
        origin: origin.to_owned(),
        items: opts.items,
        size: opts.size,
        interval_s: opts.interval.map(|d| d.as_secs_f64()),
        stages: rows,
        throughput,
        model_throughput: model,
        vs_model: throughput / model,
        wall_s: wall.as_secs_f64(),
    })
}

/// Mean spacing of instants taken in item order: (last - first) / (n - 1).
fn spacing(ts: &[Instant]) -> Duration {
    match (ts.iter().min(), ts.iter().max()) {
        (Some(a), Some(b)) if ts.len() > 1 => (*b - *a) / (ts.len() - 1) as u32,
        _ => Duration::ZERO,
    }
}
