//! Soak under attack (issue 19): a good master runs farms on real agents on
//! loopback while hostile clients hit the same agents, in attacked windows
//! alternating with quiet ones (the baseline of the same run).
//!
//! `cargo bench -p skelpi --bench soak` (10 attacked minutes, 15½ in all);
//! `-- --minutes 1 --window 20` for a short run; `-- --help` for the rest.
//!
//! The good master connects afresh for every job (as `skelpi run` does)
//! and runs `farm(seq(erf_burn(40)))` on 200 random lists of 256 floats,
//! checking every result bit for bit against the same kernel run here, and
//! that every input gave exactly one result. A task's latency runs from
//! the farm drawing its input to its result: inputs are drawn a few ahead
//! of the credits that send them (the farm's input buffer), so it includes
//! that short queue. Tasks count in the window they were drawn in, connects
//! in the window they began in; a job that spans two windows blurs them a
//! little.
//!
//! The hostile clients, per agent, all from 127.0.0.1 (the good master's
//! own address, so they share its admission budget), while a window is
//! attacked:
//! - wrong key: a handshake with another cluster key, every 20 ms;
//! - garbage: 4 KiB of random bytes on a fresh socket, every 20 ms;
//! - idle sockets: 16 at a time that never send a byte, reopened when the
//!   agent closes them;
//! - a master that stops reading: sends `identity` tasks of 8 MB and never
//!   reads a result;
//! - oversized results: `port:grow.py` answers every call with 16 MiB,
//!   which cannot travel back as a task result, every 100 ms;
//! - a flood of bad requests: tasks of a kernel the agent lacks, each of a
//!   job of its own, every 2 ms.
//!
//! They share the machine's cores with the agents and the good master, so
//! the latency ratio includes that contention. Exits 1 if a result was
//! wrong, lost or duplicated, a good job failed, or an attack got an answer
//! it should not have.

mod common;

use clap::Parser;
use common::{Scratch, start_agents};
use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use skelpi::cluster::Cluster;
use skelpi::stats::quantile;
use skelpi_kernels::Registry;
use skelpi_proto::Array;
use skelpi_proto::skeleton::Skeleton;
use skelpi_proto::{JobId, Message, Shape, TaskHead};
use skelpi_testkit::AgentProcess;
use skelpi_wire::handshake::{self, ConnectOptions, Established};
use skelpi_wire::key::ClusterKey;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Work per element of the good master's tasks (erf applications).
const BURN: f64 = 40.0;
/// Items per good job.
const ITEMS: usize = 200;
/// Floats per item.
const FLOATS: usize = 256;
/// Idle sockets held open per agent at a time.
const IDLE: usize = 16;

/// A port program that answers every call with 2,097,151 floats (16 MiB
/// less its status word: the most a port may send, more than a task
/// result may carry).
const GROW: &str = r#"#!/usr/bin/env python3
import struct, sys
inp, out = sys.stdin.buffer, sys.stdout.buffer
body = b"\0\0\0\0" + bytes(8 * 2097151)
while True:
    head = inp.read(4)
    if len(head) < 4:
        break
    (n,) = struct.unpack(">I", head)
    inp.read(n)
    out.write(struct.pack(">I", len(body)) + body)
    out.flush()
"#;

/// Soak the agents under attack; see the file's documentation.
#[derive(Debug, Parser)]
#[command(name = "soak")]
struct Args {
    /// Minutes under attack in all (quiet windows come on top: half as
    /// long, before, between and after the attacked ones).
    #[arg(long, default_value_t = 10.0, value_parser = positive)]
    minutes: f64,
    /// Seconds per attacked window.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(2..))]
    window: u64,
    /// Agents (real `skelpi-agent` processes on 127.0.0.1).
    #[arg(long, default_value_t = 2)]
    agents: usize,
    /// Also write the report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// A number of minutes above zero.
fn positive(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(m) if m > 0.0 && m.is_finite() => Ok(m),
        _ => Err(format!("{text:?} is not a number of minutes above zero")),
    }
}

/// Which kind of window runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Quiet = 0,
    Attacked = 1,
}

/// The schedule every thread follows.
#[derive(Default)]
struct Clock {
    phase: AtomicU8,
    over: AtomicBool,
}

impl Clock {
    fn phase(&self) -> Phase {
        if self.phase.load(Ordering::Relaxed) == Phase::Attacked as u8 {
            Phase::Attacked
        } else {
            Phase::Quiet
        }
    }

    fn set(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    fn attacking(&self) -> bool {
        !self.over() && self.phase() == Phase::Attacked
    }

    fn over(&self) -> bool {
        self.over.load(Ordering::Relaxed)
    }

    /// Returns once the window is no longer attacked (polled every 50 ms).
    async fn calm(&self) {
        while self.attacking() {
            async_io::Timer::after(Duration::from_millis(50)).await;
        }
    }
}

/// What the hostile clients did and saw.
#[derive(Default)]
struct Hits {
    wrong_key: AtomicU64,
    garbage: AtomicU64,
    idle: AtomicU64,
    stalled: AtomicU64,
    stalled_ended: AtomicU64,
    oversized: AtomicU64,
    flood: AtomicU64,
    /// Hostile sessions with the key evicted while they handshook (by the
    /// idle sockets of their own address): expected, not a surprise.
    evicted: AtomicU64,
    surprises: Mutex<Vec<String>>,
}

impl Hits {
    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn surprise(&self, what: String) {
        let mut s = self.surprises.lock().unwrap();
        if s.len() < 20 {
            s.push(what);
        }
    }
}

/// Measurements of one kind of window.
#[derive(Default)]
struct Window {
    latencies: Vec<Duration>,
    connects: Vec<Duration>,
    seconds: f64,
    log_lines: u64,
    /// Log lines by shape (digits folded), to tell what the agents said.
    log_shapes: HashMap<String, u64>,
    rss_max: Vec<u64>,
}

fn main() {
    let args = Args::parse();
    let scratch = Scratch::new("soak");
    let dir = &scratch.0;
    let key = ClusterKey::generate().expect("a cluster key");
    let key_path = dir.join("cluster.key");
    key.write(&key_path, true).expect("the key file");
    let ports = dir.join("ports");
    std::fs::create_dir(&ports).expect("the ports directory");
    std::fs::set_permissions(&ports, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let grow = ports.join("grow.py");
    std::fs::write(&grow, GROW).expect("the port program");
    std::fs::set_permissions(&grow, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let agents = start_agents(
        "soak",
        args.agents,
        &key_path,
        &["--ports", ports.to_str().unwrap()],
    );
    let addrs: Vec<SocketAddr> = agents.iter().map(|a| a.addr).collect();

    let clock = Arc::new(Clock::default());
    let hits = Arc::new(Hits::default());
    let good = std::thread::spawn({
        let (addrs, key, clock) = (addrs.clone(), key.clone(), clock.clone());
        move || good_master(&addrs, &key, &clock)
    });
    let attackers = std::thread::spawn({
        let (addrs, key, clock, hits) = (addrs.clone(), key, clock.clone(), hits.clone());
        move || attack(&addrs, &key, &clock, &hits)
    });

    let windows = (args.minutes * 60.0 / args.window as f64).ceil().max(1.0) as usize;
    let attacked = Duration::from_secs(args.window);
    let quiet = attacked / 2;
    eprintln!(
        "soak: {} agents on loopback; {windows} attacked windows of {attacked:?} between quiet ones of {quiet:?} ({:.1} min)",
        args.agents,
        (windows as f64 * 1.5 + 0.5) * args.window as f64 / 60.0
    );
    let mut watched = [Window::default(), Window::default()];
    // Every agent's memory at the end of every window.
    let mut rss_series = Vec::new();
    let rss_now = || -> Vec<f64> { agents.iter().map(|a| mib(a.rss().unwrap_or(0))).collect() };
    for w in 0..=windows {
        watch(&agents, &clock, Phase::Quiet, quiet, &mut watched[0]);
        rss_series.push(("quiet", rss_now()));
        if w < windows {
            watch(&agents, &clock, Phase::Attacked, attacked, &mut watched[1]);
            rss_series.push(("attacked", rss_now()));
            eprintln!("soak: attacked window {} of {windows} done", w + 1);
        }
    }
    clock.over.store(true, Ordering::Relaxed);
    let good = good.join().expect("the good master");
    attackers.join().expect("the attackers");
    for (phase, l) in good.latencies {
        watched[phase as usize].latencies.extend(l);
    }
    for (phase, c) in good.connects {
        watched[phase as usize].connects.push(c);
    }
    let peaks = agents
        .iter()
        .map(|a| mib(a.peak_rss().unwrap_or(0)))
        .collect();
    let report = Report::new(&good.tally, &watched, &hits, rss_series, peaks);
    report.print();
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).expect("JSON");
        std::fs::write(path, text).expect("the JSON report");
    }
    drop(agents);
    drop(scratch);
    if !report.clean() {
        std::process::exit(1);
    }
}

/// Runs `phase` for `length`, sampling the agents' memory and counting
/// their log lines every second.
fn watch(agents: &[AgentProcess], clock: &Clock, phase: Phase, length: Duration, w: &mut Window) {
    clock.set(phase);
    let started = Instant::now();
    w.rss_max.resize(agents.len(), 0);
    while started.elapsed() < length {
        std::thread::sleep(Duration::from_secs(1).min(length - started.elapsed().min(length)));
        for (i, a) in agents.iter().enumerate() {
            w.rss_max[i] = w.rss_max[i].max(a.rss().unwrap_or(0));
            for line in a.lines.try_iter() {
                w.log_lines += 1;
                *w.log_shapes.entry(shape_of(&line)).or_default() += 1;
            }
        }
    }
    w.seconds += started.elapsed().as_secs_f64();
}

/// A log line with every word that holds a digit (addresses, ports, job
/// ids, counts) folded to `#`, at most 100 characters: lines of one kind
/// share a shape.
fn shape_of(line: &str) -> String {
    let words = line.split_whitespace();
    let folded: Vec<&str> = words
        .map(|w| {
            if w.contains(|c: char| c.is_ascii_digit()) {
                "#"
            } else {
                w
            }
        })
        .collect();
    folded.join(" ").chars().take(100).collect()
}

/// What the good master checked.
#[derive(Debug, Default, Serialize)]
struct Tally {
    jobs: u64,
    tasks: u64,
    wrong: u64,
    lost: u64,
    duplicated: u64,
    jobs_failed: u64,
    /// The first reasons.
    failed_jobs: Vec<String>,
}

impl Tally {
    /// Counts a failed job, keeping the first 20 reasons.
    fn failed(&mut self, why: String) {
        self.jobs_failed += 1;
        if self.failed_jobs.len() < 20 {
            self.failed_jobs.push(why);
        }
    }
}

/// The good master's measurements, by the phase they began in.
struct Good {
    tally: Tally,
    latencies: Vec<(Phase, Vec<Duration>)>,
    connects: Vec<(Phase, Duration)>,
}

/// Runs good jobs until the clock is over.
fn good_master(addrs: &[SocketAddr], key: &ClusterKey, clock: &Clock) -> Good {
    let tree: Skeleton = format!("farm(seq(erf_burn({BURN})))").parse().unwrap();
    let erf = Registry::builtin().get("erf_burn").expect("erf_burn");
    let mut rng = StdRng::seed_from_u64(2010);
    let mut good = Good {
        tally: Tally::default(),
        latencies: Vec::new(),
        connects: Vec::new(),
    };
    while !clock.over() {
        let inputs: Vec<Array> = (0..ITEMS)
            .map(|_| Array::list((0..FLOATS).map(|_| rng.random_range(-3.0..3.0)).collect()))
            .collect();
        let expected: Vec<Array> = inputs
            .iter()
            .map(|a| erf.call(&[BURN], a.clone()).expect("erf_burn here"))
            .collect();
        let phase = clock.phase();
        let connecting = Instant::now();
        let cluster = smol::block_on(Cluster::connect(addrs, key, &ConnectOptions::default()));
        let mut cluster = match cluster {
            Ok(c) => c,
            Err(e) => {
                good.tally.failed(format!("connecting: {e}"));
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        good.connects.push((phase, connecting.elapsed()));
        let (got, latencies, outcome) = one_job(&mut cluster, &tree, inputs, clock);
        smol::block_on(cluster.close());
        good.tally.jobs += 1;
        if let Err(e) = outcome {
            good.tally.failed(e);
            continue;
        }
        for (got, want) in got.iter().zip(&expected) {
            match got.as_slice() {
                [] => good.tally.lost += 1,
                [one, rest @ ..] => {
                    good.tally.duplicated += rest.len() as u64;
                    good.tally.tasks += 1;
                    good.tally.wrong += u64::from(!same_bits(one, want));
                }
            }
        }
        good.latencies.extend(latencies);
    }
    good
}

/// Every result of one job by input, each task's latency by the phase
/// it was drawn in, and how the job ended.
type JobOutcome = (
    Vec<Vec<Array>>,
    Vec<(Phase, Vec<Duration>)>,
    Result<(), String>,
);

/// Runs one farm job, timing each task from its input's draw to its
/// result.
fn one_job(
    cluster: &mut Cluster,
    tree: &Skeleton,
    inputs: Vec<Array>,
    clock: &Clock,
) -> JobOutcome {
    let drawn: RefCell<Vec<(Instant, Phase)>> = RefCell::new(Vec::with_capacity(ITEMS));
    let mut got: Vec<Vec<Array>> = vec![Vec::new(); ITEMS];
    let mut by_phase = [Vec::new(), Vec::new()];
    let feed = inputs.into_iter().inspect(|_| {
        drawn.borrow_mut().push((Instant::now(), clock.phase()));
    });
    let outcome = smol::block_on(cluster.run_each(tree, feed, |i, a| {
        let (at, phase) = drawn.borrow()[i as usize];
        by_phase[phase as usize].push(at.elapsed());
        got[i as usize].push(a);
    }));
    let [quiet, attacked] = by_phase;
    let latencies = vec![(Phase::Quiet, quiet), (Phase::Attacked, attacked)];
    (got, latencies, outcome.map_err(|e| e.to_string()))
}

/// Whether two arrays hold the same floats, bit for bit.
fn same_bits(a: &Array, b: &Array) -> bool {
    a.data.len() == b.data.len()
        && a.data
            .iter()
            .zip(&b.data)
            .all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Runs every hostile client against every agent until the clock is over.
fn attack(addrs: &[SocketAddr], key: &ClusterKey, clock: &Clock, hits: &Hits) {
    let ex = smol::LocalExecutor::new();
    let mut tasks = Vec::new();
    for &addr in addrs {
        tasks.push(ex.spawn(wrong_key(addr, clock, hits)));
        tasks.push(ex.spawn(garbage(addr, clock, hits)));
        tasks.push(ex.spawn(idle(addr, clock, hits)));
        tasks.push(ex.spawn(stops_reading(addr, key, clock, hits)));
        tasks.push(ex.spawn(oversized(addr, key, clock, hits)));
        tasks.push(ex.spawn(flood(addr, key, clock, hits)));
    }
    smol::block_on(ex.run(async {
        for t in tasks {
            t.await;
        }
    }));
}

/// Runs `round` while windows are attacked, then waits for the next one,
/// until the clock is over; `round` returns when the window calms.
async fn while_attacked<F: Future<Output = ()>>(clock: &Clock, mut round: impl FnMut() -> F) {
    while !clock.over() {
        if clock.attacking() {
            round().await;
        } else {
            async_io::Timer::after(Duration::from_millis(50)).await;
        }
    }
}

async fn wrong_key(addr: SocketAddr, clock: &Clock, hits: &Hits) {
    let other = ClusterKey::generate().expect("a key");
    while_attacked(clock, || async {
        if let Ok(s) = async_net::TcpStream::connect(addr).await {
            match handshake::connect(s, &other, &ConnectOptions::default()).await {
                Ok(_) => hits.surprise("an agent accepted a wrong key".into()),
                Err(_) => Hits::count(&hits.wrong_key),
            }
        }
        async_io::Timer::after(Duration::from_millis(20)).await;
    })
    .await;
}

async fn garbage(addr: SocketAddr, clock: &Clock, hits: &Hits) {
    let mut rng = StdRng::seed_from_u64(7);
    while_attacked(clock, || {
        let mut junk = vec![0u8; 4096];
        rng.fill(&mut junk[..]);
        async move {
            if let Ok(mut s) = async_net::TcpStream::connect(addr).await {
                let _ = s.write_all(&junk).await;
                if closed_within(&mut s, Duration::from_secs(5)).await {
                    Hits::count(&hits.garbage);
                } else {
                    hits.surprise("an agent kept a garbage connection 5 s".into());
                }
            }
            async_io::Timer::after(Duration::from_millis(20)).await;
        }
    })
    .await;
}

async fn idle(addr: SocketAddr, clock: &Clock, hits: &Hits) {
    while_attacked(clock, || async {
        let mut socks = Vec::new();
        for _ in 0..IDLE {
            if let Ok(s) = async_net::TcpStream::connect(addr).await {
                socks.push(s);
            }
        }
        for mut s in socks {
            if closed_within(&mut s, Duration::from_secs(5)).await {
                Hits::count(&hits.idle);
            } else {
                hits.surprise("an agent kept an idle socket 5 s".into());
            }
        }
    })
    .await;
}

/// Whether the peer closes `s` (or resets it) within `limit`, whatever it
/// sends first.
async fn closed_within(s: &mut async_net::TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let until = Instant::now() + limit;
    loop {
        let read = s.read(&mut buf).or(async {
            async_io::Timer::at(until).await;
            Err(std::io::ErrorKind::TimedOut.into())
        });
        match read.await {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => return e.kind() != std::io::ErrorKind::TimedOut,
        }
    }
}

/// An authenticated session, or `None` (the attack round ends).
async fn session(addr: SocketAddr, key: &ClusterKey, hits: &Hits) -> Option<Established> {
    let s = async_net::TcpStream::connect(addr).await.ok()?;
    match handshake::connect(s, key, &ConnectOptions::default()).await {
        Ok(est) => Some(est),
        Err(handshake::HandshakeError::Closed) => {
            Hits::count(&hits.evicted);
            None
        }
        Err(e) => {
            hits.surprise(format!("a hostile master with the key was refused: {e}"));
            None
        }
    }
}

fn task(id: u64, job: u64, kernel: &str) -> Message {
    Message::Task(TaskHead {
        id,
        job: JobId(job),
        kernel: kernel.into(),
        args: vec![],
        trace: false,
        deadline_ms: None,
    })
}

async fn stops_reading(addr: SocketAddr, key: &ClusterKey, clock: &Clock, hits: &Hits) {
    let big = vec![1.0; 1_000_000];
    while_attacked(clock, || async {
        let Some(mut est) = session(addr, key, hits).await else {
            return;
        };
        Hits::count(&hits.stalled);
        let send_all = async {
            for id in 0.. {
                let sent = est
                    .sender
                    .send_bulk(
                        &task(id, 1, "identity"),
                        Shape::List(big.len() as u64),
                        &big,
                    )
                    .await;
                if sent.is_err() {
                    Hits::count(&hits.stalled_ended);
                    return;
                }
            }
        };
        send_all.or(clock.calm()).await;
    })
    .await;
}

/// A hostile master with the key: while windows are attacked, sends the
/// task `next` makes (of a 1-float input) every `pace`, one at a time, and
/// hands each answer to `judge`; a session the agent ends is opened again.
async fn requests(
    addr: SocketAddr,
    key: &ClusterKey,
    clock: &Clock,
    hits: &Hits,
    pace: Duration,
    next: impl Fn() -> Message,
    judge: impl Fn(Message),
) {
    while_attacked(clock, || async {
        let Some(mut est) = session(addr, key, hits).await else {
            return;
        };
        let mut bulk = Vec::new();
        while clock.attacking() {
            let sent = est.sender.send_bulk(&next(), Shape::List(1), &[1.0]).await;
            if sent.is_err() {
                return;
            }
            let Some(Ok(reply)) = answer(&mut est, &mut bulk, hits).await else {
                return;
            };
            judge(reply);
            async_io::Timer::after(pace).await;
        }
    })
    .await;
}

/// The agent's next message on a hostile session, within 30 s (`None`,
/// and a surprise, if none came).
async fn answer(
    est: &mut Established,
    bulk: &mut Vec<f64>,
    hits: &Hits,
) -> Option<Result<Message, skelpi_wire::WireError>> {
    let got = skelpi_wire::within(Duration::from_secs(30), est.receiver.recv(bulk)).await;
    if got.is_none() {
        hits.surprise("an agent left a request unanswered for 30 s".into());
    }
    Some(got?.map(|r| r.msg))
}

/// Asks `port:grow.py`, whose 16 MiB answer cannot travel as a result.
async fn oversized(addr: SocketAddr, key: &ClusterKey, clock: &Clock, hits: &Hits) {
    let next_id = std::cell::Cell::new(0u64);
    let next = || task(next_id.replace(next_id.get() + 1), 2, "port:grow.py");
    let judge = |reply| match reply {
        Message::TaskFailed(f) if f.error.contains("exceeds the 16 MiB limit") => {
            Hits::count(&hits.oversized);
        }
        other => hits.surprise(format!("an oversized result came as {other:?}")),
    };
    let pace = Duration::from_millis(100);
    requests(addr, key, clock, hits, pace, next, judge).await;
}

/// Asks for a kernel the agent lacks, each time for a job of its own.
async fn flood(addr: SocketAddr, key: &ClusterKey, clock: &Clock, hits: &Hits) {
    let next_job = std::cell::Cell::new(1_000u64);
    let next = || {
        let job = next_job.replace(next_job.get() + 1);
        task(job, job, "no-such-kernel")
    };
    let judge = |reply| match reply {
        Message::TaskFailed(_) => Hits::count(&hits.flood),
        other => hits.surprise(format!("a bad request came back as {other:?}")),
    };
    let pace = Duration::from_millis(2);
    requests(addr, key, clock, hits, pace, next, judge).await;
}

/// One kind of window, summed up.
#[derive(Debug, Serialize)]
struct Side {
    minutes: f64,
    tasks: usize,
    tasks_per_second: f64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    connect_p50_ms: f64,
    connect_p99_ms: f64,
    log_lines_per_minute: f64,
    /// The most frequent kinds of log line, per minute.
    top_log_lines_per_minute: Vec<(String, f64)>,
    rss_max_mib: Vec<f64>,
}

impl Side {
    fn new(w: &Window) -> Side {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        Side {
            minutes: w.seconds / 60.0,
            tasks: w.latencies.len(),
            tasks_per_second: w.latencies.len() as f64 / w.seconds.max(1e-9),
            latency_p50_ms: ms(quantile(&w.latencies, 0.5)),
            latency_p99_ms: ms(quantile(&w.latencies, 0.99)),
            connect_p50_ms: ms(quantile(&w.connects, 0.5)),
            connect_p99_ms: ms(quantile(&w.connects, 0.99)),
            log_lines_per_minute: w.log_lines as f64 / (w.seconds / 60.0).max(1e-9),
            top_log_lines_per_minute: {
                let mut kinds: Vec<_> = w.log_shapes.iter().collect();
                kinds.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
                let per_minute = |n: u64| n as f64 / (w.seconds / 60.0).max(1e-9);
                kinds
                    .into_iter()
                    .take(10)
                    .map(|(k, &n)| (k.clone(), per_minute(n)))
                    .collect()
            },
            rss_max_mib: w.rss_max.iter().map(|&b| mib(b)).collect(),
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// What the attacks did.
#[derive(Debug, Serialize)]
struct Attacks {
    wrong_key_refused: u64,
    garbage_closed: u64,
    idle_sockets_closed: u64,
    non_reading_masters: u64,
    non_reading_masters_ended_by_agent: u64,
    oversized_results_refused: u64,
    bad_requests_answered: u64,
    hostile_sessions_evicted: u64,
    surprises: Vec<String>,
}

/// The whole run.
#[derive(Debug, Serialize)]
struct Report {
    good: Tally,
    quiet: Side,
    attacked: Side,
    /// Every agent's RSS (MiB) at the end of every window, in order.
    rss_by_window_mib: Vec<(&'static str, Vec<f64>)>,
    /// Every agent's peak RSS (MiB) over the whole run.
    rss_peak_mib: Vec<f64>,
    attacks: Attacks,
}

impl Report {
    fn new(
        tally: &Tally,
        watched: &[Window; 2],
        hits: &Hits,
        rss_by_window_mib: Vec<(&'static str, Vec<f64>)>,
        rss_peak_mib: Vec<f64>,
    ) -> Report {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Report {
            good: Tally {
                failed_jobs: tally.failed_jobs.clone(),
                ..*tally
            },
            quiet: Side::new(&watched[0]),
            attacked: Side::new(&watched[1]),
            rss_by_window_mib,
            rss_peak_mib,
            attacks: Attacks {
                wrong_key_refused: n(&hits.wrong_key),
                garbage_closed: n(&hits.garbage),
                idle_sockets_closed: n(&hits.idle),
                non_reading_masters: n(&hits.stalled),
                non_reading_masters_ended_by_agent: n(&hits.stalled_ended),
                oversized_results_refused: n(&hits.oversized),
                bad_requests_answered: n(&hits.flood),
                hostile_sessions_evicted: n(&hits.evicted),
                surprises: hits.surprises.lock().unwrap().clone(),
            },
        }
    }

    /// Nothing wrong, lost or duplicated, no good job failed, no attack
    /// got an answer it should not have.
    fn clean(&self) -> bool {
        let g = &self.good;
        g.wrong + g.lost + g.duplicated == 0
            && g.jobs_failed == 0
            && self.attacks.surprises.is_empty()
    }

    fn print(&self) {
        let (q, a) = (&self.quiet, &self.attacked);
        let g = &self.good;
        println!(
            "good master: {} jobs, {} tasks; {} wrong, {} lost, {} duplicated; {} jobs failed",
            g.jobs, g.tasks, g.wrong, g.lost, g.duplicated, g.jobs_failed
        );
        for e in g.failed_jobs.iter().take(5) {
            println!("  failed: {e}");
        }
        println!("{:<26}{:>12}{:>12}{:>8}", "", "quiet", "attacked", "ratio");
        let row = |name: &str, x: f64, y: f64| {
            println!("{name:<26}{x:>12.2}{y:>12.2}{:>8.2}", y / x.max(1e-9));
        };
        row("minutes", q.minutes, a.minutes);
        row("tasks/s", q.tasks_per_second, a.tasks_per_second);
        row("task latency p50, ms", q.latency_p50_ms, a.latency_p50_ms);
        row("task latency p99, ms", q.latency_p99_ms, a.latency_p99_ms);
        row("connect p50, ms", q.connect_p50_ms, a.connect_p50_ms);
        row("connect p99, ms", q.connect_p99_ms, a.connect_p99_ms);
        row(
            "agent log lines/min",
            q.log_lines_per_minute,
            a.log_lines_per_minute,
        );
        for (i, (x, y)) in q.rss_max_mib.iter().zip(&a.rss_max_mib).enumerate() {
            row(&format!("agent {i} RSS max, MiB"), *x, *y);
        }
        for (name, side) in [("quiet", q), ("attacked", a)] {
            println!("agent log lines per minute, {name} windows, most frequent kinds:");
            for (kind, rate) in &side.top_log_lines_per_minute {
                println!("  {rate:>9.1}  {kind}");
            }
        }
        println!("agent RSS at the end of each window, MiB:");
        for (phase, rss) in &self.rss_by_window_mib {
            println!("  {phase:<9}{rss:.1?}");
        }
        println!(
            "agent peak RSS over the run, MiB: {:.1?}",
            self.rss_peak_mib
        );
        let t = &self.attacks;
        println!(
            "attacks: {} wrong-key handshakes refused, {} garbage connections closed, \
             {} idle sockets closed, {} masters that stopped reading ({} ended by the agent), \
             {} oversized results refused as task errors, {} bad requests answered; \
             {} hostile sessions evicted while handshaking",
            t.wrong_key_refused,
            t.garbage_closed,
            t.idle_sockets_closed,
            t.non_reading_masters,
            t.non_reading_masters_ended_by_agent,
            t.oversized_results_refused,
            t.bad_requests_answered,
            t.hostile_sessions_evicted
        );
        if t.surprises.is_empty() {
            println!("surprises: none");
        }
        for s in &t.surprises {
            println!("surprise: {s}");
        }
    }
}
