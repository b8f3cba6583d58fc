//! `skelpi run JOB.toml`: runs a job file's skeleton on the pool.

use super::pool_args::PoolArgs;
use crate::jobfile;
use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use skelpi::cluster::streamable;
use skelpi::pool;
use skelpi::runtime::autonomic::{self, Contract};
use skelpi::runtime::stream::{self, SwapOutcome};
use skelpi_proto::Array;
use skelpi_proto::skeleton::{Kernel, Skeleton};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// Flags of `skelpi run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The job file (TOML): `skeleton = "..."` and an `[input]` table; see
    /// the README's "Running skeletons" for the format.
    #[arg(value_name = "JOB.toml")]
    job: PathBuf,
    /// Write every result to this file as JSON lines
    /// (`{"index": 3, "data": [...]}`), in the order they leave the tree;
    /// NaN and infinities as the strings "NaN", "Infinity", "-Infinity".
    /// A job file reads it back with `file = "FILE.jsonl"`.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Results to print when there is no --out (the first N).
    #[arg(long, default_value_t = 5, value_name = "N")]
    show: usize,
    /// Trace the job: write DIR/trace.json (Chrome Trace Event format,
    /// opens in https://ui.perfetto.dev), DIR/analysis.txt and
    /// DIR/analysis.json (compute vs communication per node, Ts, Ta and
    /// rho per stage, the bottleneck). For jobs the master routes, the
    /// trace is written even when the job fails (agents that cannot be
    /// reached are left out, with a note); a streamed pipeline that fails
    /// leaves none.
    #[arg(long, value_name = "DIR")]
    trace: Option<PathBuf>,
    /// Let a manager set each stage's degree while the job runs, starting
    /// from one worker per stage (or a farm's replicas): it gives worker
    /// slots to the bottleneck stage (a plain stage becomes a farm), takes
    /// them back from stages with capacity to spare, and admits items only
    /// as the stages have room. Every decision is printed as it is made
    /// and marked in the trace; a summary says whether the contract was
    /// met. For a pipeline of seq(k) and farm(seq(k)) stages, or one of
    /// them; items travel through the master between stages.
    #[arg(long)]
    autonomic: bool,
    /// The manager's contract: this many results per second (the feeder is
    /// paced to it, and stages get the slots it needs, no more). Without
    /// it: as fast as the pool allows. Implies --autonomic.
    #[arg(long, value_name = "ITEMS_PER_S", value_parser = positive_rate)]
    target_throughput: Option<f64>,
    /// Hot code loading: once RESULTS results are in, stage STAGE (from 0)
    /// of the streamed pipeline runs KERNEL from its next item on (e.g.
    /// `--swap '1=scale(3)@5000'`, or a `wasm:` kernel). No item is lost or
    /// run twice; each stage reports the first item its new kernel ran.
    /// Repeatable. For pipelines of seq stages (those stream agent to
    /// agent).
    #[arg(long, value_name = "STAGE=KERNEL@RESULTS", value_parser = parse_swap,
          conflicts_with_all = ["autonomic", "target_throughput"])]
    swap: Vec<SwapArg>,
    /// Stop the job, saying where each stage or kernel's tasks stand
    /// (items in, done, passed on), when nothing has moved for this long
    /// while the agents still answer: a hang becomes a message. Seconds,
    /// or a duration like `90s` or `5m`; 0 waits for ever. Raise it if one
    /// kernel call can take longer.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = stall_timeout)]
    stall_timeout: StallTimeout,
    /// Fail a task that takes longer than this on its agent (queueing
    /// included): the agent stops a built-in kernel at once, and the job
    /// ends naming the task. Seconds or a duration like `500ms`; 0 (the
    /// default) sets no bound. For jobs the master routes (not the stages
    /// of streamed pipelines).
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = stall_timeout)]
    task_deadline: StallTimeout,
}

/// `--stall-timeout` or `--task-deadline`: `None` for no bound.
#[derive(Debug, Clone, Copy)]
struct StallTimeout(Option<std::time::Duration>);

/// A duration in seconds or humantime's form, 0 for none.
fn stall_timeout(s: &str) -> Result<StallTimeout, String> {
    let bound = match s.trim().parse::<f64>() {
        Ok(secs) => std::time::Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("{s} is not a duration of 0 or more seconds"))?,
        Err(_) => humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?,
    };
    Ok(StallTimeout((!bound.is_zero()).then_some(bound)))
}

/// One `--swap`.
#[derive(Debug, Clone)]
pub struct SwapArg {
    stage: usize,
    kernel: Kernel,
    after: u64,
}

fn parse_swap(s: &str) -> Result<SwapArg, String> {
    let form = "expected STAGE=KERNEL@RESULTS, e.g. 1=scale(3)@5000";
    let (stage, rest) = s.split_once('=').ok_or(form)?;
    let (kernel, after) = rest.rsplit_once('@').ok_or(form)?;
    let stage = stage
        .trim()
        .parse()
        .map_err(|_| format!("stage {stage:?} is not a number ({form})"))?;
    let after = after
        .trim()
        .parse()
        .map_err(|_| format!("{after:?} is not a count of results ({form})"))?;
    let kernel = match format!("seq({kernel})").parse::<Skeleton>() {
        Ok(Skeleton::Seq(k)) => k,
        Ok(_) => return Err(format!("{kernel:?} is not a kernel ({form})")),
        Err(e) => return Err(format!("kernel {kernel:?}: {e}")),
    };
    Ok(SwapArg {
        stage,
        kernel,
        after,
    })
}

fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        Ok(v) => Err(format!("{v} is not a positive rate (items per second)")),
        Err(e) => Err(format!("{s:?} is not a number: {e}")),
    }
}

/// Runs the job.
pub fn run(pool_args: &PoolArgs, args: &RunArgs) -> anyhow::Result<()> {
    let job = jobfile::load(&args.job)?;
    // Swaps need a streamed pipeline, with the stages they name.
    let streamed = streamable(&job.skeleton);
    if let Some(first) = args.swap.first() {
        let Some(stages) = &streamed else {
            anyhow::bail!(
                "--swap {}=...: swaps are for pipelines of seq stages (streamed agent to \
                 agent); this job runs {}",
                first.stage,
                job.skeleton
            );
        };
        if let Some(bad) = args.swap.iter().find(|s| s.stage >= stages.len()) {
            anyhow::bail!(
                "--swap {}={}: the pipeline has stages 0 to {}",
                bad.stage,
                bad.kernel,
                stages.len() - 1
            );
        }
    }
    let mut out = match &args.out {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => None,
    };
    smol::block_on(async {
        let mut pool = pool::connect(&pool_args.options(true)).await?;
        eprintln!("{}", pool.origin);
        pool.cluster.set_tracing(args.trace.is_some());
        pool.cluster.set_stall_timeout(args.stall_timeout.0);
        pool.cluster.set_task_deadline(args.task_deadline.0);
        // Module files the job names (`wasm:FILE.wasm:export`, relative
        // to the job file) go to the agents first.
        let base = args.job.parent().unwrap_or(std::path::Path::new("."));
        let (skeleton, pushed) = pool.cluster.push_named_modules(&job.skeleton, base).await?;
        for p in &pushed {
            eprintln!("module {} stored on {}", p.hash, p.stored_on.join(", "));
        }
        let job = jobfile::Job { skeleton, ..job };
        // Module files named by swaps too.
        let mut swap_args = args.swap.clone();
        for s in &mut swap_args {
            let tree = Skeleton::seq(s.kernel.clone());
            let (tree, pushed) = pool.cluster.push_named_modules(&tree, base).await?;
            if let (Skeleton::Seq(k), Some(p)) = (tree, pushed.first()) {
                eprintln!("module {} stored on {}", p.hash, p.stored_on.join(", "));
                s.kernel = k;
            }
        }
        let inputs = job.input.len();
        eprintln!("running {} on {inputs} inputs", job.skeleton);
        let progress = ProgressBar::new(inputs as u64);
        progress.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} results {msg}")
                .expect("static template"),
        );
        let start = Instant::now();
        let mut count = 0usize;
        let mut shown = Vec::new();
        let mut write_error = None;
        let on_result = |index: u64, a: Array| {
            count += 1;
            progress.inc(1);
            match out.as_mut() {
                Some(w) if write_error.is_none() => {
                    let line = jobfile::result_line(index, &a.data);
                    if let Err(e) = writeln!(w, "{line}") {
                        write_error = Some(e);
                    }
                }
                Some(_) => {}
                None if shown.len() < args.show => shown.push((index, a.data)),
                None => {}
            }
        };
        let mut report = None;
        let result = if args.autonomic || args.target_throughput.is_some() {
            let opts = autonomic::Options {
                contract: args
                    .target_throughput
                    .map_or(Contract::Fastest, Contract::Throughput),
                ..autonomic::Options::default()
            };
            eprintln!("manager: contract {}", opts.contract);
            let on_decision =
                |d: &autonomic::Decision| progress.suspend(|| eprintln!("manager: {d}"));
            let (result, got) = pool
                .cluster
                .run_managed(
                    &job.skeleton,
                    job.input.arrays(),
                    &opts,
                    on_result,
                    on_decision,
                )
                .await;
            report = got;
            result
        } else if let (false, Some(stages)) = (swap_args.is_empty(), streamable(&job.skeleton)) {
            let (swapper, swaps) = stream::swaps(stages.len());
            let ask = |s: &SwapArg| {
                swapper.swap(s.stage, s.kernel.clone());
                progress.suspend(|| {
                    eprintln!(
                        "swap: asked stage {} to run {} (after {} results)",
                        s.stage, s.kernel, s.after
                    )
                });
            };
            swap_args.iter().filter(|s| s.after == 0).for_each(ask);
            let mut seen = 0u64;
            let mut on_result = on_result;
            let with_swaps = |index: u64, a: Array| {
                on_result(index, a);
                seen += 1;
                swap_args.iter().filter(|s| s.after == seen).for_each(ask);
            };
            let inputs_total = inputs as u64;
            let never = swap_args.iter().filter(|s| s.after > inputs_total);
            for s in never {
                eprintln!(
                    "swap: stage {} will not run {}: the job has {inputs_total} results, \
                     fewer than {}",
                    s.stage, s.kernel, s.after
                );
            }
            let stages = &stages[..];
            let inputs = job.input.arrays();
            let got = pool
                .cluster
                .stream_pipeline_swapping(stages, inputs, None, &swaps, with_swaps)
                .await;
            got.map(|reports| {
                for r in &reports {
                    for s in &r.swaps {
                        let (stage, kernel) = (r.stage, &s.kernel);
                        match &s.outcome {
                            SwapOutcome::From(k) => {
                                eprintln!("swap: stage {stage} runs {kernel} from item {k}")
                            }
                            SwapOutcome::By(k) => eprintln!(
                                "swap: stage {stage} runs {kernel} from item {k} at the latest \
                                 (its agent was lost before it answered)"
                            ),
                            SwapOutcome::Refused(why) => {
                                eprintln!(
                                    "swap: stage {stage} kept its kernel, not {kernel}: {why}"
                                )
                            }
                            SwapOutcome::NotApplied => eprintln!(
                                "swap: stage {stage} never ran {kernel}: the stream ended first"
                            ),
                        }
                    }
                }
            })
        } else {
            pool.cluster
                .run_each(&job.skeleton, job.input.arrays(), on_result)
                .await
        };
        progress.finish_and_clear();
        if let Some(report) = &report {
            eprint!("{}", report.summary());
        }
        let elapsed = start.elapsed();
        let trace = pool.cluster.take_trace();
        pool.cluster.close().await;
        if let Some(dir) = &args.trace {
            let saved = super::trace::save(trace, dir, &format!("job {}", args.job.display()));
            match (&result, saved) {
                (_, Ok(())) => {}
                (Ok(()), Err(e)) => return Err(e),
                (Err(_), Err(e)) => eprintln!("skelpi: {e:#}"),
            }
        }
        if let Err(skelpi::runtime::JobError::Stalled(_)) = &result {
            eprintln!("skelpi: hint: --stall-timeout sets how long a job may make no progress");
        }
        result.with_context(|| format!("job {} failed", args.job.display()))?;
        if let Some(e) = write_error {
            return Err(e).context(format!(
                "cannot write {}",
                args.out.as_ref().expect("set").display()
            ));
        }
        if let Some(mut w) = out {
            w.flush()?;
        }
        for (index, data) in shown {
            println!("result of input {index}: {}", preview(&data));
        }
        eprintln!(
            "{count} results in {elapsed:.2?} ({:.1} results/s){}",
            count as f64 / elapsed.as_secs_f64().max(1e-9),
            args.out
                .as_ref()
                .map_or(String::new(), |p| format!(", written to {}", p.display()))
        );
        Ok(())
    })
}

/// The first few elements of an array and its length.
fn preview(data: &[f64]) -> String {
    let head: Vec<String> = data.iter().take(6).map(|v| format!("{v}")).collect();
    if data.len() > 6 {
        format!("[{}, ...] ({} floats)", head.join(", "), data.len())
    } else {
        format!("[{}]", head.join(", "))
    }
}
