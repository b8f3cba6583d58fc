//! `skelpi run JOB.toml`: runs a job file's skeleton on the pool.

use super::pool_args::PoolArgs;
use crate::jobfile;
use anyhow::Context;
use clap::Args;
use skelpi::JobBuilder;
use skelpi::jobs::{Event, Execution, RunError, Swap};
use skelpi::pool;
use skelpi::runtime::JobError;
use skelpi::runtime::autonomic::{self, Contract};
use skelpi::runtime::stream::SwapOutcome;
use skelpi::watch::{self, Publisher, Watch};
use skelpi_proto::Array;
use skelpi_proto::skeleton::Skeleton;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

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
    /// When the job ends, print one JSON object on stdout instead of text:
    /// the job file, how it ran, the results' count, time and rate, the
    /// --out file or the first --show results (`{"index", "data"}`).
    /// Errors still go to stderr, with exit status 1 (2 for a usage error).
    #[arg(long)]
    json: bool,
    /// Results to print when there is no --out (the first N).
    #[arg(long, default_value_t = 5, value_name = "N")]
    show: usize,
    /// Trace the job: write DIR/trace.json (Chrome Trace Event format,
    /// opens in https://ui.perfetto.dev), DIR/analysis.txt and
    /// DIR/analysis.json (compute vs communication per node, Ts, Ta and
    /// rho per stage, the bottleneck). The trace is written even when the
    /// job fails (agents that cannot be reached are left out, with a
    /// note); a streamed pipeline that fails, or starts again after losing
    /// an agent, leaves the trace of its first run up to that point,
    /// marked with why it stopped.
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
    /// Hot code loading: once RESULTS results are in, stage STAGE runs
    /// KERNEL from one switch point on (e.g. `--swap '1=scale(3)@5000'`,
    /// or a `wasm:` kernel). The stages are the job's seq kernels,
    /// numbered from 0 in the order written, in any job but a managed
    /// one: a streamed pipeline's stage switches at its next item; a
    /// farm's, map's or routed pipeline's at the input after the last it
    /// sent. Items before the point run the old kernel, from it on the new;
    /// none is lost or run twice; each stage reports its switch point.
    /// A kernel some agent lacks is refused. Repeatable.
    #[arg(long, value_name = "STAGE=KERNEL@RESULTS", value_parser = parse_swap,
          conflicts_with_all = ["autonomic", "target_throughput"])]
    swap: Vec<Swap>,
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
    /// Memory the master may use to hold the items it fed a streamed
    /// pipeline until their results are back, so that it can replay them
    /// on other agents when a stage's agent is lost. The window holds at
    /// most 1,024 items per stage and at most this many bytes of items;
    /// when full, feeding waits for results (large items then stream with
    /// fewer in flight). An item larger than this fails the job before it
    /// is sent (split it with map(n, ...)). E.g. 64MiB, 1GiB, 500MB.
    #[arg(long, value_name = "SIZE", default_value = "256MiB")]
    max_replay_memory: bytesize::ByteSize,
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
fn parse_swap(s: &str) -> Result<Swap, String> {
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
    Ok(Swap {
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
    let inputs = job.input.len();
    // `skelpi top` shows the job while it runs (see skelpi::watch).
    let watch = Watch::new(&args.job.display().to_string(), &job.skeleton.to_string());
    let builder = builder(args, job).watch(watch.clone());
    // Refused before the pool is reached: swaps of a managed job, or of
    // stages the job does not have.
    builder.plan()?;
    let mut sink = Sink::create(args)?;
    smol::block_on(async {
        let mut pool = pool::connect(&pool_args.options(true)?).await?;
        eprintln!("{}", pool.origin);
        pool.cluster.set_stall_timeout(args.stall_timeout.0);
        pool.cluster.set_task_deadline(args.task_deadline.0);
        let replay = usize::try_from(args.max_replay_memory.as_u64()).unwrap_or(usize::MAX);
        pool.cluster.set_max_replay_bytes(replay);
        let _published = Publisher::start(watch.clone(), &watch::jobs_dir())
            .map_err(|e| log::info!("the job is not shown to skelpi top: {e}"))
            .ok();
        let progress = super::progress::bar(inputs as u64, "results");
        let began = Instant::now();
        let mut start = Instant::now();
        let job = builder
            .on_result(|index, a| {
                progress.inc(1);
                sink.take(index, a);
            })
            .on_event(|e| progress.suspend(|| say(e, inputs, &mut start)))
            .run(&mut pool.cluster);
        let outcome = futures_lite::future::or(async { Some(job.await) }, async {
            interrupt().await;
            None
        })
        .await;
        // (Finishing sets the position to the end.)
        let done = progress.position();
        progress.finish_and_clear();
        let Some(outcome) = outcome else {
            return Err(interrupted(args, sink, done, inputs, start));
        };
        if let Some(report) = &outcome.report {
            eprint!("{}", report.summary());
        }
        let elapsed = start.elapsed();
        let lost = lost_since(&pool.cluster, began);
        pool.cluster.close().await;
        let status = watch.snapshot();
        let tasks = Tasks {
            resent: status.resent,
            copies: status.copies,
        };
        finish(args, outcome, sink, (elapsed, lost, tasks))
    })
}

/// Tasks sent again, and copies of tasks (overdue, or at the tail), in a job.
#[derive(Debug, Clone, Copy)]
struct Tasks {
    resent: u64,
    copies: u64,
}

/// An agent lost during a job: its name and address, and whether it
/// serves again (it came back within the job).
type Lost = (String, std::net::SocketAddr, bool);

/// The agents lost since `began` (a loss recorded then, or a connection
/// broken since).
fn lost_since(cluster: &skelpi::cluster::Cluster, began: Instant) -> Vec<Lost> {
    cluster
        .agents()
        .iter()
        .filter(|a| {
            a.losses().iter().any(|(_, at)| *at >= began)
                || a.broken().is_some_and(|(_, at)| at >= began)
        })
        .map(|a| (a.info().name.clone(), a.addr(), !a.is_broken()))
        .collect()
}

/// "; 2 agents lost during the job (pi-2 at 10.0.0.2:7871, back in it;
/// pi-3 at ...), 14 tasks sent again, 2 tasks copied", or nothing.
fn lost_line(lost: &[Lost], tasks: Tasks) -> String {
    let plural = |n: u64| if n == 1 { "" } else { "s" };
    let mut resent = match tasks.resent {
        0 => String::new(),
        n => format!(", {n} task{} sent again", plural(n)),
    };
    if tasks.copies > 0 {
        let n = tasks.copies;
        resent.push_str(&format!(
            ", {n} task{} copied to other agents (the first result kept)",
            plural(n)
        ));
    }
    if lost.is_empty() {
        return resent.replacen(',', ";", 1);
    }
    let names: Vec<String> = lost
        .iter()
        .map(|(name, addr, back)| {
            if *back {
                format!("{name} at {addr}, back in it")
            } else {
                format!("{name} at {addr}")
            }
        })
        .collect();
    let n = lost.len();
    format!(
        "; {n} agent{} lost during the job ({}){resent}",
        if n == 1 { "" } else { "s" },
        names.join("; ")
    )
}

/// Returns when the user presses Ctrl-C (SIGINT); never if that cannot be
/// watched.
async fn interrupt() {
    use futures_lite::StreamExt;
    match async_signal::Signals::new([async_signal::Signal::Int]) {
        Ok(mut signals) => {
            signals.next().await;
        }
        Err(_) => futures_lite::future::pending().await,
    }
}

/// After Ctrl-C: the results so far kept in `--out`, and how far the job
/// got (`done` of `inputs` results since `start`).
fn interrupted(
    args: &RunArgs,
    sink: Sink,
    done: u64,
    inputs: usize,
    start: Instant,
) -> anyhow::Error {
    let kept = match (sink.finish(args), &args.out) {
        (Ok(_), Some(out)) => format!("; those results are in {}", out.display()),
        (Ok(_), None) => String::new(),
        (Err(e), _) => format!("; {e:#}"),
    };
    let elapsed = start.elapsed();
    anyhow::Error::new(crate::failure::Interrupted).context(format!(
        "interrupted after {done} of {inputs} results in {elapsed:.2?}{kept}"
    ))
}

/// The job of `job`, as the flags say (no sinks yet).
fn builder(args: &RunArgs, job: jobfile::Job) -> JobBuilder<'static> {
    // Module files the job names (`wasm:FILE.wasm:export`, relative to
    // the job file) go to the agents first.
    let base = args.job.parent().unwrap_or(std::path::Path::new("."));
    let mut builder = JobBuilder::new(job.skeleton)
        .inputs(job.input.arrays())
        .trace(args.trace.is_some())
        .modules_relative_to(base);
    if args.autonomic || args.target_throughput.is_some() {
        builder = builder.managed(autonomic::Options {
            contract: args
                .target_throughput
                .map_or(Contract::Fastest, Contract::Throughput),
            ..autonomic::Options::default()
        });
    }
    args.swap.iter().cloned().fold(builder, JobBuilder::swap)
}

/// Prints what the job reports; `start` is reset when it starts.
fn say(event: Event<'_>, inputs: usize, start: &mut Instant) {
    match event {
        Event::ModuleStored(p) => {
            eprintln!("module {} stored on {}", p.hash, p.stored_on.join(", "))
        }
        Event::Started {
            skeleton,
            execution,
        } => {
            eprintln!("running {skeleton} on {inputs} inputs");
            if let Execution::Managed(contract) = execution {
                eprintln!("manager: contract {contract}");
            }
            *start = Instant::now();
        }
        Event::Decision(d) => eprintln!("manager: {d}"),
        Event::SwapAsked(s) => eprintln!(
            "swap: asked stage {} to run {} (after {} results)",
            s.stage, s.kernel, s.after
        ),
        Event::SwapNever { swap: s, inputs } => eprintln!(
            "swap: stage {} will not run {}: the job has {inputs} results, fewer than {}",
            s.stage, s.kernel, s.after
        ),
        Event::Swapped { stage, swapped } => {
            let kernel = &swapped.kernel;
            match &swapped.outcome {
                SwapOutcome::From(k) => {
                    eprintln!("swap: stage {stage} runs {kernel} from item {k}")
                }
                SwapOutcome::By(k) => eprintln!(
                    "swap: stage {stage} runs {kernel} from item {k} at the latest \
                     (its agent was lost before it answered)"
                ),
                SwapOutcome::Refused(why) => {
                    eprintln!("swap: stage {stage} kept its kernel, not {kernel}: {why}")
                }
                SwapOutcome::NotApplied => {
                    eprintln!("swap: stage {stage} never ran {kernel}: the job ended first")
                }
            }
        }
        _ => {}
    }
}

/// After the job: its trace saved, its error or its results reported.
fn finish(
    args: &RunArgs,
    outcome: skelpi::jobs::Outcome,
    sink: Sink,
    (elapsed, lost, tasks): (Duration, Vec<Lost>, Tasks),
) -> anyhow::Result<()> {
    let result = match outcome.result {
        Ok(()) => Ok(()),
        Err(RunError::Job(e)) => Err(e),
        // A module not pushed: the job never started.
        Err(e) => return Err(e.into()),
    };
    if let Some(dir) = &args.trace {
        let saved = super::trace::save(outcome.trace, dir, &format!("job {}", args.job.display()));
        match (&result, saved) {
            (_, Ok(())) => {}
            (Ok(()), Err(e)) => return Err(e),
            (Err(_), Err(e)) => eprintln!("skelpi: {e:#}"),
        }
    }
    if let Err(JobError::Stalled(_)) = &result {
        eprintln!("skelpi: hint: --stall-timeout sets how long a job may make no progress");
    }
    result.with_context(|| format!("job {} failed", args.job.display()))?;
    let shown = sink.finish(args)?;
    let count = outcome.results;
    let rate = count as f64 / elapsed.as_secs_f64().max(1e-9);
    if args.json {
        let execution = outcome.execution.to_string();
        let shown: Vec<_> = shown
            .iter()
            .map(|(index, data)| serde_json::json!({ "index": index, "data": data }))
            .collect();
        let summary = serde_json::json!({
            "job": args.job,
            "execution": execution,
            "results": count,
            "elapsed_s": elapsed.as_secs_f64(),
            "results_per_s": rate,
            "agents_lost": lost.iter().map(|(name, addr, back)| serde_json::json!({
                "name": name, "addr": addr.to_string(), "back": back,
            })).collect::<Vec<_>>(),
            "tasks_resent": tasks.resent,
            "tasks_copied": tasks.copies,
            "out": args.out,
            "shown": shown,
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    for (index, data) in &shown {
        println!("result of input {index}: {}", preview(data));
    }
    eprintln!(
        "{count} result{} in {elapsed:.2?} ({rate:.1} results/s){}{}",
        if count == 1 { "" } else { "s" },
        args.out
            .as_ref()
            .map_or(String::new(), |p| format!(", written to {}", p.display())),
        lost_line(&lost, tasks)
    );
    Ok(())
}

/// Where results go: the `--out` file, or the first `--show` kept to
/// print.
#[derive(Debug)]
struct Sink {
    out: Option<BufWriter<File>>,
    /// The first error writing `out` (later results are not written).
    write_error: Option<std::io::Error>,
    shown: Vec<(u64, Vec<f64>)>,
    show: usize,
}

impl Sink {
    /// Creates the `--out` file, if any.
    fn create(args: &RunArgs) -> anyhow::Result<Sink> {
        let out = match &args.out {
            Some(path) => {
                Some(BufWriter::new(File::create(path).with_context(|| {
                    format!("cannot create {}", path.display())
                })?))
            }
            None => None,
        };
        Ok(Sink {
            out,
            write_error: None,
            shown: Vec::new(),
            show: args.show,
        })
    }

    /// One result.
    fn take(&mut self, index: u64, a: Array) {
        match self.out.as_mut() {
            Some(w) if self.write_error.is_none() => {
                let line = jobfile::result_line(index, &a.data);
                if let Err(e) = writeln!(w, "{line}") {
                    self.write_error = Some(e);
                }
            }
            Some(_) => {}
            None if self.shown.len() < self.show => self.shown.push((index, a.data)),
            None => {}
        }
    }

    /// Flushes the file; returns the results kept to show.
    fn finish(self, args: &RunArgs) -> anyhow::Result<Vec<(u64, Vec<f64>)>> {
        if let Some(e) = self.write_error {
            return Err(e).context(format!(
                "cannot write {}",
                args.out.as_ref().expect("set").display()
            ));
        }
        if let Some(mut w) = self.out {
            w.flush()?;
        }
        Ok(self.shown)
    }
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

#[cfg(test)]
mod tests {
    use super::{Tasks, lost_line};

    #[test]
    fn the_last_line_names_lost_agents_with_their_address_and_counts_copies() {
        let none = Tasks {
            resent: 0,
            copies: 0,
        };
        assert_eq!(lost_line(&[], none), "");
        let copied = Tasks {
            resent: 0,
            copies: 2,
        };
        assert_eq!(
            lost_line(&[], copied),
            "; 2 tasks copied to other agents (the first result kept)"
        );
        let addr = "10.0.0.2:7871".parse().unwrap();
        let lost = [("pi-2".to_owned(), addr, true)];
        let tasks = Tasks {
            resent: 1,
            copies: 0,
        };
        assert_eq!(
            lost_line(&lost, tasks),
            "; 1 agent lost during the job (pi-2 at 10.0.0.2:7871, back in it), 1 task sent again"
        );
    }
}
