//! The cluster lab: four network-namespace hosts with real agents, found
//! by mDNS from the master's namespace, running a pmap and a pipeline; then
//! nothing is left behind. Needs root, so it is ignored by a plain `cargo
//! test`; `scripts/test.sh` (as root, as CI runs it) runs it.

use super::agents::agent_binary;
use super::support::{Scratch, skelpi};

/// Takes the lab down even if the test fails half-way.
pub struct LabGuard(pub String);

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = skelpi(&["lab", "down", "--id", &self.0]);
    }
}

/// The line in which `avahi-browse`, in lab `id`'s master namespace (a
/// lab up with `--avahi`), resolves the agent `name` (waiting up to 30 s
/// for its daemon to hear the announcement).
pub fn avahi_resolves(id: &str, name: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (code, out, err) = skelpi(&[
            "lab",
            "exec",
            "--id",
            id,
            "--",
            "avahi-browse",
            "-rpt",
            "_skelpi._tcp",
        ]);
        assert_eq!(code, Some(0), "{err}");
        let prefix = format!("=;eth0;IPv4;{name};_skelpi._tcp;local;");
        if let Some(line) = out.lines().find(|l| l.starts_with(&prefix)) {
            return line.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "avahi-browse did not resolve {name}: {out}{err}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Runs `skelpi` in lab `id`'s master namespace.
pub fn in_lab(id: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let exe = env!("CARGO_BIN_EXE_skelpi");
    skelpi(&[&["lab", "exec", "--id", id, "--", exe][..], args].concat())
}

/// Two more agents in host 1's namespace, listening on 0.0.0.0, one
/// announcing on `lo` only and one on `eth0` only (`--interface`): the
/// master, across the bridge, finds the second and not the first.
fn announced_on_named_interfaces_only(id: &str, agent: &std::path::Path) {
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let key = format!("/tmp/skelpi-lab-{id}/cluster.key");
    let start = |name: &str, port: u16, interface: &str| {
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", &format!("skl{id}-h1")])
            .arg(agent)
            .args([
                "--listen",
                &format!("0.0.0.0:{port}"),
                "--name",
                name,
                "--id",
                name,
            ])
            .args([
                "--key-file",
                &key,
                "--workers",
                "1",
                "--interface",
                interface,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Killed(child)
    };
    let _on_lo = start("extra-lo", 7901, "lo");
    let _on_eth0 = start("extra-eth0", 7902, "eth0");
    let (code, out, err) = in_lab(id, &["discover", "--json", "--timeout", "3s"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("\"extra-eth0\""), "announced on eth0: {out}");
    assert!(out.contains(&format!("10.77.{id}.1:7902")), "{out}");
    assert!(!out.contains("extra-lo"), "announced on lo only: {out}");
}

/// Kills a daemon from its pid file when dropped.
struct Daemon(std::path::PathBuf);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.0) {
            skelpi_testkit::signal("-TERM", pid.trim());
        }
    }
}

/// The agents of lab `id` that mDNS found (`by_mdns`, `discover --json`)
/// are found again through Debian's dnsmasq in the master's namespace,
/// serving what `skelpi dns-records` printed: by unicast DNS-SD (the same
/// ids, addresses and ports, each agent once with both sources when mDNS
/// is asked too) and by SRV records in a Kubernetes headless Service's
/// shape, one of which points at an address where nothing answers. Bad
/// input: a domain without records, a closed port, a silent server.
fn found_through_a_dns_server(id: &str, by_mdns: &serde_json::Value, dir: &Scratch) {
    let (code, records, err) = in_lab(
        id,
        &[
            "dns-records",
            "--domain",
            "lab.test",
            "--format",
            "dnsmasq",
            "--timeout",
            "3s",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(records.matches("ptr-record=").count(), 4, "{records}");
    // The SRV records of a headless Service `skelpi` in namespace `pis`,
    // as Kubernetes' DNS serves them; one target is gone.
    // Names under .test that it lacks are NXDOMAIN (not REFUSED).
    let mut conf = format!("local=/test/\n{records}");
    let service = "_skelpi._tcp.skelpi.pis.svc.cluster.local";
    for n in 1..=4 {
        conf.push_str(&format!(
            "srv-host={service},pod{n}.skelpi.pis.svc.cluster.local,7871\n\
             host-record=pod{n}.skelpi.pis.svc.cluster.local,10.77.{id}.{n}\n"
        ));
    }
    conf.push_str(&format!(
        "srv-host={service},gone.skelpi.pis.svc.cluster.local,7871\n\
         host-record=gone.skelpi.pis.svc.cluster.local,10.77.{id}.250\n"
    ));
    let conf_file = dir.path("dnsmasq.conf");
    std::fs::write(&conf_file, conf).unwrap();
    let pid_file = dir.path("dnsmasq.pid");
    let (code, _, err) = skelpi(&[
        "lab",
        "exec",
        "--id",
        id,
        "--",
        "dnsmasq",
        "--port=5300",
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--no-resolv",
        "--no-hosts",
        &format!("--conf-file={conf_file}"),
        &format!("--pid-file={pid_file}"),
    ]);
    assert_eq!(code, Some(0), "dnsmasq: {err}");
    let _dnsmasq = Daemon(pid_file.into());
    let server = "127.0.0.1:5300";

    // Unicast DNS-SD: the same agents as mDNS.
    let (code, out, err) = in_lab(
        id,
        &[
            "discover",
            "--json",
            "--discover",
            "dns-sd:lab.test",
            "--dns-server",
            server,
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    let by_dns: serde_json::Value = serde_json::from_str(&out).unwrap();
    let key = |v: &serde_json::Value| {
        let mut rows: Vec<(String, String, String)> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let s = |k: &str| a[k].as_str().unwrap_or_default().to_owned();
                (s("id"), s("name"), s("address"))
            })
            .collect();
        rows.sort();
        rows
    };
    assert_eq!(key(&by_dns), key(by_mdns), "{out}");
    assert!(out.contains("\"dns-sd:lab.test\""), "{out}");
    // Both sources: each agent once, found by both.
    let (code, out, err) = in_lab(
        id,
        &[
            "discover",
            "--json",
            "--timeout",
            "3s",
            "--discover",
            "mdns,dns-sd:lab.test",
            "--dns-server",
            server,
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    let both: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(key(&both), key(by_mdns), "{out}");
    for agent in both.as_array().unwrap() {
        assert_eq!(
            agent["sources"],
            serde_json::json!(["mdns", "dns-sd:lab.test"]),
            "{out}"
        );
    }
    // SRV records: the pool is the four that answer; the gone one is
    // named and skipped.
    let srv = format!("srv:{service}");
    let (code, out, err) = in_lab(
        id,
        &[
            "ping",
            "--count",
            "1",
            "--discover",
            &srv,
            "--dns-server",
            server,
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        err.contains(&format!("5 agents found by {srv} (1 skipped")),
        "{err}"
    );
    assert!(err.contains(&format!("10.77.{id}.250:7871")), "{err}");
    assert_eq!(out.matches(&format!("lab{id}-h")).count(), 4, "{out}");

    // Bad input: each a clear message, naming what was asked.
    let silent = format!("10.77.{id}.250");
    for (source, server, says) in [
        (
            "dns-sd:nothing.test",
            server,
            "_skelpi._tcp.nothing.test. has no PTR records at 127.0.0.1:5300".to_owned(),
        ),
        (
            "dns-sd:lab.test",
            "127.0.0.1:5399",
            "nothing answers DNS at 127.0.0.1:5399".to_owned(),
        ),
        (
            "dns-sd:lab.test",
            &silent,
            format!("the DNS server {silent}:53 did not answer within 1s"),
        ),
    ] {
        let (code, _, err) = in_lab(
            id,
            &[
                "ping",
                "--discover",
                source,
                "--dns-server",
                server,
                "--discover-timeout",
                "1s",
            ],
        );
        assert_ne!(code, Some(0), "{source} at {server}");
        assert!(err.contains(&says), "{source} at {server}: {err}");
    }
}

fn netns_list() -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "needs root (network namespaces): scripts/test.sh runs it as root"]
fn a_four_host_lab_discovers_runs_skeletons_and_leaves_nothing_behind() {
    // An id of its own, so a developer's lab 0 is left alone.
    let id = (200 + std::process::id() % 50).to_string();
    let prefix = format!("skl{id}-");
    let _ = skelpi(&["lab", "down", "--id", &id]);
    let agent = agent_binary();
    // Two quotas for one host: refused before anything is made.
    let (code, _, err) = skelpi(&[
        "lab",
        "up",
        "--id",
        &id,
        "--hosts",
        "2",
        "--cpu-quota",
        "1=25",
        "--cpu-quota",
        "1=50",
    ]);
    assert_ne!(code, Some(0));
    assert!(err.contains("host 1 was given 25% already"), "{err}");
    assert_eq!(netns_list().matches(&prefix).count(), 0);
    let (code, out, err) = skelpi(&[
        "lab",
        "up",
        "--id",
        &id,
        "--hosts",
        "4",
        "--workers",
        "1",
        "--agent-binary",
        agent.to_str().unwrap(),
        "--cpu-quota",
        "4=25",
        "--avahi",
    ]);
    let guard = LabGuard(id.clone());
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("host 4: its agent held to 25% of one core"),
        "{out}"
    );
    assert_eq!(netns_list().matches(&prefix).count(), 6, "{}", netns_list());
    // Host 4 is a slow board: its agent in a cgroup of 25% of a core.
    let group = cpu_group(&id, 4).expect("host 4's cgroup");
    let quota = std::fs::read_to_string(group.join("cpu.max"))
        .or_else(|_| std::fs::read_to_string(group.join("cpu.cfs_quota_us")))
        .unwrap();
    assert!(quota.starts_with("2500"), "{quota}");
    let procs = std::fs::read_to_string(group.join("cgroup.procs")).unwrap();
    assert_eq!(procs.lines().count(), 1, "the agent alone: {procs}");
    assert!(cpu_group(&id, 3).is_none(), "host 3 runs at full speed");

    // mDNS across the bridge, from the master's namespace, within 3 s.
    let found = discovered(&id);
    let want: Vec<String> = (1..=4).map(|n| format!("lab{id}-h{n}")).collect();
    assert_eq!(names_of(&found), want, "{found}");
    // An independent DNS-SD browser (avahi) resolves the same agents.
    for (n, name) in want.iter().enumerate() {
        let line = avahi_resolves(&id, name);
        assert!(
            line.contains(&format!(";10.77.{id}.{};7871;", n + 1)),
            "{line}"
        );
        assert!(line.contains(&format!("\"id={name}\"")), "{line}");
    }

    // A pmap and a pipeline on the discovered agents.
    let dir = Scratch::new("lab");
    found_through_a_dns_server(&id, &found, &dir);
    announced_on_named_interfaces_only(&id, &agent);
    for (name, tree, check) in [
        (
            "pmap",
            "map(8, seq(square))",
            Box::new(|i: usize, data: &[f64]| {
                let want: Vec<f64> = (0..100).map(|j| ((100 * i + j) as f64).powi(2)).collect();
                assert_eq!(data, &want[..]);
            }) as Box<dyn Fn(usize, &[f64])>,
        ),
        (
            "pipeline",
            "pipe(seq(square), seq(scale(2)), seq(scale(-1)), seq(identity))",
            Box::new(|i: usize, data: &[f64]| {
                let want: Vec<f64> = (0..100)
                    .map(|j| -2.0 * ((100 * i + j) as f64).powi(2))
                    .collect();
                assert_eq!(data, &want[..]);
            }),
        ),
    ] {
        let job = dir.path(&format!("{name}.toml"));
        std::fs::write(
            &job,
            format!(
                "skeleton = \"{tree}\"\n[input]\ngenerate = \"range\"\nitems = 6\nlength = 100\n"
            ),
        )
        .unwrap();
        let results = dir.path(&format!("{name}.jsonl"));
        let (code, _, err) = in_lab(
            &id,
            &["run", &job, "--out", &results, "--discover-timeout", "3s"],
        );
        assert_eq!(code, Some(0), "{name}: {err}");
        assert!(err.contains("4 agents"), "{name} ran on: {err}");
        let text = std::fs::read_to_string(&results).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{name}: {text}");
        for line in lines {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let i = v["index"].as_u64().unwrap() as usize;
            let data: Vec<f64> = serde_json::from_value(v["data"].clone()).unwrap();
            check(i, &data);
        }
    }

    // Down: no namespace, link or agent process of this lab remains.
    drop(guard);
    assert!(!netns_list().contains(&prefix), "{}", netns_list());
    let links = std::process::Command::new("ip")
        .args(["-o", "link"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains(&prefix));
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(!ps.contains(&format!("--name lab{id}-h")), "{ps}");
    // Nor its bus and avahi-daemon (their files are in the lab's folder).
    assert!(!ps.contains(&format!("skelpi-lab-{id}/")), "{ps}");
    assert!(cpu_group(&id, 4).is_none(), "the cgroup is removed");
    let (code, out, _) = skelpi(&["lab", "down", "--id", &id]);
    assert_eq!(code, Some(0));
    assert!(out.contains("was not up"), "{out}");
}

#[test]
#[ignore = "needs root (network namespaces): scripts/test.sh runs it as root"]
fn skelpi_bench_roll_upgrades_lab_agents_while_a_farm_runs_and_compares_raw_tcp() {
    let id = (100 + std::process::id() % 50).to_string();
    let _ = skelpi(&["lab", "down", "--id", &id]);
    let dir = Scratch::new("lab-roll");
    let deploy = skelpi_wire::deploy_key::DeployKey::generate().unwrap();
    let key = dir.0.join("deploy.key");
    deploy.write(&key, true).unwrap();
    let public = dir.0.join("deploy.pub");
    deploy.public().write(&public).unwrap();
    let agent = agent_binary();
    let up = [
        "lab",
        "up",
        "--id",
        &id,
        "--hosts",
        "2",
        "--workers",
        "1",
        "--agent-binary",
    ];
    let (code, out, err) = skelpi(&[&up[..], &[agent.to_str().unwrap()]].concat());
    let guard = LabGuard(id.clone());
    assert_eq!(code, Some(0), "{out}{err}");
    // Agents started without a deploy key refuse the roll before anything
    // is sent.
    let bench = dir.path("bench");
    let roll = [
        "bench",
        "roll",
        "--json",
        "--out",
        &bench,
        "--before",
        "1s",
        "--roll-sizes",
        "1,2,3",
        "--deploy-key",
        key.to_str().unwrap(),
        "--binary",
        agent.to_str().unwrap(),
    ];
    let (code, _, err) = in_lab(&id, &roll);
    assert_ne!(code, Some(0));
    assert!(err.contains("deploy public key"), "{err}");
    drop(guard);

    let pubkey = ["--deploy-pubkey", public.to_str().unwrap()];
    let (code, out, err) = skelpi(&[&up[..], &[agent.to_str().unwrap()], &pubkey[..]].concat());
    let _guard = LabGuard(id.clone());
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, err) = in_lab(&id, &roll);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        err.contains("roll of 3 agents skipped: the pool has 2"),
        "{err}"
    );
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{out}");
    let size = std::fs::metadata(&agent).unwrap().len();
    for (row, n) in rows.iter().zip([1, 2]) {
        assert_eq!(row["agents"], n, "{row}");
        assert!(
            row["binary_bytes"].as_u64().unwrap() > size,
            "tagged: {row}"
        );
        for field in ["roll_s", "raw_copy_s", "restart_s", "before_tasks_per_s"] {
            assert!(row[field].as_f64().unwrap() > 0.0, "{field}: {row}");
        }
        // One agent at a time restarts: the other keeps the farm going.
        assert!(row["during_tasks_per_s"].as_f64().unwrap() > 0.0, "{row}");
    }
    assert!(std::path::Path::new(&bench).join("roll.csv").is_file());
}

/// Host `n`'s cgroup of lab `id`, if there is one (v2 or v1's cpu).
fn cpu_group(id: &str, n: usize) -> Option<std::path::PathBuf> {
    let name = format!("skelpi-lab{id}-h{n}");
    ["/sys/fs/cgroup", "/sys/fs/cgroup/cpu"]
        .iter()
        .map(|root| std::path::Path::new(root).join(&name))
        .find(|p| p.is_dir())
}

/// What `discover --json` finds in lab `id`'s master namespace (mDNS, 3 s).
fn discovered(id: &str) -> serde_json::Value {
    let (code, out, err) = in_lab(id, &["discover", "--json", "--timeout", "3s"]);
    assert_eq!(code, Some(0), "{err}");
    serde_json::from_str(&out).unwrap()
}

/// The agents' names in `discover --json`'s output, sorted.
fn names_of(found: &serde_json::Value) -> Vec<String> {
    let mut names: Vec<String> = found
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

/// Two subnets joined by a router (IP forwarding, no multicast routing):
/// mDNS finds only the master's subnet, though every agent is reachable
/// by address; with Debian's avahi-daemon reflecting mDNS on the router,
/// the master finds the agents of both subnets and a job runs on all four.
/// Nothing is left behind, the reflector included.
#[test]
#[ignore = "needs root (network namespaces): scripts/test.sh runs it as root"]
fn a_routed_lab_finds_agents_past_the_router_only_through_an_avahi_reflector() {
    let id = (150 + std::process::id() % 40).to_string();
    let _ = skelpi(&["lab", "down", "--id", &id]);
    let agent = agent_binary();
    let up = |reflector: bool| {
        let mut args = vec![
            "lab",
            "up",
            "--id",
            &id,
            "--hosts",
            "4",
            "--workers",
            "1",
            "--subnets",
            "2",
            "--agent-binary",
            agent.to_str().unwrap(),
        ];
        if reflector {
            args.push("--reflector");
        }
        let (code, out, err) = skelpi(&args);
        assert_eq!(code, Some(0), "{out}{err}");
        out
    };
    let (code, _, err) = skelpi(&["lab", "up", "--id", &id, "--hosts", "2", "--reflector"]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("--reflector needs --subnets 2 or more"),
        "{err}"
    );

    let out = up(false);
    let guard = LabGuard(id.clone());
    assert!(
        out.contains(&format!(
            "10.77.{id}.1, 10.78.{id}.2, 10.77.{id}.3, 10.78.{id}.4"
        )),
        "{out}"
    );
    assert!(out.contains("mDNS stays within each subnet"), "{out}");
    let subnet0: Vec<String> = [1, 3].iter().map(|n| format!("lab{id}-h{n}")).collect();
    assert_eq!(
        names_of(&discovered(&id)),
        subnet0,
        "mDNS stops at the router"
    );
    // Routed: every agent answers by address.
    let all = format!("10.77.{id}.1,10.78.{id}.2,10.77.{id}.3,10.78.{id}.4");
    let (code, out, err) = in_lab(&id, &["ping", "--agents", &all, "--count", "1"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.matches(&format!("lab{id}-h")).count(), 4, "{out}");
    drop(guard);

    let out = up(true);
    let guard = LabGuard(id.clone());
    assert!(
        out.contains("an avahi-daemon reflector carries mDNS across"),
        "{out}"
    );
    let want: Vec<String> = (1..=4).map(|n| format!("lab{id}-h{n}")).collect();
    assert_eq!(
        names_of(&discovered(&id)),
        want,
        "the reflector carries mDNS across"
    );
    let dir = Scratch::new("routed");
    let job = dir.path("farm.toml");
    std::fs::write(
        &job,
        "skeleton = \"farm(seq(square))\"\n[input]\ngenerate = \"range\"\nitems = 40\nlength = 10\n",
    )
    .unwrap();
    let results = dir.path("farm.jsonl");
    let (code, _, err) = in_lab(
        &id,
        &["run", &job, "--out", &results, "--discover-timeout", "3s"],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("4 agents found by mDNS"), "{err}");
    let text = std::fs::read_to_string(&results).unwrap();
    assert_eq!(text.lines().count(), 40, "{text}");
    drop(guard);
    assert!(
        !netns_list().contains(&format!("skl{id}-")),
        "{}",
        netns_list()
    );
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(
        !ps.contains(&format!("skelpi-lab-{id}/avahi-reflector")),
        "{ps}"
    );
}
