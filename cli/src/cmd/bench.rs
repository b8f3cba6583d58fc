//! `skelpi bench [rtt|pmap|farm|pipeline]`: the seed's benchmark suite;
//! `skelpi bench roll`: rolling upgrades, asked by name only.

use super::pool_args::PoolArgs;
use crate::bench::farm::{self, FarmOptions};
use crate::bench::pipeline::{self, PipelineOptions};
use crate::bench::pmap::{self, PmapOptions};
use crate::bench::roll::{self, RollBenchOptions};
use crate::bench::{plot, report, rtt};
use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::ProgressBar;
use serde::Serialize;
use skelpi::pool::{self, Pool};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Which benchmark; none: the whole suite.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Round-trip times of lists and matrices of floats (the seed's first
    /// table) and of small messages, against raw TCP to the same agents.
    Rtt,
    /// The seed's pmap: D random floats in N chunks, erf applied C times, on
    /// 1, 2, ... agents, against the same kernel run sequentially here.
    Pmap,
    /// Farm dispatch overhead: no-op tasks per second through a farm over
    /// the pool, against the same tasks sent one at a time.
    Farm,
    /// The seed's pipeline: S stages of matmul_power fed M matrices; Ts,
    /// Ta and rho per stage, throughput against 1/max(Ts).
    Pipeline,
    /// Rolling upgrades: `skelpi deploy` of the first N agents (each of
    /// --roll-sizes) timed against raw TCP carrying the same bytes to them,
    /// and a farm's throughput over the whole pool during each roll against
    /// just before it. It REPLACES THE AGENTS' BINARIES (with tagged copies
    /// of --binary: the same code, a new SHA-256 each roll), so it is never
    /// part of the default suite; the agents need a deploy public key (e.g.
    /// `skelpi lab up --deploy-pubkey FILE`).
    #[command(after_help = "Example, in a lab of 8 hosts on 100 Mb/s links:
  skelpi keygen --deploy --out deploy.key
  sudo skelpi lab up --hosts 8 --link-mbps 100 --deploy-pubkey deploy.key.pub
  sudo skelpi lab exec -- skelpi bench roll --binary target/release/skelpi-agent \\
      --deploy-key deploy.key")]
    Roll(RollArgs),
}

/// `skelpi bench roll`'s flags.
#[derive(Debug, Clone, Args)]
pub struct RollArgs {
    /// The agent build to roll (tagged anew for each roll).
    #[arg(long, value_name = "PATH")]
    binary: PathBuf,
    /// The deploy signing key [default: $SKELPI_DEPLOY_KEY_FILE or
    /// ~/.config/skelpi/deploy.key].
    #[arg(long, value_name = "PATH")]
    deploy_key: Option<PathBuf>,
    /// How many agents each roll upgrades (the first N of the pool), one
    /// roll per size; sizes above the pool's are skipped.
    #[arg(long, default_value = "1,3,8", value_parser = parse_sizes)]
    roll_sizes: Sizes,
    /// Task time of the farm that runs during each roll, milliseconds.
    #[arg(long, default_value_t = 2.0, value_name = "MS")]
    farm_task_ms: f64,
    /// How long the farm runs (after a 1 s warm-up) before each raw copy
    /// and roll: the window of its throughput before them.
    #[arg(long, default_value = "3s", value_name = "DURATION",
          value_parser = humantime::parse_duration)]
    before: Duration,
}

/// Flags of every benchmark (each applies to the benchmarks it names).
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    rtt: RttArgs,
    #[command(flatten)]
    pmap: PmapArgs,
    #[command(flatten)]
    farm: FarmArgs,
    #[command(flatten)]
    pipeline: PipelineArgs,
}

#[derive(Debug, Clone, Args)]
struct CommonArgs {
    /// Timed repeats per measurement (the median is reported).
    #[arg(long, default_value_t = 5, global = true,
          value_parser = clap::value_parser!(u32).range(1..))]
    repeats: u32,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 2010, global = true)]
    seed: u64,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Folder for the CSV files and SVG plots (created if missing).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "skelpi-bench",
        global = true
    )]
    out: PathBuf,
    /// Trace the farm and pipeline benchmarks: DIR/farm/ and DIR/pipeline/
    /// get trace.json (opens in https://ui.perfetto.dev), analysis.txt and
    /// analysis.json. The farm then also runs traced beside untraced and
    /// reports what tracing costs.
    #[arg(long, value_name = "DIR", global = true)]
    trace: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "rtt")]
struct RttArgs {
    /// rtt: list lengths to send (floats); `none` for none.
    #[arg(long, default_value = "1000,100000,1000000,1500000", value_parser = parse_sizes, global = true)]
    lists: Sizes,
    /// rtt: matrix sizes D to send (D×D floats); `none` for none.
    #[arg(long, default_value = "50,100,150,200,300,1000,2000", value_parser = parse_sizes, global = true)]
    matrices: Sizes,
    /// rtt: pings per agent for the small-message row (0 to skip).
    #[arg(long, default_value_t = 1000, global = true)]
    pings: usize,
    /// rtt: link speed in Mb/s, for the utilisation column.
    #[arg(long, value_name = "MBPS", global = true)]
    link_mbps: Option<f64>,
    /// rtt: skip the raw-TCP baseline.
    #[arg(long, global = true)]
    no_baseline: bool,
    /// rtt: floats per echo chunk (at most 65536) [default: 65536]; on a
    /// slow link, smaller chunks start the echo back sooner (e.g. 8192 at
    /// 100 Mb/s).
    #[arg(long, value_name = "FLOATS", global = true,
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    chunk_floats: Option<u32>,
    /// rtt: also write the rows as CSV to this file.
    #[arg(long, value_name = "FILE", global = true)]
    csv: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "pmap")]
struct PmapArgs {
    /// pmap: floats in the input (D).
    #[arg(long = "d", value_name = "D", default_value_t = 200_000, global = true)]
    d: usize,
    /// pmap: times erf is applied to each element (C).
    #[arg(long = "c", value_name = "C", default_value_t = 50, global = true)]
    c: u32,
    /// pmap: numbers of chunks (N) to try.
    #[arg(long, default_value = "2,4,8,16,32", value_parser = parse_sizes, global = true)]
    chunks: Sizes,
    /// pmap: numbers of agents to try (the first k of the pool) [default: 1 to all].
    #[arg(long, value_parser = parse_sizes, global = true)]
    agent_counts: Option<Sizes>,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "farm")]
struct FarmArgs {
    /// farm: tasks per run.
    #[arg(long, default_value_t = 20_000, global = true)]
    tasks: usize,
    /// farm: task time in milliseconds (sleep_ms tasks); 0: no-op tasks,
    /// which measure dispatch alone.
    #[arg(long, default_value_t = 0.0, value_name = "MS", global = true)]
    task_ms: f64,
    /// farm: also run the farm watched as `skelpi top` watches a job, at
    /// ten times its rate (status published; every agent's health and the
    /// jobs' files read every 100 ms), and report what watching costs.
    #[arg(long, global = true)]
    watch_cost: bool,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "pipeline")]
struct PipelineArgs {
    /// pipeline: stages (S).
    #[arg(long, default_value_t = 3, global = true)]
    stages: usize,
    /// pipeline: matrices fed (M).
    #[arg(long, default_value_t = 200, global = true)]
    items: usize,
    /// pipeline: size D of the D×D matrices fed.
    #[arg(long, default_value_t = 100, global = true)]
    size: usize,
    /// pipeline: multiplications per stage (c of matmul_power(c, d)); one
    /// value for all stages or one per stage.
    #[arg(long, default_value = "4", value_parser = parse_sizes, global = true)]
    work: Sizes,
    /// pipeline: size d of the matrices each stage multiplies.
    #[arg(long, default_value_t = 100, global = true)]
    work_size: u32,
    /// pipeline: inter-arrival time of the feed (e.g. 5ms) [default: as fast as possible].
    #[arg(long, value_parser = humantime::parse_duration, global = true)]
    interval: Option<Duration>,
}

/// A comma-separated list of sizes; empty or `none` for no sizes.
#[derive(Debug, Clone)]
pub struct Sizes(pub Vec<usize>);

fn parse_sizes(s: &str) -> Result<Sizes, String> {
    if s.trim().is_empty() || s.trim() == "none" {
        return Ok(Sizes(Vec::new()));
    }
    s.split(',')
        .map(|p| {
            p.trim().replace('_', "").parse::<usize>().map_err(|_| {
                format!(
                    "{p:?} is not a size (expected a comma-separated list such as 1,3,8, or none)"
                )
            })
        })
        .collect::<Result<_, _>>()
        .map(Sizes)
}

fn bar(len: u64) -> ProgressBar {
    super::progress::bar(len, "steps")
}

/// What the suite measured, for `--json`.
#[derive(Debug, Default, Serialize)]
struct Suite {
    #[serde(skip_serializing_if = "Option::is_none")]
    rtt: Option<rtt::RttReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pmap: Option<pmap::PmapReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    farm: Option<farm::FarmReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pipeline: Option<pipeline::PipelineReport>,
}

/// Runs one benchmark, or the whole suite when `which` is `None`.
pub fn run(which: Option<BenchCommand>, pool: &PoolArgs, args: &BenchArgs) -> anyhow::Result<()> {
    if let Some(BenchCommand::Roll(roll)) = &which {
        return run_roll(pool, args, roll);
    }
    smol::block_on(async {
        let mut pool = pool::connect(&pool.options(true)?).await?;
        eprintln!("{}", pool.origin);
        let all = which.is_none();
        let wants = |b: &BenchCommand| all || which.as_ref().is_some_and(|w| same(w, b));
        say_overwritten(&args.common.out);
        let mut suite = Suite::default();
        let names = ["rtt", "pmap", "farm", "pipeline"];
        let runs: Vec<&str> = [
            BenchCommand::Rtt,
            BenchCommand::Pmap,
            BenchCommand::Farm,
            BenchCommand::Pipeline,
        ]
        .into_iter()
        .zip(names)
        .filter(|(b, _)| wants(b))
        .map(|(_, n)| n)
        .collect();
        let mut step = 0;
        let mut next = |name: &str| {
            step += 1;
            if runs.len() > 1 {
                eprintln!("benchmark {step} of {}: {name}", runs.len());
            }
        };
        let result = async {
            if wants(&BenchCommand::Rtt) {
                next("rtt");
                suite.rtt = Some(run_rtt(&mut pool, args).await?);
            }
            if wants(&BenchCommand::Pmap) {
                next("pmap");
                suite.pmap = Some(run_pmap(&mut pool, args).await?);
            }
            if wants(&BenchCommand::Farm) {
                next("farm");
                suite.farm = Some(run_farm(&mut pool, args).await?);
            }
            if wants(&BenchCommand::Pipeline) {
                next("pipeline");
                suite.pipeline = Some(run_pipeline(&mut pool, args).await?);
            }
            anyhow::Ok(())
        }
        .await;
        pool.cluster.close().await;
        result?;
        if args.common.json {
            println!("{}", serde_json::to_string_pretty(&suite)?);
        }
        if suite.pmap.is_some() || suite.pipeline.is_some() || all {
            eprintln!("CSV files and plots are in {}", args.common.out.display());
        }
        Ok(())
    })
}

/// Says so when `dir` holds files already: this run's replace them.
fn say_overwritten(dir: &Path) {
    let held = std::fs::read_dir(dir).map_or(0, |d| d.count());
    if held > 0 {
        eprintln!(
            "{} holds {held} files of an earlier run: this run's CSV files and plots replace \
             them (--out DIR to keep both)",
            dir.display()
        );
    }
}

fn same(a: &BenchCommand, b: &BenchCommand) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

fn out_file(args: &BenchArgs, name: &str) -> anyhow::Result<PathBuf> {
    let dir = &args.common.out;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir.join(name))
}

fn csv<T: Serialize>(rows: &[T], path: &Path) -> anyhow::Result<()> {
    report::write_csv(rows, path).with_context(|| format!("cannot write {}", path.display()))
}

fn show(args: &BenchArgs, table: String) {
    if !args.common.json {
        println!("{table}");
    }
}

async fn run_rtt(pool: &mut Pool, args: &BenchArgs) -> anyhow::Result<rtt::RttReport> {
    let opts = rtt::RttOptions {
        lists: args.rtt.lists.0.clone(),
        matrices: args.rtt.matrices.0.clone(),
        repeats: args.common.repeats as usize,
        pings: args.rtt.pings,
        link_mbps: args.rtt.link_mbps,
        baseline: !args.rtt.no_baseline,
        seed: args.common.seed,
        chunk: args.rtt.chunk_floats.map(|c| c as usize),
    };
    let progress = bar(rtt::steps(&opts, pool.cluster.agents().len()));
    let r = rtt::run(&mut pool.cluster, &pool.origin, &opts, &progress).await;
    progress.finish_and_clear();
    let r = r?;
    if let Some(path) = &args.rtt.csv {
        csv(&r.rows, path)?;
    }
    csv(&r.rows, &out_file(args, "rtt.csv")?)?;
    show(args, report::rtt_table(&r));
    Ok(r)
}

async fn run_pmap(pool: &mut Pool, args: &BenchArgs) -> anyhow::Result<pmap::PmapReport> {
    let opts = PmapOptions {
        d: args.pmap.d,
        c: args.pmap.c,
        chunks: args.pmap.chunks.0.clone(),
        agents: args
            .pmap
            .agent_counts
            .clone()
            .map(|s| s.0)
            .unwrap_or_default(),
        repeats: args.common.repeats as usize,
        seed: args.common.seed,
    };
    let progress = bar(pmap::steps(&opts, pool.cluster.agents().len()));
    let r = pmap::run(&mut pool.cluster, &pool.origin, &opts, &progress).await;
    progress.finish_and_clear();
    let r = r?;
    csv(&r.rows, &out_file(args, "pmap.csv")?)?;
    plot::pmap_speedup(&r, &out_file(args, "pmap-speedup.svg")?)?;
    show(args, report::pmap_table(&r));
    Ok(r)
}

async fn run_farm(pool: &mut Pool, args: &BenchArgs) -> anyhow::Result<farm::FarmReport> {
    let opts = FarmOptions {
        tasks: args.farm.tasks,
        repeats: args.common.repeats as usize,
        seed: args.common.seed,
        task_ms: args.farm.task_ms,
        trace: args.common.trace.is_some(),
        watch: args.farm.watch_cost,
    };
    let progress = bar(farm::steps(&opts));
    let r = farm::run(&mut pool.cluster, &pool.origin, &opts, &progress).await;
    progress.finish_and_clear();
    let r = r?;
    if let Some(dir) = &args.common.trace {
        let trace = pool.cluster.take_trace();
        super::trace::save(trace, &dir.join("farm"), "the farm's last traced run")?;
    }
    csv(std::slice::from_ref(&r), &out_file(args, "farm.csv")?)?;
    show(args, report::farm_table(&r));
    Ok(r)
}

/// `skelpi bench roll`: on agents found or named, never an embedded pool.
fn run_roll(pool: &PoolArgs, args: &BenchArgs, r: &RollArgs) -> anyhow::Result<()> {
    if pool.local.is_some() {
        return Err(skelpi::deploy::DeployError::Local.into());
    }
    let path = r
        .deploy_key
        .clone()
        .unwrap_or_else(skelpi_wire::deploy_key::default_key_path);
    let key = skelpi_wire::deploy_key::DeployKey::load(&path)?;
    let opts = RollBenchOptions {
        binary: skelpi::deploy::Binary::read(&r.binary)?,
        sizes: r.roll_sizes.0.clone(),
        task_ms: r.farm_task_ms,
        before: r.before,
    };
    // Refused before the pool is reached.
    roll::check(&opts)?;
    let csv_path = out_file(args, "roll.csv")?;
    smol::block_on(async {
        let pool = pool::connect(&pool.options(false)?).await?;
        eprintln!("{}", pool.origin);
        let got = roll::run(&pool.cluster, &pool.origin, &opts, &key, |what| {
            eprintln!("{what}")
        })
        .await;
        pool.cluster.close().await;
        let got = got?;
        csv(&got.rows, &csv_path)?;
        if args.common.json {
            println!("{}", serde_json::to_string_pretty(&got)?);
        } else {
            println!("{}", report::roll_table(&got));
        }
        Ok(())
    })
}

async fn run_pipeline(
    pool: &mut Pool,
    args: &BenchArgs,
) -> anyhow::Result<pipeline::PipelineReport> {
    let a = &args.pipeline;
    let opts = PipelineOptions {
        stages: a.stages,
        items: a.items,
        size: a.size,
        work: a
            .work
            .0
            .iter()
            .map(|&c| u32::try_from(c).context("--work: too many multiplications"))
            .collect::<anyhow::Result<_>>()?,
        work_size: a.work_size,
        interval: a.interval,
        seed: args.common.seed,
    };
    let progress = bar(opts.items as u64);
    pool.cluster.set_tracing(args.common.trace.is_some());
    let r = pipeline::run(&mut pool.cluster, &pool.origin, &opts, &progress).await;
    pool.cluster.set_tracing(false);
    progress.finish_and_clear();
    let r = r?;
    if let Some(dir) = &args.common.trace {
        let trace = pool.cluster.take_trace();
        super::trace::save(trace, &dir.join("pipeline"), "the pipeline benchmark")?;
    }
    csv(&r.stages, &out_file(args, "pipeline.csv")?)?;
    plot::pipeline_stages(&r, &out_file(args, "pipeline-stages.svg")?)?;
    show(args, report::pipeline_table(&r));
    Ok(r)
}
