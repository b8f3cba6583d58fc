//! The master's side of a traced job: its own events, the agents' clock
//! probes and events, gathered for [`super::merge`].

use super::TraceError;
use super::clock::{ClockSample, MasterClock, PROBES};
use crate::client::AgentConn;
use skelpi_proto::JobId;
use skelpi_proto::trace::{Lane, NO_STAGE, TraceEvent, TraceKind};
use std::cell::RefCell;
use std::collections::HashMap;
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
}

/// Records the master's events of a traced job (frames it sends and
/// receives) and what the agents' events need to be labelled.
#[derive(Debug)]
pub struct Recorder {
    clock: MasterClock,
    events: RefCell<Vec<TraceEvent>>,
    task_kernels: RefCell<HashMap<u64, String>>,
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Recorder {
        Recorder {
            clock: MasterClock::start(),
            events: RefCell::default(),
            task_kernels: RefCell::default(),
        }
    }

    /// Its clock.
    pub fn clock(&self) -> &MasterClock {
        &self.clock
    }

    /// Notes that task `id` runs `kernel` (its text form).
    pub fn task(&self, id: u64, kernel: String) {
        self.task_kernels.borrow_mut().insert(id, kernel);
    }

    /// Records a frame sent or received on connection `conn` (the link's
    /// number): `kind` is one of the message kinds.
    #[allow(clippy::too_many_arguments)]
    pub fn frame(
        &self,
        kind: TraceKind,
        conn: usize,
        id: u64,
        stage: u32,
        started: Instant,
        bytes: usize,
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
        self.events.borrow_mut().push(event);
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
            master: self.events.into_inner(),
            task_kernels: self.task_kernels.into_inner(),
            stage_kernels,
            agents,
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
    /// The master's events, on its clock.
    pub master: Vec<TraceEvent>,
    /// The kernel (text) of every task id.
    pub task_kernels: HashMap<u64, String>,
    /// The kernel (text) of every streamed stage, by position.
    pub stage_kernels: Vec<String>,
    /// The agents, in the order of the master's connections to them.
    pub agents: Vec<AgentTrace>,
}

impl Collected {
    /// The kernel an event of an agent ran or carried data for.
    pub fn label(&self, event: &TraceEvent) -> Option<&str> {
        if event.stage != NO_STAGE {
            let stage = match event.kind {
                // An item goes to `stage`; the one that sent it is before.
                TraceKind::ItemSend | TraceKind::ItemRecv => event.stage.checked_sub(1)?,
                _ => event.stage,
            };
            self.stage_kernels.get(stage as usize).map(String::as_str)
        } else {
            self.task_kernels.get(&event.id).map(String::as_str)
        }
    }
}

/// Probes a connection's agent's clock [`PROBES`] times.
pub async fn probe(
    conn: &mut AgentConn,
    clock: &MasterClock,
) -> Result<Vec<ClockSample>, TraceError> {
    let mut samples = Vec::with_capacity(PROBES);
    for _ in 0..PROBES {
        let s = conn
            .clock_probe(clock)
            .await
            .map_err(|source| TraceError::Agent {
                agent: conn.info().name.clone(),
                source,
            })?;
        samples.push(s);
    }
    Ok(samples)
}

/// Probes the agent's clock again and collects its events of `job`.
pub async fn collect(
    conn: &mut AgentConn,
    clock: &MasterClock,
    job: JobId,
    before: Vec<ClockSample>,
) -> Result<AgentTrace, TraceError> {
    let after = probe(conn, clock).await?;
    let events = conn
        .collect_trace(job)
        .await
        .map_err(|source| TraceError::Agent {
            agent: conn.info().name.clone(),
            source,
        })?;
    Ok(AgentTrace {
        name: conn.info().name.clone(),
        addr: conn.addr().to_string(),
        before,
        after,
        events,
    })
}
