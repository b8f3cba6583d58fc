//! One bad task, master or file must not hurt the rest of the cluster
//! (issue 19): what fails deterministically fails its task or job, with a
//! clear error, and never takes an agent for lost.

use crate::support::{Scratch, assert_no_agent_lost, skelpi, sorted_lines};
use skelpi::cluster::Cluster;
use skelpi::runtime::JobError;
use skelpi_agent::kernels::Registry;
use skelpi_agent::local::{LocalAgent, LocalOptions};
use skelpi_proto::Array;
use skelpi_proto::skeleton::Skeleton;
use skelpi_proto::{JobId, Message, Shape, TaskHead};
use skelpi_wire::handshake::{self, ConnectOptions};
use skelpi_wire::key::ClusterKey;
use std::time::{Duration, Instant};

/// Two in-process agents whose kernels include `grow`, which returns
/// 3,000,000 floats (24 MB, over the 16 MiB frame cap) whatever it gets.
fn growing_cluster() -> Cluster {
    let kernels = Registry::builtin().with("grow", |_: &[f64], _: Array| {
        Ok(Array::list(vec![0.5; 3_000_000]))
    });
    let opts = LocalOptions {
        kernels: Some(kernels),
        ..LocalOptions::default()
    };
    smol::block_on(Cluster::local_with(
        &[opts.clone(), opts],
        &Default::default(),
    ))
    .unwrap()
}

/// Asserts that no agent of `cluster` was taken for lost, and that it
/// still runs a job.
fn every_agent_serves_on(cluster: &mut Cluster) {
    assert_no_agent_lost(cluster);
    let tree: Skeleton = "farm(seq(square))".parse().unwrap();
    let inputs = (0..8).map(|i| Array::list(vec![f64::from(i)]));
    let out = smol::block_on(cluster.run(&tree, inputs)).unwrap();
    assert_eq!(out.len(), 8);
}

#[test]
fn an_oversized_result_fails_its_task_and_no_agent() {
    let mut cluster = growing_cluster();
    let tree: Skeleton = "farm(seq(grow))".parse().unwrap();
    let inputs = (0..3).map(|i| Array::list(vec![f64::from(i)]));
    let err = smol::block_on(cluster.run(&tree, inputs)).unwrap_err();
    let JobError::Task(t) = &err else {
        panic!("expected the task to fail, got {err}")
    };
    assert!(
        t.message.contains(
            "output of 3000000 floats (24000027 bytes in a frame) exceeds the 16 MiB limit"
        ),
        "{err}"
    );
    assert_eq!(t.kernel, "grow");
    every_agent_serves_on(&mut cluster);
}

#[test]
fn an_oversized_input_fails_its_task_and_no_agent() {
    let mut cluster = smol::block_on(Cluster::local(2, &Default::default())).unwrap();
    let tree: Skeleton = "farm(seq(square))".parse().unwrap();
    let inputs = vec![Array::list(vec![1.0]), Array::list(vec![2.0; 3_000_000])];
    let err = smol::block_on(cluster.run(&tree, inputs)).unwrap_err();
    let JobError::Task(t) = &err else {
        panic!("expected the task to fail, got {err}")
    };
    assert_eq!(t.task, "item 1", "{err}");
    assert!(
        t.message.contains("input of 3000000 floats") && t.message.contains("16 MiB"),
        "{err}"
    );
    every_agent_serves_on(&mut cluster);
}

#[test]
fn job_files_whose_items_cannot_travel_are_refused_by_name() {
    let dir = Scratch::new("hardening-sizes");
    let job = |name: &str, text: &str| {
        let path = dir.path(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    // 8 TB of floats in one generated item: refused, not allocated.
    let huge = job(
        "huge.toml",
        "skeleton = \"seq(square)\"\n[input]\ngenerate = \"range\"\nlength = 1000000000000\n",
    );
    let (code, _, err) = skelpi(&["run", &huge, "--local", "1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("[input] length = 1000000000000: 1000000000000 floats"),
        "{err}"
    );
    // A 3,000,000-float line (24 MB): too large for one frame as a whole...
    let line: Vec<String> = (0..3_000_000).map(|i| (i % 7).to_string()).collect();
    std::fs::write(dir.path("big.txt"), line.join(" ")).unwrap();
    let whole = job(
        "whole.toml",
        "skeleton = \"pipe(seq(square), seq(identity))\"\n[input]\nfile = \"big.txt\"\n",
    );
    let (code, _, err) = skelpi(&["run", &whole, "--local", "1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("item 0 of") && err.contains("big.txt"),
        "{err}"
    );
    assert!(
        err.contains("sends 3000000 floats") && err.contains("map(n, ...)"),
        "{err}"
    );
    // ...and it runs split in four by a map.
    let split = job(
        "split.toml",
        "skeleton = \"map(4, seq(square))\"\n[input]\nfile = \"big.txt\"\n",
    );
    let out = dir.path("out.jsonl");
    let (code, _, err) = skelpi(&["run", &split, "--local", "2", "--out", &out]);
    assert_eq!(code, Some(0), "{err}");
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().count(), 1);
}

#[test]
fn a_master_that_stops_reading_does_not_stall_another() {
    // One agent with one worker. Master A sends tasks whose results are
    // 8 MB each and never reads a byte: its results fill its socket and
    // wait. Master B's job on the same agent must still run.
    let key = ClusterKey::generate().unwrap();
    let agent = LocalAgent::start("shared", key.clone(), LocalOptions::default()).unwrap();
    let addr = agent.addr();
    // Dropped when this test ends, however: then A gives up.
    let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
    let hog = std::thread::spawn({
        let key = key.clone();
        move || {
            smol::block_on(async {
                let stream = async_net::TcpStream::connect(addr).await.unwrap();
                let opts = ConnectOptions::default();
                let mut est = handshake::connect(stream, &key, &opts).await.unwrap();
                let big = vec![1.0; 1_000_000];
                let send_all = async {
                    for id in 0..40 {
                        let task = identity_task(id, 7);
                        let shape = Shape::List(big.len() as u64);
                        if est.sender.send_bulk(&task, shape, &big).await.is_err() {
                            break;
                        }
                    }
                };
                // Its sends block once the agent stops reading it; it
                // gives up when told (and never reads).
                let give_up = async {
                    let _ = stop_rx.recv().await;
                };
                futures_lite::future::or(send_all, give_up).await;
                drop(est);
            })
        }
    });
    // Let A's results pile up first.
    std::thread::sleep(Duration::from_millis(500));
    let mut b = smol::block_on(Cluster::connect(&[addr], &key, &Default::default())).unwrap();
    let tree: Skeleton = "farm(seq(square))".parse().unwrap();
    let inputs = (0..20).map(|i| Array::list(vec![f64::from(i)]));
    let started = Instant::now();
    let ran = smol::block_on(futures_lite::future::or(
        async { Some(b.run(&tree, inputs).await) },
        async {
            async_io::Timer::after(Duration::from_secs(10)).await;
            None
        },
    ));
    let out = ran
        .expect("master B's job ran while A stopped reading")
        .unwrap();
    assert_eq!(out.len(), 20);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop((b, stop_tx));
    hog.join().unwrap();
}

/// Task `id` of job `job`: the identity kernel (its result is its input).
fn identity_task(id: u64, job: u64) -> Message {
    Message::Task(TaskHead {
        id,
        job: JobId(job),
        kernel: "identity".into(),
        args: vec![],
        trace: false,
        deadline_ms: None,
    })
}

/// This process's peak resident memory, from `/proc/self/status`.
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Runs `tree` on 4 items on two in-process agents within 60 s; checks the
/// results and returns the peak memory of this process.
fn nested_farms_run(tree: &str) -> u64 {
    let mut cluster = smol::block_on(Cluster::local(2, &Default::default())).unwrap();
    let tree: Skeleton = tree.parse().unwrap();
    let inputs: Vec<Array> = (0..4).map(|i| Array::list(vec![f64::from(i); 3])).collect();
    let job = cluster.run(&tree, inputs);
    let out = smol::block_on(futures_lite::future::or(async { Some(job.await) }, async {
        async_io::Timer::after(Duration::from_secs(60)).await;
        None
    }))
    .expect("the job ends within a minute")
    .unwrap();
    let got: Vec<f64> = out.iter().map(|a| a.data[0]).collect();
    assert_eq!(got, [0.0, 1.0, 4.0, 9.0]);
    peak_rss_bytes()
}

#[test]
fn nested_farms_start_replicas_within_the_pools_budget() {
    // Eight farms of the default width (4 on this pool) nest into 65,536
    // replicas when each starts all of its own: about 400 MB.
    let nested = (0..8).fold("seq(square)".to_owned(), |t, _| format!("farm({t})"));
    let peak = nested_farms_run(&nested);
    assert!(peak < 150 << 20, "peak memory {} MiB", peak >> 20);
}

#[test]
fn farms_of_4096_farms_of_4096_run_in_bounded_memory() {
    // 16.7 million replicas if each farm started all it asks for.
    let peak = nested_farms_run("farm(farm(seq(square), 4096), 4096)");
    assert!(peak < 150 << 20, "peak memory {} MiB", peak >> 20);
}

#[test]
fn skelpi_run_out_keeps_nan_and_infinities_and_reads_them_back() {
    let dir = Scratch::new("hardening-nan");
    std::fs::write(dir.path("in.txt"), "1.5 nan inf -inf\n-0 2\n").unwrap();
    let job = dir.path("job.toml");
    std::fs::write(
        &job,
        "skeleton = \"pipe(seq(identity), seq(scale(2)))\"\n[input]\nfile = \"in.txt\"\n",
    )
    .unwrap();
    let out = dir.path("out.jsonl");
    let (code, _, err) = skelpi(&["run", &job, "--local", "2", "--out", &out]);
    assert_eq!(code, Some(0), "{err}");
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        text,
        "{\"data\":[3.0,\"NaN\",\"Infinity\",\"-Infinity\"],\"index\":0}\n\
         {\"data\":[-0.0,4.0],\"index\":1}\n"
    );
    // The results are the next job's inputs.
    let again = dir.path("again.toml");
    std::fs::write(
        &again,
        "skeleton = \"seq(scale(0.5))\"\n[input]\nfile = \"out.jsonl\"\n",
    )
    .unwrap();
    let back = dir.path("back.jsonl");
    let (code, _, err) = skelpi(&["run", &again, "--local", "1", "--out", &back]);
    assert_eq!(code, Some(0), "{err}");
    let text = std::fs::read_to_string(&back).unwrap();
    assert!(
        text.starts_with("{\"data\":[1.5,\"NaN\",\"Infinity\",\"-Infinity\"],\"index\":0}"),
        "{text}"
    );
}

#[test]
fn a_master_cannot_flood_the_agents_log_nor_echo_megabytes_through_it() {
    let dir = Scratch::new("hardening-flood");
    let key_path = dir.0.join("cluster.key");
    let key = ClusterKey::generate().unwrap();
    key.write(&key_path, true).unwrap();
    let agent = crate::agents::start_agent(&key_path, "flooded", &["--no-mdns"]);
    let long_name = "k".repeat(1 << 20);
    smol::block_on(async {
        let stream = async_net::TcpStream::connect(agent.addr).await.unwrap();
        let mut est = handshake::connect(stream, &key, &ConnectOptions::default())
            .await
            .unwrap();
        let mut bulk = Vec::new();
        // 3,000 tasks of a kernel the agent lacks, each of a job of its own
        // (which defeats logging once per job), then one whose kernel name
        // is a megabyte long.
        for id in 0..=3000u64 {
            let kernel = if id < 3000 { "nope" } else { &long_name };
            let task = Message::Task(TaskHead {
                id,
                job: JobId(id + 1),
                kernel: kernel.into(),
                args: vec![],
                trace: false,
                deadline_ms: None,
            });
            est.sender
                .send_bulk(&task, Shape::List(1), &[1.0])
                .await
                .unwrap();
            let reply = est.receiver.recv(&mut bulk).await.unwrap().msg;
            let Message::TaskFailed(f) = reply else {
                panic!("expected a task failure, got {reply:?}")
            };
            assert!(f.error.len() < 1000, "an error of {} bytes", f.error.len());
            if id == 3000 {
                assert!(f.error.contains("more bytes)"), "{}", &f.error[..200]);
            }
        }
        est.sender.send(&Message::Bye).await.unwrap();
    });
    // Everything it logged, up to the session's last words: how many
    // records of each kind (tasks of a new job, failures) it held back.
    let mut lines = Vec::new();
    let mut counts = 0;
    while counts < 2 {
        let line = agent
            .lines
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("the session ends with its counts: {lines:?}"));
        counts += usize::from(line.contains("records held back (logged at debug level)"));
        lines.push(line);
    }
    let longest = lines.iter().map(String::len).max().unwrap_or(0);
    assert!(longest < 2000, "a log line of {longest} bytes");
    assert!(
        lines.len() < 40,
        "{} lines for 3,001 bad requests, e.g. {:?}",
        lines.len(),
        &lines[..5]
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("similar records held back")),
        "{lines:?}"
    );
}

#[test]
fn an_agent_refuses_unbounded_work_and_stops_within_seconds_whatever_its_kernels_do() {
    let dir = Scratch::new("hardening-stop");
    let key_path = dir.0.join("cluster.key");
    let key = ClusterKey::generate().unwrap();
    key.write(&key_path, true).unwrap();
    let flags = ["--no-mdns", "--workers", "1", "--kernel-memory", "64"];
    let mut agent = crate::agents::start_agent(&key_path, "stopper", &flags);
    let addr = agent.addr;
    let mut cluster = smol::block_on(Cluster::connect(&[addr], &key, &Default::default())).unwrap();
    // Work and memory past the bounds are refused before running.
    for (tree, says) in [
        (
            "farm(seq(erf_burn(10000000000000)))",
            "more than one call may make",
        ),
        (
            "farm(seq(matmul_power(1, 4096)))",
            "needs 384 MiB; this agent allows 64 MiB",
        ),
    ] {
        let tree: Skeleton = tree.parse().unwrap();
        let err = smol::block_on(cluster.run(&tree, [Array::list(vec![0.5])])).unwrap_err();
        assert!(err.to_string().contains(says), "{tree}: {err}");
    }
    // A call of a billion erf (a minute in a debug build), as a streamed
    // stage (whose opening the agent logs), runs...
    let job = std::thread::spawn(move || {
        let tree: Skeleton = "pipe(seq(erf_burn(1000000000)), seq(identity))"
            .parse()
            .unwrap();
        smol::block_on(cluster.run(&tree, [Array::list(vec![0.5])]))
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = agent
            .lines
            .recv_timeout(left)
            .expect("the agent opens the stage");
        if line.contains("stage 0 runs erf_burn") {
            break;
        }
    }
    // ...when the agent is told to stop: it is gone within seconds.
    let stopped = Instant::now();
    let pid = agent.child.id().to_string();
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(ok.success());
    let exited = loop {
        if let Some(status) = agent.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(15),
            "the agent still runs 15 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = stopped.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "exited ({exited}) after {took:?}"
    );
    let err = job.join().unwrap().unwrap_err();
    assert!(!err.to_string().is_empty());
}

#[test]
fn a_task_past_its_deadline_fails_and_its_kernel_stops() {
    let mut cluster = smol::block_on(Cluster::local(2, &Default::default())).unwrap();
    cluster.set_task_deadline(Some(Duration::from_millis(300)));
    let tree: Skeleton = "farm(seq(sleep_ms(20000)))".parse().unwrap();
    let inputs = (0..2).map(|i| Array::list(vec![f64::from(i)]));
    let started = Instant::now();
    let err = smol::block_on(cluster.run(&tree, inputs)).unwrap_err();
    let JobError::Task(t) = &err else {
        panic!("expected the task to fail, got {err}")
    };
    assert!(t.message.contains("deadline passed"), "{err}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
    // The agents stopped the kernels: a job without a deadline runs now.
    cluster.set_task_deadline(None);
    every_agent_serves_on(&mut cluster);
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[test]
fn a_beating_master_that_stops_reading_is_dropped_within_its_beats() {
    // A master that asked for 100 ms heartbeats, beat once, then sends
    // tasks whose 8 MB results it never reads (a stopped host): its
    // results fill the socket and hold the agent's sender. The agent must
    // still take it for gone after 4 silent beats and close its connection
    // (which fails the master's blocked send), not keep its work for ever.
    let key = ClusterKey::generate().unwrap();
    let agent = LocalAgent::start("judge", key.clone(), LocalOptions::default()).unwrap();
    let addr = agent.addr();
    let closed_after = smol::block_on(async {
        let stream = async_net::TcpStream::connect(addr).await.unwrap();
        let mut est = handshake::connect(stream, &key, &ConnectOptions::default())
            .await
            .unwrap();
        let hello = Message::Hello(skelpi_proto::Hello {
            master: "stopped".into(),
            heartbeat_ms: 100,
        });
        est.sender.send(&hello).await.unwrap();
        est.sender.send(&Message::Heartbeat).await.unwrap();
        let big = vec![1.0; 1_000_000];
        let started = Instant::now();
        let send_all = async {
            for id in 0..200 {
                let task = identity_task(id, 9);
                let shape = Shape::List(big.len() as u64);
                if est.sender.send_bulk(&task, shape, &big).await.is_err() {
                    return Some(started.elapsed());
                }
            }
            None
        };
        let limit = async {
            async_io::Timer::after(Duration::from_secs(30)).await;
            None
        };
        futures_lite::future::or(send_all, limit).await
    });
    let after = closed_after.expect("the agent kept the connection of a master that reads nothing");
    // 4 beats of 100 ms once it stops reading, looked at every 25 ms.
    assert!(
        after < Duration::from_secs(10),
        "closed only after {after:?}"
    );
}

#[test]
fn the_replay_memory_of_a_streamed_pipeline_is_the_operators_to_bound() {
    // 50 items of 8000 bytes through a streamed pipeline. With a 20 KiB
    // bound the master holds two or three at a time and every result
    // comes back, as with the default; with 4 KiB no item fits: the job is
    // refused before the first is sent, naming the item and the option.
    let dir = Scratch::new("hardening-replay");
    let job = dir.path("pipe.toml");
    std::fs::write(
        &job,
        "skeleton = \"pipe(seq(square), seq(square))\"\n[input]\ngenerate = \"random\"\n\
         items = 50\nlength = 1000\nseed = 5\n",
    )
    .unwrap();
    let run = |bound: Option<&str>, out: &str| {
        let mut args = vec!["run", "--local", "2", &job, "--out", out];
        if let Some(b) = bound {
            args.extend(["--max-replay-memory", b]);
        }
        skelpi(&args)
    };
    let (wide, narrow, none) = (dir.path("wide"), dir.path("narrow"), dir.path("none"));
    let (code, _, err) = run(None, &wide);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = run(Some("20KiB"), &narrow);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(sorted_lines(&narrow).len(), 50);
    assert_eq!(sorted_lines(&narrow), sorted_lines(&wide));
    let (code, _, err) = run(Some("4KiB"), &none);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("item 0 is 8000 bytes") && err.contains("--max-replay-memory"),
        "{err}"
    );
    let (code, _, err) = run(Some("lots"), &none);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--max-replay-memory"), "{err}");
}
