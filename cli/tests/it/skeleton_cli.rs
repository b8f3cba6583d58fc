//! `skelpi bench pmap|farm|pipeline` and `skelpi run JOB.toml`, as a user
//! runs them, on small embedded clusters.

use super::support::{Scratch, skelpi, write_range_job};

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn bench_pmap_reports_every_point_and_draws_the_speedup_plot() {
    let dir = Scratch::new("pmap");
    let (code, out, err) = skelpi(&[
        "bench",
        "pmap",
        "--local",
        "2",
        "--d",
        "20000",
        "--c",
        "2",
        "--chunks",
        "2,5",
        "--repeats",
        "1",
        "--json",
        "--out",
        &dir.path("out"),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let r = &json(&out)["pmap"];
    assert_eq!(r["d"], 20000);
    let rows = r["rows"].as_array().unwrap();
    let points: Vec<(u64, u64)> = rows
        .iter()
        .map(|p| (p["agents"].as_u64().unwrap(), p["chunks"].as_u64().unwrap()))
        .collect();
    assert_eq!(points, [(1, 2), (1, 5), (2, 2), (2, 5)]);
    for p in rows {
        for field in ["speedup", "threads_speedup", "vs_threads"] {
            assert!(p[field].as_f64().unwrap() > 0.0, "{field} in {p}");
        }
    }
    let csv = std::fs::read_to_string(dir.0.join("out/pmap.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 4, "{csv}");
    let svg = std::fs::read_to_string(dir.0.join("out/pmap-speedup.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("N = 5"), "{svg}");
}

#[test]
fn bench_farm_counts_its_tasks() {
    let dir = Scratch::new("farm");
    let (code, out, err) = skelpi(&[
        "bench",
        "farm",
        "--local",
        "2",
        "--tasks",
        "500",
        "--repeats",
        "1",
        "--out",
        &dir.path("out"),
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("farm tasks/s") && out.contains("500 tasks of identity"),
        "{out}"
    );
    assert!(!out.contains("traced"), "{out}");
    let csv = std::fs::read_to_string(dir.0.join("out/farm.csv")).unwrap();
    assert!(csv.starts_with("origin,agents,workers,tasks"), "{csv}");

    // Traced beside untraced, with 1 ms tasks: the cost and the trace.
    let (code, out, err) = skelpi(&[
        "bench",
        "farm",
        "--local",
        "2",
        "--tasks",
        "200",
        "--task-ms",
        "1",
        "--repeats",
        "1",
        "--out",
        &dir.path("out"),
        "--trace",
        &dir.path("trace"),
        "--watch-cost",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("200 tasks of sleep_ms(1)"), "{out}");
    assert!(
        out.contains("watched farm") && out.contains("watching costs"),
        "{out}"
    );
    assert!(
        out.contains("traced farm:") && out.contains("tracing costs"),
        "{out}"
    );
    assert!(err.contains("trace of the farm's last traced run"), "{err}");
    let analysis = std::fs::read_to_string(dir.0.join("trace/farm/analysis.json")).unwrap();
    let analysis: serde_json::Value = serde_json::from_str(&analysis).unwrap();
    assert_eq!(analysis["stages"][0]["stage"], "sleep_ms(1)");
    assert_eq!(analysis["stages"][0]["items"], 200);
    assert!(dir.0.join("trace/farm/trace.json").is_file());
}

#[test]
fn bench_pipeline_places_one_stage_per_agent_and_reports_rho() {
    let dir = Scratch::new("pipeline");
    let (code, out, err) = skelpi(&[
        "bench",
        "pipeline",
        "--local",
        "3",
        "--items",
        "30",
        "--size",
        "16",
        "--work",
        "1,2,1",
        "--work-size",
        "16",
        "--interval",
        "1ms",
        "--json",
        "--out",
        &dir.path("out"),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let r = &json(&out)["pipeline"];
    let stages = r["stages"].as_array().unwrap();
    let agents: Vec<&str> = stages
        .iter()
        .map(|s| s["agent"].as_str().unwrap())
        .collect();
    assert_eq!(agents, ["local-0", "local-1", "local-2"]);
    assert_eq!(stages[1]["kernel"], "seq(matmul_power(2, 16))");
    // Paced at 1 ms: items reach stage 0 about that far apart (a slow first
    // item lets the next ones catch up a little), slower than its service.
    assert!(
        stages[0]["ta_s"].as_f64().unwrap() >= 0.0006,
        "{}",
        stages[0]
    );
    for s in stages {
        let (ts, ta, rho) = (
            s["ts_s"].as_f64().unwrap(),
            s["ta_s"].as_f64().unwrap(),
            s["rho"].as_f64().unwrap(),
        );
        assert!(ts > 0.0 && ta > 0.0 && (rho - ts / ta).abs() < 1e-9, "{s}");
    }
    assert!(r["throughput"].as_f64().unwrap() > 0.0);
    let svg = std::fs::read_to_string(dir.0.join("out/pipeline-stages.svg")).unwrap();
    assert!(svg.contains("Ts (service)"), "{svg}");
    // Its axis names each stage's kernel and agent.
    assert!(
        svg.contains("1: seq(matmul_power(2, 16)) on local-1"),
        "{svg}"
    );
}

#[test]
fn run_a_job_file_writes_every_result_once() {
    let dir = Scratch::new("run");
    let job = dir.path("square.toml");
    std::fs::write(
        &job,
        "# squares of 0..40 in 8 arrays, through a pipeline of a farm and a map\n\
         skeleton = \"pipe(farm(seq(square), 3, unordered), map(2, seq(scale(0.5))))\"\n\
         [input]\ngenerate = \"range\"\nitems = 8\nlength = 5\n",
    )
    .unwrap();
    let results = dir.path("out.jsonl");
    let (code, _, err) = skelpi(&["run", &job, "--local", "2", "--out", &results]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("8 results"), "{err}");
    let mut seen = vec![false; 8];
    for line in std::fs::read_to_string(&results).unwrap().lines() {
        let v = json(line);
        let i = v["index"].as_u64().unwrap() as usize;
        assert!(!seen[i], "input {i} twice");
        seen[i] = true;
        let want: Vec<f64> = (0..5).map(|j| ((5 * i + j) as f64).powi(2) * 0.5).collect();
        let got: Vec<f64> = serde_json::from_value(v["data"].clone()).unwrap();
        assert_eq!(got, want);
    }
    assert!(seen.iter().all(|&s| s), "{seen:?}");
}

#[test]
fn run_reports_bad_job_files_and_failing_kernels() {
    let dir = Scratch::new("run-bad");
    let bad = dir.path("bad.toml");
    std::fs::write(
        &bad,
        "skeleton = \"farm(seq(square), 0)\"\n[input]\ngenerate = \"range\"\nlength = 1\n",
    )
    .unwrap();
    let (code, _, err) = skelpi(&["run", &bad, "--local", "1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("bad.toml") && err.contains("replica count"),
        "{err}"
    );

    let (code, _, err) = skelpi(&["run", &dir.path("missing.toml"), "--local", "1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("missing.toml"), "{err}");

    let failing = dir.path("failing.toml");
    std::fs::write(&failing, "skeleton = \"pipe(seq(square), farm(seq(fail)))\"\n[input]\ngenerate = \"range\"\nitems = 4\nlength = 2\n").unwrap();
    let (code, _, err) = skelpi(&["run", &failing, "--local", "2"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("task item ") && err.contains("(fail) failed on agent local-"),
        "{err}"
    );
}

#[test]
fn run_autonomic_prints_decisions_and_a_summary_and_refuses_what_it_cannot_manage() {
    let dir = Scratch::new("run-autonomic");
    let job = dir.path("slow-middle.toml");
    let tree = "pipe(seq(sleep_ms(2)), seq(sleep_ms(10)), seq(sleep_ms(2)))";
    write_range_job(&job, tree, 400, 3);
    let results = dir.path("out.jsonl");
    let (code, _, err) = skelpi(&[
        "run",
        &job,
        "--local",
        "4",
        "--autonomic",
        "--out",
        &results,
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("manager: contract as fast as the pool allows"),
        "{err}"
    );
    assert!(err.contains("bottleneck stage 2 (sleep_ms(10))"), "{err}");
    assert!(err.contains("manager: degrees 1,1,1 → "), "{err}");
    assert!(err.contains("400 results"), "{err}");
    let indices: Vec<u64> = std::fs::read_to_string(&results)
        .unwrap()
        .lines()
        .map(|l| json(l)["index"].as_u64().unwrap())
        .collect();
    assert_eq!(
        indices,
        (0..400).collect::<Vec<_>>(),
        "every result once, in order"
    );

    let (code, _, err) = skelpi(&["run", &job, "--local", "1", "--target-throughput", "0"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("0 is not a positive rate"), "{err}");

    let mapped = dir.path("map.toml");
    std::fs::write(
        &mapped,
        "skeleton = \"map(2, seq(square))\"\n[input]\ngenerate = \"range\"\nitems = 2\nlength = 2\n",
    )
    .unwrap();
    let (code, _, err) = skelpi(&["run", &mapped, "--local", "1", "--autonomic"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("a managed job is a pipeline of seq(k) and farm(seq(k)) stages"),
        "{err}"
    );
}

#[test]
fn ctrl_c_stops_run_saying_how_far_it_got_and_keeps_those_results() {
    use std::io::{BufRead, BufReader};
    let dir = Scratch::new("run-interrupted");
    let job = dir.path("slow.toml");
    write_range_job(&job, "farm(seq(sleep_ms(1)))", 100_000, 1);
    let out = dir.path("out.jsonl");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_skelpi"))
        .args(["run", &job, "--local", "2", "--out", &out])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // Once results reach the file (its buffer filled once), stop it as a
    // terminal's Ctrl-C would.
    let running = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.starts_with("running "));
    assert!(running.is_some(), "the job never started");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::metadata(&out).map_or(0, |m| m.len()) == 0 {
        assert!(std::time::Instant::now() < deadline, "no result written");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let sent = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest:?}");
    let said = rest
        .iter()
        .find(|l| l.contains("interrupted after"))
        .unwrap_or_else(|| panic!("{rest:?}"));
    let done: usize = said
        .split("interrupted after ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    assert!(said.contains("of 100000 results"), "{said}");
    assert!(said.contains(&out), "{said}");
    let kept = std::fs::read_to_string(&out).unwrap().lines().count();
    assert_eq!(kept, done, "{said}");
    assert!(done > 0, "{said}");
}
