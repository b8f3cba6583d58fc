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
    // Everything that can fail at once is checked before a build.
    let key = if args.dry_run {
        None
    } else {
        let path = args
            .deploy_key
            .clone()
            .unwrap_or_else(deploy_key::default_key_path);
        Some(DeployKey::load(&path)?)
    };
    let given = args
        .binaries
        .iter()
        .map(|p| Binary::read(p))
        .collect::<Result<Vec<_>, _>>()?;
    smol::block_on(async {
        let mut pool = pool::connect(&args.pool.options(false)?).await?;
        eprintln!("{}", pool.origin);
        let boards: Vec<Board> = pool.cluster.agents().iter().map(Board::of).collect();
        let binaries = if args.build {
            match build(&boards, args.dry_run) {
                Ok(Some(built)) => built,
                Ok(None) => {
                    pool.cluster.close().await;
                    eprintln!("dry run: nothing was built or changed");
                    return Ok(());
                }
                Err(e) => {
                    pool.cluster.close().await;
                    return Err(e);
                }
            }
        } else {
            given
        };
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

/// The Rust target of the project's board build for boards of
/// architecture `arch` (as agents name theirs): the static musl build for
/// aarch64, armv7 for arm, else this machine's own build (`None`) for its
/// own architecture. An `arm` board may be a Pi Zero (armv6), which the
/// armv7 build does not run on: its self-check refuses that binary before
/// anything changes.
fn board_target(arch: &str) -> anyhow::Result<Option<&'static str>> {
    match arch {
        "aarch64" => Ok(Some("aarch64-unknown-linux-musl")),
        "arm" => Ok(Some("armv7-unknown-linux-gnueabihf")),
        a if a == std::env::consts::ARCH => Ok(None),
        other => anyhow::bail!(
            "no board build for {other} boards (the project builds aarch64, armv7 and this \
             machine's {}): build the agent yourself and give a --binary for every \
             architecture instead of --build",
            std::env::consts::ARCH
        ),
    }
}

/// `--build`: the board build for each architecture of `boards`, every
/// one checked before the first build starts; the binaries built (`None`
/// for a dry run, which prints the commands).
fn build(boards: &[Board], dry_run: bool) -> anyhow::Result<Option<Vec<Binary>>> {
    let mut archs: Vec<&str> = boards.iter().map(|b| b.arch.as_str()).collect();
    archs.sort_unstable();
    archs.dedup();
    let builds = archs
        .iter()
        .map(|&arch| Ok((arch, board_target(arch)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    in_source_tree(&cargo)?;
    let mut built = Vec::new();
    for (arch, target) in builds {
        let mut cmd = std::process::Command::new(&cargo);
        cmd.args([
            "build",
            "--profile",
            "board",
            "-p",
            "skelpi-agent",
            "--bin",
            "skelpi-agent",
        ]);
        if let Some(t) = target {
            cmd.args(["--target", t]);
        }
        let shown = format!(
            "cargo build --profile board -p skelpi-agent --bin skelpi-agent{}",
            target.map_or(String::new(), |t| format!(" --target {t}"))
        );
        if dry_run {
            println!("{arch} boards: would build with `{shown}`");
            continue;
        }
        eprintln!("{arch} boards: {shown}");
        cmd.args(["--message-format", "json-render-diagnostics"]);
        let path = run_build(cmd, &shown, target)?;
        built.push(Binary::read(&path)?);
    }
    Ok((!dry_run).then_some(built))
}

/// Checks that this runs inside the skelpi source tree: the workspace
/// here has the `skelpi-agent` package as a member.
fn in_source_tree(cargo: &std::ffi::OsStr) -> anyhow::Result<()> {
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .stderr(std::process::Stdio::null())
        .output()
        .context("cannot run `cargo metadata` (is cargo installed?)")?;
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let member = meta["packages"]
        .as_array()
        .is_some_and(|p| p.iter().any(|p| p["name"] == "skelpi-agent"));
    if !out.status.success() || !member {
        anyhow::bail!(
            "--build runs the project's board build, inside the skelpi source tree; this folder \
             is not in it (a program with kernels of its own builds its agent itself: pass it \
             with --binary)"
        );
    }
    Ok(())
}

/// Runs a board build; the agent binary it made.
fn run_build(
    mut cargo: std::process::Command,
    shown: &str,
    target: Option<&str>,
) -> anyhow::Result<PathBuf> {
    let out = cargo
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run `{shown}` (is cargo installed?)"))?;
    if !out.status.success() {
        let add = target.map_or(String::new(), |t| format!(" (`rustup target add {t}`)"));
        anyhow::bail!(
            "`{shown}` failed ({}): is the target installed{add}, and its linker? See the \
             README's \"Building the agent for the boards\"",
            out.status
        );
    }
    executable_from(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("`{shown}` built no skelpi-agent executable"))
}

/// The `skelpi-agent` executable among cargo's JSON messages.
fn executable_from(messages: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "skelpi-agent")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_board_architecture_has_its_build_or_a_clear_refusal() {
        assert_eq!(
            board_target("aarch64").unwrap(),
            Some("aarch64-unknown-linux-musl")
        );
        assert_eq!(
            board_target("arm").unwrap(),
            Some("armv7-unknown-linux-gnueabihf")
        );
        if !["aarch64", "arm"].contains(&std::env::consts::ARCH) {
            assert_eq!(board_target(std::env::consts::ARCH).unwrap(), None);
        }
        let refused = board_target("riscv64").unwrap_err().to_string();
        assert!(
            refused.contains("riscv64") && refused.contains("--binary"),
            "{refused}"
        );
    }

    #[test]
    fn the_agent_executable_is_found_among_cargos_messages() {
        let messages = [
            r#"{"reason":"compiler-artifact","target":{"name":"skelpi_agent"},"executable":null}"#,
            r#"{"reason":"compiler-artifact","target":{"name":"build-script-build"},"executable":null}"#,
            r#"{"reason":"compiler-artifact","target":{"name":"skelpi-agent"},"executable":"/t/board/skelpi-agent"}"#,
            r#"{"reason":"build-finished","success":true}"#,
            "not json",
        ]
        .join("\n");
        assert_eq!(
            executable_from(&messages),
            Some(PathBuf::from("/t/board/skelpi-agent"))
        );
        assert_eq!(
            executable_from(&messages[..messages.find("/t/").unwrap()]),
            None
        );
    }
}
