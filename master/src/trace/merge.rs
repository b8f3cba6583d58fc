//! A job's events from every node on the master's time base.

use super::clock::{self, ClockModel};
use super::collect::{Collected, NO_LABEL};
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
    /// Moments of the job the master marked (its manager's decisions),
    /// master time, in order.
    #[serde(default)]
    pub marks: Vec<Mark>,
}

/// A moment of a job, marked by the master.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mark {
    /// When, microseconds, master time.
    pub ts_us: f64,
    /// What happened.
    pub text: String,
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

/// How much later than its send a receive must be after correction, ns.
const CAUSAL_MARGIN_NS: f64 = 1.0;

/// Identifies a message: its class (task, result, item), id and stage.
pub type MessageKey = (u8, u64, Option<u32>);

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
    pub fn message_key(&self) -> Option<MessageKey> {
        let class = match self.kind {
            TraceKind::TaskSend | TraceKind::TaskRecv => 0,
            TraceKind::ResultSend | TraceKind::ResultRecv => 1,
            TraceKind::ItemSend | TraceKind::ItemRecv => 2,
            _ => return None,
        };
        Some((class, self.id, self.stage))
    }
}

/// Pairs of (send, receive) event indices of `events`, one per message
/// whose two ends were both recorded once. A message key seen more than
/// once at either end (a misbehaving agent) pairs nothing.
pub fn messages(events: &[Event]) -> Vec<(usize, usize)> {
    // Per message key, the indices of its sends and of its receives.
    type Ends = (Vec<usize>, Vec<usize>);
    let mut ends: HashMap<MessageKey, Ends> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        if let Some(key) = e.message_key() {
            let slot = ends.entry(key).or_default();
            if e.kind.is_send() {
                slot.0.push(i);
            } else {
                slot.1.push(i);
            }
        }
    }
    let mut pairs: Vec<(usize, usize)> = ends
        .into_values()
        .filter_map(|(s, r)| match (s.as_slice(), r.as_slice()) {
            ([s], [r]) => Some((*s, *r)),
            _ => None,
        })
        .collect();
    pairs.sort_unstable();
    pairs
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
        dropped: c.master_dropped,
        clock: None,
    }];
    if c.master_dropped > 0 {
        notes.push(format!(
            "master: {} events were dropped for room; its part of the trace misses the \
             job's start",
            c.master_dropped
        ));
    }
    // Task labels come from the master, which sent the tasks.
    let label_of = |l: u32| c.labels.get(l as usize).cloned();
    let mut task_label: HashMap<u64, u32> = HashMap::new();
    for (e, l) in &c.master {
        if e.kind == TraceKind::TaskSend && *l != NO_LABEL {
            task_label.insert(e.id, *l);
        }
    }
    let kernel = |e: &TraceEvent| -> Option<String> {
        if e.stage != NO_STAGE {
            // An item goes to `stage`; the kernel that made it is before.
            let stage = match e.kind {
                TraceKind::ItemSend | TraceKind::ItemRecv => e.stage.checked_sub(1)?,
                _ => e.stage,
            };
            c.stage_kernels.get(stage as usize).cloned()
        } else {
            label_of(*task_label.get(&e.id)?)
        }
    };
    let mut events: Vec<Event> = c
        .master
        .iter()
        .map(|(e, _)| event(0, e, kernel(e), |t| t as f64))
        .collect();
    for (i, a) in c.agents.iter().enumerate() {
        let pid = i as u32 + 1;
        let model = match &a.missing {
            Some(why) => {
                notes.push(format!("{}: no events: {why}", a.name));
                None
            }
            None => {
                let m = ClockModel::estimate(&a.before, &a.after);
                if m.is_none() {
                    notes.push(format!("{}: no clock probe answered; no events", a.name));
                }
                m
            }
        };
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
                    .map(|e| event(pid, e, kernel(e), |t| m.to_master(t))),
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
            // A nanosecond of margin, so that rounding after the
            // correction cannot put a receive a hair before its send.
            received: events[r].ts_us * 1e3 - CAUSAL_MARGIN_NS,
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
        marks: c.marks.clone(),
    }
}

fn event(
    pid: u32,
    e: &TraceEvent,
    kernel: Option<String>,
    to_master: impl Fn(i64) -> f64,
) -> Event {
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
        kernel,
    }
}
