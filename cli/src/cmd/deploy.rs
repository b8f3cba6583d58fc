//! `skelpi deploy`: signed rolling upgrades of the agents (the library's
//! `skelpi::deploy`), with a plan, per-board progress and a report.

use super::pool_args::PoolArgs;
use super::progress;
use anyhow::Context;
use skelpi::deploy::{self, Binary, Board, Outcome, Progress, RollOptions, Step};
use skelpi::pool;
use skelpi_wire::deploy_key::{self, DeployKey};
use std::path::PathBuf;
use std::time::Duration;

/// `skelpi deploy`'s flags.
#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    /// An agent binary for one architecture (repeat it for each
    /// architecture of the pool), e.g.
    /// target/aarch64-unknown-linux-musl/board/skelpi-agent.
    #[arg(
        long = "binary",
        value_name = "PATH",
        required_unless_present = "build"
    )]
    pub binaries: Vec<PathBuf>,
    /// Build the binaries instead: the project's board build (`cargo build
    /// --profile board --target T -p skelpi-agent`) for each architecture
    /// of the pool, in the skelpi source tree this runs in (aarch64: the
    /// static musl build; arm: armv7; this machine's own: no --target).
    #[arg(long, conflicts_with = "binaries")]
    pub build: bool,
    /// The deploy signing key [default: $SKELPI_DEPLOY_KEY_FILE or
    /// ~/.config/skelpi/deploy.key, written by `skelpi keygen --deploy`].
    #[arg(long, value_name = "PATH")]
    pub deploy_key: Option<PathBuf>,
    /// Boards upgraded at once.
    #[arg(long, default_value_t = 1, value_name = "K",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    /// How long a board may take to answer again on its new binary before
    /// the roll stops.
    #[arg(long, default_value = "60s", value_name = "DURATION",
          value_parser = humantime::parse_duration)]
    pub ready_timeout: Duration,
    /// Print the plan (which binary goes to which board) and change
    /// nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The boards.
    #[command(flatten)]
    pub pool: PoolArgs,
}

/// Runs `skelpi deploy`.
pub fn run(args: &DeployArgs) -> anyhow::Result<()> {
    if args.pool.local.is_some() {
        return Err(deploy::DeployError::Local.into());
    }
    let paths = if args.build {
        let Some(paths) = build(args)? else {
            eprintln!("dry run: nothing was built or changed");
            return Ok(());
        };
        paths
    } else {
        args.binaries.clone()
    };
    let binaries = paths
        .iter()
        .map(|p| Binary::read(p))
        .collect::<Result<Vec<_>, _>>()?;
    let key = if args.dry_run {
        None
    } else {
        let path = args
            .deploy_key
            .clone()
            .unwrap_or_else(deploy_key::default_key_path);
        Some(DeployKey::load(&path)?)
    };
    smol::block_on(async {
        let mut pool = pool::connect(&args.pool.options(false)).await?;
        eprintln!("{}", pool.origin);
        let boards: Vec<Board> = pool.cluster.agents().iter().map(Board::of).collect();
        let steps = deploy::plan(&boards, &binaries)?;
        print_plan(&steps, &binaries);
        let Some(key) = key else {
            pool.cluster.close().await;
            eprintln!("dry run: nothing was changed");
            return Ok(());
        };
        let opts = RollOptions {
            batch: args.batch as usize,
            ready_timeout: args.ready_timeout,
        };
        let bar = progress::bar(steps.len() as u64, "boards");
        let outcomes = deploy::roll(&mut pool.cluster, &steps, &binaries, &key, &opts, |b, p| {
            show(&bar, b, &p)
        })
        .await;
        bar.finish_and_clear();
        pool.cluster.close().await;
        report(&outcomes)
    })
}

/// `--build`: the board build for each architecture of the pool; the
/// binaries built (`None` for a dry run, which prints the commands).
fn build(args: &DeployArgs) -> anyhow::Result<Option<Vec<PathBuf>>> {
    let archs: Vec<String> = smol::block_on(async {
        let pool = pool::connect(&args.pool.options(false)).await?;
        eprintln!("{}", pool.origin);
        let mut archs: Vec<String> = pool
            .cluster
            .agents()
            .iter()
            .map(|a| a.info().arch.clone())
            .collect();
        archs.sort();
        archs.dedup();
        pool.cluster.close().await;
        anyhow::Ok(archs)
    })?;
    let mut built = Vec::new();
    for arch in &archs {
        let target = deploy::board_target(arch)?;
        let mut cargo =
            std::process::Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into()));
        cargo.args([
            "build",
            "--profile",
            "board",
            "-p",
            "skelpi-agent",
            "--bin",
            "skelpi-agent",
        ]);
        if let Some(t) = target {
            cargo.args(["--target", t]);
        }
        let shown = format!(
            "cargo build --profile board -p skelpi-agent --bin skelpi-agent{}",
            target.map_or(String::new(), |t| format!(" --target {t}"))
        );
        if args.dry_run {
            println!("{arch} boards: would build with `{shown}`");
            continue;
        }
        eprintln!("{arch} boards: {shown}");
        cargo.args(["--message-format", "json-render-diagnostics"]);
        built.push(run_build(cargo, &shown)?);
    }
    Ok((!args.dry_run).then_some(built))
}

/// Runs a board build; the agent binary it made (from cargo's messages).
fn run_build(mut cargo: std::process::Command, shown: &str) -> anyhow::Result<PathBuf> {
    let out = cargo
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run `{shown}` (is cargo installed?)"))?;
    if !out.status.success() {
        anyhow::bail!(
            "`{shown}` failed ({}): --build runs inside the skelpi source tree, with the target \
             installed (README: \"Building the agent for the boards\")",
            out.status
        );
    }
    let executable = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "skelpi-agent")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from));
    executable.with_context(|| format!("`{shown}` built no skelpi-agent executable"))
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

fn print_plan(steps: &[Step], binaries: &[Binary]) {
    println!(
        "{:<16} {:<22} {:<8} {:<18} gets",
        "board", "address", "arch", "runs"
    );
    for s in steps {
        let b = &binaries[s.binary];
        let runs = match &s.board.deployed {
            Some(sha) => format!("{} {}", s.board.version, short(sha)),
            None => format!("{} installed", s.board.version),
        };
        let gets = if s.current {
            "nothing (runs it already)".to_owned()
        } else {
            format!(
                "{} ({}, {})",
                b.path.display(),
                b.version.as_deref().unwrap_or("version not read here"),
                short(&b.sha256)
            )
        };
        println!(
            "{:<16} {:<22} {:<8} {:<18} {gets}",
            s.board.name,
            s.board.addr.to_string(),
            s.board.arch,
            runs
        );
    }
}

fn show(bar: &indicatif::ProgressBar, board: &Board, p: &Progress) {
    let name = &board.name;
    match p {
        Progress::Uploading { sent, total } => bar.set_message(format!(
            "{name}: sending {} of {}",
            bytesize::ByteSize(*sent).display().si(),
            bytesize::ByteSize(*total).display().si()
        )),
        Progress::Staged(version) => {
            bar.set_message(format!("{name}: checked and staged version {version}"));
        }
        Progress::Restarting => bar.set_message(format!("{name}: restarting")),
        Progress::Checking => bar.set_message(format!("{name}: back, running the check job")),
        Progress::Done(outcome) => {
            bar.inc(1);
            bar.println(format!("{name}: {}", describe(outcome)));
        }
    }
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Upgraded { version, took } => {
            format!("upgraded to {version} (serving again {took:.1?} after its restart)")
        }
        Outcome::AlreadyCurrent => "runs that binary already".to_owned(),
        Outcome::Failed(why) => format!("FAILED: {why}"),
        Outcome::NotReached => "not reached: keeps its binary".to_owned(),
    }
}

fn report(outcomes: &[(Board, Outcome)]) -> anyhow::Result<()> {
    let count = |f: &dyn Fn(&Outcome) -> bool| outcomes.iter().filter(|(_, o)| f(o)).count();
    let upgraded = count(&|o| matches!(o, Outcome::Upgraded { .. }));
    let current = count(&|o| matches!(o, Outcome::AlreadyCurrent));
    let not_reached = count(&|o| matches!(o, Outcome::NotReached));
    println!("{:<16} {:<22} state", "board", "address");
    for (b, o) in outcomes {
        println!("{:<16} {:<22} {}", b.name, b.addr.to_string(), describe(o));
    }
    if let Some((board, Outcome::Failed(why))) = outcomes
        .iter()
        .find(|(_, o)| matches!(o, Outcome::Failed(_)))
    {
        return Err(anyhow::anyhow!("{why}")).with_context(|| {
            format!(
                "the roll stopped at {} ({upgraded} upgraded, {not_reached} not reached and \
                 left on their binary)",
                board.name
            )
        });
    }
    eprintln!("{upgraded} upgraded, {current} already current");
    Ok(())
}
