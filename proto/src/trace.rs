//! Tracing messages: what agents record about a traced job, and the clock
//! exchange that puts their records on the master's time base.
//!
//! An agent timestamps events with its own *trace clock* (monotonic
//! nanoseconds, as `i64`). The master estimates each agent's clock offset
//! NTP-style ([`Message::ClockProbe`](crate::Message::ClockProbe) →
//! [`ClockReading`]) and collects a job's events at its end
//! ([`TraceRequest`] → [`TraceBatch`]es). Everything here is plain data: the
//! clocks are read by whoever builds these values.

use crate::JobId;
use serde::{Deserialize, Serialize};

/// [`TraceEvent::stage`] of an event that belongs to no streamed pipeline
/// stage (a task routed by the master).
pub const NO_STAGE: u32 = u32::MAX;

/// Events per [`TraceBatch`] frame at most (a batch stays far below the
/// frame limit).
pub const BATCH_EVENTS: usize = 2048;

/// Events one of an agent's trace rings holds (each ring is about half a
/// megabyte).
pub const RING_EVENTS: usize = 8192;

/// An agent's rings for frames per worker ring: a task makes one kernel
/// event and two frame events, so the frame rings (shared by all
/// connections, events spread by id) fill no faster than the workers'.
pub const IO_RINGS_PER_WORKER: usize = 2;

/// The most events an agent with `workers` worker threads holds for one
/// job: what a master may expect from it at most.
pub const fn agent_capacity(workers: usize) -> usize {
    let workers = if workers == 0 { 1 } else { workers };
    (1 + IO_RINGS_PER_WORKER) * workers * RING_EVENTS
}

/// What an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TraceKind {
    /// A task frame was sent (master → agent).
    TaskSend,
    /// A task frame was received.
    TaskRecv,
    /// A task's result frame was sent (agent → master).
    ResultSend,
    /// A task's result frame was received.
    ResultRecv,
    /// A stream item was sent towards `stage`.
    ItemSend,
    /// A stream item addressed to `stage` was received.
    ItemRecv,
    /// A kernel call, from call to return, on a worker thread.
    Kernel,
}

impl TraceKind {
    /// Whether this is the sending end of a message.
    pub fn is_send(self) -> bool {
        matches!(
            self,
            TraceKind::TaskSend | TraceKind::ResultSend | TraceKind::ItemSend
        )
    }

    /// Whether this is the receiving end of a message.
    pub fn is_recv(self) -> bool {
        matches!(
            self,
            TraceKind::TaskRecv | TraceKind::ResultRecv | TraceKind::ItemRecv
        )
    }

    /// The other end of a message event (`None` for a kernel call).
    pub fn peer_kind(self) -> Option<TraceKind> {
        Some(match self {
            TraceKind::TaskSend => TraceKind::TaskRecv,
            TraceKind::TaskRecv => TraceKind::TaskSend,
            TraceKind::ResultSend => TraceKind::ResultRecv,
            TraceKind::ResultRecv => TraceKind::ResultSend,
            TraceKind::ItemSend => TraceKind::ItemRecv,
            TraceKind::ItemRecv => TraceKind::ItemSend,
            TraceKind::Kernel => return None,
        })
    }
}

/// Where on a node an event happened: a worker thread or one direction of
/// one connection. Each lane holds events that never overlap in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Lane(pub u32);

impl Lane {
    /// First lane number of connections; worker lanes are below.
    const CONN_BASE: u32 = 1000;

    /// Worker thread `i` (from 0).
    pub fn worker(i: usize) -> Lane {
        Lane(i.min(Self::CONN_BASE as usize - 1) as u32)
    }

    /// The receiving (`send == false`) or sending side of the node's
    /// connection number `conn`.
    pub fn conn(conn: u32, send: bool) -> Lane {
        let conn = conn % ((u32::MAX - Self::CONN_BASE) / 2);
        Lane(Self::CONN_BASE + 2 * conn + u32::from(send))
    }

    /// The worker this lane is, if it is one.
    pub fn as_worker(self) -> Option<usize> {
        (self.0 < Self::CONN_BASE).then_some(self.0 as usize)
    }

    /// The connection and direction (`true`: send) this lane is, if it is
    /// one.
    pub fn as_conn(self) -> Option<(u32, bool)> {
        let n = self.0.checked_sub(Self::CONN_BASE)?;
        Some((n / 2, n % 2 == 1))
    }
}

/// One recorded event, on its node's trace clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEvent {
    /// What happened.
    pub kind: TraceKind,
    /// Where on the node.
    pub lane: Lane,
    /// The task id (tasks, results, kernel calls of tasks) or the item's
    /// index (stream items, kernel calls of stages).
    pub id: u64,
    /// The streamed pipeline stage (for items: the stage they go to), or
    /// [`NO_STAGE`].
    pub stage: u32,
    /// Start, trace clock nanoseconds: a frame's first bytes read or
    /// written, a kernel's call.
    pub start_ns: i64,
    /// Duration, nanoseconds: reading or writing the frame, the call.
    pub dur_ns: u64,
    /// The frame's bytes (length prefix included); 0 for a kernel call.
    pub bytes: u64,
    /// For a kernel call, how long its input waited before the call (inbox
    /// and worker queue), nanoseconds; 0 otherwise.
    pub wait_ns: u64,
}

/// Master → agent: collect what was recorded for a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceRequest {
    /// The job.
    pub job: JobId,
}

/// Agent → master: part of a job's events; the last batch has `last` set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceBatch {
    /// The job.
    pub job: JobId,
    /// The agent's worker threads (lanes `0..workers`).
    pub workers: u32,
    /// Events of this job overwritten before collection (the recorder's
    /// rings were full); counted in the last batch.
    pub dropped: u64,
    /// The events, in no particular order.
    pub events: Vec<TraceEvent>,
    /// No batch follows.
    pub last: bool,
}

/// Agent → master: the agent's trace clock when it handled a
/// [`Message::ClockProbe`](crate::Message::ClockProbe).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockReading {
    /// The probe's nonce.
    pub nonce: u64,
    /// The agent's trace clock, nanoseconds.
    pub agent_ns: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_round_trip_and_do_not_collide() {
        assert_eq!(Lane::worker(3).as_worker(), Some(3));
        assert_eq!(Lane::worker(3).as_conn(), None);
        for conn in [0, 1, 77] {
            for send in [false, true] {
                let lane = Lane::conn(conn, send);
                assert_eq!(lane.as_conn(), Some((conn, send)));
                assert_eq!(lane.as_worker(), None);
            }
        }
        assert_ne!(Lane::conn(4, true), Lane::conn(5, false));
    }

    #[test]
    fn every_message_end_has_its_other_end() {
        use TraceKind::*;
        for k in [
            TaskSend, TaskRecv, ResultSend, ResultRecv, ItemSend, ItemRecv,
        ] {
            let peer = k.peer_kind().unwrap();
            assert_eq!(peer.peer_kind(), Some(k));
            assert_ne!(k.is_send(), k.is_recv());
            assert_eq!(k.is_send(), peer.is_recv());
        }
        assert_eq!(Kernel.peer_kind(), None);
    }
}
