//! The master's side of a traced job: its own events, the agents' clock
//! probes and events, gathered for [`super::merge`].

use super::TraceError;
use super::clock::{ClockSample, MasterClock, PROBES};
use super::merge::Mark;
use crate::client::{AgentConn, ClientError, Reply, unexpected};
use skelpi_proto::skeleton::Kernel;
use skelpi_proto::trace::{Lane, TraceEvent, TraceKind};
use skelpi_proto::{JobId, Message, Ping};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::time::Instant;

/// Events one agent recorded for a job.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentEvents {
    /// Its worker threads.
    pub workers: u32,
    /// Events it had to overwrite before collection.
    pub dropped: u64,
    /// The events, on its trace clock.
    pub events: Vec<TraceEvent>,
}

/// One agent's part of a traced job.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentTrace {
    /// Its name.
    pub name: String,
    /// Its address.
    pub addr: String,
    /// Clock probes before the job.
    pub before: Vec<ClockSample>,
    /// Clock probes after it.
    pub after: Vec<ClockSample>,
    /// What it recorded.
    pub events: AgentEvents,
    /// Why its events are missing, if they are.
    pub missing: Option<String>,
}

/// A kernel label index of [`Recorder::frame`] for frames that carry none
/// (results and stream items: their kernel is known otherwise).
pub const NO_LABEL: u32 = u32::MAX;

/// Marks the master keeps for one job (a manager makes a few dozen).
pub const MASTER_MARKS: usize = 4096;

/// Events the master keeps for one job; older ones are dropped (and
/// counted) beyond that, as the agents' rings do (32 MiB at most).
pub const MASTER_EVENTS: usize = 1 << 19;

/// Records the master's events of a traced job (frames it sends and
/// receives), in a bounded buffer, with the kernel each task runs.
#[derive(Debug)]
pub struct Recorder {
    clock: MasterClock,
    events: RefCell<VecDeque<(TraceEvent, u32)>>,
    dropped: Cell<u64>,
    labels: RefCell<Vec<(Kernel, String)>>,
    marks: RefCell<Vec<Mark>>,
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Recorder {
        Recorder {
            clock: MasterClock::start(),
            events: RefCell::default(),
            dropped: Cell::new(0),
            labels: RefCell::default(),
            marks: RefCell::default(),
        }
    }

    /// Its clock.
    pub fn clock(&self) -> &MasterClock {
        &self.clock
    }

    /// The label index of `kernel` (a tree has few distinct kernels).
    pub fn label(&self, kernel: &Kernel) -> u32 {
        let mut labels = self.labels.borrow_mut();
        match labels.iter().position(|(k, _)| k == kernel) {
            Some(i) => i as u32,
            None => {
                labels.push((kernel.clone(), kernel.to_string()));
                labels.len() as u32 - 1
            }
        }
    }

    /// Records a frame sent or received (by `kind`) on connection `conn`
    /// (the link's number) from `started` until now; `label`: the task's
    /// kernel ([`Recorder::label`]) or [`NO_LABEL`].
    #[allow(clippy::too_many_arguments)]
    pub fn frame(
        &self,
        kind: TraceKind,
        conn: usize,
        id: u64,
        stage: u32,
        started: Instant,
        bytes: usize,
        label: u32,
    ) {
        let start_ns = self.clock.at(started);
        let event = TraceEvent {
            kind,
            lane: Lane::conn(conn as u32, kind.is_send()),
            id,
            stage,
            start_ns,
            dur_ns: (self.clock.now_ns() - start_ns).max(0) as u64,
            bytes: bytes as u64,
            wait_ns: 0,
        };
        let mut events = self.events.borrow_mut();
        if events.len() == MASTER_EVENTS {
            events.pop_front();
            self.dropped.set(self.dropped.get() + 1);
        }
        events.push_back((event, label));
    }

    /// Marks the job's timeline now with `text` (a decision of its
    /// manager). At most `MASTER_MARKS` are kept.
    pub fn mark(&self, text: String) {
        let mut marks = self.marks.borrow_mut();
        if marks.len() < MASTER_MARKS {
            let ts_us = self.clock.now_ns() as f64 / 1e3;
            marks.push(Mark { ts_us, text });
        }
    }

    /// Everything recorded, with the agents' parts: the job's trace before
    /// merging.
    pub fn finish(
        self,
        job: JobId,
        skeleton: String,
        stage_kernels: Vec<String>,
        agents: Vec<AgentTrace>,
    ) -> Collected {
        Collected {
            job,
            skeleton,
            master: self.events.into_inner().into(),
            master_dropped: self.dropped.get(),
            labels: self
                .labels
                .into_inner()
                .into_iter()
                .map(|(_, l)| l)
                .collect(),
            stage_kernels,
            agents,
            marks: self.marks.into_inner(),
        }
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

/// A traced job's raw material.
#[derive(Debug, Clone, PartialEq)]
pub struct Collected {
    /// The job.
    pub job: JobId,
    /// Its skeleton, as text.
    pub skeleton: String,
    /// The master's events, on its clock, with their label index.
    pub master: Vec<(TraceEvent, u32)>,
    /// The master's events dropped for room.
    pub master_dropped: u64,
    /// The kernels of tasks (text), by label index.
    pub labels: Vec<String>,
    /// The kernel (text) of every streamed stage, by position.
    pub stage_kernels: Vec<String>,
    /// The agents, in the order of the master's connections to them.
    pub agents: Vec<AgentTrace>,
    /// Marks on the master's timeline (its clock, microseconds).
    pub marks: Vec<Mark>,
}

/// Probes a connection's agent's clock [`PROBES`] times. `None`: the agent
/// does not trace (an older agent, which answered the probe with an
/// error); its connection stays usable.
pub async fn probe(
    conn: &mut AgentConn,
    clock: &MasterClock,
) -> Result<Option<Vec<ClockSample>>, TraceError> {
    let mut samples = Vec::with_capacity(PROBES);
    for _ in 0..PROBES {
        match clock_probe(conn, clock).await {
            Ok(Some(s)) => samples.push(s),
            Ok(None) => return Ok(None),
            Err(source) => {
                return Err(TraceError::Agent {
                    agent: conn.info().name.clone(),
                    source,
                });
            }
        }
    }
    Ok(Some(samples))
}

/// Reads the agent's trace clock once: the master's trace clock (`clock`)
/// when the probe left and when the reading came back, around the
/// agent's reading. `None`: the agent does not know the probe (an
/// older agent answers it with an error and serves on).
async fn clock_probe(
    conn: &mut AgentConn,
    clock: &MasterClock,
) -> Result<Option<ClockSample>, ClientError> {
    let (addr, nonce) = (conn.addr(), conn.next_nonce());
    let sent = Instant::now();
    conn.request(&Message::ClockProbe(Ping { nonce }), |got| {
        let back = Instant::now();
        match got {
            Message::ClockReading(r) if r.nonce == nonce => Ok(Reply::Done(Some(ClockSample {
                sent_ns: clock.at(sent),
                agent_ns: r.agent_ns,
                back_ns: clock.at(back),
            }))),
            Message::Error(_) => Ok(Reply::Done(None)),
            other => Err(unexpected(addr, other, "answering a clock probe")),
        }
    })
    .await
}

/// Collects what the agent recorded for a traced job: its events and
/// how many were overwritten before collection. An agent that sends
/// more than `max` events, or batches larger than the protocol's, is
/// refused (the connection is then broken).
async fn collect_events(
    conn: &mut AgentConn,
    job: JobId,
    max: usize,
) -> Result<AgentEvents, ClientError> {
    let addr = conn.addr();
    let ask = Message::TraceCollect(skelpi_proto::trace::TraceRequest { job });
    let mut got = AgentEvents::default();
    conn.request(&ask, |reply| match reply {
        Message::TraceBatch(b) if b.job == job => {
            let total = got.events.len() + b.events.len();
            if b.events.len() > skelpi_proto::trace::BATCH_EVENTS || total > max {
                return Err(ClientError::Protocol {
                    addr,
                    what: format!(
                        "sent {total} trace events in batches of up to {}; \
                         an agent holds at most {max}",
                        b.events.len()
                    ),
                });
            }
            got.workers = b.workers;
            got.dropped = got.dropped.saturating_add(b.dropped);
            got.events.extend(b.events);
            Ok(if b.last {
                Reply::Done(std::mem::take(&mut got))
            } else {
                Reply::More
            })
        }
        other => Err(unexpected(addr, other, "sending a trace")),
    })
    .await
}

/// Probes each agent's clock again and collects its events of `job`;
/// `before`: its probes before the job (`None`: it does not trace). An
/// agent that cannot be reached is left out, and its entry says why.
pub async fn gather(
    conns: impl IntoIterator<Item = &mut AgentConn>,
    before: Vec<Option<Vec<ClockSample>>>,
    clock: &MasterClock,
    job: JobId,
) -> Vec<AgentTrace> {
    let mut agents = Vec::new();
    for (conn, before) in conns.into_iter().zip(before) {
        let mut agent = AgentTrace {
            name: conn.info().name.clone(),
            addr: conn.addr().to_string(),
            before: Vec::new(),
            after: Vec::new(),
            events: AgentEvents::default(),
            missing: None,
        };
        let Some(before) = before else {
            agent.missing = Some("it does not record traces (an older skelpi-agent?)".into());
            agents.push(agent);
            continue;
        };
        agent.before = before;
        if conn.is_broken() {
            agent.missing = Some("its connection failed during the job".into());
            agents.push(agent);
            continue;
        }
        let max = skelpi_proto::trace::agent_capacity(conn.info().cores as usize);
        let collected = async {
            let after = probe(conn, clock).await?.unwrap_or_default();
            let events =
                collect_events(conn, job, max)
                    .await
                    .map_err(|source| TraceError::Agent {
                        agent: conn.info().name.clone(),
                        source,
                    })?;
            Ok::<_, TraceError>((after, events))
        };
        match collected.await {
            Ok((after, events)) => {
                agent.after = after;
                agent.events = events;
            }
            Err(e) => agent.missing = Some(format!("its trace could not be collected: {e}")),
        }
        agents.push(agent);
    }
    agents
}
