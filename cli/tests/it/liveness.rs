//! Streamed pipelines and routed trees of the shapes users bring —
//! imbalanced stages, items from one float to 100,000, more stages than
//! agents, an agent killed mid-stream — run to the end with every result
//! once, in order, equal to the sequential reference; and a job that does
//! stall says where each part stands instead of hanging.
//!
//! The cases are generated from a seed, printed by each test;
//! `SKELPI_LIVENESS_SEED=N` replays one test's cases.

use crate::agents::start_agent;
use crate::support::{Scratch, assert_no_agent_lost, skelpi};
use rand::{Rng, SeedableRng, rngs::StdRng};
use skelpi::cluster::Cluster;
use skelpi::runtime::{JobError, sequential};
use skelpi_agent::kernels::Registry;
use skelpi_proto::Array;
use skelpi_proto::skeleton::{Kernel, Skeleton};
use skelpi_testkit::AgentProcess;
use skelpi_wire::handshake::ConnectOptions;
use skelpi_wire::key::ClusterKey;
use std::time::{Duration, Instant};

/// A fast heartbeat: agents beat often, on every connection, as they do
/// over a long job (and a busy 2-core machine does not take them for lost,
/// which would take a second of silence).
fn fast_beats() -> ConnectOptions {
    ConnectOptions {
        heartbeat: Duration::from_millis(250),
        ..Default::default()
    }
}

/// How long one generated case may take before it counts as stalled.
const CASE_LIMIT: Duration = Duration::from_secs(60);

/// The seed of a test's cases: `SKELPI_LIVENESS_SEED`, or `default`.
fn seed(default: u64) -> u64 {
    let seed = std::env::var("SKELPI_LIVENESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    eprintln!("liveness cases from seed {seed} (SKELPI_LIVENESS_SEED={seed} replays them)");
    seed
}

/// Runs `tree` over `inputs` on `cluster` within `limit`; checks every
/// result once, in order, equal to the sequential reference.
fn runs_to_the_end(
    cluster: &mut Cluster,
    tree: &Skeleton,
    inputs: Vec<Array>,
    limit: Duration,
    case: &str,
) {
    let want = sequential::run(&Registry::builtin(), tree, inputs.clone()).unwrap();
    let mut got: Vec<(u64, Array)> = Vec::new();
    let job = cluster.run_each(tree, inputs, |i, a| got.push((i, a)));
    let ended = bounded(job, limit);
    check(ended, got, &want, tree, case);
    // Nothing failed: no agent may have been taken for lost on the way (a
    // stream that lost items and restarted would still end complete).
    for a in cluster.agents() {
        let why = a.broken().map(|(why, _)| why);
        assert!(
            why.is_none(),
            "{case}: {tree}: agent {} lost: {why:?}",
            a.addr()
        );
    }
}

/// `job`'s outcome, or `None` if it took longer than `limit`.
fn bounded<T>(job: impl Future<Output = T>, limit: Duration) -> Option<T> {
    smol::block_on(futures_lite::future::or(async { Some(job.await) }, async {
        async_io::Timer::after(limit).await;
        None
    }))
}

/// Checks a job's outcome and results against the reference `want`.
fn check(
    ended: Option<Result<(), JobError>>,
    got: Vec<(u64, Array)>,
    want: &[Array],
    tree: &Skeleton,
    case: &str,
) {
    let n = got.len();
    match ended {
        None => panic!("{case}: {tree} stalled: {n} of {} results", want.len()),
        Some(Err(e)) => panic!("{case}: {tree} failed after {n} results: {e}"),
        Some(Ok(())) => {}
    }
    let indices: Vec<u64> = got.iter().map(|(i, _)| *i).collect();
    let expected: Vec<u64> = (0..want.len() as u64).collect();
    assert_eq!(
        indices, expected,
        "{case}: {tree}: every result once, in order"
    );
    let same = got.iter().zip(want).all(|((_, a), b)| a == b);
    assert!(same, "{case}: {tree}: results differ from the reference");
}

/// A stage kernel that takes about `ms` per item (0: no sleep, a kernel
/// that changes the data).
fn stage_kernel(rng: &mut StdRng, ms: f64) -> Kernel {
    if ms > 0.0 {
        return Kernel::new("sleep_ms", [ms]);
    }
    match rng.random_range(0..3) {
        0 => Kernel::new("identity", []),
        1 => Kernel::new("scale", [rng.random_range(-2.0..2.0)]),
        _ => Kernel::new("square", []),
    }
}

/// Service times of `n` stages, in ms, in one of the shapes users bring.
fn service_times(rng: &mut StdRng, n: usize) -> (Vec<f64>, &'static str) {
    let slow = [1.0, 2.0, 3.0][rng.random_range(0..3)];
    let fast = [0.0, 0.0, 0.2][rng.random_range(0..3)];
    let mut ms = vec![fast; n];
    let shape = match rng.random_range(0..5) {
        0 => {
            ms[n - 1] = slow;
            "slow last stage"
        }
        1 => {
            ms[n / 2] = slow;
            "slow middle stage"
        }
        2 => {
            for (i, m) in ms.iter_mut().enumerate() {
                *m = if i % 2 == 0 { fast } else { slow };
            }
            "alternating"
        }
        3 => {
            ms[0] = slow;
            "slow first stage"
        }
        _ => {
            for m in &mut ms {
                *m = [0.0, 0.2, 1.0, 2.0][rng.random_range(0..4)];
            }
            "random"
        }
    };
    (ms, shape)
}

/// Items of a case: 1 to 100,000 floats each (log-uniform), as many as
/// keep the case at about a million floats in all.
fn case_inputs(rng: &mut StdRng) -> Vec<Array> {
    let len = 10f64.powf(rng.random_range(0.0..5.0)).round() as usize;
    let count = (1_000_000 / len).clamp(3, 60);
    let count = rng.random_range(count / 2..=count);
    (0..count)
        .map(|_| Array::list((0..len).map(|_| rng.random_range(-4.0..4.0)).collect()))
        .collect()
}

/// A generated pipeline of `seq` stages and its inputs, with a name.
fn pipeline_case(rng: &mut StdRng, agents: usize) -> (Skeleton, Vec<Array>, String) {
    let n = rng.random_range(1..=6);
    let (ms, shape) = service_times(rng, n);
    let stages: Vec<Skeleton> = ms
        .iter()
        .map(|&m| Skeleton::seq(stage_kernel(rng, m)))
        .collect();
    let inputs = case_inputs(rng);
    let what = format!(
        "{shape}, {} items of {} floats, {n} stages on {agents} agents",
        inputs.len(),
        inputs[0].data.len()
    );
    (Skeleton::pipe(stages), inputs, what)
}

/// Runs `cases` generated pipelines from `seed`, on one, two and three
/// in-process agents in turn (stages share agents when more).
fn streamed_cases(default_seed: u64, cases: usize) {
    let mut rng = StdRng::seed_from_u64(seed(default_seed));
    let mut clusters: Vec<Cluster> = (1..=3)
        .map(|n| smol::block_on(Cluster::local(n, &fast_beats())).unwrap())
        .collect();
    for case in 0..cases {
        let cluster = &mut clusters[case % 3];
        let agents = cluster.agents().len();
        let (tree, inputs, what) = pipeline_case(&mut rng, agents);
        let name = format!("case {case} ({what})");
        runs_to_the_end(cluster, &tree, inputs, CASE_LIMIT, &name);
    }
}

#[test]
fn generated_streamed_pipelines_end_with_every_result_1() {
    streamed_cases(1801, 55);
}

#[test]
fn generated_streamed_pipelines_end_with_every_result_2() {
    streamed_cases(1802, 55);
}

#[test]
fn generated_streamed_pipelines_end_with_every_result_3() {
    streamed_cases(1803, 55);
}

#[test]
fn generated_streamed_pipelines_end_with_every_result_4() {
    streamed_cases(1804, 55);
}

#[test]
fn a_pipeline_whose_last_stage_is_slower_ends_with_every_result() {
    // Stage 0 sends everything at once; stage 1 reads its link only as
    // fast as it computes, so most items wait in socket buffers when
    // stage 0 is done. Stage 0 used to close its link then, and the next
    // heartbeat stage 1's agent sent on it was answered with a reset that
    // discarded those items: the job hung (issue 18).
    let mut cluster = smol::block_on(Cluster::local(2, &fast_beats())).unwrap();
    let tree: Skeleton = "pipe(seq(identity), seq(sleep_ms(3)))".parse().unwrap();
    // 32 KiB items, 9.6 MiB in all: more than the link's socket buffers,
    // so they are full of items when stage 0 is done.
    let inputs = (0..300)
        .map(|i| Array::list(vec![i as f64; 4096]))
        .collect();
    let limit = Duration::from_secs(30);
    runs_to_the_end(&mut cluster, &tree, inputs, limit, "slow last stage");
}

#[test]
fn a_first_stage_slower_than_its_feed_does_not_take_the_master_for_gone() {
    // Beats every 100 ms: a master silent for 400 ms is taken for gone.
    // Stage 0 takes 600 ms an item, fed every 5 ms: once its inbox is full
    // its agent reads the feed's connection, beats and all, one item per
    // 600 ms — silence of its own making, not the master's.
    let opts = ConnectOptions {
        heartbeat: Duration::from_millis(100),
        ..Default::default()
    };
    let mut cluster = smol::block_on(Cluster::local(2, &opts)).unwrap();
    let stages = [
        Kernel::new("sleep_ms", [600.0]),
        Kernel::new("identity", []),
    ];
    let n = skelpi_agent::streams::INBOX as u32 + 3;
    let inputs: Vec<Array> = (0..n).map(|i| Array::list(vec![f64::from(i)])).collect();
    let mut got = Vec::new();
    let every = Some(Duration::from_millis(5));
    let job = cluster.stream_pipeline(&stages, inputs.clone(), every, |i, a| got.push((i, a)));
    let ended = bounded(job, Duration::from_secs(30));
    let tree = Skeleton::pipe(stages.iter().cloned().map(Skeleton::seq));
    check(
        ended.map(|r| r.map(drop)),
        got,
        &inputs,
        &tree,
        "slow first stage",
    );
    assert_no_agent_lost(&cluster);
}

/// A random tree of routed skeletons (farms, maps, pipelines with farm
/// stages) over kernels of unequal cost, `depth` levels at most.
fn routed_tree(rng: &mut StdRng, depth: u32) -> Skeleton {
    let leaf = |rng: &mut StdRng| {
        let ms = [0.0, 0.0, 0.5, 2.0][rng.random_range(0..4)];
        Skeleton::seq(stage_kernel(rng, ms))
    };
    if depth == 0 {
        return leaf(rng);
    }
    match rng.random_range(0..4) {
        0 => leaf(rng),
        1 => {
            let n = rng.random_range(2..=4);
            let stages: Vec<Skeleton> = (0..n).map(|_| routed_tree(rng, depth - 1)).collect();
            // A pipeline of seq stages alone would stream: one farm in it
            // makes the master route it.
            let mut stages = stages;
            let at = rng.random_range(0..n);
            stages[at] = Skeleton::farm(routed_tree(rng, depth - 1), None);
            Skeleton::pipe(stages)
        }
        2 => {
            let replicas = [None, Some(1), Some(3)][rng.random_range(0..3)];
            Skeleton::farm(routed_tree(rng, depth - 1), replicas)
        }
        _ => Skeleton::map(rng.random_range(2..=5), routed_tree(rng, depth - 1)),
    }
}

#[test]
fn generated_routed_trees_with_imbalanced_stages_end_with_every_result() {
    let mut rng = StdRng::seed_from_u64(seed(1810));
    let mut clusters: Vec<Cluster> = (1..=3)
        .map(|n| smol::block_on(Cluster::local(n, &fast_beats())).unwrap())
        .collect();
    for case in 0..45 {
        let cluster = &mut clusters[case % 3];
        let tree = routed_tree(&mut rng, 3);
        let len = 10f64.powf(rng.random_range(0.0..4.0)).round() as usize;
        let count = rng.random_range(5..=40);
        let inputs: Vec<Array> = (0..count)
            .map(|_| Array::list((0..len).map(|_| rng.random_range(-4.0..4.0)).collect()))
            .collect();
        let agents = cluster.agents().len();
        let what = format!("case {case} ({count} items of {len} floats on {agents} agents)");
        runs_to_the_end(cluster, &tree, inputs, CASE_LIMIT, &what);
    }
}

/// Sends SIGKILL to `agent`.
fn kill(agent: &AgentProcess) {
    let pid = agent.child.id().to_string();
    let ok = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap();
    assert!(ok.success(), "kill -KILL {pid}");
}

#[test]
fn generated_streamed_pipelines_survive_a_killed_agent() {
    // Three agent processes; in each case one that runs a stage is killed
    // once some results are in, and started again for the next case.
    let mut rng = StdRng::seed_from_u64(seed(1820));
    let dir = Scratch::new("liveness-kill");
    let key_path = dir.0.join("cluster.key");
    let key = ClusterKey::generate().unwrap();
    key.write(&key_path, true).unwrap();
    let start = |i: usize| start_agent(&key_path, &format!("live-{i}"), &["--no-mdns"]);
    let mut agents: Vec<AgentProcess> = (0..3).map(start).collect();
    for case in 0..10 {
        let addrs: Vec<_> = agents.iter().map(|a| a.addr).collect();
        let mut cluster = smol::block_on(Cluster::connect(&addrs, &key, &fast_beats())).unwrap();
        let (tree, inputs, what) = pipeline_case(&mut rng, 3);
        let Skeleton::Pipe(stages) = &tree else {
            unreachable!()
        };
        let victim = rng.random_range(0..stages.len().min(3));
        let kill_at = rng.random_range(1..=inputs.len().div_ceil(2));
        let want = sequential::run(&Registry::builtin(), &tree, inputs.clone()).unwrap();
        let mut got: Vec<(u64, Array)> = Vec::new();
        let job = cluster.run_each(&tree, inputs, |i, a| {
            got.push((i, a));
            if got.len() == kill_at {
                kill(&agents[victim]);
            }
        });
        let ended = bounded(job, CASE_LIMIT);
        let name = format!("case {case} ({what}; agent {victim} killed after {kill_at} results)");
        check(ended, got, &want, &tree, &name);
        // The agent of the last stage cannot have finished before the
        // results were all in: the stream lost it and went on without it.
        if victim == (stages.len() - 1) % 3 {
            let lost = cluster.agents()[victim].is_broken();
            assert!(lost, "{name}: the killed agent was taken for lost");
        }
        smol::block_on(cluster.close());
        // The killed agent (if the job got that far) is replaced.
        agents[victim] = start(victim);
    }
}

/// Runs `tree` over 30 items on two in-process agents with a stall
/// timeout of 1 s; returns the stall it must end with, within 5 s.
fn stalls(tree: &str) -> Box<skelpi::runtime::stall::Stall> {
    let mut cluster = smol::block_on(Cluster::local(2, &fast_beats())).unwrap();
    cluster.set_stall_timeout(Some(Duration::from_secs(1)));
    let tree: Skeleton = tree.parse().unwrap();
    let inputs: Vec<Array> = (0..30).map(|i| Array::list(vec![i as f64])).collect();
    let started = Instant::now();
    let job = cluster.run_each(&tree, inputs, |_, _| panic!("no result can come"));
    let ended = bounded(job, Duration::from_secs(15)).expect("the watchdog ends the job");
    let Err(JobError::Stalled(stall)) = ended else {
        panic!("expected a stall, got {ended:?}")
    };
    // For a routed job, not the drain's minute: what is in flight is
    // given up at once.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
    stall
}

#[test]
fn a_streamed_pipeline_that_stalls_says_where_each_stage_stands() {
    // Stage 1's kernel takes far longer than the stall timeout: stage 0
    // runs every item, stage 1 none, and then nothing moves.
    let stall = stalls("pipe(seq(identity), seq(sleep_ms(2500)), seq(square))");
    assert_eq!((stall.inputs, stall.results), (30, 0), "{stall}");
    let p = &stall.parts;
    assert_eq!(p.len(), 3, "{stall}");
    assert_eq!((p[0].arrived, p[0].done), (Some(30), Some(30)), "{stall}");
    assert_eq!(p[0].note, "finished", "{stall}");
    assert_eq!(p[1].done, Some(0), "{stall}");
    assert!(p[1].arrived.is_some_and(|a| a >= 1), "{stall}");
    assert_eq!(p[2].arrived, Some(0), "{stall}");
    let text = JobError::Stalled(stall).to_string();
    assert!(
        text.contains("stage 1 sleep_ms(2500) on local-1:") && text.contains("0 done"),
        "{text}"
    );
}

#[test]
fn a_routed_job_that_stalls_says_where_its_tasks_stand_and_ends_at_once() {
    let stall = stalls("pipe(farm(seq(square)), seq(sleep_ms(2500)))");
    let sleeps = stall
        .parts
        .iter()
        .find(|p| p.name == "tasks of sleep_ms(2500)")
        .unwrap_or_else(|| panic!("{stall}"));
    assert_eq!((sleeps.arrived, sleeps.done), (Some(1), Some(0)), "{stall}");
    assert_eq!(stall.results, 0, "{stall}");
}

#[test]
fn a_slow_pipeline_that_keeps_moving_is_not_taken_for_stalled() {
    // Eight stages of 300 ms: the first result takes 2.4 s, more than
    // twice the stall timeout, but some stage finishes an item every
    // 300 ms.
    let mut cluster = smol::block_on(Cluster::local(2, &fast_beats())).unwrap();
    cluster.set_stall_timeout(Some(Duration::from_secs(1)));
    let stages = vec![Skeleton::seq(Kernel::new("sleep_ms", [300.0])); 8];
    let tree = Skeleton::pipe(stages);
    let inputs: Vec<Array> = (0..2).map(|i| Array::list(vec![i as f64])).collect();
    runs_to_the_end(&mut cluster, &tree, inputs, CASE_LIMIT, "slow stages");
}

#[test]
fn skelpi_run_reports_a_stall_with_per_stage_counts_and_fails() {
    let dir = Scratch::new("liveness-cli");
    let job = dir.path("stuck.toml");
    std::fs::write(
        &job,
        "skeleton = \"pipe(seq(identity), seq(sleep_ms(2500)))\"\n\
         [input]\ngenerate = \"range\"\nitems = 20\nlength = 4\n",
    )
    .unwrap();
    let started = Instant::now();
    let (code, _, err) = skelpi(&["run", &job, "--local", "2", "--stall-timeout", "1"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15), "{err}");
    assert!(err.contains("the job stalled: no progress for"), "{err}");
    assert!(err.contains("stage 1 sleep_ms(2500) on local-1: "), "{err}");
    assert!(err.contains("--stall-timeout"), "{err}");
    let (code, _, err) = skelpi(&["run", &job, "--local", "1", "--stall-timeout", "soon"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--stall-timeout"), "{err}");
}

/// The default heartbeat (500 ms; a peer silent for 4 beats is down) on a
/// machine saturated by more spinning threads than cores here and
/// CPU-bound kernel calls, each about two beats long, on every agent worker:
/// no live agent is declared down, as agents beat from a thread that runs
/// no kernel (runs alone: see .config/nextest.toml).
#[test]
fn a_saturated_machine_loses_no_live_agent_at_the_default_heartbeat() {
    let dir = Scratch::new("saturated");
    let key_path = dir.0.join("cluster.key");
    let key = ClusterKey::generate().unwrap();
    key.write(&key_path, true).unwrap();
    let agents: Vec<_> = ["hot-a", "hot-b"]
        .iter()
        .map(|n| start_agent(&key_path, n, &["--no-mdns", "--workers", "2"]))
        .collect();
    let addrs: Vec<_> = agents.iter().map(|a| a.addr).collect();
    let spinners = skelpi_testkit::Spinners::per_core(2);
    let until = Instant::now() + Duration::from_secs(6);
    let (done, losses) = smol::block_on(async {
        let mut cluster = Cluster::connect(&addrs, &key, &ConnectOptions::default())
            .await
            .unwrap();
        // About 0.3 s a call on idle debug agents, about a second on the
        // saturated machine: every worker is busy for beats at a time.
        let tree: Skeleton = "farm(seq(erf_burn(80000)), unordered)".parse().unwrap();
        let inputs =
            std::iter::from_fn(|| (Instant::now() < until).then(|| Array::list(vec![0.25; 256])));
        let mut done = 0u64;
        cluster
            .run_each(&tree, inputs, |_, _| done += 1)
            .await
            .unwrap();
        let losses: Vec<_> = cluster
            .agents()
            .iter()
            .flat_map(|a| a.losses().to_vec())
            .collect();
        assert_no_agent_lost(&cluster);
        cluster.close().await;
        (done, losses)
    });
    drop(spinners);
    assert!(done > 0);
    assert!(losses.is_empty(), "live agents declared down: {losses:?}");
}
