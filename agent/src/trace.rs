//! The agent's trace recorder: events of traced jobs in bounded rings, one
//! per worker thread and one for the executor that moves frames, stamped
//! with the agent's trace clock.
//!
//! Recording never allocates: a ring is a fixed [`heapless::HistoryBuf`]
//! (allocated once, the first time a traced job records on it) that
//! overwrites its oldest events when full; overwritten events are counted
//! per job so that the master can say a trace is incomplete. Only jobs the
//! master asked to trace record anything: untraced work pays one branch.

use heapless::{HistoryBuf, LinearMap};
use skelpi_proto::JobId;
use skelpi_proto::trace::{BATCH_EVENTS, TraceBatch, TraceEvent};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Events one ring holds (each ring is about half a megabyte).
pub const RING_EVENTS: usize = 8192;

/// Jobs whose overwritten events a ring counts; beyond that one count is
/// forgotten to make room.
const DROP_COUNTS: usize = 16;

type Entry = (JobId, TraceEvent);

#[derive(Default)]
struct Ring {
    events: Option<Box<HistoryBuf<Entry, RING_EVENTS>>>,
    dropped: LinearMap<JobId, u64, DROP_COUNTS>,
}

impl Ring {
    fn push(&mut self, entry: Entry) {
        let events = self.events.get_or_insert_with(Box::default);
        if events.is_full()
            && let Some(&(lost, _)) = events.oldest()
        {
            count_drop(&mut self.dropped, lost);
        }
        events.write(entry);
    }
}

fn count_drop(dropped: &mut LinearMap<JobId, u64, DROP_COUNTS>, job: JobId) {
    if let Some(n) = dropped.get_mut(&job) {
        *n += 1;
        return;
    }
    let oldest = dropped.keys().next().copied();
    if dropped.len() == DROP_COUNTS
        && let Some(old) = oldest
    {
        dropped.remove(&old);
    }
    let _ = dropped.insert(job, 1);
}

/// Records trace events of an agent. Shared by its sessions (the executor
/// ring) and its worker threads (one ring each).
pub struct Recorder {
    epoch: Instant,
    offset_ns: AtomicI64,
    /// Worker rings, then the executor's.
    rings: Vec<Mutex<Ring>>,
    next_conn: AtomicU32,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("workers", &self.workers())
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// A recorder for an agent with `workers` worker threads.
    pub fn new(workers: usize) -> Recorder {
        Recorder {
            epoch: Instant::now(),
            offset_ns: AtomicI64::new(0),
            rings: (0..=workers).map(|_| Mutex::default()).collect(),
            next_conn: AtomicU32::new(0),
        }
    }

    /// Worker threads it has a ring for.
    pub fn workers(&self) -> usize {
        self.rings.len() - 1
    }

    /// Shifts the trace clock by `offset_ns` (tests use it to give agents
    /// clocks that disagree, as separate boards' clocks do).
    pub fn set_clock_offset(&self, offset_ns: i64) {
        self.offset_ns.store(offset_ns, Ordering::Relaxed);
    }

    /// The trace clock at `t`, nanoseconds.
    pub fn clock_at(&self, t: Instant) -> i64 {
        let since = t.saturating_duration_since(self.epoch).as_nanos();
        i64::try_from(since)
            .unwrap_or(i64::MAX)
            .saturating_add(self.offset_ns.load(Ordering::Relaxed))
    }

    /// The trace clock now, nanoseconds.
    pub fn now_ns(&self) -> i64 {
        self.clock_at(Instant::now())
    }

    /// A number for a new connection, naming its lanes.
    pub fn new_conn(&self) -> u32 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Records an event of worker `worker`'s thread.
    pub fn worker(&self, worker: usize, job: JobId, event: TraceEvent) {
        let ring = worker.min(self.workers().saturating_sub(1));
        self.push(ring, job, event);
    }

    /// Records an event of the executor (frames sent and received).
    pub fn io(&self, job: JobId, event: TraceEvent) {
        self.push(self.rings.len() - 1, job, event);
    }

    fn push(&self, ring: usize, job: JobId, event: TraceEvent) {
        let mut ring = self.rings[ring].lock().unwrap_or_else(|p| p.into_inner());
        ring.push((job, event));
    }

    /// A job's events still held, and how many were overwritten.
    pub fn collect(&self, job: JobId) -> (Vec<TraceEvent>, u64) {
        let mut out = Vec::new();
        let mut dropped = 0;
        for ring in &self.rings {
            let ring = ring.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(events) = &ring.events {
                out.extend(
                    events
                        .oldest_ordered()
                        .filter(|(j, _)| *j == job)
                        .map(|(_, e)| *e),
                );
            }
            dropped += ring.dropped.get(&job).copied().unwrap_or(0);
        }
        (out, dropped)
    }

    /// A job's events as the batches that answer a trace request (at least
    /// one, the last marked).
    pub fn batches(&self, job: JobId) -> Vec<TraceBatch> {
        let (events, dropped) = self.collect(job);
        let workers = self.workers() as u32;
        let mut batches: Vec<TraceBatch> = events
            .chunks(BATCH_EVENTS)
            .map(|c| TraceBatch {
                job,
                workers,
                dropped: 0,
                events: c.to_vec(),
                last: false,
            })
            .collect();
        if batches.is_empty() {
            batches.push(TraceBatch {
                job,
                workers,
                dropped: 0,
                events: Vec::new(),
                last: false,
            });
        }
        let last = batches.last_mut().expect("at least one");
        last.last = true;
        last.dropped = dropped;
        batches
    }
}

/// Nanoseconds of a duration, saturated.
pub fn nanos(d: Duration) -> u64 {
    d.as_nanos().try_into().unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use skelpi_proto::trace::{Lane, NO_STAGE, TraceKind};

    fn event(id: u64) -> TraceEvent {
        TraceEvent {
            kind: TraceKind::Kernel,
            lane: Lane::worker(0),
            id,
            stage: NO_STAGE,
            start_ns: id as i64,
            dur_ns: 1,
            bytes: 0,
            wait_ns: 0,
        }
    }

    #[test]
    fn rings_keep_the_newest_events_and_count_what_they_lost() {
        let rec = Recorder::new(1);
        let (a, b) = (JobId(1), JobId(2));
        for i in 0..RING_EVENTS as u64 {
            rec.worker(0, a, event(i));
        }
        for i in 0..10 {
            rec.worker(0, b, event(i));
            rec.io(b, event(100 + i));
        }
        let (got_a, lost_a) = rec.collect(a);
        assert_eq!((got_a.len(), lost_a), (RING_EVENTS - 10, 10));
        assert_eq!(got_a[0].id, 10, "oldest first, the first ten gone");
        let (got_b, lost_b) = rec.collect(b);
        assert_eq!((got_b.len(), lost_b), (20, 0));
        let batches = rec.batches(a);
        assert_eq!(batches.len(), RING_EVENTS.div_ceil(BATCH_EVENTS));
        assert!(
            batches
                .iter()
                .rev()
                .skip(1)
                .all(|b| !b.last && b.dropped == 0)
        );
        assert!(batches.last().unwrap().last);
        assert_eq!(batches.last().unwrap().dropped, 10);
        let empty = rec.batches(JobId(3));
        assert_eq!(empty.len(), 1);
        assert!(empty[0].last && empty[0].events.is_empty());
    }

    #[test]
    fn the_clock_offset_shifts_readings() {
        let rec = Recorder::new(1);
        let t = Instant::now();
        let before = rec.clock_at(t);
        rec.set_clock_offset(-5_000_000_000);
        assert_eq!(rec.clock_at(t), before - 5_000_000_000);
    }
}
