//! The `skelpi` binary, driven as a user would.

use super::support::{Scratch, skelpi, write_range_job};

#[test]
fn bench_rtt_on_a_local_cluster_prints_the_table() {
    let (code, out, err) = skelpi(&[
        "bench",
        "rtt",
        "--local",
        "2",
        "--lists",
        "1000",
        "--matrices",
        "50",
        "--repeats",
        "2",
        "--pings",
        "20",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("embedded local cluster of 2 agents"), "{err}");
    for needle in [
        "local-0", "local-1", "ping", "list", "matrix", "wire out", "vs raw",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in\n{out}");
    }
}

#[test]
fn a_million_floats_cost_eight_million_wire_bytes_each_way() {
    let (code, out, err) = skelpi(&[
        "bench",
        "rtt",
        "--local",
        "1",
        "--lists",
        "1000000",
        "--matrices",
        "",
        "--repeats",
        "1",
        "--pings",
        "0",
        "--no-baseline",
        "--json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let row = &report["rtt"]["rows"][0];
    assert_eq!(row["data"], "list");
    assert_eq!(row["payload_bytes"], 8_000_000);
    for dir in ["wire_sent", "wire_received"] {
        let wire = row[dir].as_f64().unwrap();
        let excess = wire / 8_000_000.0 - 1.0;
        assert!((0.0..0.01).contains(&excess), "{dir} = {wire} bytes");
    }
}

#[test]
fn csv_output_has_one_row_per_measurement() {
    let dir = std::env::temp_dir().join(format!("skelpi-csv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("rtt.csv");
    let (code, _, err) = skelpi(&[
        "bench",
        "rtt",
        "--local",
        "1",
        "--lists",
        "10,20",
        "--matrices",
        "3",
        "--repeats",
        "1",
        "--pings",
        "5",
        "--csv",
        csv.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<_> = text.lines().collect();
    assert!(
        lines[0].starts_with("agent,data,size,payload_bytes"),
        "{}",
        lines[0]
    );
    assert_eq!(lines.len(), 1 + 4, "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_key_file_is_named_with_exit_code_two() {
    let (code, _, err) = skelpi(&[
        "ping",
        "--agents",
        "127.0.0.1:9",
        "--key-file",
        "/nonexistent/skelpi.key",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("/nonexistent/skelpi.key"), "{err}");
}

#[test]
fn keygen_writes_a_0600_key_and_refuses_to_overwrite() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("skelpi-keygen-{}", std::process::id()));
    let path = dir.join("sub").join("cluster.key");
    let (code, out, err) = skelpi(&["keygen", "--out", path.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(path.to_str().unwrap()));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let first = std::fs::read_to_string(&path).unwrap();
    assert_eq!(first.trim().len(), 64);
    let (code, _, err) = skelpi(&["keygen", "--out", path.to_str().unwrap()]);
    assert_ne!(code, Some(0));
    assert!(err.contains("exists") || err.contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), first);
    let (code, _, err) = skelpi(&["keygen", "--out", path.to_str().unwrap(), "--force"]);
    assert_eq!(code, Some(0), "{err}");
    assert_ne!(std::fs::read_to_string(&path).unwrap(), first);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_cli_counts_agents_in_english_refuses_no_agents_and_completes_shells() {
    // One agent is "1 agent".
    let (code, _, err) = skelpi(&["ping", "--local", "1", "--count", "2"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("embedded local cluster of 1 agent\n"), "{err}");
    // No agents at all is a usage error, not a run on one.
    let (code, out, err) = skelpi(&["ping", "--local", "0"]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("--local") && err.contains("1 to 256"), "{err}");
    // Completion scripts for the shells clap_complete knows.
    for (shell, needle) in [
        ("bash", "_skelpi()"),
        ("zsh", "#compdef skelpi"),
        ("fish", "complete -c skelpi"),
    ] {
        let (code, out, err) = skelpi(&["completions", shell]);
        assert_eq!(code, Some(0), "{shell}: {err}");
        assert!(
            out.contains(needle) && out.contains("lab"),
            "{shell}: {out}"
        );
    }
    let (code, _, err) = skelpi(&["completions", "tcsh"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("possible values"), "{err}");
}

#[test]
fn ping_and_run_speak_json_and_skip_unreachable_agents_when_asked() {
    let dir = Scratch::new("json-skip");
    let key = dir.path("cluster.key");
    skelpi_wire::key::ClusterKey::generate()
        .unwrap()
        .write(std::path::Path::new(&key), true)
        .unwrap();
    let agent = crate::agents::start_agent(std::path::Path::new(&key), "answers", &["--no-mdns"]);
    // Port 1 on loopback: nothing listens.
    let agents = format!("{},127.0.0.1:1", agent.addr);
    let base = ["--agents", agents.as_str(), "--key-file", key.as_str()];
    let (code, _, err) = skelpi(&[&["ping", "--count", "2"][..], &base].concat());
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("127.0.0.1:1"), "{err}");
    let skip = [
        &["ping", "--count", "3", "--json", "--skip-unreachable"][..],
        &base,
    ]
    .concat();
    let (code, out, err) = skelpi(&skip);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("1 skipped") && err.contains("127.0.0.1:1"),
        "{err}"
    );
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{out}");
    assert_eq!(rows[0]["agent"], "answers");
    assert_eq!(rows[0]["pings"], 3);
    assert!(rows[0]["min_us"].as_f64().unwrap() <= rows[0]["max_us"].as_f64().unwrap());

    let job = dir.path("job.toml");
    write_range_job(&job, "farm(seq(square))", 7, 1);
    let run = [
        &[
            "run",
            job.as_str(),
            "--json",
            "--skip-unreachable",
            "--show",
            "2",
        ][..],
        &base,
    ];
    let (code, out, err) = skelpi(&run.concat());
    assert_eq!(code, Some(0), "{err}");
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["results"], 7, "{out}");
    assert_eq!(summary["execution"], "routed", "{out}");
    assert_eq!(summary["shown"][1]["data"][0], 1.0, "{out}");
}

#[test]
fn health_reports_each_agent_and_shows_what_the_board_lacks_as_absent() {
    let (code, out, err) = skelpi(&["health", "--local", "2", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{out}");
    for r in rows {
        assert_eq!(r["version"], env!("CARGO_PKG_VERSION"));
        assert!(r["workers"].as_u64().unwrap() >= 1, "{r}");
        assert!(r["sessions"].as_u64().unwrap() >= 1, "{r}");
        assert!(r["memory_total"].as_u64().unwrap() > 64 << 20, "{r}");
        // Read from this machine; a figure it lacks is null, not 0.
        for key in ["cpu_temp_c", "model"] {
            assert!(r[key].is_null() || r[key] != 0, "{key}: {r}");
        }
    }
    let (code, out, err) = skelpi(&["health", "--local", "1"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("name ") && out.contains("local-0"), "{out}");
}

#[test]
fn the_embedded_agents_log_lines_show_only_with_verbose() {
    let dir = Scratch::new("verbose");
    let job = dir.path("job.toml");
    write_range_job(&job, "farm(seq(square))", 1, 3);
    let (code, _, quiet) = skelpi(&["run", &job, "--local", "1"]);
    assert_eq!(code, Some(0), "{quiet}");
    assert!(!quiet.contains("skelpi_agent"), "{quiet}");
    assert!(quiet.contains("1 result in"), "{quiet}");
    let (code, _, said) = skelpi(&["run", &job, "--local", "1", "-v"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("skelpi_agent"), "{said}");
}

#[test]
fn heartbeat_is_asked_of_the_pool_within_what_agents_grant() {
    let (code, out, err) = skelpi(&["ping", "--local", "1", "--heartbeat", "2s"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("local-0"), "{out}");
    let (code, _, err) = skelpi(&["ping", "--local", "1", "--heartbeat", "10ms"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("\"10ms\": give a heartbeat from 100ms to 60s"),
        "{err}"
    );
    // Zero is named as given, not as a duration of "0ns".
    let (code, _, err) = skelpi(&["ping", "--local", "1", "--heartbeat", "0"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("\"0\": give a heartbeat") && !err.contains("0ns"),
        "{err}"
    );
}

/// A named pool: the pool file's agents and key form the pool of `ping`;
/// `discover --pool` says where each agent came from; a typo in the file
/// is named with its line, an unknown pool with the pools there are (exit
/// code 2), and a pool whose one agent does not answer says so.
#[test]
fn a_named_pool_from_the_pool_file_forms_the_pool_and_errors_name_the_line() {
    let dir = Scratch::new("pools");
    let key = dir.path("cluster.key");
    skelpi_wire::key::ClusterKey::generate()
        .unwrap()
        .write(std::path::Path::new(&key), true)
        .unwrap();
    let agent = crate::agents::start_agent(std::path::Path::new(&key), "pooled", &["--no-mdns"]);
    let file = dir.path("pools.toml");
    std::fs::write(
        &file,
        format!(
            "[lab]\nagents = [\"{}\"]\nkey-file = \"{key}\"\n\n[gone]\nagents = [\"127.0.0.1:1\"]\nkey-file = \"{key}\"\n",
            agent.addr
        ),
    )
    .unwrap();
    let (code, out, err) = skelpi(&["ping", "--pool", "lab", "--pools-file", &file, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("1 agent found by agents"), "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows[0]["agent"], "pooled", "{out}");
    // The same agent at two addresses (IPv4, and IPv4-mapped IPv6): used
    // once, said so.
    let twice = dir.path("twice.toml");
    let port = agent.addr.port();
    std::fs::write(
        &twice,
        format!("[lab]\nagents = [\"127.0.0.1:{port}\", \"[::ffff:127.0.0.1]:{port}\"]\nkey-file = \"{key}\"\n"),
    )
    .unwrap();
    let (code, out, err) = skelpi(&["ping", "--pool", "lab", "--pools-file", &twice, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("using it once"), "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1, "{out}");
    let (code, out, err) = skelpi(&["discover", "--pool", "lab", "--pools-file", &file, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("\"sources\": [\n      \"agents\"\n    ]"),
        "{out}"
    );
    // Unknown pool, a typo, a pool that cannot be reached.
    let (code, _, err) = skelpi(&["ping", "--pool", "office", "--pools-file", &file]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("has no pool named \"office\" (it has: gone, lab)"),
        "{err}"
    );
    let typo = dir.path("typo.toml");
    std::fs::write(&typo, "[lab]\nagents = [\"pi1\"]\ndicsover = [\"mdns\"]\n").unwrap();
    let (code, _, err) = skelpi(&["ping", "--pool", "lab", "--pools-file", &typo]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("line 3, column 1: unknown field `dicsover`"),
        "{err}"
    );
    let (code, _, err) = skelpi(&["ping", "--pool", "gone", "--pools-file", &file]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("127.0.0.1:1"), "{err}");
    // health shows a pool's agent that cannot be reached as a down row.
    let mixed = dir.path("mixed.toml");
    std::fs::write(
        &mixed,
        format!(
            "[lab]\nagents = [\"{}\", \"127.0.0.1:1\"]\nkey-file = \"{key}\"\n",
            agent.addr
        ),
    )
    .unwrap();
    let (code, out, err) = skelpi(&["health", "--pool", "lab", "--pools-file", &mixed, "--json"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("1 of 2 boards did not answer"), "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{out}");
    assert_eq!(rows[1]["address"], "127.0.0.1:1", "{out}");
    assert_eq!(rows[1]["up"], false, "{out}");
    // A pool whose only source fails: discover says so and exits 1
    // (found nobody would be 0). A UDP port just freed is closed.
    let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let failing = dir.path("failing.toml");
    std::fs::write(
        &failing,
        format!("[lab]\ndiscover = [\"dns-sd:lab.test\"]\ndns-server = \"{closed_addr}\"\n"),
    )
    .unwrap();
    let (code, out, err) = skelpi(&["discover", "--pool", "lab", "--pools-file", &failing]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains(&format!("nothing answers DNS at {closed_addr}")),
        "{err}"
    );
    assert!(err.contains("no agents found: a source failed"), "{err}");
    assert!(!out.contains("no agents found within"), "{out}");
    // An agent's address written wrong is the file's error, with its line.
    let wrong = dir.path("wrong.toml");
    std::fs::write(
        &wrong,
        "[lab]\nagents = [\n  \"pi1:7871\",\n  \"pi2:78x1\",\n]\n",
    )
    .unwrap();
    let (code, _, err) = skelpi(&["ping", "--pool", "lab", "--pools-file", &wrong]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("pool \"lab\": line 4: agent \"pi2:78x1\" is not host[:port]"),
        "{err}"
    );
    drop(agent);
}
