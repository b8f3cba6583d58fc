//! The managed job's graph: a paced entry, one elastic stage per stage of
//! the pipeline, an exit, and the manager's loop beside them.
//!
//! An elastic stage sends each item as a task on demand (any agent with a
//! free credit) once one of its worker slots is free; its [`Gate`]'s limit
//! is its degree, which the manager changes while items flow. Results are
//! put back in input order before they leave the stage, so a change of
//! degree never loses, repeats or reorders an item: it only changes how
//! many tasks of the stage are out at once.

use super::gate::Gate;
use super::manager::{Action, Decision, Manager, Observation, PoolSize};
use super::metrics::{Totals, window};
use crate::runtime::eval::{Ctx, Stream};
use crate::runtime::job::Graph;
use crate::runtime::{Item, JobError};
use skelpi_proto::skeleton::Kernel;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Items a stream buffers between two nodes of the graph.
const BUFFER: usize = 8;

/// The longest window the manager judges.
const WINDOW_MAX: Duration = Duration::from_secs(2);

/// Decisions a job keeps (the manager's budget of changes bounds them
/// well below this).
pub const MAX_DECISIONS: usize = 256;

/// Items in the pipeline at once, for these degrees: every slot busy and
/// two items waiting per stage, so queues stay short.
pub fn admission(degrees: &[usize]) -> usize {
    degrees.iter().sum::<usize>() + 2 * degrees.len()
}

/// The state the nodes and the manager share.
pub struct Control<'f> {
    /// When the graph was built (the job's start, after any trace probes).
    pub(super) start: Cell<Instant>,
    /// When the last result left.
    pub(super) last_out: Cell<Option<Instant>>,
    /// The last window the manager judged.
    pub(super) last_window: RefCell<Option<Observation>>,
    pub(super) names: Vec<String>,
    kernels: Vec<Kernel>,
    gates: Vec<Gate>,
    pub(super) totals: RefCell<Vec<Totals>>,
    /// Items out of the last stage.
    pub(super) out: Cell<u64>,
    admission: Gate,
    /// Feed at most this many items per second (a throughput contract).
    pace: Option<f64>,
    period: Duration,
    pub(super) manager: RefCell<Option<Manager>>,
    pub(super) decisions: RefCell<Vec<Decision>>,
    /// When the last change of degrees was made, and the output count then.
    pub(super) last_change: Cell<Option<(Instant, u64)>>,
    on_decision: RefCell<OnDecision<'f>>,
}

/// Where decisions go as they are made.
pub type OnDecision<'f> = Box<dyn FnMut(&Decision) + 'f>;

impl<'f> Control<'f> {
    /// Stages running `kernels` at `degrees`; managed by `manager` if given
    /// (else the degrees stay), looking every `period`.
    pub fn new(
        kernels: Vec<Kernel>,
        degrees: &[usize],
        manager: Option<Manager>,
        pace: Option<f64>,
        period: Duration,
        on_decision: OnDecision<'f>,
    ) -> Control<'f> {
        Control {
            start: Cell::new(Instant::now()),
            last_out: Cell::new(None),
            last_window: RefCell::new(None),
            names: kernels.iter().map(Kernel::to_string).collect(),
            gates: degrees.iter().map(|&d| Gate::new(d)).collect(),
            totals: RefCell::new(vec![Totals::default(); kernels.len()]),
            kernels,
            out: Cell::new(0),
            admission: Gate::new(admission(degrees)),
            pace,
            period,
            manager: RefCell::new(manager),
            decisions: RefCell::default(),
            last_change: Cell::new(None),
            on_decision: RefCell::new(on_decision),
        }
    }

    /// The degrees now.
    pub fn degrees(&self) -> Vec<usize> {
        self.gates.iter().map(Gate::limit).collect()
    }
}

impl Graph for Control<'_> {
    fn build<'a, 'c: 'a>(&'a self, cx: Ctx<'a, 'c>, input: Stream) -> Stream {
        self.start.set(Instant::now());
        let (tx, mut s) = async_channel::bounded(BUFFER);
        cx.spawner.spawn(entry(self, input, tx));
        for i in 0..self.kernels.len() {
            s = stage(cx.clone(), self, i, s);
        }
        let (tx, out) = async_channel::bounded(BUFFER);
        cx.spawner.spawn(exit(self, s, tx));
        if self.manager.borrow().is_some() {
            cx.spawner.spawn(manage(cx.clone(), self));
        }
        out
    }
}

type Sink = async_channel::Sender<Result<Item, JobError>>;

/// Lets items in as the admission window (and the pace) allow.
async fn entry(ctl: &Control<'_>, input: Stream, tx: Sink) {
    let mut next_at: Option<Instant> = None;
    while let Ok(r) = input.recv().await {
        let item = match r {
            Ok(item) => item,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        ctl.admission.enter().await;
        if let Some(rate) = ctl.pace {
            // One item every 1/rate: a pipeline that fell behind gets no
            // burst to catch up with.
            let now = Instant::now();
            let at = next_at.map_or(now, |t| t.max(now));
            if at > now {
                async_io::Timer::at(at).await;
            }
            next_at = Some(at + Duration::from_secs_f64(1.0 / rate));
        }
        if tx.send(Ok(item)).await.is_err() {
            return;
        }
        ctl.totals.borrow_mut()[0].arrive();
    }
}

/// Counts the items out and gives their room in the pipeline back.
async fn exit(ctl: &Control<'_>, input: Stream, tx: Sink) {
    while let Ok(r) = input.recv().await {
        let failed = r.is_err();
        if !failed {
            ctl.out.set(ctl.out.get() + 1);
            ctl.last_out.set(Some(Instant::now()));
            ctl.admission.leave();
        }
        if tx.send(r).await.is_err() || failed {
            return;
        }
    }
}

/// Stage `i`: items out as tasks while a slot is free; results in order.
fn stage<'a, 'c: 'a>(cx: Ctx<'a, 'c>, ctl: &'a Control<'_>, i: usize, input: Stream) -> Stream {
    let (tx, rx) = async_channel::bounded(BUFFER);
    // Results by the stage's own sequence number (the admission window
    // bounds how many wait to be put in order).
    let (done_tx, done_rx) = async_channel::unbounded::<(u64, Result<Item, JobError>)>();
    let n = ctl.kernels.len();
    let spawner = cx.spawner.clone();
    cx.spawner.spawn(async move {
        let mut seq = 0u64;
        while let Ok(r) = input.recv().await {
            let item = match r {
                Ok(item) => item,
                Err(e) => {
                    let _ = done_tx.try_send((seq, Err(e)));
                    return;
                }
            };
            ctl.gates[i].enter().await;
            ctl.totals.borrow_mut()[i].start();
            let done = done_tx.clone();
            let this = seq;
            seq += 1;
            let d = cx.d;
            spawner.spawn(async move {
                let task = if n > 1 {
                    format!("{} at stage {}", item.origin, i + 1)
                } else {
                    item.origin.clone()
                };
                let sent = Instant::now();
                let r = d.call_measured(&task, &ctl.kernels[i], item.data).await;
                ctl.gates[i].leave();
                let out = r.map(|ran| {
                    ctl.totals.borrow_mut()[i].finish(ran.agent, sent.elapsed(), ran.busy);
                    Item {
                        data: ran.data,
                        ..item
                    }
                });
                let _ = done.try_send((this, out));
            });
        }
    });
    cx.spawner.spawn(async move {
        let mut held = BTreeMap::new();
        let mut next = 0u64;
        while let Ok((k, r)) = done_rx.recv().await {
            held.insert(k, r);
            while let Some(r) = held.remove(&next) {
                next += 1;
                let failed = r.is_err();
                if tx.send(r).await.is_err() || failed {
                    return;
                }
                if i + 1 < n {
                    ctl.totals.borrow_mut()[i + 1].arrive();
                }
            }
        }
    });
    rx
}

/// Every period: reads the totals, lets the manager judge the window since
/// the last change (at most [`WINDOW_MAX`]), and applies what it decides.
async fn manage<'a, 'c: 'a>(cx: Ctx<'a, 'c>, ctl: &'a Control<'_>) {
    let mut readings: VecDeque<(Instant, Vec<Totals>, u64)> = VecDeque::new();
    loop {
        async_io::Timer::after(ctl.period).await;
        let now = Instant::now();
        let out = ctl.out.get();
        readings.push_back((now, ctl.totals.borrow().clone(), out));
        while readings.len() > 2 && now - readings[1].0 >= WINDOW_MAX {
            readings.pop_front();
        }
        let mut manager = ctl.manager.borrow_mut();
        let Some(m) = manager.as_mut() else {
            return;
        };
        let (then, before, out_before) = &readings[0];
        let totals = &readings.back().expect("just pushed").1;
        let secs = (now - *then).as_secs_f64();
        let degrees = ctl.degrees();
        let stages = (0..degrees.len())
            .map(|i| window(&before[i], &totals[i], secs, degrees[i]))
            .collect();
        let (threads, slots) = cx.d.live_size();
        let obs = Observation {
            at: now - ctl.start.get(),
            secs,
            throughput: if secs > 0.0 {
                (out - out_before) as f64 / secs
            } else {
                0.0
            },
            stages,
            pool: PoolSize { threads, slots },
        };
        let decision = m.observe(&obs);
        drop(manager);
        if obs.secs >= super::manager::MIN_WINDOW {
            *ctl.last_window.borrow_mut() = Some(obs);
        }
        let Some(decision) = decision else {
            continue;
        };
        if decision.action != Action::Hold {
            for (gate, &d) in ctl.gates.iter().zip(&decision.degrees) {
                gate.set_limit(d);
            }
            ctl.admission.set_limit(admission(&decision.degrees));
            ctl.last_change.set(Some((now, out)));
            // The next window starts a period after the change: tasks of
            // the old degrees are still finishing until then.
            readings.clear();
        }
        log::info!("job manager: {decision}");
        if let Some(rec) = cx.d.recorder() {
            rec.mark(format!("manager: {}", decision.did));
        }
        (ctl.on_decision.borrow_mut())(&decision);
        let mut decisions = ctl.decisions.borrow_mut();
        if decisions.len() < MAX_DECISIONS {
            decisions.push(decision);
        }
    }
}
