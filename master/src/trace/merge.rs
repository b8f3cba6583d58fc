//! A job's events from every node on the master's time base.

use super::clock::{self, ClockModel};
use super::collect::Collected;
use serde::{Deserialize, Serialize};
use skelpi_proto::trace::{Lane, NO_STAGE, TraceEvent, TraceKind};
use std::collections::HashMap;

/// A merged trace: what [`super::chrome`] writes and reads, and what
/// [`super::analysis`] reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    /// The job id.
    pub job: String,
    /// The skeleton, as text.
    pub skeleton: String,
    /// The kernels of a streamed pipeline's stages (empty otherwise).
    pub stages: Vec<String>,
    /// The master (first) and the agents.
    pub nodes: Vec<Node>,
    /// Every event, master time, sorted by start.
    pub events: Vec<Event>,
    /// What a reader should know (lost events, clock corrections).
    pub notes: Vec<String>,
}

/// A node of the trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Its process id in the trace (0: the master).
    pub pid: u32,
    /// Its name.
    pub name: String,
    /// Its address (empty for the master).
    pub addr: String,
    /// Worker threads (0 for the master).
    pub workers: u32,
    /// Events it lost before collection.
    pub dropped: u64,
    /// How its clock was mapped (`None` for the master).
    pub clock: Option<ClockModel>,
}

/// One event on the master's time base.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The node.
    pub pid: u32,
    /// Where on it.
    pub lane: Lane,
    /// What happened.
    pub kind: TraceKind,
    /// Task id or item index.
    pub id: u64,
    /// Streamed stage (items: the stage they go to).
    pub stage: Option<u32>,
    /// Start, microseconds since the trace began.
    pub ts_us: f64,
    /// Duration, microseconds.
    pub dur_us: f64,
    /// Frame bytes (0 for kernel calls).
    pub bytes: u64,
    /// Kernel calls: the input's wait before the call, microseconds.
    pub wait_us: f64,
    /// The kernel it ran or carried data of, as text.
    pub kernel: Option<String>,
}

impl Event {
    /// End, microseconds.
    pub fn end_us(&self) -> f64 {
        self.ts_us + self.dur_us
    }

    /// The message this event is one end of: its class, id and stage
    /// (`None` for kernel calls).
    pub fn message_key(&self) -> Option<(u8, u64, Option<u32>)> {
        let class = match self.kind {
            TraceKind::TaskSend | TraceKind::TaskRecv => 0,
            TraceKind::ResultSend | TraceKind::ResultRecv => 1,
            TraceKind::ItemSend | TraceKind::ItemRecv => 2,
            TraceKind::Kernel => return None,
        };
        Some((class, self.id, self.stage))
    }
}

/// Pairs of (send, receive) event indices of `events`, one per message
/// whose two ends were both recorded.
pub fn messages(events: &[Event]) -> Vec<(usize, usize)> {
    let mut sends = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        if e.kind.is_send()
            && let Some(key) = e.message_key()
        {
            sends.entry(key).or_insert(i);
        }
    }
    events
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind.is_recv())
        .filter_map(|(j, e)| Some((*sends.get(&e.message_key()?)?, j)))
        .collect()
}

/// Merges a traced job's events onto the master's time base: each agent's
/// clock by its probes, then corrected so that every message is received
/// no earlier than sent.
pub fn merge(c: &Collected) -> Trace {
    let mut notes = Vec::new();
    let mut nodes = vec![Node {
        pid: 0,
        name: "master".into(),
        addr: String::new(),
        workers: 0,
        dropped: 0,
        clock: None,
    }];
    let mut events: Vec<Event> = c
        .master
        .iter()
        .map(|e| event(c, 0, e, |t| t as f64))
        .collect();
    for (i, a) in c.agents.iter().enumerate() {
        let pid = i as u32 + 1;
        let model = ClockModel::estimate(&a.before, &a.after);
        if model.is_none() {
            notes.push(format!(
                "{}: its clock could not be read (its connection failed during the job?); \
                 its events are left out",
                a.name
            ));
        }
        if a.events.dropped > 0 {
            notes.push(format!(
                "{}: {} events were overwritten before collection (its rings were full); \
                 its part of the trace misses the job's start",
                a.name, a.events.dropped
            ));
        }
        if let Some(m) = model {
            events.extend(
                a.events
                    .events
                    .iter()
                    .map(|e| event(c, pid, e, |t| m.to_master(t))),
            );
        }
        nodes.push(Node {
            pid,
            name: a.name.clone(),
            addr: a.addr.clone(),
            workers: a.events.workers,
            dropped: a.events.dropped,
            clock: model,
        });
    }
    let msgs: Vec<clock::Message> = messages(&events)
        .into_iter()
        .map(|(s, r)| clock::Message {
            from: events[s].pid as usize,
            to: events[r].pid as usize,
            sent: events[s].ts_us * 1e3,
            received: events[r].ts_us * 1e3,
        })
        .collect();
    match clock::correct(nodes.len(), &msgs) {
        Some(corrections) => {
            for e in &mut events {
                e.ts_us -= corrections[e.pid as usize] / 1e3;
            }
            for (node, c) in nodes.iter_mut().zip(&corrections) {
                if let Some(m) = node.clock.as_mut() {
                    m.correction_ns = *c;
                    if c.abs() > m.rtt_ns as f64 / 2.0 + 1.0 {
                        notes.push(format!(
                            "{}: clock estimate moved by {:.1} µs, more than half its probe's \
                             round trip ({:.1} µs), to keep messages causal",
                            node.name,
                            c / 1e3,
                            m.rtt_ns as f64 / 2e3
                        ));
                    }
                }
            }
        }
        None => notes.push(
            "the recorded messages contradict every clock correction (clocks drifting \
             unevenly?): the NTP estimates are used as they are, and some messages may \
             appear received before they were sent"
                .into(),
        ),
    }
    events.sort_by(|a, b| a.ts_us.total_cmp(&b.ts_us));
    Trace {
        job: c.job.to_string(),
        skeleton: c.skeleton.clone(),
        stages: c.stage_kernels.clone(),
        nodes,
        events,
        notes,
    }
}

fn event(c: &Collected, pid: u32, e: &TraceEvent, to_master: impl Fn(i64) -> f64) -> Event {
    let start = to_master(e.start_ns);
    let end = to_master(
        e.start_ns
            .saturating_add(e.dur_ns.min(i64::MAX as u64) as i64),
    );
    Event {
        pid,
        lane: e.lane,
        kind: e.kind,
        id: e.id,
        stage: (e.stage != NO_STAGE).then_some(e.stage),
        ts_us: start / 1e3,
        dur_us: ((end - start) / 1e3).max(0.0),
        bytes: e.bytes,
        wait_us: e.wait_ns as f64 / 1e3,
        kernel: c.label(e).map(str::to_owned),
    }
}
