//! Traces as Chrome Trace Event JSON, the format Perfetto UI and
//! `chrome://tracing` open.
//!
//! Each node is a process (the master first) and each lane a thread
//! worker threads, and the receiving and sending side of each connection
//! (lanes hold events that never overlap, as complete events on one thread
//! must nest). Process and thread ids in the file are the node's and the
//! lane's number plus one: viewers treat pid and tid 0 specially. Frames and kernel calls are complete events (`"ph": "X"`,
//! microseconds); every message whose two ends were recorded is a flow
//! from its send to its receive (`"s"` inside the sending slice, `"f"` with
//! `"bp": "e"` inside the receiving one, integer ids, same name and
//! category, as Perfetto matches them). The trace's own description rides
//! in `otherData.skelpi`, which viewers ignore and
//! [`from_json`] reads back with the events' `args`.

use super::merge::{Event, Mark, Node, Trace, messages};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use skelpi_proto::trace::{Lane, TraceKind};
use std::collections::HashMap;

/// What `otherData.skelpi` holds: the trace without its events.
#[derive(Serialize, Deserialize)]
struct Meta {
    format: u32,
    job: String,
    skeleton: String,
    stages: Vec<String>,
    nodes: Vec<Node>,
    notes: Vec<String>,
    #[serde(default)]
    marks: Vec<Mark>,
}

/// This module's format version in `otherData.skelpi.format`.
const FORMAT: u32 = 1;

/// The category of a flow (name and category must match at both ends).
const FLOW_CAT: &str = "message";

/// The trace as Chrome Trace Event JSON.
pub fn to_json(trace: &Trace) -> String {
    let mut out: Vec<Value> = Vec::with_capacity(trace.events.len() * 3 + 16);
    let mut lanes: Vec<(u32, Lane)> = trace.events.iter().map(|e| (e.pid, e.lane)).collect();
    lanes.sort();
    lanes.dedup();
    let pairs = messages(&trace.events);
    // The node at the other end of each message event, and of each lane.
    let mut peer_of_event = HashMap::new();
    let mut peer_of_lane = HashMap::new();
    for &(s, r) in &pairs {
        let (se, re) = (&trace.events[s], &trace.events[r]);
        peer_of_event.insert(s, re.pid);
        peer_of_event.insert(r, se.pid);
        peer_of_lane.entry((se.pid, se.lane)).or_insert(re.pid);
        peer_of_lane.entry((re.pid, re.lane)).or_insert(se.pid);
    }
    let node_name = |pid: u32| {
        trace
            .nodes
            .iter()
            .find(|n| n.pid == pid)
            .map_or_else(|| format!("node {pid}"), |n| n.name.clone())
    };
    let meta = |name: &str, pid: u64, tid: u64, args: Value| json!({"ph": "M", "name": name, "pid": pid, "tid": tid, "args": args});
    for node in &trace.nodes {
        let name = if node.addr.is_empty() {
            node.name.clone()
        } else {
            format!("{} ({})", node.name, node.addr)
        };
        let pid = file_id(node.pid);
        out.push(meta("process_name", pid, pid, json!({"name": name})));
        let order = json!({"sort_index": node.pid});
        out.push(meta("process_sort_index", pid, pid, order));
    }
    for &(pid, lane) in &lanes {
        let peer = peer_of_lane.get(&(pid, lane)).map(|&p| node_name(p));
        let name = json!({"name": lane_name(lane, peer)});
        let (fpid, ftid) = (file_id(pid), file_id(lane.0));
        out.push(meta("thread_name", fpid, ftid, name));
        let order = json!({"sort_index": lane.0});
        out.push(meta("thread_sort_index", fpid, ftid, order));
    }
    for (i, e) in trace.events.iter().enumerate() {
        let mut args = json!({"kind": e.kind, "id": e.id});
        if let Some(stage) = e.stage {
            args["stage"] = json!(stage);
        }
        if e.kind == TraceKind::Kernel {
            args["wait_us"] = json!(e.wait_us);
        } else {
            args["bytes"] = json!(e.bytes);
        }
        if let Some(k) = &e.kernel {
            args["kernel"] = json!(k);
        }
        if let Some(&p) = peer_of_event.get(&i) {
            args["peer"] = json!(node_name(p));
        }
        out.push(json!({
            "ph": "X", "name": event_name(trace, e), "cat": category(e.kind),
            "ts": e.ts_us, "dur": e.dur_us, "pid": file_id(e.pid), "tid": file_id(e.lane.0),
            "args": args,
        }));
    }
    // Marks: instant events on the master's timeline, across the view.
    for m in &trace.marks {
        out.push(
            json!({"ph": "i", "s": "g", "name": m.text, "cat": "manager",
                        "ts": m.ts_us, "pid": file_id(0), "tid": file_id(0)}),
        );
    }
    for (n, (s, r)) in pairs.into_iter().enumerate() {
        let (s, r) = (&trace.events[s], &trace.events[r]);
        let name = flow_name(s.kind);
        out.push(
            json!({"ph": "s", "id": n + 1, "name": name, "cat": FLOW_CAT,
                        "ts": s.ts_us, "pid": file_id(s.pid), "tid": file_id(s.lane.0)}),
        );
        out.push(
            json!({"ph": "f", "bp": "e", "id": n + 1, "name": name, "cat": FLOW_CAT,
                        "ts": r.ts_us, "pid": file_id(r.pid), "tid": file_id(r.lane.0)}),
        );
    }
    let meta = Meta {
        format: FORMAT,
        job: trace.job.clone(),
        skeleton: trace.skeleton.clone(),
        stages: trace.stages.clone(),
        nodes: trace.nodes.clone(),
        notes: trace.notes.clone(),
        marks: trace.marks.clone(),
    };
    let doc = json!({
        "traceEvents": out,
        "displayTimeUnit": "ns",
        "otherData": {"skelpi": meta},
    });
    serde_json::to_string(&doc).expect("a trace serialises")
}

/// Reads a trace written by [`to_json`]; the error says what is missing.
pub fn from_json(text: &str) -> Result<Trace, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let meta = doc
        .pointer("/otherData/skelpi")
        .ok_or("no otherData.skelpi (was it written by skelpi?)")?;
    let meta: Meta =
        serde_json::from_value(meta.clone()).map_err(|e| format!("otherData.skelpi: {e}"))?;
    if meta.format != FORMAT {
        return Err(format!(
            "format {} (this skelpi reads format {FORMAT})",
            meta.format
        ));
    }
    let list = doc
        .get("traceEvents")
        .and_then(Value::as_array)
        .ok_or("no traceEvents array")?;
    let pids: std::collections::HashSet<u32> = meta.nodes.iter().map(|n| n.pid).collect();
    let mut events = Vec::new();
    for (i, v) in list.iter().enumerate() {
        if v.get("ph").and_then(Value::as_str) != Some("X") {
            continue;
        }
        let bad = |what: &str| format!("traceEvents[{i}]: {what}");
        let time = |key: &str| {
            v.get(key)
                .and_then(Value::as_f64)
                .filter(|t| t.is_finite())
                .ok_or_else(|| bad(&format!("{key} is not a finite number")))
        };
        let id = |key: &str| {
            v.get(key)
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n.checked_sub(1)?).ok())
                .ok_or_else(|| bad(&format!("{key} is not a whole number from 1 to 2^32")))
        };
        let args = v.get("args").ok_or_else(|| bad("no args"))?;
        let kind: TraceKind =
            serde_json::from_value(args.get("kind").cloned().unwrap_or(Value::Null))
                .map_err(|e| bad(&format!("args.kind: {e}")))?;
        let pid = id("pid")?;
        if !pids.contains(&pid) {
            return Err(bad(&format!(
                "pid {} is not a node of the trace",
                u64::from(pid) + 1
            )));
        }
        let dur = time("dur")?;
        if dur < 0.0 {
            return Err(bad("negative dur"));
        }
        let stage = match args.get("stage") {
            None => None,
            Some(s) => Some(
                s.as_u64()
                    .and_then(|s| u32::try_from(s).ok())
                    .ok_or_else(|| bad("args.stage is not a stage number"))?,
            ),
        };
        let wait_us = args.get("wait_us").and_then(Value::as_f64).unwrap_or(0.0);
        events.push(Event {
            pid,
            lane: Lane(id("tid")?),
            kind,
            id: args
                .get("id")
                .and_then(Value::as_u64)
                .ok_or_else(|| bad("no whole number args.id"))?,
            stage,
            ts_us: time("ts")?,
            dur_us: dur,
            bytes: args.get("bytes").and_then(Value::as_u64).unwrap_or(0),
            wait_us: if wait_us.is_finite() && wait_us >= 0.0 {
                wait_us
            } else {
                0.0
            },
            kernel: args
                .get("kernel")
                .and_then(Value::as_str)
                .map(str::to_owned),
        });
    }
    Ok(Trace {
        job: meta.job,
        skeleton: meta.skeleton,
        stages: meta.stages,
        nodes: meta.nodes,
        events,
        notes: meta.notes,
        marks: meta.marks,
    })
}

/// The id written for node or lane number `n`: viewers treat 0 specially.
fn file_id(n: u32) -> u64 {
    u64::from(n) + 1
}

fn category(kind: TraceKind) -> &'static str {
    match kind {
        TraceKind::Kernel => "kernel",
        k if k.is_send() => "send",
        _ => "recv",
    }
}

fn flow_name(send: TraceKind) -> &'static str {
    match send {
        TraceKind::TaskSend => "task",
        TraceKind::ResultSend => "result",
        _ => "item",
    }
}

fn event_name(trace: &Trace, e: &Event) -> String {
    let to = |stage: Option<u32>| match stage {
        Some(s) if s as usize >= trace.stages.len() => "the master".to_owned(),
        Some(s) => format!("stage {s}"),
        None => "?".to_owned(),
    };
    match e.kind {
        TraceKind::Kernel => match (&e.kernel, e.stage) {
            (Some(k), Some(s)) => format!("stage {s}: {k}"),
            (Some(k), None) => k.clone(),
            (None, _) => "kernel".into(),
        },
        TraceKind::TaskSend | TraceKind::TaskRecv => format!("task {}", e.id),
        TraceKind::ResultSend | TraceKind::ResultRecv => format!("result {}", e.id),
        TraceKind::ItemSend | TraceKind::ItemRecv => format!("item {} → {}", e.id, to(e.stage)),
        other => format!("{other:?} {}", e.id),
    }
}

/// A lane's name: its worker, or its connection's direction and the node
/// at the other end (`peer`, when a message on it was matched).
fn lane_name(lane: Lane, peer: Option<String>) -> String {
    if let Some(w) = lane.as_worker() {
        return format!("worker {w}");
    }
    let Some((conn, send)) = lane.as_conn() else {
        return format!("lane {}", lane.0);
    };
    match (peer, send) {
        (Some(p), true) => format!("connection {conn}: send to {p}"),
        (Some(p), false) => format!("connection {conn}: receive from {p}"),
        (None, true) => format!("connection {conn}: send"),
        (None, false) => format!("connection {conn}: receive"),
    }
}
