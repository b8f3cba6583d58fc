//! `skelpi top` in a real terminal (tmux, read with capture-pane) against
//! real agent processes: the boards appear, a stopped one turns down
//! within the poll bound and comes back when it resumes; `--once --json`
//! for scripts.

use super::agents::start_agent;
use super::support::{Killed, Scratch, signal, skelpi};
use skelpi_wire::key::ClusterKey;
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmux session running a command, killed on drop.
struct Tmux(String);

impl Tmux {
    fn start(name: &str, command: &str) -> Tmux {
        let ok = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                name,
                "-x",
                "180",
                "-y",
                "30",
                command,
            ])
            .status()
            .expect("tmux (Debian package tmux)");
        assert!(ok.success(), "tmux new-session");
        Tmux(name.to_owned())
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.0])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Polls the screen (a terminal sends no event to wait for) until
    /// `ok` holds, at most `limit`; how long it took.
    fn until(&self, limit: Duration, what: &str, ok: impl Fn(&str) -> bool) -> Duration {
        let started = Instant::now();
        while started.elapsed() < limit {
            if ok(&self.screen()) {
                return started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{what} not seen within {limit:?}:\n{}", self.screen());
    }

    fn alive(&self) -> bool {
        Command::new("tmux")
            .args(["has-session", "-t", &self.0])
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .status();
    }
}

/// The screen line of the board `name`.
fn line_of<'a>(screen: &'a str, name: &str) -> Option<&'a str> {
    screen.lines().find(|l| l.contains(name))
}

#[test]
fn top_shows_the_boards_and_a_stopped_one_down_then_back() {
    let dir = Scratch::new("top");
    let key = dir.0.join("cluster.key");
    ClusterKey::generate().unwrap().write(&key, true).unwrap();
    let agents: Vec<_> = ["top-a", "top-b"]
        .iter()
        .map(|n| start_agent(&key, n, &["--no-mdns", "--workers", "1"]))
        .collect();
    let addrs: Vec<String> = agents.iter().map(|a| a.addr.to_string()).collect();
    let command = format!(
        "{} top --agents {} --key-file {} --interval 300ms",
        env!("CARGO_BIN_EXE_skelpi"),
        addrs.join(","),
        key.display()
    );
    let session = format!("skelpi-top-{}", std::process::id());
    let top = Tmux::start(&session, &command);
    top.until(Duration::from_secs(20), "both boards up", |s| {
        ["top-a", "top-b"]
            .iter()
            .all(|n| line_of(s, n).is_some_and(|l| l.contains(" up ")))
    });
    // Stopped: no answer to the poll, so down within the poll bound.
    let pid = agents[1].child.id().to_string();
    signal("-STOP", &pid);
    let down = top.until(Duration::from_secs(10), "top-b down", |s| {
        line_of(s, "top-b").is_some_and(|l| l.contains("down"))
    });
    eprintln!("top: a stopped board shown down after {down:.1?}");
    assert!(down <= Duration::from_secs(4), "{down:?}");
    assert!(line_of(&top.screen(), "top-a").is_some_and(|l| l.contains(" up ")));
    // Resumed: connected again (every 5 s) and shown up.
    signal("-CONT", &pid);
    top.until(Duration::from_secs(20), "top-b up again", |s| {
        line_of(s, "top-b").is_some_and(|l| l.contains(" up "))
    });
    // q quits and gives the terminal back.
    assert!(
        Command::new("tmux")
            .args(["send-keys", "-t", &session, "q"])
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    while top.alive() && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!top.alive(), "top did not quit on q");
}

#[test]
fn top_shows_a_running_jobs_stages_and_drops_the_job_when_it_ends() {
    let dir = Scratch::new("top-jobs");
    let key = dir.0.join("cluster.key");
    ClusterKey::generate().unwrap().write(&key, true).unwrap();
    let agents: Vec<_> = ["tj-a", "tj-b"]
        .iter()
        .map(|n| start_agent(&key, n, &["--no-mdns", "--workers", "1"]))
        .collect();
    let addrs: Vec<String> = agents.iter().map(|a| a.addr.to_string()).collect();
    let jobs = dir.path("jobs");
    let command = format!(
        "SKELPI_JOBS_DIR={jobs} {} top --agents {} --key-file {} --interval 300ms",
        env!("CARGO_BIN_EXE_skelpi"),
        addrs.join(","),
        key.display()
    );
    let session = format!("skelpi-top-jobs-{}", std::process::id());
    let top = Tmux::start(&session, &command);
    top.until(Duration::from_secs(20), "the empty jobs panel", |s| {
        s.contains("no job running")
    });
    // A streamed pipeline of two stages, long enough to be seen (about
    // 2 ms per item on stage 0).
    let job = dir.0.join("slow.toml");
    std::fs::write(
        &job,
        "skeleton = \"pipe(seq(erf_burn(2000)), seq(erf_burn(500)))\"\n\
         [input]\ngenerate = \"range\"\nitems = 20000\nlength = 64\n",
    )
    .unwrap();
    let run = Killed(
        Command::new(env!("CARGO_BIN_EXE_skelpi"))
            .args(["run", job.to_str().unwrap(), "--agents", &addrs.join(",")])
            .args(["--key-file", key.to_str().unwrap()])
            .env("SKELPI_JOBS_DIR", &jobs)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Its stages appear, with their agents, kernel times and rho.
    let seen = top.until(Duration::from_secs(30), "the job's stages", |s| {
        s.contains("slow.toml")
            && s.contains("/20000 results")
            && line_of(s, "stage 0 erf_burn(2000) on tj-a").is_some_and(|l| l.contains(" ms"))
            && line_of(s, "stage 1 erf_burn(500) on tj-b").is_some_and(|l| l.contains(" ms"))
    });
    eprintln!("top: the job's stages shown after {seen:.1?}");
    // Stopped (Ctrl-C), the job leaves the panel.
    signal("-INT", &run.0.id().to_string());
    top.until(
        Duration::from_secs(20),
        "the job gone from the panel",
        |s| s.contains("no job running"),
    );
    drop(run);
    let left: Vec<_> = std::fs::read_dir(&jobs).unwrap().collect();
    assert!(left.is_empty(), "status files left: {left:?}");
}

#[test]
fn top_once_prints_a_snapshot_and_refuses_a_missing_terminal() {
    let (code, out, err) = skelpi(&["top", "--local", "2", "--once", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let snapshot: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(snapshot["boards"].as_array().unwrap().len(), 2, "{out}");
    assert!(snapshot["jobs"].is_array(), "{out}");
    // Not a terminal (the test's pipe): it says what to do instead.
    let (code, _, err) = skelpi(&["top", "--local", "1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--once"), "{err}");
}

#[test]
fn health_skips_a_stopped_board_and_reports_the_others() {
    let dir = Scratch::new("health-down");
    let key = dir.0.join("cluster.key");
    ClusterKey::generate().unwrap().write(&key, true).unwrap();
    let up = start_agent(&key, "answers", &["--no-mdns", "--workers", "1"]);
    let stopped = start_agent(&key, "stopped", &["--no-mdns", "--workers", "1"]);
    let agents = format!("{},{}", up.addr, stopped.addr);
    let pid = stopped.child.id().to_string();
    signal("-STOP", &pid);
    let started = Instant::now();
    let (code, out, err) = skelpi(&[
        "health",
        "--agents",
        &agents,
        "--key-file",
        key.to_str().unwrap(),
        "--skip-unreachable",
        "--json",
    ]);
    let took = started.elapsed();
    signal("-CONT", &pid);
    eprintln!("health with a stopped board took {took:.1?}");
    // Stopped before the command connects, it cannot finish the handshake:
    // shown down with why (and the command exits 1); the other one
    // reports.
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("1 of 2 boards did not answer"), "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{out}");
    assert_eq!(rows[0]["name"], "answers");
    assert_eq!(rows[0]["up"], true);
    assert_eq!(rows[1]["address"], stopped.addr.to_string());
    assert_eq!(rows[1]["up"], false);
}
