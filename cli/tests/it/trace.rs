//! Traces of real jobs on in-process agents (real TCP): the bottleneck named
//! from a trace, clocks that disagree put back in order, and trace.json
//! checked against the Trace Event Format as Perfetto reads it.

use crate::support::{Scratch, kernel_calls, skelpi, write_range_job};
use serde_json::Value;
use skelpi::cluster::Cluster;
use skelpi::trace::{self, Analysis, Trace};
use skelpi_agent::local::LocalOptions;
use skelpi_proto::Array;
use skelpi_proto::skeleton::Skeleton;
use skelpi_proto::trace::TraceKind;
use std::collections::HashMap;

/// A traced run of `tree` over `items` inputs of 4 floats; checks every
/// result against the sequential reference and returns the trace.
fn traced(cluster: &mut Cluster, tree: &str, items: usize) -> Trace {
    let tree: Skeleton = tree.parse().unwrap();
    let inputs: Vec<Array> = (0..items)
        .map(|i| Array::list((0..4).map(|j| (4 * i + j) as f64).collect()))
        .collect();
    let registry = skelpi_agent::kernels::Registry::builtin();
    let expected = skelpi::runtime::sequential::run(&registry, &tree, inputs.clone()).unwrap();
    cluster.set_tracing(true);
    let got = smol::block_on(cluster.run(&tree, inputs)).unwrap();
    assert_eq!(got, expected, "{tree}: results as the sequential reference");
    cluster.take_trace().expect("a traced job").unwrap()
}

#[test]
fn a_slow_middle_stage_is_named_the_bottleneck_with_the_highest_rho() {
    let scratch = Scratch::new("trace-bottleneck");
    let job = scratch.path("slow.toml");
    let tree = "pipe(seq(sleep_ms(1)), seq(sleep_ms(10)), seq(sleep_ms(1)))";
    write_range_job(&job, tree, 100, 4);
    let dir = scratch.path("out");
    let (code, _, err) = skelpi(&["run", "--local", "3", &job, "--trace", &dir, "--show", "0"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("bottleneck: stage 1: sleep_ms(10)"), "{err}");

    let analysis: Value =
        serde_json::from_str(&std::fs::read_to_string(scratch.path("out/analysis.json")).unwrap())
            .unwrap();
    assert_eq!(
        analysis["bottleneck"], "stage 1: sleep_ms(10)",
        "{analysis:#}"
    );
    let stages = analysis["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 3);
    let rho: Vec<f64> = stages.iter().map(|s| s["rho"].as_f64().unwrap()).collect();
    // 10 ms against 1 ms: whatever the load, the slow stage's rho is the
    // highest by far.
    assert!(rho[1] > 2.0 * rho[0] && rho[1] > 2.0 * rho[2], "{rho:?}");
    for s in stages {
        assert_eq!(s["items"], 100, "{s}");
    }
    for n in analysis["nodes"].as_array().unwrap() {
        let sum: f64 = ["compute_share", "comm_share", "idle_share"]
            .iter()
            .map(|k| n[k].as_f64().unwrap())
            .sum();
        assert!((sum - 1.0).abs() < 1e-6, "{n}: the shares split the span");
    }
    let text = std::fs::read_to_string(scratch.path("out/analysis.txt")).unwrap();
    assert!(text.contains("bottleneck: stage 1: sleep_ms(10)"), "{text}");

    // The saved trace gives the same analysis again.
    let trace_json = scratch.path("out/trace.json");
    let (code, out, err) = skelpi(&["trace", "summarize", &trace_json]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, text, "summarize prints analysis.txt again");
    let (code, out, err) = skelpi(&["trace", "summarize", "--json", &trace_json]);
    assert_eq!(code, Some(0), "{err}");
    let again: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(again, analysis);

    // Not a trace: a clear error, usage status.
    let (code, _, err) = skelpi(&["trace", "summarize", &job]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("slow.toml is not a skelpi trace"), "{err}");
    let (code, _, err) = skelpi(&["trace", "summarize", &scratch.path("none.json")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("none.json"), "{err}");
}

#[test]
fn agents_whose_clocks_disagree_are_merged_with_every_message_causal() {
    // Seconds apart, as boards' clocks can be; the master's is in between.
    let offsets = [3_000_000_000i64, -2_000_000_000, 0];
    let agents: Vec<LocalOptions> = offsets
        .iter()
        .map(|&clock_offset_ns| LocalOptions {
            clock_offset_ns,
            ..LocalOptions::default()
        })
        .collect();
    let mut cluster = smol::block_on(Cluster::local_with(&agents, &Default::default())).unwrap();
    // Routed tasks (master <-> agents) and a streamed pipeline (agent to
    // agent to agent).
    for (tree, items, messages) in [
        ("farm(seq(square))", 300, 600),
        ("pipe(seq(square), seq(scale(2)), seq(sum))", 300, 4 * 300),
    ] {
        let trace = traced(&mut cluster, tree, items);
        let pairs = trace::merge::messages(&trace.events);
        // A routed task copied (a scheduling hiccup on a loaded machine
        // can make one overdue) adds its own messages: at least every
        // task's and result's, then, and a few copies' at most (copies are
        // bounded by the pool's share; a streamed pipeline has none).
        let extra = pairs.len().saturating_sub(messages);
        let copies_allowed = if tree.starts_with("farm") {
            messages / 20
        } else {
            0
        };
        assert!(
            pairs.len() >= messages && extra <= copies_allowed,
            "{tree}: both ends of every message: {} pairs for {messages}",
            pairs.len()
        );
        for (s, r) in pairs {
            let (s, r) = (&trace.events[s], &trace.events[r]);
            assert!(
                r.ts_us >= s.ts_us,
                "{tree}: {:?} {} received at {} µs on node {} before sent at {} µs on node {}",
                s.kind,
                s.id,
                r.ts_us,
                r.pid,
                s.ts_us,
                s.pid
            );
        }
        // The NTP estimates did the work: they recovered the offsets to
        // well under a millisecond, and the correction for causality is
        // small.
        let clocks: Vec<_> = trace.nodes[1..]
            .iter()
            .map(|n| n.clock.expect("agents have a clock model"))
            .collect();
        let offset = |i: usize| clocks[i].offset_ns + clocks[i].correction_ns;
        for (i, j) in [(0, 1), (0, 2), (1, 2)] {
            let want = (offsets[i] - offsets[j]) as f64;
            // The agents' clocks started within a second of each other.
            let got = offset(i) - offset(j);
            assert!((got - want).abs() < 1e9, "{tree}: {got} vs {want}");
        }
        for c in &clocks {
            // Milliseconds at most, against offsets of seconds.
            assert!(c.correction_ns.abs() < 20e6, "{tree}: {c:?}");
            assert!(c.rtt_ns > 0 && c.rtt_ns < 50_000_000, "{tree}: {c:?}");
        }
        let analysis = Analysis::of(&trace);
        assert_eq!(analysis.acausal_messages, 0);
    }
}

#[test]
fn trace_json_follows_the_trace_event_format_and_reads_back() {
    let mut cluster = smol::block_on(Cluster::local(2, &Default::default())).unwrap();
    let scratch = Scratch::new("trace-format");
    for (name, tree) in [
        (
            "routed",
            "pipe(farm(seq(square)), map(2, seq(scale(0.5))), reduce(sum))",
        ),
        (
            "streamed",
            "pipe(seq(square), seq(scale(2)), seq(identity))",
        ),
    ] {
        let trace = traced(&mut cluster, tree, 200);
        let dir = scratch.0.join(name);
        let analysis = trace::write_dir(&trace, &dir).unwrap();
        let text = std::fs::read_to_string(dir.join("trace.json")).unwrap();
        let back = trace::read_file(&dir.join("trace.json")).unwrap();
        assert_eq!(back, trace, "{name}: trace.json holds the whole trace");
        assert_eq!(Analysis::of(&back), analysis);
        check_trace_event_format(name, &text);
        refuses_broken_traces(&dir, &text);
    }
}

/// Edited copies of a good trace.json are refused with the reason, never
/// read as something else.
fn refuses_broken_traces(dir: &std::path::Path, good: &str) {
    let doc: Value = serde_json::from_str(good).unwrap();
    let first_x = doc["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .position(|e| e["ph"] == "X")
        .unwrap();
    for (field, value, why) in [
        (
            "pid",
            serde_json::json!(0),
            "pid is not a whole number from 1",
        ),
        (
            "pid",
            serde_json::json!(1e300),
            "pid is not a whole number from 1",
        ),
        (
            "pid",
            serde_json::json!(77),
            "pid 77 is not a node of the trace",
        ),
        (
            "tid",
            serde_json::json!(-5),
            "tid is not a whole number from 1",
        ),
        ("dur", serde_json::json!(-1.0), "negative dur"),
        ("ts", serde_json::json!("soon"), "ts is not a finite number"),
    ] {
        let mut bad = doc.clone();
        bad["traceEvents"][first_x][field] = value;
        let path = dir.join("bad.json");
        std::fs::write(&path, bad.to_string()).unwrap();
        let err = trace::read_file(&path).unwrap_err().to_string();
        assert!(
            err.contains(why) && err.contains("bad.json"),
            "{field}: {err}"
        );
    }
}

/// The checks a Trace Event Format reader (Perfetto's JSON importer) relies
/// on: every event has `ph`, `pid`, `tid` and (but metadata) a numeric
/// `ts`; complete events have `dur` ≥ 0 and never partly overlap on one
/// thread (Perfetto drops such a slice); every flow start `s` has exactly
/// one finish `f` with the same id, name and category, `bp: "e"`, no
/// earlier, and each lies inside a complete event of its own thread (the
/// slice it binds to).
fn check_trace_event_format(name: &str, text: &str) {
    let doc: Value = serde_json::from_str(text).unwrap();
    let events = doc["traceEvents"].as_array().expect("a traceEvents array");
    let mut slices: HashMap<(u64, u64), Vec<(f64, f64)>> = HashMap::new();
    let mut starts: HashMap<u64, &Value> = HashMap::new();
    let mut finishes: HashMap<u64, &Value> = HashMap::new();
    let mut named_threads = 0;
    for e in events {
        let ph = e["ph"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no ph in {e}"));
        let pid = e["pid"]
            .as_u64()
            .unwrap_or_else(|| panic!("{name}: no pid in {e}"));
        let tid = e["tid"]
            .as_u64()
            .unwrap_or_else(|| panic!("{name}: no tid in {e}"));
        match ph {
            "M" => {
                assert!(
                    e["args"]["name"].is_string() || e["args"]["sort_index"].is_u64(),
                    "{e}"
                );
                named_threads += usize::from(e["name"] == "thread_name");
            }
            "X" => {
                let ts = e["ts"]
                    .as_f64()
                    .unwrap_or_else(|| panic!("{name}: no ts in {e}"));
                let dur = e["dur"]
                    .as_f64()
                    .unwrap_or_else(|| panic!("{name}: no dur in {e}"));
                assert!(dur >= 0.0 && ts.is_finite(), "{e}");
                assert!(e["name"].is_string() && e["cat"].is_string(), "{e}");
                slices.entry((pid, tid)).or_default().push((ts, ts + dur));
            }
            "s" | "f" => {
                assert!(e["ts"].is_number(), "{e}");
                let id = e["id"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{name}: no integer id {e}"));
                let map = if ph == "s" {
                    &mut starts
                } else {
                    &mut finishes
                };
                assert!(
                    map.insert(id, e).is_none(),
                    "{name}: flow id {id} twice as {ph}"
                );
            }
            other => panic!("{name}: unexpected ph {other}"),
        }
    }
    assert!(named_threads > 0, "{name}: threads are named");
    for (lane, list) in &mut slices {
        list.sort_by(|a, b| a.0.total_cmp(&b.0));
        for w in list.windows(2) {
            // On one lane, slices follow each other (back to back at most).
            assert!(
                w[1].0 >= w[0].1 - 1e-3,
                "{name}: {lane:?} slices {w:?} overlap"
            );
        }
    }
    assert!(!starts.is_empty(), "{name}: there are flows");
    assert_eq!(starts.len(), finishes.len(), "{name}: every flow finishes");
    let inside = |e: &Value| {
        let (pid, tid) = (e["pid"].as_u64().unwrap(), e["tid"].as_u64().unwrap());
        let ts = e["ts"].as_f64().unwrap();
        slices
            .get(&(pid, tid))
            .is_some_and(|l| l.iter().any(|&(a, b)| a <= ts && ts <= b))
    };
    for (id, s) in &starts {
        let f = finishes
            .get(id)
            .unwrap_or_else(|| panic!("{name}: flow {id} never finishes"));
        assert_eq!(
            (&s["name"], &s["cat"]),
            (&f["name"], &f["cat"]),
            "{name}: flow {id}"
        );
        assert_eq!(
            f["bp"], "e",
            "{name}: flow {id} binds to its enclosing slice"
        );
        assert!(
            f["ts"].as_f64() >= s["ts"].as_f64(),
            "{name}: flow {id} goes back in time"
        );
        assert!(
            inside(s) && inside(f),
            "{name}: flow {id} ends outside a slice"
        );
    }
    let kinds: Vec<TraceKind> = events
        .iter()
        .filter(|e| e["ph"] == "X")
        .map(|e| serde_json::from_value(e["args"]["kind"].clone()).unwrap())
        .collect();
    assert!(
        kinds.contains(&TraceKind::Kernel),
        "{name}: kernel calls are in"
    );
}

#[test]
fn a_streamed_pipeline_that_fails_leaves_its_trace_marked_with_the_failure() {
    // Stage 1's kernel fails on item 30 (whose value is 30).
    let kernels =
        skelpi_agent::kernels::Registry::builtin().with("not_30", |_: &[f64], x: Array| {
            if x.data[0] == 30.0 {
                return Err(skelpi_agent::kernels::KernelError("30 is refused".into()));
            }
            Ok(x)
        });
    let opts = LocalOptions {
        kernels: Some(kernels),
        ..LocalOptions::default()
    };
    let agents = [opts.clone(), opts];
    let mut cluster = smol::block_on(Cluster::local_with(&agents, &Default::default())).unwrap();
    let tree: Skeleton = "pipe(seq(identity), seq(not_30))".parse().unwrap();
    let inputs: Vec<Array> = (0..40).map(|i| Array::list(vec![f64::from(i)])).collect();
    cluster.set_tracing(true);
    let err = smol::block_on(cluster.run(&tree, inputs)).unwrap_err();
    assert!(err.to_string().contains("item 30"), "{err}");
    let trace = cluster
        .take_trace()
        .expect("a traced job")
        .expect("the trace of the failed run");
    let kernels = kernel_calls(&trace);
    assert!(kernels >= 30, "{kernels} kernel calls traced");
    let marks: Vec<&str> = trace.marks.iter().map(|m| m.text.as_str()).collect();
    assert!(
        marks
            .iter()
            .any(|m| m.contains("the job failed") && m.contains("item 30")),
        "{marks:?}"
    );
}

/// The most tasks the master had out at once on its agents, from a
/// trace's sends and results (only sends of more than `over` bytes, and
/// their results).
fn most_out(trace: &Trace, over: u64) -> usize {
    let large: std::collections::HashSet<u64> = trace
        .events
        .iter()
        .filter(|e| e.pid == 0 && e.kind == TraceKind::TaskSend && e.bytes > over)
        .map(|e| e.id)
        .collect();
    let mut steps: Vec<(f64, i64)> = trace
        .events
        .iter()
        .filter(|e| e.pid == 0 && large.contains(&e.id))
        .filter_map(|e| match e.kind {
            TraceKind::TaskSend => Some((e.ts_us, 1)),
            TraceKind::ResultRecv => Some((e.ts_us, -1)),
            _ => None,
        })
        .collect();
    // A result before a send at the same instant: never counted high.
    steps.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut out, mut most) = (0i64, 0i64);
    for (_, d) in steps {
        out += d;
        most = most.max(out);
    }
    most as usize
}

/// Tasks of microseconds get a deep window of credits (they travel many to
/// a write), up to the most an agent queues; tasks too large for an
/// agent's queue never have more than two per worker out, even in a job
/// whose small tasks deepened the window.
#[test]
fn short_small_tasks_get_deep_windows_and_large_inputs_keep_two_per_worker() {
    use skelpi_proto::{MAX_TASKS_PER_WORKER, SMALL_TASK_BYTES, TASKS_PER_WORKER};
    let mut cluster = smol::block_on(Cluster::local(1, &Default::default())).unwrap();
    let tree: Skeleton = "farm(seq(identity))".parse().unwrap();
    let large = SMALL_TASK_BYTES / 8 + 1;
    // 3,000 small items, then (in the same job) 60 large ones.
    let inputs: Vec<Array> = (0..3060)
        .map(|i| Array::list(vec![i as f64; if i < 3000 { 1 } else { large }]))
        .collect();
    cluster.set_tracing(true);
    let got = smol::block_on(cluster.run(&tree, inputs.clone())).unwrap();
    assert!(got == inputs, "every result once, in order");
    let trace = cluster.take_trace().expect("a traced job").unwrap();
    let small = most_out(&trace, 0);
    assert!(
        small > TASKS_PER_WORKER && small <= MAX_TASKS_PER_WORKER,
        "{small} tasks out at most on 1 worker"
    );
    let large = most_out(&trace, SMALL_TASK_BYTES as u64);
    assert!(
        large <= TASKS_PER_WORKER,
        "{large} large tasks out at most on 1 worker"
    );
}
