//! `skelpi deploy` against real agent processes: a roll while a farm
//! runs, every refusal the agents make, and a binary that does not come
//! up rolled back.
//!
//! The "new build" is this workspace's agent with bytes appended: the same
//! code, a different SHA-256, which is what agents and the roll tell
//! builds apart by (a rebuild with a bumped version would take a second
//! agent build in CI). systemd is not PID 1 here: where a board relies on
//! its `Restart=always`, a test loop restarts the agent process instead
//! (said where it does); the booted boards run the real one.

use super::agents::agent_binary;
use super::support::{Killed, Scratch, assert_squares, free_port, paced_farm, skelpi};
use skelpi::client::AgentConn;
use skelpi::cluster::Cluster;
use skelpi::deploy::{self, Binary, Board, Outcome, RollOptions};
use skelpi_proto::deploy::DeployOffer;
use skelpi_testkit::AgentProcess;
use skelpi_wire::deploy_key::DeployKey;
use skelpi_wire::key::ClusterKey;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Keys and binaries of one test.
struct Setup {
    dir: Scratch,
    key: ClusterKey,
    key_path: PathBuf,
    deploy: DeployKey,
    public: PathBuf,
    /// A copy of the agent, as installed on a board.
    installed: PathBuf,
}

impl Setup {
    fn new(name: &str) -> Setup {
        let dir = Scratch::new(&format!("deploy-{name}"));
        let key = ClusterKey::generate().unwrap();
        let key_path = dir.0.join("cluster.key");
        key.write(&key_path, true).unwrap();
        let deploy = DeployKey::generate().unwrap();
        deploy.write(&dir.0.join("deploy.key"), true).unwrap();
        let public = dir.0.join("deploy.pub");
        deploy.public().write(&public).unwrap();
        let installed = dir.0.join("skelpi-agent");
        std::fs::copy(agent_binary(), &installed).unwrap();
        Setup {
            dir,
            key,
            key_path,
            deploy,
            public,
            installed,
        }
    }

    /// A build that differs from the installed one (see the module doc).
    fn new_build(&self, tag: &str) -> PathBuf {
        let path = self.dir.0.join(format!("skelpi-agent-{tag}"));
        appended_build(&self.installed, &path, tag);
        path
    }

    /// The agent's arguments: a fixed port (it comes back on it), its own
    /// state directory, and the deploy public key when `deployable`.
    fn args(&self, name: &str, port: u16, deployable: bool) -> Vec<String> {
        let mut args: Vec<String> = [
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--name",
            name,
            "--no-mdns",
            "--workers",
            "2",
            "--key-file",
            self.key_path.to_str().unwrap(),
            "--state-dir",
            self.dir.0.join(format!("state-{name}")).to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec();
        if deployable {
            args.extend([
                "--deploy-pubkey".into(),
                self.public.to_str().unwrap().into(),
            ]);
        }
        args
    }

    fn start(&self, name: &str, deployable: bool) -> AgentProcess {
        let args = self.args(name, free_port(), deployable);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        AgentProcess::start(&self.installed, &args, Duration::from_secs(20)).unwrap()
    }

    fn connect(&self, addr: SocketAddr) -> AgentConn {
        smol::block_on(AgentConn::connect(addr, &self.key, &Default::default())).unwrap()
    }

    fn trial_exists(&self, name: &str) -> bool {
        let deploy = self.dir.0.join(format!("state-{name}")).join("deploy");
        deploy.join("trial").exists() || deploy.join("current").exists()
    }
}

/// Writes at `to` the agent at `from` with bytes appended: the same code,
/// another SHA-256 (see the module doc).
pub fn appended_build(from: &Path, to: &Path, tag: &str) {
    let mut bytes = std::fs::read(from).unwrap();
    bytes.extend_from_slice(format!("\nskelpi test build {tag}\n").as_bytes());
    std::fs::write(to, bytes).unwrap();
    let mut perms = std::fs::metadata(to).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(to, perms).unwrap();
}

/// A "binary" (a shell script) that passes its self-check and exits when
/// started for real, as a build that crashes at start would.
pub fn exits_at_start(path: PathBuf) -> Binary {
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = --self-check ]; then\n  printf \
         'skelpi-agent self-check ok\\nversion=9.9.9\\nprotocol={}\\narch={}\\n'\n  exit 0\nfi\n\
         echo 'this build exits at start' >&2\nexit 1\n",
        skelpi_proto::PROTOCOL_VERSION,
        std::env::consts::ARCH
    );
    Binary {
        path,
        bytes: script.as_bytes().into(),
        arch: std::env::consts::ARCH.into(),
        sha256: deploy::sha256_hex(script.as_bytes()),
        version: Some("9.9.9".into()),
    }
}

/// Rolls `binary` onto the one agent at `addr`; its outcome and the time
/// from its restart to the end of its part.
pub fn roll_one(
    addr: SocketAddr,
    key: &ClusterKey,
    deploy_key: &DeployKey,
    binary: &Binary,
    ready_timeout: Duration,
) -> (Outcome, Duration) {
    let opts = Default::default();
    let mut cluster = smol::block_on(Cluster::connect(&[addr], key, &opts)).unwrap();
    let boards: Vec<Board> = cluster.agents().iter().map(Board::of).collect();
    let steps = deploy::plan(&boards, std::slice::from_ref(binary)).unwrap();
    let mut restarted = None;
    let mut outcomes = smol::block_on(deploy::roll(
        &mut cluster,
        &steps,
        std::slice::from_ref(binary),
        deploy_key,
        &RollOptions {
            batch: 1,
            ready_timeout,
        },
        |_, p| {
            if p == deploy::Progress::Restarting {
                restarted = Some(Instant::now());
            }
        },
    ));
    smol::block_on(cluster.close());
    let took = restarted.expect("it was restarted").elapsed();
    (outcomes.remove(0).1, took)
}

/// `binary`'s offer signed with `key` for the agent with id `agent`.
fn offer(binary: &Binary, key: &DeployKey, agent: &str) -> DeployOffer {
    binary.offer(key, agent)
}

/// Milliseconds since the Unix epoch (a manifest's signing time).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The agent at `addr`'s build: the SHA-256 of its deployed binary.
fn deployed(setup: &Setup, addr: SocketAddr) -> Option<String> {
    let conn = setup.connect(addr);
    let build = conn.info().build.clone().expect("agents say their build");
    smol::block_on(conn.close());
    build.deployed
}

#[test]
fn a_farm_of_5000_tasks_loses_nothing_while_three_agents_are_rolled() {
    let setup = Setup::new("roll");
    let rolled: Vec<AgentProcess> = (0..3)
        .map(|i| setup.start(&format!("roll-{i}"), true))
        .collect();
    // One more agent the roll leaves alone, so that some agent is up at
    // every moment of the roll (the rolled ones rejoin the job once back).
    let steady = setup.start("steady", false);
    let new_build = setup.new_build("2");
    let addrs: Vec<SocketAddr> = rolled.iter().chain([&steady]).map(|a| a.addr).collect();
    let rolled_addrs: Vec<String> = rolled.iter().map(|a| a.addr.to_string()).collect();

    let done = Arc::new(AtomicBool::new(false));
    let farm = paced_farm(addrs, setup.key.clone(), 5000, 4900, done.clone());
    let (code, out, err) = skelpi(&[
        "deploy",
        "--agents",
        &rolled_addrs.join(","),
        "--key-file",
        setup.key_path.to_str().unwrap(),
        "--deploy-key",
        setup.dir.0.join("deploy.key").to_str().unwrap(),
        "--binary",
        new_build.to_str().unwrap(),
    ]);
    done.store(true, Ordering::SeqCst);
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(out.matches("upgraded to").count(), 3, "{out}");
    let results = farm.join().unwrap().expect("the farm survives the roll");
    assert_squares(&results, 5000);
    let sha = Binary::read(&new_build).unwrap().sha256;
    for a in &rolled {
        assert_eq!(deployed(&setup, a.addr).as_deref(), Some(sha.as_str()));
    }
    assert_eq!(deployed(&setup, steady.addr), None);
}

#[test]
fn every_bad_deploy_is_refused_with_its_reason_and_the_agent_keeps_its_binary() {
    let setup = Setup::new("refusals");
    let agent = setup.start("refuse", true);
    let keyless = setup.start("keyless", false);
    let good = Binary::read(&setup.new_build("good")).unwrap();
    let other_key = DeployKey::generate().unwrap();
    let id = agent.id.clone();

    let unsigned = DeployOffer {
        signature: Vec::new().into(),
        ..offer(&good, &setup.deploy, &id)
    };
    let wrong_hash = Binary {
        sha256: "00".repeat(32),
        ..good.clone()
    };
    // The manifest of the whole binary, half of its bytes.
    let half = Binary {
        bytes: good.bytes[..good.bytes.len() / 2].into(),
        ..good.clone()
    };
    let foreign = Binary {
        arch: "aarch64".into(),
        ..good.clone()
    };
    let script = b"#!/bin/sh\necho 'cannot run here' >&2\nexit 3\n";
    let fails_self_check = Binary {
        bytes: script.as_slice().into(),
        sha256: deploy::sha256_hex(script),
        ..good.clone()
    };
    let cases: [(&str, DeployOffer, &Binary, &str); 8] = [
        ("unsigned", unsigned, &good, "the manifest is unsigned"),
        (
            "wrong key",
            offer(&good, &other_key, &id),
            &good,
            "not signed by this agent's deploy key",
        ),
        (
            "wrong hash",
            offer(&wrong_hash, &setup.deploy, &id),
            &good,
            "the binary's SHA-256 is",
        ),
        (
            "truncated",
            offer(&good, &setup.deploy, &id),
            &half,
            "the upload is truncated",
        ),
        (
            "wrong architecture",
            offer(&foreign, &setup.deploy, &id),
            &good,
            "the binary is for aarch64",
        ),
        (
            "failing self-check",
            offer(&fails_self_check, &setup.deploy, &id),
            &fails_self_check,
            "failed its self-check",
        ),
        (
            "another agent",
            offer(&good, &setup.deploy, "0000000000000000"),
            &good,
            "signed for agent 0000000000000000",
        ),
        (
            "no deploy key",
            offer(&good, &setup.deploy, &id),
            &good,
            "no deploy public key",
        ),
    ];
    for (what, offer, binary, expected) in cases {
        let target = if what == "no deploy key" {
            &keyless
        } else {
            &agent
        };
        let mut conn = setup.connect(target.addr);
        let refused = smol::block_on(deploy::upload(&mut conn, &offer, binary, |_| {}));
        let e = refused.expect_err(what).to_string();
        assert!(e.contains(expected), "{what}: {e}");
        // Still serving, on its old binary, nothing staged.
        let mut again = setup.connect(target.addr);
        smol::block_on(again.ping()).unwrap();
        assert_eq!(again.info().build.clone().unwrap().deployed, None, "{what}");
        smol::block_on(again.close());
    }
    assert!(!setup.trial_exists("refuse"));
    let incoming = setup.dir.0.join("state-refuse/deploy/incoming");
    assert!(!incoming.exists(), "a refused upload is not left on disk");

    // After all that, a good deploy goes through (and is committed)...
    let (outcome, _) = roll_one(
        agent.addr,
        &setup.key,
        &setup.deploy,
        &good,
        Duration::from_secs(30),
    );
    assert!(matches!(outcome, Outcome::Upgraded { .. }), "{outcome:?}");
    assert_eq!(deployed(&setup, agent.addr), Some(good.sha256.clone()));
    // ... and an older signed manifest cannot be replayed to go back.
    let older = setup.new_build("older");
    let older = Binary::read(&older).unwrap();
    let manifest = older.manifest(now_ms() - 3_600_000, &id).to_bytes();
    let replay = DeployOffer {
        signature: setup.deploy.sign(&manifest).into(),
        manifest: manifest.into(),
    };
    let mut conn = setup.connect(agent.addr);
    let e = smol::block_on(deploy::upload(&mut conn, &replay, &older, |_| {}))
        .expect_err("a replay")
        .to_string();
    assert!(
        e.contains("not after the last one this agent restarted into"),
        "{e}"
    );
    // One deploy at a time: a second master is told who deploys.
    let mut first = setup.connect(agent.addr);
    let accepted = smol::block_on(first.request(
        &skelpi_proto::Message::DeployOffer(offer(&older, &setup.deploy, &id)),
        |got| match got {
            skelpi_proto::Message::DeployAccepted => Ok(skelpi::client::Reply::Done(())),
            other => panic!("{other:?}"),
        },
    ));
    accepted.unwrap();
    let mut second = setup.connect(agent.addr);
    let e = smol::block_on(deploy::upload(
        &mut second,
        &offer(&older, &setup.deploy, &id),
        &older,
        |_| {},
    ))
    .expect_err("a second deploy")
    .to_string();
    assert!(e.contains("is deploying to this agent now"), "{e}");
    // The command refuses a board without a deploy key before sending a
    // byte, naming it.
    let (code, _, err) = skelpi(&[
        "deploy",
        "--agents",
        &keyless.addr.to_string(),
        "--key-file",
        setup.key_path.to_str().unwrap(),
        "--deploy-key",
        setup.dir.0.join("deploy.key").to_str().unwrap(),
        "--binary",
        good.path.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("keyless cannot be deployed to"), "{err}");
}

/// Runs the installed agent with `args` again each time it exits, as
/// systemd's `Restart=always` would (not PID 1 here), until dropped.
struct Supervised {
    child: Arc<Mutex<Option<std::process::Child>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Supervised {
    fn start(binary: &Path, args: Vec<String>) -> Supervised {
        let child = Arc::new(Mutex::new(None::<std::process::Child>));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (binary, child, stop) = (binary.to_owned(), child.clone(), stop.clone());
            std::thread::spawn(move || {
                for _ in 0..5 {
                    let spawned = std::process::Command::new(&binary)
                        .args(&args)
                        .env_remove("JOURNAL_STREAM")
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .spawn()
                        .unwrap();
                    *child.lock().unwrap() = Some(spawned);
                    loop {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let exited = child.lock().unwrap().as_mut().unwrap().try_wait();
                        if exited.unwrap().is_some() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            })
        };
        Supervised {
            child,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn a_binary_that_exits_at_start_is_rolled_back_and_the_board_serves_again() {
    let setup = Setup::new("rollback");
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let _agent = Supervised::start(&setup.installed, setup.args("back", port, true));
    // Up: a bounded wait for its first answer.
    let cluster_opts = Default::default();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut conn = loop {
        match smol::block_on(AgentConn::connect(addr, &setup.key, &cluster_opts)) {
            Ok(conn) => break conn,
            Err(e) if Instant::now() > deadline => panic!("the agent never answered: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    smol::block_on(conn.ping()).unwrap();
    smol::block_on(conn.close());

    let bad = exits_at_start(setup.dir.0.join("bad-build"));
    let (outcome, back_after) = roll_one(
        addr,
        &setup.key,
        &setup.deploy,
        &bad,
        Duration::from_secs(30),
    );
    let Outcome::Failed(why) = &outcome else {
        panic!("{outcome:?}");
    };
    assert!(
        why.contains(&format!("rolled back from binary {}", bad.sha256))
            && why.contains("installed"),
        "{why}"
    );
    // Serving again on its old binary, saying why.
    let mut conn = setup.connect(addr);
    smol::block_on(conn.ping()).unwrap();
    let build = conn.info().build.clone().unwrap();
    assert_eq!(build.deployed, None);
    assert!(build.last_failure.unwrap().contains("rolled back"));
    smol::block_on(conn.close());
    eprintln!("rolled back and serving again {back_after:.1?} after the restart");
    assert!(back_after < Duration::from_secs(15), "{back_after:?}");
}

#[test]
fn a_deploy_restart_keeps_the_systemd_unit_running() {
    // systemd is not PID 1 here: its notify socket is, as in the agent's
    // own systemd test. A restart into a deployed binary must not say
    // STOPPING=1: systemd would take the unit for stopping and kill the
    // new binary after TimeoutStopSec.
    use std::os::unix::net::UnixDatagram;
    let setup = Setup::new("notify");
    let socket_path = setup.dir.0.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let port = free_port();
    // Killed on drop, so that a failing assertion leaves no agent behind.
    let _agent = Killed(
        std::process::Command::new(&setup.installed)
            .args(setup.args("notify", port, true))
            .env("NOTIFY_SOCKET", &socket_path)
            .env_remove("JOURNAL_STREAM")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let next = || {
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).expect("a notification within 30 s");
        String::from_utf8_lossy(&buf[..n]).trim_end().to_owned()
    };
    assert!(next().contains("READY=1"));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let build = Binary::read(&setup.new_build("2")).unwrap();
    let (outcome, _) = roll_one(
        addr,
        &setup.key,
        &setup.deploy,
        &build,
        Duration::from_secs(30),
    );
    assert!(matches!(outcome, Outcome::Upgraded { .. }), "{outcome:?}");
    // The new binary says it is ready, and nothing said stopping before.
    let mut said = Vec::new();
    loop {
        let n = next();
        let ready = n.contains("READY=1");
        said.push(n);
        if ready {
            break;
        }
    }
    assert!(!said.iter().any(|s| s.contains("STOPPING=1")), "{said:?}");
}

#[test]
fn deploy_refuses_in_process_agents_and_a_missing_key_as_usage_errors() {
    let dir = Scratch::new("deploy-usage");
    let (code, _, err) = skelpi(&["deploy", "--local", "2", "--binary", "/nonexistent"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--local agents run inside this process"),
        "{err}"
    );
    let agent = agent_binary();
    let (code, _, err) = skelpi(&[
        "deploy",
        "--agents",
        "127.0.0.1:1",
        "--deploy-key",
        &dir.path("none.key"),
        "--binary",
        agent.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("skelpi keygen --deploy"), "{err}");
}

#[test]
fn deploy_build_plans_the_board_build_of_each_architecture_of_the_pool() {
    let dir = Scratch::new("deploy-build");
    let key = dir.0.join("cluster.key");
    ClusterKey::generate().unwrap().write(&key, true).unwrap();
    let agent = super::agents::start_agent(&key, "to-build", &["--no-mdns", "--workers", "1"]);
    let addr = agent.addr.to_string();
    let args = [
        "deploy",
        "--build",
        "--dry-run",
        "--agents",
        &addr,
        "--key-file",
        key.to_str().unwrap(),
    ];
    // Outside the source tree (the helper runs in the temporary folder):
    // refused before anything is built.
    let (code, _, err) = skelpi(&args);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("inside the skelpi source tree"), "{err}");
    // Inside it: the plan.
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_skelpi"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .unwrap();
    let (code, out, err) = (
        run.status.code(),
        String::from_utf8_lossy(&run.stdout).into_owned(),
        String::from_utf8_lossy(&run.stderr).into_owned(),
    );
    assert_eq!(code, Some(0), "{err}");
    let arch = std::env::consts::ARCH;
    assert!(
        out.contains(&format!(
            "{arch} boards: would build with `cargo build --profile board -p skelpi-agent --bin \
             skelpi-agent`"
        )),
        "{out}"
    );
    assert!(err.contains("nothing was built or changed"), "{err}");
    // Binaries or a build, not both.
    let (code, _, err) = skelpi(&["deploy", "--build", "--binary", "x", "--agents", &addr]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("cannot be used with"), "{err}");
}
