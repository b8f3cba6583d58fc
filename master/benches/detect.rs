//! Failure detection (issue 23): how long a master takes to declare a
//! stopped agent down, and whether it ever declares a live one down while
//! the machine is saturated — the default heartbeat against the old one
//! (1 s), in the same run, on real agent processes on loopback.
//!
//! `cargo bench -p skelpi --bench detect` (about 5 minutes);
//! `-- --trials 5 --load-secs 10` for a short run; `-- --help` for the rest.
//!
//! Detection: a farm of `sleep_ms(20)` tasks runs on three agents of one
//! worker each; after a random delay one agent is stopped with SIGSTOP
//! (its results flow until then, so its silence starts at the stop), and
//! the time from the signal to the master's declaration (the loss its
//! connection records) is one sample. The agent is resumed after the job
//! (a Ctrl-C meanwhile leaves it stopped: `kill -CONT` it, or kill it).
//! With 20 stops, p99 is the slowest.
//!
//! Load: every agent's workers run CPU-bound kernel calls (`erf_burn`,
//! about half a second each on the saturated machine) without a pause while this process spins two
//! busy threads per core, for `--load-secs`; every agent the master
//! declares down then is a false declaration (the goal: none).
//!
//! Exits 1 if, for the default rule, a stop went undetected, p99 passed
//! 3 s, a live agent was declared down, or the loaded farm failed or did
//! nothing.

mod common;

use clap::Parser;
use common::{Scratch, start_agents};
use rand::{Rng, SeedableRng};
use skelpi::cluster::Cluster;
use skelpi::stats::quantile;
use skelpi_proto::Array;
use skelpi_proto::skeleton::Skeleton;
use skelpi_testkit::{AgentProcess, Spinners, signal};
use skelpi_wire::handshake::ConnectOptions;
use skelpi_wire::key::ClusterKey;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Flags.
#[derive(Debug, Parser)]
struct Args {
    /// Stops per heartbeat rule.
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// Seconds of saturated machine per rule.
    #[arg(long, default_value_t = 30)]
    load_secs: u64,
    /// Seed of the random delays and inputs.
    #[arg(long, default_value_t = 2010)]
    seed: u64,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// One heartbeat rule: what the master asks for.
struct Rule {
    name: &'static str,
    heartbeat: Duration,
}

/// What one rule measured.
struct Measured {
    detections: Vec<Duration>,
    false_downs: usize,
    load_tasks: u64,
}

fn main() {
    let args = Args::parse();
    let scratch = Scratch::new("detect");
    let key = ClusterKey::generate().expect("a cluster key");
    let key_path = scratch.0.join("cluster.key");
    key.write(&key_path, true).expect("the key file");
    let agents = start_agents("detect", 3, &key_path, &["--workers", "1"]);
    let addrs: Vec<SocketAddr> = agents.iter().map(|a| a.addr).collect();
    let rules = [
        Rule {
            name: "old: 1 s beats",
            heartbeat: Duration::from_secs(1),
        },
        Rule {
            name: "default",
            heartbeat: ConnectOptions::default().heartbeat,
        },
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let mut results = Vec::new();
    for rule in &rules {
        let opts = ConnectOptions {
            heartbeat: rule.heartbeat,
            ..ConnectOptions::default()
        };
        let mut detections = Vec::new();
        for trial in 0..args.trials {
            let victim = &agents[trial % agents.len()];
            let delay = Duration::from_millis(rng.random_range(300..1300));
            match detect(&addrs, &key, &opts, victim, delay) {
                Some(d) => detections.push(d),
                None => eprintln!("{}: trial {trial}: no loss recorded", rule.name),
            }
            eprint!(".");
        }
        eprintln!();
        let (false_downs, load_tasks) = under_load(&addrs, &key, &opts, args.load_secs);
        results.push(Measured {
            detections,
            false_downs,
            load_tasks,
        });
    }
    let mut failed = false;
    println!(
        "failure detection on loopback, 3 agents; SIGSTOP to declared down ({} stops per rule)",
        args.trials
    );
    println!(
        "{:<16} {:>9} {:>9} {:>9} {:>9}  live agents declared down under load",
        "rule", "beat", "p50", "p99", "max"
    );
    for (rule, m) in rules.iter().zip(&results) {
        let p50 = quantile(&m.detections, 0.5);
        let p99 = quantile(&m.detections, 0.99);
        let max = m.detections.iter().max().copied().unwrap_or_default();
        println!(
            "{:<16} {:>9.2?} {:>9.2?} {:>9.2?} {:>9.2?}  {} in {} s ({} tasks)",
            rule.name, rule.heartbeat, p50, p99, max, m.false_downs, args.load_secs, m.load_tasks
        );
        if rule.name == "default" {
            failed |= p99 > Duration::from_secs(3) || m.false_downs > 0;
            failed |= m.detections.len() < args.trials || m.load_tasks == 0;
        }
    }
    let (old, new) = (&results[0], &results[1]);
    println!(
        "default / old detection time (p50): {:.2}",
        quantile(&new.detections, 0.5).as_secs_f64()
            / quantile(&old.detections, 0.5).as_secs_f64().max(1e-9)
    );
    drop(agents);
    if failed {
        eprintln!("detect: the default rule missed its goal (p99 ≤ 3 s, no false declaration)");
        std::process::exit(1);
    }
}

/// One stop: runs a farm, stops `victim` after `delay`, returns the time
/// from the stop to the master's declaration.
fn detect(
    addrs: &[SocketAddr],
    key: &ClusterKey,
    opts: &ConnectOptions,
    victim: &AgentProcess,
    delay: Duration,
) -> Option<Duration> {
    let job = {
        let (addrs, key, opts) = (addrs.to_vec(), key.clone(), opts.clone());
        std::thread::spawn(move || {
            smol::block_on(async {
                let mut cluster = match Cluster::connect(&addrs, &key, &opts).await {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("cannot connect: {e}");
                        return None;
                    }
                };
                let tree: Skeleton = "farm(seq(sleep_ms(20)), unordered)".parse().ok()?;
                let inputs = (0..400).map(|i| Array::list(vec![f64::from(i)]));
                let ran = cluster.run_each(&tree, inputs, |_, _| {}).await;
                let losses: Vec<(SocketAddr, Instant)> = cluster
                    .agents()
                    .iter()
                    .flat_map(|a| a.losses().iter().map(|(_, at)| (a.addr(), *at)))
                    .collect();
                cluster.close().await;
                match ran {
                    Ok(()) => Some(losses),
                    Err(e) => {
                        eprintln!("the farm failed: {e}");
                        None
                    }
                }
            })
        })
    };
    std::thread::sleep(delay);
    signal("-STOP", &victim.child.id().to_string());
    let stopped = Instant::now();
    let losses = job.join().ok().flatten();
    signal("-CONT", &victim.child.id().to_string());
    losses?
        .into_iter()
        .filter(|&(addr, at)| addr == victim.addr && at >= stopped)
        .map(|(_, at)| at - stopped)
        .min()
}

/// Saturates the machine for `secs` (two spinning threads per core here,
/// CPU-bound kernels on every agent worker) while a farm runs; returns
/// the agents declared down meanwhile and the tasks done.
fn under_load(
    addrs: &[SocketAddr],
    key: &ClusterKey,
    opts: &ConnectOptions,
    secs: u64,
) -> (usize, u64) {
    let spinners = Spinners::per_core(2);
    let until = Instant::now() + Duration::from_secs(secs);
    let (lost, done) = smol::block_on(async {
        let mut cluster = Cluster::connect(addrs, key, opts).await.expect("the pool");
        // About half a second a call on the saturated machine: every worker
        // is busy for a beat or more at a time.
        let tree: Skeleton = "farm(seq(erf_burn(200000)), unordered)"
            .parse()
            .expect("a tree");
        let inputs =
            std::iter::from_fn(|| (Instant::now() < until).then(|| Array::list(vec![0.25; 256])));
        let mut done = 0u64;
        let ran = cluster.run_each(&tree, inputs, |_, _| done += 1).await;
        let lost: usize = cluster.agents().iter().map(|a| a.losses().len()).sum();
        cluster.close().await;
        if let Err(e) = ran {
            eprintln!("the loaded farm failed: {e}");
            return (lost.max(1), 0);
        }
        (lost, done)
    });
    drop(spinners);
    (lost, done)
}
