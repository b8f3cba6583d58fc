//! Agents that die in the middle of a job: real `skelpi-agent` processes
//! killed with SIGKILL (or stopped with SIGSTOP) while a farm, a pmap or a
//! streamed pipeline runs on them. Tasks and stages are pure, so the work
//! lost with the agent is sent again to live agents; every result comes
//! back exactly once and equals the sequential reference.

use crate::agents::start_agent;
use crate::support::{
    assert_no_agent_lost, assert_squares, free_port, kernel_calls, paced_farm, signal,
    write_range_job,
};
use skelpi::cluster::Cluster;
use skelpi::runtime::JobError;
use skelpi::runtime::sequential;
use skelpi_agent::kernels::Registry;
use skelpi_proto::Array;
use skelpi_proto::skeleton::Skeleton;
use skelpi_testkit::AgentProcess;
use skelpi_wire::key::ClusterKey;
use std::time::{Duration, Instant};

/// Runs a job to its end, failing the test if it takes over a minute (a
/// job that stalls would otherwise hold the run until nextest kills it).
fn bounded<T>(job: impl std::future::Future<Output = T>) -> T {
    let limit = Duration::from_secs(60);
    smol::block_on(futures_lite::future::or(job, async {
        async_io::Timer::after(limit).await;
        panic!("the job did not end within {limit:?}")
    }))
}

/// A thread that stops `agent` (SIGSTOP) when told on the returned
/// sender, resumes it (SIGCONT) `pause` later, and returns when it stopped.
fn pause_when_told(
    agent: &AgentProcess,
    pause: Duration,
) -> (
    std::sync::mpsc::Sender<()>,
    std::thread::JoinHandle<std::time::Instant>,
) {
    let pid = agent.child.id().to_string();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let controller = std::thread::spawn(move || {
        go_rx.recv().unwrap();
        signal("-STOP", &pid);
        let stopped = std::time::Instant::now();
        std::thread::sleep(pause);
        signal("-CONT", &pid);
        stopped
    });
    (go_tx, controller)
}

/// Waits up to `limit` for a log line of `agent` containing `what`, and
/// returns it.
fn wait_for(agent: &AgentProcess, what: &str, limit: Duration) -> String {
    wait_for_any(agent, &[what], limit)
}

/// Waits up to `limit` for a log line of `agent` containing one of `what`,
/// and returns it.
fn wait_for_any(agent: &AgentProcess, what: &[&str], limit: Duration) -> String {
    let deadline = std::time::Instant::now() + limit;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match agent.lines.recv_timeout(left) {
            Ok(line) if what.iter().any(|w| line.contains(w)) => return line,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    panic!(
        "agent {} never logged one of {what:?} within {limit:?}",
        agent.addr
    );
}

/// Checks results as `(index, array)` in arrival order: every index once,
/// in order, and each array as `want` says.
fn assert_once_in_order(got: Vec<(u64, Array)>, want: &[Array]) {
    let (indices, values): (Vec<u64>, Vec<Array>) = got.into_iter().unzip();
    let expected: Vec<u64> = (0..want.len() as u64).collect();
    assert_eq!(indices, expected, "each result once, in order");
    assert_eq!(values, want);
}

/// `n` agent processes of two workers each, and a cluster connected to
/// them.
fn agents(tag: &str, n: usize) -> (Vec<AgentProcess>, Cluster, std::path::PathBuf) {
    agents_with(tag, n, &Default::default())
}

/// [`agents`], the cluster connected with `opts`.
fn agents_with(
    tag: &str,
    n: usize,
    opts: &skelpi_wire::handshake::ConnectOptions,
) -> (Vec<AgentProcess>, Cluster, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("skelpi-faults-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_path = dir.join("cluster.key");
    let key = ClusterKey::generate().unwrap();
    key.write(&key_path, true).unwrap();
    let agents: Vec<AgentProcess> = (0..n)
        .map(|i| {
            start_agent(
                &key_path,
                &format!("fault-{i}"),
                &["--no-mdns", "--workers", "2"],
            )
        })
        .collect();
    let addrs: Vec<_> = agents.iter().map(|a| a.addr).collect();
    let cluster = smol::block_on(Cluster::connect(&addrs, &key, opts)).unwrap();
    (agents, cluster, dir)
}

/// Runs `tree` over `inputs`, SIGKILLing agent 1 when `kill_at` results
/// have come back; checks the results against the sequential reference,
/// each exactly once and in order.
fn survives_a_kill(tag: &str, tree: &str, inputs: Vec<Array>, kill_at: usize) {
    survives_a_signal(tag, tree, inputs, kill_at, 1, "-KILL");
}

/// [`survives_a_kill`], sending `sig` to agent `victim`.
fn survives_a_signal(
    tag: &str,
    tree: &str,
    inputs: Vec<Array>,
    kill_at: usize,
    victim: usize,
    sig: &str,
) {
    let (agents, mut cluster, dir) = agents(tag, 3);
    let tree: Skeleton = tree.parse().unwrap();
    let want = sequential::run(&Registry::builtin(), &tree, inputs.clone()).unwrap();
    let mut got: Vec<(u64, Array)> = Vec::new();
    let mut killed = false;
    let result = bounded(cluster.run_each(&tree, inputs, |index, a| {
        got.push((index, a));
        if got.len() == kill_at {
            signal(sig, &agents[victim].child.id().to_string());
            killed = true;
        }
    }));
    result.unwrap_or_else(|e| panic!("{tree}: the job survives a lost agent: {e}"));
    assert!(killed, "{tree}: an agent was killed mid-job");
    let indices: Vec<u64> = got.iter().map(|(i, _)| *i).collect();
    let expected: Vec<u64> = (0..want.len() as u64).collect();
    assert_eq!(indices, expected, "{tree}: every result once, in order");
    let values: Vec<Array> = got.into_iter().map(|(_, a)| a).collect();
    assert_eq!(values, want, "{tree}: as the sequential reference");
    // The dead agent's connection is marked; the others serve the next job.
    let broken: Vec<bool> = cluster.agents().iter().map(|a| a.is_broken()).collect();
    let want: Vec<bool> = (0..3).map(|i| i == victim).collect();
    assert_eq!(broken, want, "{tree}: only the agent signalled is lost");
    let again = smol::block_on(cluster.run(&tree, vec![Array::list(vec![2.0; 4])])).unwrap();
    assert_eq!(again.len(), 1);
    smol::block_on(cluster.close());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_farm_loses_nothing_when_one_of_three_agents_is_killed() {
    // 5 ms tasks: about 30 ms of work per agent worker in flight when the
    // agent dies, so tasks are certainly lost with it.
    let inputs: Vec<Array> = (0..240)
        .map(|i| Array::list(vec![i as f64, -(i as f64), 0.5]))
        .collect();
    survives_a_kill(
        "farm",
        "farm(pipe(seq(sleep_ms(5)), seq(square)))",
        inputs,
        120,
    );
}

#[test]
fn a_pmap_loses_nothing_when_one_of_three_agents_is_killed() {
    // Each item split in 12 chunks over the pool, chunk results
    // concatenated in order.
    let inputs: Vec<Array> = (0..16)
        .map(|i| Array::list((0..48).map(|j| (i * 48 + j) as f64 / 7.0).collect()))
        .collect();
    survives_a_kill(
        "pmap",
        "map(12, pipe(seq(sleep_ms(5)), seq(erf_burn(3))))",
        inputs,
        8,
    );
}

#[test]
fn a_streamed_pipeline_loses_nothing_when_the_agent_of_its_middle_stage_is_killed() {
    // Three `seq` stages stream agent to agent, one per agent; agent 1 runs
    // the middle one. Its loss restarts the stream with that stage on a
    // live agent, replaying the items whose results were missing.
    let inputs: Vec<Array> = (0..300)
        .map(|i| Array::list(vec![i as f64 / 3.0, 1.0 - i as f64]))
        .collect();
    survives_a_kill(
        "pipe",
        "pipe(seq(erf_burn(2)), seq(sleep_ms(2)), seq(square))",
        inputs,
        100,
    );
}

#[test]
fn a_streamed_pipeline_loses_nothing_when_its_feeds_agent_is_killed() {
    let inputs: Vec<Array> = (0..300).map(|i| Array::list(vec![i as f64])).collect();
    let tree = "pipe(seq(sleep_ms(2)), seq(square), seq(erf_burn(1)))";
    survives_a_signal("pipe-feed", tree, inputs, 100, 0, "-KILL");
}

#[test]
fn a_streamed_pipeline_moves_a_stage_off_an_agent_that_shuts_down() {
    // SIGTERM: the agent says it is shutting down on its connections
    // before it goes; only that agent is taken for lost.
    let inputs: Vec<Array> = (0..300).map(|i| Array::list(vec![i as f64])).collect();
    let tree = "pipe(seq(square), seq(sleep_ms(2)), seq(erf_burn(1)))";
    survives_a_signal("pipe-term", tree, inputs, 100, 1, "-TERM");
}

#[test]
fn an_item_too_large_for_a_frame_fails_the_pipeline_and_no_agent() {
    let (agents, mut cluster, dir) = agents("pipe-big", 3);
    let tree: Skeleton = "pipe(seq(square), seq(square))".parse().unwrap();
    // 3 M floats: 24 MB, over the 16 MiB frame limit.
    let inputs = vec![
        Array::list(vec![1.0; 1000]),
        Array::list(vec![0.5; 3 << 20]),
    ];
    let err = bounded(cluster.run(&tree, inputs)).unwrap_err().to_string();
    eprintln!("{err}");
    assert!(err.contains("frame") || err.contains("too large"), "{err}");
    assert!(
        cluster.agents().iter().all(|a| !a.is_broken()),
        "no agent is blamed: {err}"
    );
    let out = bounded(cluster.run(&tree, vec![Array::list(vec![3.0])])).unwrap();
    assert_eq!(out[0].data, [81.0]);
    drop(agents);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_streamed_pipeline_whose_last_stage_stops_restarts_within_5_s_and_loses_nothing() {
    let (agents, mut cluster, dir) = agents("pipe-stop", 3);
    let tree: Skeleton = "pipe(seq(square), seq(sleep_ms(3)), seq(erf_burn(1)))"
        .parse()
        .unwrap();
    let inputs: Vec<Array> = (0..1500).map(|i| Array::list(vec![i as f64])).collect();
    // The reference without the sleep (it passes its input through).
    let plain: Skeleton = "pipe(seq(square), seq(erf_burn(1)))".parse().unwrap();
    let want = sequential::run(&Registry::builtin(), &plain, inputs.clone()).unwrap();
    // Agent 2 runs the last stage: stopped, it holds items and results
    // with its connections open.
    let (go_tx, controller) = pause_when_told(&agents[2], Duration::from_secs(7));
    let mut got = Vec::new();
    let result = bounded(cluster.run_each(&tree, inputs, |index, a| {
        got.push((index, a));
        if got.len() == 300 {
            go_tx.send(()).unwrap();
        }
    }));
    let stopped = controller.join().unwrap();
    result.unwrap();
    assert_once_in_order(got, &want);
    let (why, since) = cluster.agents()[2]
        .broken()
        .expect("the stopped agent is down");
    // The master or the previous stage's agent noticed first.
    assert!(
        why.contains("declared down") || why.contains("is silent for"),
        "{why}"
    );
    let detection = since - stopped;
    eprintln!("stopped stage agent declared down after {detection:.2?}: {why}");
    assert!(
        detection <= Duration::from_secs(5),
        "declared down after {detection:?}"
    );
    // Resumed, it rejoins at the next job and runs a stage again.
    let again: Vec<Array> = (0..30).map(|i| Array::list(vec![i as f64])).collect();
    let out = smol::block_on(cluster.run(&tree, again)).unwrap();
    assert_eq!(out.len(), 30);
    assert!(
        cluster.agents().iter().all(|a| !a.is_broken()),
        "all three serve again"
    );
    drop(agents);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_task_that_keeps_losing_its_agent_fails_the_job_naming_it() {
    // One long task; each agent that receives it (it logs the job's first
    // task) is killed, so it is sent again, and again, until it has been
    // lost more often than it is sent again.
    let (agents, mut cluster, dir) = agents("lost", 5);
    let tree: Skeleton = "farm(seq(sleep_ms(60000)))".parse().unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = std::thread::spawn({
        let done = done.clone();
        move || {
            let mut agents = agents;
            let mut killed = 0;
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while !done.load(std::sync::atomic::Ordering::Relaxed)
                && std::time::Instant::now() < deadline
            {
                for a in agents.iter_mut() {
                    if let Ok(line) = a.lines.recv_timeout(Duration::from_millis(10))
                        && line.contains("tasks from master")
                    {
                        a.child.kill().unwrap();
                        killed += 1;
                    }
                }
            }
            killed
        }
    });
    let err = smol::block_on(cluster.run(&tree, vec![Array::list(vec![1.0])])).unwrap_err();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let killed = killer.join().unwrap();
    let JobError::Lost { task, agents, .. } = &err else {
        panic!("expected a lost task, got {err}");
    };
    assert_eq!(task, "item 0", "{err}");
    assert_eq!(
        agents.len(),
        1 + skelpi::runtime::dispatch::MAX_REDISPATCH,
        "{err}"
    );
    assert_eq!(killed, agents.len(), "{err}");
    assert!(err.to_string().contains("sleep_ms(60000)"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_stopped_agent_is_declared_down_within_5_s_and_rejoins_when_it_resumes() {
    let (agents, mut cluster, dir) = agents("stop", 3);
    let tree: Skeleton = "farm(pipe(seq(sleep_ms(25)), seq(square)))"
        .parse()
        .unwrap();
    // 2,000 tasks of 25 ms: over 12 s on the two agents left, so the
    // stopped one resumes (after 10 s) while the job still runs, and its
    // late results arrive on a connection the job gave up.
    let inputs: Vec<Array> = (0..2000).map(|i| Array::list(vec![i as f64])).collect();
    // The reference without the sleeps (which pass their input through):
    // 50 s of sleeping in this process would prove nothing more.
    let square: Skeleton = "farm(seq(square))".parse().unwrap();
    let want = sequential::run(&Registry::builtin(), &square, inputs.clone()).unwrap();
    // The fault: ten seconds stopped.
    let (go_tx, controller) = pause_when_told(&agents[1], Duration::from_secs(10));
    let mut got = Vec::new();
    let result = smol::block_on(cluster.run_each(&tree, inputs, |index, a| {
        got.push((index, a));
        if got.len() == 200 {
            go_tx.send(()).unwrap();
        }
    }));
    let stopped = controller.join().unwrap();
    result.unwrap();
    assert_once_in_order(got, &want);
    // Declared down (it may have come back within the job since).
    let (why, since) = cluster.agents()[1]
        .losses()
        .first()
        .cloned()
        .expect("the stopped agent was declared down");
    assert!(why.contains("declared down"), "{why}");
    let detection = since - stopped;
    eprintln!("stopped agent declared down after {detection:.2?}");
    assert!(
        detection <= Duration::from_secs(5),
        "declared down after {detection:?}"
    );

    // Back from its pause, it serves (again within that job, or at the
    // next) and gets work.
    cluster.set_tracing(true);
    let again: Vec<Array> = (0..60).map(|i| Array::list(vec![i as f64])).collect();
    smol::block_on(cluster.run(&tree, again)).unwrap();
    assert!(
        cluster.agents().iter().all(|a| !a.is_broken()),
        "all three serve again"
    );
    let trace = cluster.take_trace().unwrap().unwrap();
    let kernels_on_1 = trace
        .events
        .iter()
        .filter(|e| e.pid == 2 && e.kind == skelpi_proto::trace::TraceKind::Kernel)
        .count();
    assert!(kernels_on_1 > 0, "the agent that rejoined ran tasks");
    drop(agents);
    let _ = std::fs::remove_dir_all(dir);
}

/// Runs a farm of 300 `sleep_ms(5)` tasks on `cluster`, stopping (SIGSTOP)
/// the agent of `pid` at half the results; checks every result came once
/// and in order.
fn farm_stopping_one_halfway(cluster: &mut Cluster, pid: &str) {
    let tree: Skeleton = "farm(seq(sleep_ms(5)))".parse().unwrap();
    let inputs: Vec<Array> = (0..300).map(|i| Array::list(vec![i as f64])).collect();
    let mut got = Vec::new();
    let result = bounded(cluster.run_each(&tree, inputs.clone(), |index, a| {
        got.push((index, a));
        if got.len() == 150 {
            signal("-STOP", pid);
        }
    }));
    result.unwrap();
    assert_once_in_order(got, &inputs);
}

/// Checks that no job lost any agent of `cluster`.
fn assert_none_lost(cluster: &Cluster) {
    let losses: Vec<_> = cluster.agents().iter().map(|a| a.losses()).collect();
    assert!(
        losses.iter().all(|l| l.is_empty()),
        "agents lost: {losses:?}"
    );
}

/// An agent stalled past the end of a job (its copies that lost still
/// queued there) resumes after the master has been silent for more than
/// four heartbeats: it takes the master for gone and closes the
/// connection, freeing that work. The next jobs run exact: the close is
/// found before a job starts (`AgentConn::settle`, then `rejoin`) or,
/// when it comes as a job runs, by the job, which sends its tasks again
/// and connects again. (Which happens depends on timing, so the test asks
/// for the outcome both give: every result once, the agent serving.)
#[test]
fn an_agent_that_closed_a_silent_masters_connection_between_jobs_loses_no_result() {
    let (agents, mut cluster, dir) = agents("closed", 3);
    let pid = agents[1].child.id().to_string();
    farm_stopping_one_halfway(&mut cluster, &pid);
    assert!(
        cluster.agents()[1].results_left() > 0,
        "copies were left out"
    );
    // The scenario is time passing: the master silent past 4 beats of
    // 500 ms while the agent is stopped.
    std::thread::sleep(Duration::from_millis(2500));
    signal("-CONT", &pid);
    wait_for(&agents[1], "taken for gone", Duration::from_secs(10));
    let tree: Skeleton = "farm(seq(sleep_ms(5)))".parse().unwrap();
    let again: Vec<Array> = (0..60).map(|i| Array::list(vec![i as f64])).collect();
    let mut next = Vec::new();
    bounded(cluster.run_each(&tree, again.clone(), |index, a| next.push((index, a)))).unwrap();
    assert_once_in_order(next, &again);
    let losses = cluster.agents()[1].losses().to_vec();
    assert!(
        losses.iter().all(|(why, _)| why.contains("closed by peer")),
        "only the close it made: {losses:?}"
    );
    // Whenever the close came, a later job has the agent back.
    cluster.set_tracing(true);
    let mut last = Vec::new();
    bounded(cluster.run_each(&tree, again.clone(), |index, a| last.push((index, a)))).unwrap();
    assert_once_in_order(last, &again);
    let trace = cluster.take_trace().unwrap().unwrap();
    let on_1 = trace.events.iter().filter(|e| e.pid == 2).count();
    assert!(on_1 > 0, "the agent that closed serves again");
    smol::block_on(cluster.close());
    drop(agents);
    let _ = std::fs::remove_dir_all(dir);
}

/// A stalled agent (SIGSTOP) in an ordered farm: its overdue tasks are
/// copied to the other agents, so the job ends with every result once and
/// in order before its silence (8 s here) could have it declared down.
/// The job does not wait for the stalled agent's copies: it ends with
/// them still out, their results left to the connection; no agent is
/// given up. Resumed, the agent answers them late, and the next job on
/// the same connection never mistakes them for its own.
#[test]
fn a_stalled_agents_tasks_are_copied_and_the_farm_ends_before_it_is_declared_down() {
    let slow_beats = skelpi_wire::handshake::ConnectOptions {
        heartbeat: Duration::from_secs(2),
        ..Default::default()
    };
    let (agents, mut cluster, dir) = agents_with("copies", 3, &slow_beats);
    let pid = agents[1].child.id().to_string();
    farm_stopping_one_halfway(&mut cluster, &pid);
    signal("-CONT", &pid);
    assert_none_lost(&cluster);
    let tree: Skeleton = "farm(seq(sleep_ms(5)))".parse().unwrap();
    // Resumed, it answers its copies late: requests between jobs skip
    // those results (pings until they all came), and it serves the next
    // job.
    let resumed = &mut cluster.agents_mut()[1];
    let left = resumed.results_left();
    assert!(left > 0, "the job left the stalled agent's copies out");
    for _ in 0..5_000 {
        smol::block_on(resumed.ping()).expect("a ping past the late results");
        if resumed.results_left() == 0 {
            break;
        }
    }
    assert_eq!(resumed.results_left(), 0, "{left} late results all came");
    let again: Vec<Array> = (0..60)
        .map(|i| Array::list(vec![1000.0 + i as f64]))
        .collect();
    let mut next = Vec::new();
    bounded(cluster.run_each(&tree, again.clone(), |index, a| next.push((index, a)))).unwrap();
    assert_once_in_order(next, &again);
    assert!(cluster.agents().iter().all(|a| !a.is_broken()));
    smol::block_on(cluster.close());
    drop(agents);
    let _ = std::fs::remove_dir_all(dir);
}

/// A real `skelpi run` master feeding one agent (one worker) 6 s tasks is
/// killed (`-KILL`) or stopped (`-STOP`, silent with its connection open)
/// once the job runs: the agent notices, drops that master's queued task
/// and runs a new master's task once the running one ends — within 12 s,
/// and before the queued one could have run too.
fn agent_frees_the_work_of_a_lost_master(signal: &str) {
    let dir =
        std::env::temp_dir().join(format!("skelpi-master-loss{signal}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_path = dir.join("cluster.key");
    let key = ClusterKey::generate().unwrap();
    key.write(&key_path, true).unwrap();
    let key_arg = key_path.to_str().unwrap();
    let agent = start_agent(&key_path, "lonely", &["--no-mdns", "--workers", "1"]);
    let job = dir.join("slow.toml");
    std::fs::write(
        &job,
        "skeleton = \"farm(seq(sleep_ms(6000)))\"\n\
         [input]\ngenerate = \"range\"\nitems = 20\nlength = 1\n",
    )
    .unwrap();
    let addr = agent.addr.to_string();
    let mut master = std::process::Command::new(env!("CARGO_BIN_EXE_skelpi"))
        .args(["run", "--agents", &addr, "--key-file", key_arg])
        .arg(&job)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&agent, "tasks from master", Duration::from_secs(30));
    let lost = std::time::Instant::now();
    self::signal(signal, &master.id().to_string());
    let line = wait_for(&agent, "tasks unfinished", Duration::from_secs(10));
    let noticed = lost.elapsed();
    eprintln!("{signal}: after {noticed:.2?}: {line}");

    // Another master's task is not stuck behind the lost one's.
    let mut cluster =
        smol::block_on(Cluster::connect(&[agent.addr], &key, &Default::default())).unwrap();
    let tree: Skeleton = "farm(seq(square))".parse().unwrap();
    let out = smol::block_on(cluster.run(&tree, vec![Array::list(vec![3.0])])).unwrap();
    assert_eq!(out[0].data, [9.0]);
    let freed = lost.elapsed();
    eprintln!("{signal}: a new master's task done {freed:.2?} after the master was lost");
    assert!(
        freed < Duration::from_secs(12),
        "{signal}: freed after {freed:?}"
    );
    // At most the running task's 6 s after noticing: the queued one (the
    // master keeps 2 in flight per worker) was dropped, not run. (Tasks
    // longer than the 2 s it takes to notice: the master may have been
    // stopped before it sent its second task, and a first task done by
    // then would leave no work unfinished to drop.)
    let bound = noticed + Duration::from_millis(7500);
    assert!(
        freed < bound,
        "{signal}: freed after {freed:?}, noticed after {noticed:?}"
    );
    let _ = master.kill();
    let _ = master.wait();
    let _ = std::fs::remove_dir_all(dir);
}

/// A job whose only agent is killed waits [`ALL_DOWN_GRACE`] for it to
/// answer again (it does not), then fails saying no agent is left.
#[test]
fn a_job_whose_every_agent_is_gone_fails_after_the_grace() {
    use skelpi::runtime::dispatch::ALL_DOWN_GRACE;
    let (mut agents, mut cluster, dir) = agents("all-gone", 1);
    let tree: Skeleton = "farm(seq(sleep_ms(60000)))".parse().unwrap();
    let inputs = (0..2).map(|i| Array::list(vec![f64::from(i)]));
    let killer = std::thread::spawn(move || {
        wait_for(&agents[0], "tasks from master", Duration::from_secs(30));
        agents[0].child.kill().unwrap();
        let _ = agents[0].child.wait();
        Instant::now()
    });
    let err = bounded(cluster.run(&tree, inputs)).unwrap_err();
    let ended = Instant::now();
    let killed = killer.join().unwrap();
    assert!(matches!(err, JobError::NoAgents), "{err}");
    let waited = ended.duration_since(killed);
    eprintln!("failed {waited:.2?} after the kill");
    assert!(
        waited >= ALL_DOWN_GRACE - Duration::from_millis(500),
        "{waited:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A master suspended (SIGSTOP, as Ctrl-Z) while its
/// tasks run, long enough for both its agents to take it for gone and
/// drop its work, resumes and finishes the job on the same agents: every
/// result once, and its stall said as its own, not blamed on the agents.
#[test]
fn a_master_suspended_past_its_agents_patience_finishes_its_job_on_resume() {
    let dir = crate::support::Scratch::new("master-pause");
    let key_path = dir.0.join("cluster.key");
    ClusterKey::generate()
        .unwrap()
        .write(&key_path, true)
        .unwrap();
    let agents: Vec<AgentProcess> = ["p1", "p2"]
        .iter()
        .map(|name| start_agent(&key_path, name, &["--no-mdns", "--workers", "1"]))
        .collect();
    let job = dir.0.join("slow.toml");
    std::fs::write(
        &job,
        "skeleton = \"farm(seq(sleep_ms(1500)))\"\n\
         [input]\ngenerate = \"range\"\nitems = 6\nlength = 1\n",
    )
    .unwrap();
    let out = dir.0.join("out.jsonl");
    let addrs = format!("{},{}", agents[0].addr, agents[1].addr);
    let mut master = crate::support::Killed(
        std::process::Command::new(env!("CARGO_BIN_EXE_skelpi"))
            .args(["run", "--agents", &addrs, "--key-file"])
            .arg(&key_path)
            .arg("--out")
            .arg(&out)
            .arg(&job)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Its log, whole once it exits.
    let mut stderr = master.0.stderr.take().unwrap();
    let (tx, log) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        let _ = tx.send(text);
    });
    let pid = master.0.id().to_string();
    for agent in &agents {
        wait_for(agent, "tasks from master", Duration::from_secs(30));
    }
    signal("-STOP", &pid);
    for agent in &agents {
        wait_for(
            agent,
            "with work unfinished: taken for gone",
            Duration::from_secs(10),
        );
    }
    signal("-CONT", &pid);
    let err = log
        .recv_timeout(Duration::from_secs(60))
        .expect("the job ends within a minute of its resume");
    let status = master.0.wait().unwrap();
    assert!(status.success(), "{err}");
    assert!(err.contains("this master was stalled for"), "{err}");
    assert!(err.contains("every agent is down"), "{err}");
    let lines = std::fs::read_to_string(&out).unwrap();
    let mut got: Vec<u64> = lines
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["index"].as_u64().unwrap()
        })
        .collect();
    got.sort_unstable();
    assert_eq!(got, [0, 1, 2, 3, 4, 5], "every result once: {lines}");
}

#[test]
fn an_agent_frees_the_work_of_a_killed_master() {
    agent_frees_the_work_of_a_lost_master("-KILL");
}

#[test]
fn an_agent_frees_the_work_of_a_stopped_master() {
    agent_frees_the_work_of_a_lost_master("-STOP");
}

/// A real master streams a pipeline of `n` stages, each on its own agent,
/// then stops (SIGSTOP: its connections stay open). Every agent — the
/// first stage's too, whose connection carries the feed — hears no more
/// beats and takes the master for gone within the detection bound: nothing
/// is left waiting for a master that may never come back. `master` gives
/// the command's arguments for the job's folder and the agents' addresses.
fn agents_drop_the_streamed_stages_of_a_stopped_master(
    n: usize,
    master: impl Fn(&std::path::Path, &str) -> Vec<String>,
) {
    let dir = std::env::temp_dir().join(format!("skelpi-stream-master{n}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_path = dir.join("cluster.key");
    ClusterKey::generate()
        .unwrap()
        .write(&key_path, true)
        .unwrap();
    let args = ["--no-mdns", "--workers", "1"];
    let agents: Vec<AgentProcess> = (0..n)
        .map(|i| start_agent(&key_path, &format!("stage-{i}"), &args))
        .collect();
    let addrs: Vec<String> = agents.iter().map(|a| a.addr.to_string()).collect();
    let mut master = std::process::Command::new(env!("CARGO_BIN_EXE_skelpi"))
        .args(master(&dir, &addrs.join(",")))
        .arg("--key-file")
        .arg(&key_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for (i, agent) in agents.iter().enumerate() {
        wait_for(agent, &format!("stage {i} runs"), Duration::from_secs(30));
    }
    // The last stage's results flow back: every stage is busy.
    wait_for(&agents[n - 1], "beats every", Duration::from_secs(30));
    let stopped = std::time::Instant::now();
    signal("-STOP", &master.id().to_string());
    // A stage may end first by losing its link to its successor, or its
    // input from its predecessor, once that one's agent ended its stage;
    // either way its work is freed.
    for (i, agent) in agents.iter().enumerate() {
        let mut ends = vec![": taken for gone".to_owned()];
        if i + 1 < n {
            ends.push(format!("lost its link to stage {}", i + 1));
        }
        if i > 0 {
            ends.push(format!("lost its input from stage {}", i - 1));
        }
        let ends: Vec<&str> = ends.iter().map(String::as_str).collect();
        let gone = wait_for_any(agent, &ends, Duration::from_secs(10));
        eprintln!("after {:.2?}: {gone}", stopped.elapsed());
    }
    let ended = stopped.elapsed();
    assert!(
        ended < Duration::from_secs(10),
        "stages ended after {ended:?}"
    );
    let _ = master.kill();
    let _ = master.wait();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn an_agent_drops_the_one_streamed_stage_of_a_stopped_master() {
    // The seed's pipeline benchmark streams a single stage, fed every
    // 50 ms: its one connection carries the feed, with pauses between
    // items.
    agents_drop_the_streamed_stages_of_a_stopped_master(1, |dir, agents| {
        bench_pipeline(1, dir, agents)
    });
}

/// `skelpi bench pipeline` of `stages` small stages on `agents`, fed every
/// 50 ms for 20 s, writing into `dir`.
fn bench_pipeline(stages: usize, dir: &std::path::Path, agents: &str) -> Vec<String> {
    let out = dir.join("bench").to_str().unwrap().to_string();
    let args = format!(
        "bench pipeline --stages {stages} --items 400 --size 10 --work 1 --work-size 10 \
         --interval 50ms --repeats 1 --out {out} --agents {agents}"
    );
    args.split_whitespace().map(String::from).collect()
}

#[test]
fn agents_drop_three_streamed_stages_of_a_stopped_master() {
    // `skelpi run` streams as fast as the stages go: the first stage's
    // inbox is full when the master stops.
    agents_drop_the_streamed_stages_of_a_stopped_master(3, |dir, agents| {
        let job = dir.join("pipe.toml");
        let tree = "pipe(seq(sleep_ms(200)), seq(sleep_ms(200)), seq(sleep_ms(200)))";
        write_range_job(&job, tree, 200, 1);
        let job = job.to_str().unwrap().to_string();
        vec!["run".into(), "--agents".into(), agents.into(), job]
    });
}

#[test]
fn agents_drop_three_paced_streamed_stages_of_a_stopped_master() {
    // Fed every 50 ms: the first stage waits for items, not for room.
    agents_drop_the_streamed_stages_of_a_stopped_master(3, |dir, agents| {
        bench_pipeline(3, dir, agents)
    });
}

/// What a chaos schedule does to one agent, when so many results are in.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill,
    /// Stopped for so long, then continued.
    Stop(Duration),
}

#[test]
fn chaos_farms_return_every_result_once_whatever_the_seeded_faults() {
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("SKELPI_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("chaos seed {seed} (replay: SKELPI_CHAOS_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tree: Skeleton = "farm(pipe(seq(sleep_ms(10)), seq(square)))"
        .parse()
        .unwrap();
    let square: Skeleton = "farm(seq(square))".parse().unwrap();
    // Three schedules of two faults each on four agents: at most two die,
    // a long stop (5 s) is declared down, a short one only delays.
    for round in 0..3 {
        let (agents, mut cluster, dir) = agents(&format!("chaos{round}"), 4);
        let n = 400;
        let mut faults: Vec<(usize, usize, Fault)> = Vec::new();
        let mut targets: Vec<usize> = (0..4).collect();
        for _ in 0..2 {
            let target = targets.swap_remove(rng.random_range(0..targets.len()));
            let at = rng.random_range(n / 10..n * 9 / 10);
            let fault = match rng.random_range(0..3) {
                0 => Fault::Kill,
                1 => Fault::Stop(Duration::from_millis(rng.random_range(200..1500))),
                _ => Fault::Stop(Duration::from_secs(5)),
            };
            faults.push((at, target, fault));
        }
        faults.sort_by_key(|f| f.0);
        eprintln!("round {round}: {faults:?}");
        let pids: Vec<String> = agents.iter().map(|a| a.child.id().to_string()).collect();
        let (progress_tx, progress_rx) = std::sync::mpsc::channel::<usize>();
        let controller = std::thread::spawn(move || {
            let mut resumes = Vec::new();
            let mut pending = faults.into_iter().peekable();
            while let Ok(done) = progress_rx.recv() {
                while let Some(&(at, target, fault)) = pending.peek() {
                    if done < at {
                        break;
                    }
                    pending.next();
                    match fault {
                        Fault::Kill => signal("-KILL", &pids[target]),
                        Fault::Stop(d) => {
                            signal("-STOP", &pids[target]);
                            let pid = pids[target].clone();
                            resumes.push(std::thread::spawn(move || {
                                std::thread::sleep(d);
                                signal("-CONT", &pid);
                            }));
                        }
                    }
                }
            }
            for r in resumes {
                r.join().unwrap();
            }
        });
        let inputs: Vec<Array> = (0..n).map(|i| Array::list(vec![i as f64, 0.5])).collect();
        let want = sequential::run(&Registry::builtin(), &square, inputs.clone()).unwrap();
        let mut got = Vec::new();
        let result = smol::block_on(cluster.run_each(&tree, inputs, |index, a| {
            got.push((index, a));
            let _ = progress_tx.send(got.len());
        }));
        drop(progress_tx);
        controller.join().unwrap();
        result.unwrap_or_else(|e| panic!("seed {seed} round {round}: {e}"));
        let (indices, values): (Vec<u64>, Vec<Array>) = got.into_iter().unzip();
        assert_eq!(
            indices,
            (0..n as u64).collect::<Vec<_>>(),
            "seed {seed} round {round}: every result once, in order"
        );
        assert_eq!(values, want, "seed {seed} round {round}");
        drop(agents);
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn swaps_survive_a_restart_with_one_switch_point_per_stage() {
    use skelpi::runtime::stream::{self, SwapOutcome};
    use skelpi_proto::skeleton::Kernel;
    // Stage 0 is the slow one (1 ms an item), so it is mid-stream when its
    // swap is asked; stage 2's swap is asked just before the middle
    // stage's agent is killed, so its answer may be lost with the stream
    // (then it is taken as applied from the first replayed item).
    let (agents, mut cluster, dir) = agents("swap", 3);
    let stages = [
        Kernel::new("sleep_ms", [1.0]),
        Kernel::new("scale", [2.0]),
        Kernel::new("identity", []),
    ];
    let (swapper, swaps) = stream::swaps(3);
    let inputs = (1..=300).map(|x| Array::list(vec![f64::from(x)]));
    let mut factors = Vec::new();
    let reports =
        bounded(
            cluster.stream_pipeline_swapping(&stages, inputs, None, &swaps, |i, a| {
                assert_eq!(i, factors.len() as u64, "once each, in order");
                factors.push((a.data[0] / (i + 1) as f64).round() as u64);
                if i == 50 {
                    assert!(swapper.swap(0, Kernel::new("scale", [3.0])));
                }
                if i == 100 {
                    assert!(swapper.swap(2, Kernel::new("scale", [5.0])));
                    signal("-KILL", &agents[1].child.id().to_string());
                }
            }),
        )
        .unwrap_or_else(|e| panic!("the job survives a lost agent: {e}"));
    assert_eq!(factors.len(), 300);
    assert!(cluster.agents()[1].is_broken(), "the killed agent was lost");
    // Each stage's factor per item: stage 0 multiplies by 1 or 3, stage 1
    // by 2, stage 2 by 1 or 5.
    for (stage, new, of) in [(0, 3, 2), (2, 5, 2)] {
        let ran_new: Vec<bool> = factors
            .iter()
            .map(|f| match f {
                2 => false,
                6 => stage == 0,
                10 => stage == 2,
                30 => true,
                other => panic!("factor {other}"),
            })
            .collect();
        // One switch point: old kernel before it, new from it on.
        let switch = ran_new.iter().position(|&n| n).unwrap_or(ran_new.len());
        assert!(
            ran_new[switch..].iter().all(|&n| n),
            "stage {stage} (x{new}, {of}): more than one switch point"
        );
        match &reports[stage].swaps[..] {
            [s] => match s.outcome {
                SwapOutcome::From(k) => assert_eq!(k as usize, switch, "stage {stage}"),
                SwapOutcome::By(k) => assert!(switch <= k as usize, "stage {stage}"),
                ref other => panic!("stage {stage}: {other:?}"),
            },
            all => panic!("stage {stage}: {all:?}"),
        }
        assert!(
            (51..300).contains(&switch),
            "stage {stage} switched at {switch}"
        );
    }
    smol::block_on(cluster.close());
    let _ = std::fs::remove_dir_all(dir);
}

/// Runs `tree` routed over 10,000 inputs (each 4 copies of its number,
/// from 1) on three agent processes; once 3,000 results are in, asks
/// stage `stage` (a `scale(2)`) to run `scale(3)`, and SIGKILLs agent 1
/// `kill_after` results later, while tasks of the new kernel (and in a
/// farm, of the old one too) are in flight there and are sent again.
/// Every result comes once, in order, from one kernel per input, with the
/// one switch point the job reported.
fn a_routed_swap_survives_a_kill(tag: &str, tree: &str, stage: usize, kill_after: u64) {
    use skelpi::runtime::stream::{self, SwapOutcome};
    use skelpi_proto::skeleton::Kernel;
    const ITEMS: u64 = 10_000;
    let (agents, mut cluster, dir) = agents(tag, 3);
    let tree: Skeleton = tree.parse().unwrap();
    let (swapper, swaps) = stream::swaps(tree.seqs().len());
    let inputs = (1..=ITEMS).map(|x| Array::list(vec![x as f64; 4]));
    let mut factors = Vec::new();
    let swapped = bounded(cluster.run_routed_swapping(&tree, inputs, &swaps, |i, a| {
        assert_eq!(i, factors.len() as u64, "{tree}: once each, in order");
        assert!(a.data.iter().all(|&v| v == a.data[0]), "{tree}: {i}: {a:?}");
        factors.push(a.data[0] / (i + 1) as f64);
        if i + 1 == 3_000 {
            assert!(swapper.swap(stage, Kernel::new("scale", [3.0])));
        }
        if i + 1 == 3_000 + kill_after {
            signal("-KILL", &agents[1].child.id().to_string());
        }
    }))
    .unwrap_or_else(|e| panic!("{tree}: the job survives a lost agent: {e}"));
    assert_eq!(factors.len() as u64, ITEMS);
    assert!(cluster.agents()[1].is_broken(), "{tree}: agent 1 was lost");
    let k = match &swapped[stage][..] {
        [s] => match s.outcome {
            SwapOutcome::From(k) => k,
            ref other => panic!("{tree}: {other:?}"),
        },
        all => panic!("{tree}: {all:?}"),
    };
    assert!((3_000..ITEMS).contains(&k), "{tree}: switched at {k}");
    for (i, &f) in factors.iter().enumerate() {
        let want = if (i as u64) < k { 2.0 } else { 3.0 };
        assert_eq!(f, want, "{tree}: item {i}, switch point {k}");
    }
    smol::block_on(cluster.close());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_farms_swap_keeps_one_switch_point_when_an_agent_is_lost_mid_swap() {
    // 1 ms tasks first, so tasks of both kernels are in flight on the
    // agent killed.
    a_routed_swap_survives_a_kill(
        "swap-farm",
        "farm(pipe(seq(sleep_ms(1)), seq(scale(2))))",
        1,
        30,
    );
}

#[test]
fn a_maps_swap_keeps_one_switch_point_when_an_agent_is_lost_mid_swap() {
    a_routed_swap_survives_a_kill("swap-map", "map(4, seq(scale(2)))", 0, 10);
}

/// Where the caller's code blocks.
#[derive(Clone, Copy, PartialEq)]
enum Blocks {
    /// The result callback.
    OnResult,
    /// The input iterator.
    OnInput,
}

/// Runs `tree` over `n` inputs on two agent processes (heartbeats every
/// 500 ms: a master silent for 2 s while work of its is unfinished is
/// taken for gone), the caller's code blocking for 10 s once the job has
/// run 2 s (beats have gone both ways by then). The job completes with
/// every result, in order; no agent took the master for gone, and none was
/// lost.
fn blocking_user_code(tree: &str, n: usize, blocks: Blocks) {
    let tag = format!("blocking-{}", blocks == Blocks::OnInput);
    let (agents, mut cluster, dir) = agents(&tag, 2);
    let tree: Skeleton = tree.parse().unwrap();
    let pause = Duration::from_secs(10);
    let started = Instant::now();
    let blocked = std::cell::Cell::new(false);
    let block = |here: Blocks| {
        if here == blocks && !blocked.get() && started.elapsed() > Duration::from_secs(2) {
            blocked.set(true);
            std::thread::sleep(pause);
        }
    };
    let inputs = (0..n).map(|i| {
        block(Blocks::OnInput);
        Array::list(vec![i as f64])
    });
    let mut got = Vec::new();
    let job = cluster.run_each(&tree, inputs, |i, a| {
        got.push((i, a.data));
        block(Blocks::OnResult);
    });
    bounded(job).unwrap();
    assert!(blocked.get(), "the job ended before it blocked");
    let want: Vec<(u64, Vec<f64>)> = (0..n as u64).map(|i| (i, vec![i as f64])).collect();
    assert_eq!(got, want);
    assert_no_agent_lost(&cluster);
    for agent in &agents {
        let gone: Vec<String> = agent
            .lines
            .try_iter()
            .filter(|l| l.contains(": taken for gone"))
            .collect();
        assert!(gone.is_empty(), "{gone:?}");
    }
    drop(agents);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_result_callback_that_blocks_for_10_s_loses_nothing() {
    // The first results come after 5 s; the callback blocks on them while
    // the tasks queued behind them run for 5 s more.
    blocking_user_code("farm(seq(sleep_ms(5000)))", 16, Blocks::OnResult);
}

#[test]
fn an_input_iterator_that_blocks_for_10_s_loses_nothing() {
    // More inputs than the stream's window: they are drawn as results come
    // back, and the stages stay open while the iterator blocks.
    let tree = "pipe(seq(sleep_ms(2)), seq(identity))";
    blocking_user_code(tree, 5000, Blocks::OnInput);
}

#[test]
fn a_managed_job_that_loses_an_agent_ends_exact_and_its_manager_sees_the_smaller_pool() {
    // Three agents of two workers; a pipeline whose middle stage is slow,
    // managed. Agent 1 is killed once 150 of 600 results are in: every
    // result comes once, in order, equal to the reference, and the
    // manager's last look saw the two agents left (4 worker threads).
    use skelpi::runtime::autonomic::{Options, PoolSize};
    let (agents, mut cluster, dir) = agents("managed", 3);
    let tree: Skeleton = "pipe(seq(sleep_ms(5)), seq(sleep_ms(20)), seq(sleep_ms(5)))"
        .parse()
        .unwrap();
    let n = 600;
    let inputs: Vec<Array> = (0..n).map(|i| Array::list(vec![i as f64 + 0.5])).collect();
    let victim = agents[1].child.id().to_string();
    let mut got = Vec::new();
    let mut decisions = Vec::new();
    let (result, report) = bounded(cluster.run_managed(
        &tree,
        inputs.clone(),
        &Options::default(),
        |i, a| {
            got.push((i, a));
            if got.len() == 150 {
                signal("-KILL", &victim);
            }
        },
        |d| decisions.push(d.clone()),
    ));
    result.expect("the managed job ends");
    let got: Vec<Array> = got
        .into_iter()
        .enumerate()
        .map(|(k, (i, a))| {
            assert_eq!(i, k as u64, "result {k} in order");
            a
        })
        .collect();
    assert_eq!(got, inputs, "every result once, unchanged");
    let report = report.expect("a report");
    eprintln!(
        "{} decisions; last: {:?}",
        decisions.len(),
        decisions.last()
    );
    assert_eq!(
        report.pool,
        Some(PoolSize {
            threads: 4,
            slots: 4 * skelpi::runtime::dispatch::CREDITS_PER_WORKER,
        }),
        "the manager's last look"
    );
    drop(agents);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_traced_streamed_pipeline_that_loses_an_agent_keeps_its_trace_to_the_restart() {
    // Stage 1's agent is killed at 100 of 400 results: the stream starts
    // again elsewhere, and the trace kept is the first run's up to there,
    // with the surviving agent's events and a mark saying why it stopped.
    let (agents, mut cluster, dir) = agents("traced-restart", 3);
    let tree: Skeleton = "pipe(seq(sleep_ms(2)), seq(square))".parse().unwrap();
    let inputs: Vec<Array> = (0..400).map(|i| Array::list(vec![f64::from(i)])).collect();
    let victim = agents[1].child.id().to_string();
    cluster.set_tracing(true);
    let mut got = 0;
    bounded(cluster.run_each(&tree, inputs, |_, _| {
        got += 1;
        if got == 100 {
            signal("-KILL", &victim);
        }
    }))
    .unwrap();
    assert_eq!(got, 400);
    let trace = cluster
        .take_trace()
        .expect("a traced job")
        .expect("the first run's trace");
    let kernels = kernel_calls(&trace);
    assert!(kernels >= 100, "{kernels} kernel calls traced");
    let marks: Vec<&str> = trace.marks.iter().map(|m| m.text.as_str()).collect();
    assert!(
        marks.iter().any(|m| m.contains("starts again from item")),
        "{marks:?}"
    );
    drop(agents);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_streamed_pipeline_restarts_without_waiting_for_its_stopped_feed_agent() {
    // Items of 160 KB stream to stage 0's agent, which is stopped (its
    // socket fills, and it reads nothing more) for 22 s. The stream must
    // start again elsewhere within the detection bound, not wait for the
    // stopped agent to read a goodbye: the job ends long before it
    // resumes.
    let (agents, mut cluster, dir) = agents("stopped-feed", 3);
    let tree: Skeleton = "pipe(seq(sleep_ms(2)), seq(identity))".parse().unwrap();
    let inputs: Vec<Array> = (0..1500)
        .map(|i| Array::list(vec![f64::from(i); 20_000]))
        .collect();
    let (go_tx, controller) = pause_when_told(&agents[0], Duration::from_secs(22));
    let mut got = 0usize;
    let mut stopped_at = None;
    let result = bounded(cluster.run_each(&tree, inputs, |i, a| {
        assert_eq!(
            (i, a.data[0]),
            (got as u64, got as f64),
            "each result once, in order"
        );
        got += 1;
        if got == 100 {
            go_tx.send(()).unwrap();
            stopped_at = Some(std::time::Instant::now());
        }
    }));
    let ended = stopped_at.expect("stopped").elapsed();
    result.unwrap();
    assert_eq!(got, 1500);
    eprintln!("the job ended {ended:.2?} after its feed's agent stopped");
    assert!(
        ended < Duration::from_secs(18),
        "ended only after {ended:?}"
    );
    controller.join().unwrap();
    drop(agents);
    let _ = std::fs::remove_dir_all(dir);
}

/// Starts the workspace's agent on a fixed port (it comes back on it).
fn agent_on(key: &std::path::Path, name: &str, port: u16) -> AgentProcess {
    let listen = format!("127.0.0.1:{port}");
    let args = [
        "--listen",
        &listen,
        "--name",
        name,
        "--key-file",
        key.to_str().unwrap(),
        "--no-mdns",
        "--workers",
        "2",
    ];
    AgentProcess::start(
        &crate::agents::agent_binary(),
        &args,
        Duration::from_secs(20),
    )
    .unwrap()
}

#[test]
fn an_agent_restarted_mid_job_takes_tasks_again_and_carries_the_job_when_the_other_dies() {
    let dir = std::env::temp_dir().join(format!("skelpi-faults-rejoin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_path = dir.join("cluster.key");
    let key = ClusterKey::generate().unwrap();
    key.write(&key_path, true).unwrap();
    let ports = [free_port(), free_port()];
    let first = agent_on(&key_path, "stays-then-dies", ports[0]);
    let second = agent_on(&key_path, "restarted", ports[1]);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let job = paced_farm(
        vec![first.addr, second.addr],
        key.clone(),
        3000,
        2500,
        done.clone(),
    );
    wait_for(&second, "tasks from master", Duration::from_secs(20));
    let mut second = second;
    second.child.kill().unwrap();
    second.child.wait().unwrap();
    // The same agent, started again on its port: the running job connects
    // to it again and gives it tasks.
    let again = agent_on(&key_path, "restarted", ports[1]);
    wait_for(&again, "tasks from master", Duration::from_secs(20));
    // Now the other one dies: the job goes on with the agent that came back.
    let mut first = first;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let out = job
        .join()
        .unwrap()
        .expect("the job survives on the agent that came back");
    assert_squares(&out, 3000);
    drop(again);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn skelpi_run_says_which_agents_it_lost_in_its_last_line() {
    let dir = crate::support::Scratch::new("run-lost");
    let key_path = dir.0.join("cluster.key");
    ClusterKey::generate()
        .unwrap()
        .write(&key_path, true)
        .unwrap();
    let stays = start_agent(&key_path, "stays", &["--no-mdns", "--workers", "2"]);
    let lost = start_agent(&key_path, "lost-one", &["--no-mdns", "--workers", "2"]);
    let job = dir.path("job.toml");
    write_range_job(&job, "farm(seq(sleep_ms(20)))", 300, 1);
    let agents = format!("{},{}", stays.addr, lost.addr);
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_skelpi"))
        .args(["run", &job, "--agents", &agents, "--key-file"])
        .arg(&key_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&lost, "tasks from master", Duration::from_secs(20));
    let mut lost = lost;
    lost.child.kill().unwrap();
    lost.child.wait().unwrap();
    let out = run.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("300 results") && last.contains("1 agent lost during the job (lost-one at "),
        "{err}"
    );
    // Its tasks in flight (it had credits for 4) were sent again.
    assert!(
        last.contains(" sent again") && !last.contains(" 0 tasks"),
        "{err}"
    );
    drop(stays);
}
