//! The agent's trace recorder: events of traced jobs in bounded rings —
//! one per worker thread for kernel calls, and two per worker for frames
//! sent and received (events spread over them by task or item id) —
//! stamped with the agent's trace clock.
//!
//! Recording never allocates: a ring is a fixed [`heapless::HistoryBuf`],
//! allocated when the first traced task or stage arrives
//! ([`Recorder::prepare`]), that overwrites its oldest events when full;
//! overwritten events are counted per job so that the master can say a
//! trace is incomplete. Only tasks and stages the master asked to trace
//! record anything: untraced work pays a branch (and every received frame
//! one clock reading, for its timing).

use heapless::{HistoryBuf, LinearMap};
use skelpi_proto::JobId;
use skelpi_proto::trace::{
    BATCH_EVENTS, IO_RINGS_PER_WORKER, Lane, RING_EVENTS, TraceBatch, TraceEvent, TraceKind,
    agent_capacity,
};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Jobs whose overwritten events a ring counts; beyond that the count of
/// the job that lost events least recently is forgotten.
const DROP_COUNTS: usize = 16;

type Entry = (JobId, TraceEvent);

/// Overwritten events of one job, and when (a ring-local sequence) it
/// last lost one.
type DropCount = (u64, u64);

#[derive(Default)]
struct Ring {
    events: Option<Box<HistoryBuf<Entry, RING_EVENTS>>>,
    dropped: LinearMap<JobId, DropCount, DROP_COUNTS>,
    drops: u64,
}

impl Ring {
    fn push(&mut self, entry: Entry) {
        let events = self.events.get_or_insert_with(Box::default);
        if events.is_full()
            && let Some(&(lost, _)) = events.oldest()
        {
            self.drops += 1;
            count_drop(&mut self.dropped, lost, self.drops);
        }
        events.write(entry);
    }
}

fn count_drop(dropped: &mut LinearMap<JobId, DropCount, DROP_COUNTS>, job: JobId, now: u64) {
    if let Some(n) = dropped.get_mut(&job) {
        *n = (n.0 + 1, now);
        return;
    }
    let stalest = dropped.iter().min_by_key(|(_, c)| c.1).map(|(j, _)| *j);
    if dropped.len() == DROP_COUNTS
        && let Some(old) = stalest
    {
        dropped.remove(&old);
    }
    let _ = dropped.insert(job, (1, now));
}

/// Records trace events of an agent. Shared by its sessions (frame rings)
/// and its worker threads (one ring each).
pub struct Recorder {
    epoch: Instant,
    offset_ns: AtomicI64,
    workers: Vec<Mutex<Ring>>,
    io: Vec<Mutex<Ring>>,
    next_conn: AtomicU32,
    /// Tasks and stages that asked to be traced: rings exist once it is > 0.
    traced: AtomicU64,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// A recorder for an agent with `workers` worker threads (at least 1).
    pub fn new(workers: usize) -> Recorder {
        let workers = workers.max(1);
        let rings = |n: usize| (0..n).map(|_| Mutex::default()).collect();
        Recorder {
            epoch: Instant::now(),
            offset_ns: AtomicI64::new(0),
            workers: rings(workers),
            io: rings(IO_RINGS_PER_WORKER * workers),
            next_conn: AtomicU32::new(0),
            traced: AtomicU64::new(0),
        }
    }

    /// The most events an agent with `workers` worker threads holds for
    /// one job: what a master may expect from it at most.
    pub fn capacity(workers: usize) -> usize {
        agent_capacity(workers)
    }

    /// Allocates the rings, once: called where a traced task or stage
    /// arrives, so that recording itself never allocates.
    pub fn prepare(&self) {
        if self.traced.fetch_add(1, Ordering::Relaxed) == 0 {
            for ring in self.workers.iter().chain(&self.io) {
                let mut ring = lock(ring);
                ring.events.get_or_insert_with(Box::default);
            }
        }
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

    /// Records a frame of `bytes` sent or received (by `kind`) on
    /// connection `conn` from `started` until now, for task or item `id`.
    #[allow(clippy::too_many_arguments)]
    pub fn frame(
        &self,
        job: JobId,
        kind: TraceKind,
        conn: u32,
        id: u64,
        stage: u32,
        started: Instant,
        bytes: usize,
    ) {
        let event = TraceEvent {
            kind,
            lane: Lane::conn(conn, kind.is_send()),
            id,
            stage,
            start_ns: self.clock_at(started),
            dur_ns: nanos(started.elapsed()),
            bytes: bytes as u64,
            wait_ns: 0,
        };
        let ring = &self.io[(id % self.io.len() as u64) as usize];
        lock(ring).push((job, event));
    }

    /// Records a kernel call on worker `worker` from `started` until now,
    /// whose input was ready at `since`.
    pub fn kernel(
        &self,
        job: JobId,
        worker: usize,
        id: u64,
        stage: u32,
        started: Instant,
        since: Instant,
    ) {
        let event = TraceEvent {
            kind: TraceKind::Kernel,
            lane: Lane::worker(worker),
            id,
            stage,
            start_ns: self.clock_at(started),
            dur_ns: nanos(started.elapsed()),
            bytes: 0,
            wait_ns: nanos(started.saturating_duration_since(since)),
        };
        let ring = &self.workers[worker.min(self.workers.len() - 1)];
        lock(ring).push((job, event));
    }

    /// A job's events still held, and how many were overwritten. Each ring
    /// is copied out under its lock and filtered after.
    pub fn collect(&self, job: JobId) -> (Vec<TraceEvent>, u64) {
        let mut out = Vec::new();
        let mut dropped = 0;
        let mut copy: Vec<Entry> = Vec::with_capacity(RING_EVENTS);
        for ring in self.workers.iter().chain(&self.io) {
            copy.clear();
            {
                let ring = lock(ring);
                if let Some(events) = &ring.events {
                    copy.extend(events.oldest_ordered());
                }
                dropped += ring.dropped.get(&job).map_or(0, |c| c.0);
            }
            out.extend(copy.iter().filter(|(j, _)| *j == job).map(|(_, e)| *e));
        }
        (out, dropped)
    }

    /// A job's events as the batches that answer a trace request (at least
    /// one, the last marked).
    pub fn batches(&self, job: JobId) -> Vec<TraceBatch> {
        let (events, dropped) = self.collect(job);
        let workers = self.workers.len() as u32;
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

fn lock(ring: &Mutex<Ring>) -> std::sync::MutexGuard<'_, Ring> {
    ring.lock().unwrap_or_else(|p| p.into_inner())
}

/// Nanoseconds of a duration, saturated.
pub fn nanos(d: Duration) -> u64 {
    d.as_nanos().try_into().unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use skelpi_proto::trace::NO_STAGE;

    #[test]
    fn rings_keep_the_newest_events_and_count_what_they_lost() {
        let rec = Recorder::new(1);
        rec.prepare();
        let (a, b) = (JobId(1), JobId(2));
        let t = Instant::now();
        for i in 0..RING_EVENTS as u64 {
            rec.kernel(a, 0, i, NO_STAGE, t, t);
        }
        for i in 0..10 {
            rec.kernel(b, 0, i, NO_STAGE, t, t);
            rec.frame(b, TraceKind::TaskRecv, 0, i, NO_STAGE, t, 100);
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
        assert!(rec.collect(a).0.len() + rec.collect(b).0.len() <= Recorder::capacity(1));
    }

    #[test]
    fn drop_counts_forget_the_job_that_lost_least_recently() {
        let mut counts = LinearMap::new();
        for j in 0..DROP_COUNTS as u64 {
            count_drop(&mut counts, JobId(j), j);
        }
        count_drop(&mut counts, JobId(0), 100);
        count_drop(&mut counts, JobId(99), 101);
        assert!(counts.get(&JobId(0)).is_some(), "recently counted: kept");
        assert!(counts.get(&JobId(1)).is_none(), "the stalest is forgotten");
        assert_eq!(counts.get(&JobId(0)), Some(&(2, 100)));
        assert_eq!(counts.len(), DROP_COUNTS);
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
