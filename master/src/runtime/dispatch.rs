//! On-demand task dispatch with credits: the I/O around
//! [`Scheduler`], which makes every decision
//! (which agent, what to send again, which result counts).

mod outage;

pub use outage::ALL_DOWN_GRACE;

use super::autonomic::metrics::Totals;
use super::offered;
use super::schedule::{Scheduler, window_per_worker};
use super::stall::PartCounts;
use super::{JobError, TaskError};
use crate::client::{AgentConn, ClientError, Redial};
use crate::modules;
use crate::trace::{NO_LABEL, Recorder};
use skelpi_proto::Array;
use skelpi_proto::beat::Beats;
use skelpi_proto::skeleton::Kernel;
use skelpi_proto::trace::{NO_STAGE, TraceKind};
use skelpi_proto::{EncodeError, JobId, Message, TaskHead};
use skelpi_wire::alarm::Alarm;
use skelpi_wire::{Liveness, Receiver, Sender, WireError};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use std::time::Instant;

pub use super::schedule::MAX_REDISPATCH;

/// Credits per agent worker at first and for long or large tasks: one
/// task running, one queued behind it. Small short tasks get more, up to
/// [`MAX_TASKS_PER_WORKER`] (see [`credits_per_worker`](skelpi_proto::credits_per_worker)).
pub const CREDITS_PER_WORKER: usize = skelpi_proto::TASKS_PER_WORKER;
pub use skelpi_proto::{MAX_TASKS_PER_WORKER, SMALL_TASK_BYTES};

/// A task this long, and much longer than its agent's mean, sets the mean
/// at once (see [`Dispatcher::observe`]): tasks that turn long do not sit
/// behind a deep window. Shorter spikes (a worker preempted for a time
/// slice) only move it.
const LONG_TASK: Duration = Duration::from_millis(10);

/// How often a job looks for tasks to copy (overdue, or at its tail).
const SPECULATE_EVERY: Duration = Duration::from_millis(10);

/// How long a job that ends with copies still out waits for each link to
/// stop between frames (see [`Dispatcher::drain`]): a link still writing
/// or reading a frame then is given up. A 16 MiB frame takes 1.4 s at
/// 100 Mb/s; below the default silence before an agent is declared down.
const END_GRACE: Duration = Duration::from_secs(2);

/// Frames a link's writer queues before writing them at once: enough to
/// amortise a write over many small tasks, few enough that the first
/// does not wait long for the last...
const BATCH_FRAMES: usize = 64;

/// ...and about this many bytes at most.
const BATCH_BYTES: usize = 256 << 10;

/// After an agent's connection fails, the job tries to connect to it
/// again this long after (doubling up to [`REDIAL_MAX`]): a restarted or
/// upgraded agent takes tasks again within the job.
pub const REDIAL_FIRST: Duration = Duration::from_millis(250);

/// The longest pause between two tries.
pub const REDIAL_MAX: Duration = Duration::from_secs(4);

/// How long one try may take.
const REDIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Task ids are unique in the process, so a late result of an aborted job
/// can never be taken for a result of the next one.
static NEXT_TASK: AtomicU64 = AtomicU64::new(1);

type Outcome = Result<Array, JobError>;

/// A task's result, with the agent that ran it and how long its kernel ran
/// there.
#[derive(Debug)]
pub struct Done {
    /// The kernel's output.
    pub data: Array,
    /// The agent (its position in the pool) whose result counted.
    pub agent: usize,
    /// The kernel's run time on that agent (`None` from an older agent).
    pub busy: Option<Duration>,
}

/// A task frame waiting for its connection's writer.
struct Outgoing {
    id: u64,
    head: Message,
    /// Shared with its call, which keeps it to send again if the agent is
    /// lost.
    input: Rc<Array>,
    /// Its kernel's label in the job's trace, if traced.
    label: u32,
}

/// What a link's writer sends: a task, or a module pushed again (before
/// the task that found it missing is sent again).
enum Out {
    Task(Outgoing),
    Module(Message),
}

/// Why an attempt failed: the agent's words, whether the kernel panicked,
/// and the WebAssembly module the agent said it lacks.
struct Failed {
    message: String,
    panicked: bool,
    missing_module: Option<String>,
}

impl Failed {
    fn plain(message: String) -> Failed {
        Failed {
            message,
            panicked: false,
            missing_module: None,
        }
    }
}

/// A caller waiting for its task's outcome.
struct Call {
    /// Names the task in errors (e.g. `item 3 part 1`).
    task: String,
    kernel: Kernel,
    input: Rc<Array>,
    /// Its kernel's label in the job's trace, if traced.
    label: u32,
    reply: async_channel::Sender<Result<Done, JobError>>,
    /// The agents its module was pushed to again, having lacked it (once
    /// per agent).
    repushed: Vec<usize>,
    /// Whether it was handed to an agent (a later hand-over is a task
    /// sent again).
    sent: bool,
    /// Placed on one agent (a `seq` stage's call).
    pinned: bool,
    /// Its kernel's class: its place in the counts, its kind for the
    /// scheduler.
    class: u32,
}

/// The calls of one kernel: begun, sent, finished (a stage's
/// [`Totals`]), and ended in any way.
struct KernelCounts {
    kernel: Kernel,
    totals: Totals,
    ended: u64,
    /// Its calls go to one agent, one at a time (a pipeline's `seq`
    /// stage).
    pinned: bool,
}

struct Link<'c> {
    /// Its position in the pool (its connection number in traces, its
    /// agent number in the scheduler).
    index: usize,
    /// Its agent's worker threads.
    cores: usize,
    label: String,
    addr: SocketAddr,
    sender: RefCell<&'c mut Sender>,
    receiver: RefCell<&'c mut Receiver>,
    /// How to connect again after its connection failed, and the new
    /// connection once made (the pool takes it after the job).
    redial: Redial,
    again: RefCell<Option<AgentConn>>,
    /// Told when the link dies, so that its I/O ends.
    died: event_listener::Event,
    /// Frames for the writer (credits bound them). Once queued, a frame is
    /// written whole even if its caller is cancelled, so a job that stops
    /// never cuts a frame.
    outbox_tx: async_channel::Sender<Out>,
    outbox_rx: async_channel::Receiver<Out>,
    /// The heartbeat asked of the agent (zero: none), and when the
    /// connection last heard from it.
    heartbeat: Duration,
    liveness: RefCell<Arc<Liveness>>,
    dead: Cell<bool>,
    why_dead: RefCell<Option<(String, Instant)>>,
    /// Every time it died in this job, and why.
    deaths: RefCell<Vec<(String, Instant)>>,
    /// WebAssembly modules pushed on its connection (hash, bytes): pushed
    /// again when a task finds its module gone from the agent.
    modules: Vec<(String, Arc<[u8]>)>,
    /// The kernels its agent offers (see [`offered::offers`]), as its
    /// last connection said.
    kernels: RefCell<Vec<String>>,
    /// The moving mean of its tasks' kernel times, seconds (`None` until
    /// one came): what sizes its credits.
    mean_busy: Cell<Option<f64>>,
    /// Small tasks its agent queues per worker beyond
    /// [`CREDITS_PER_WORKER`] (none: an older agent).
    queued_per_worker: usize,
    /// What each kernel took on its agent, this job and earlier ones.
    kernel_times: crate::client::KernelTimes,
    /// At the job's end (see [`Dispatcher::drain`]): its writer and its
    /// reader stopped between frames, and the tasks its writer dropped
    /// unsent then.
    writer_parked: Cell<bool>,
    reader_parked: Cell<bool>,
    unsent: RefCell<Vec<u64>>,
}

/// Hands kernel calls to the agents of a cluster for the duration of one
/// job. Its I/O loops ([`Dispatcher::run_io`]) must run alongside
/// the calls.
pub struct Dispatcher<'c> {
    job: JobId,
    trace: Option<&'c Recorder>,
    links: Vec<Link<'c>>,
    sched: RefCell<Scheduler>,
    /// Callers waiting, by their task's key in the scheduler.
    calls: RefCell<HashMap<u64, Call>>,
    next_call: Cell<u64>,
    progress_tx: async_channel::Sender<()>,
    progress_rx: async_channel::Receiver<()>,
    /// Calls of each kernel: what the stall watchdog shows, and a
    /// watched job's stages.
    counts: RefCell<Vec<KernelCounts>>,
    /// Tasks handed to an agent again (theirs was lost, or had lost their
    /// module).
    resent: Cell<u64>,
    /// Copies of tasks sent (overdue, or at the tail: see
    /// [`Scheduler::speculate`]).
    copies: Cell<u64>,
    /// Each task's deadline on its agent, milliseconds.
    deadline_ms: Cell<Option<u32>>,
    /// The job ended with copies still out: the links' loops stop between
    /// frames (see [`Dispatcher::drain`]). `end` tells them, and tells
    /// `drain` as each one stops.
    ending: Cell<bool>,
    end: event_listener::Event,
    /// An agent went down or came back (see [`ALL_DOWN_GRACE`]).
    liveness_changed: event_listener::Event,
    /// When this master last looked at its own clock, and when it last
    /// found it had been stalled (see `outage.rs`).
    looked: Cell<Instant>,
    stalled_at: Cell<Option<Instant>>,
}

impl std::fmt::Debug for Dispatcher<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let labels: Vec<&str> = self.links.iter().map(|l| l.label.as_str()).collect();
        f.debug_struct("Dispatcher")
            .field("job", &self.job)
            .field("agents", &labels)
            .finish()
    }
}

/// A kernel's name and arguments (their bits), as [`crate::client::KernelTimes`]
/// keys them.
fn kernel_key(kernel: &Kernel) -> String {
    let args: Vec<String> = kernel
        .args
        .iter()
        .map(|a| format!("{:x}", a.to_bits()))
        .collect();
    format!("{}({})", kernel.name, args.join(","))
}

/// Forgets a call whose caller stopped waiting (a job that ends early).
struct Waiting<'d, 'c> {
    d: &'d Dispatcher<'c>,
    key: u64,
}

impl Drop for Waiting<'_, '_> {
    fn drop(&mut self) {
        if self.d.calls.borrow_mut().remove(&self.key).is_some() {
            self.d.sched.borrow_mut().cancel(self.key);
        }
    }
}

impl<'c> Dispatcher<'c> {
    /// A dispatcher for job `job` over these connections, with
    /// `2 × cores` credits each, interleaved so that the first tasks spread
    /// over all agents. With a recorder, the job is traced: its tasks ask
    /// the agents to record, and the master's frames are recorded there.
    pub fn new(
        conns: &'c mut [AgentConn],
        job: JobId,
        trace: Option<&'c Recorder>,
    ) -> Dispatcher<'c> {
        let credits: Vec<usize> = conns
            .iter()
            .map(|c| CREDITS_PER_WORKER * (c.info().cores as usize).max(1))
            .collect();
        let links: Vec<Link<'c>> = conns
            .iter_mut()
            .enumerate()
            .map(|(index, conn)| {
                let label = format!("{} ({})", conn.info().name, conn.addr());
                let addr = conn.addr();
                let (heartbeat, liveness) = conn.heartbeat();
                let cores = (conn.info().cores as usize).max(1);
                let queued_per_worker = conn.info().queued_per_worker as usize;
                let kernel_times = conn.kernel_times();
                let modules = conn.pushed_modules().to_vec();
                let kernels = conn.info().kernels.clone();
                let redial = conn.redial();
                let (sender, receiver) = conn.halves();
                let (outbox_tx, outbox_rx) = async_channel::unbounded();
                Link {
                    index,
                    cores,
                    label,
                    addr,
                    sender: RefCell::new(sender),
                    receiver: RefCell::new(receiver),
                    redial,
                    again: RefCell::new(None),
                    died: event_listener::Event::new(),
                    outbox_tx,
                    outbox_rx,
                    heartbeat,
                    liveness: RefCell::new(liveness),
                    dead: Cell::new(false),
                    why_dead: RefCell::new(None),
                    deaths: RefCell::new(Vec::new()),
                    modules,
                    kernels: RefCell::new(kernels),
                    mean_busy: Cell::new(None),
                    queued_per_worker,
                    kernel_times,
                    writer_parked: Cell::new(false),
                    reader_parked: Cell::new(false),
                    unsent: RefCell::new(Vec::new()),
                }
            })
            .collect();
        let (progress_tx, progress_rx) = async_channel::bounded(1);
        let mut sched = Scheduler::new(&credits);
        for link in &links {
            sched.set_workers(link.index, link.cores);
        }
        Dispatcher {
            job,
            trace,
            links,
            sched: RefCell::new(sched),
            calls: RefCell::new(HashMap::new()),
            next_call: Cell::new(0),
            progress_tx,
            progress_rx,
            counts: RefCell::new(Vec::new()),
            resent: Cell::new(0),
            copies: Cell::new(0),
            deadline_ms: Cell::new(None),
            ending: Cell::new(false),
            end: event_listener::Event::new(),
            liveness_changed: event_listener::Event::new(),
            looked: Cell::new(Instant::now()),
            stalled_at: Cell::new(None),
        }
    }

    /// Gives every task sent from now on `deadline` on its agent (from its
    /// arrival there, queueing included; at least 1 ms): past it the agent
    /// fails the task.
    pub fn set_task_deadline(&self, deadline: Option<Duration>) {
        let ms = deadline.map(|d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX).max(1));
        self.deadline_ms.set(ms);
    }

    /// Changes the counts of the calls of class `class` (see
    /// [`Dispatcher::class_of`]).
    fn count(&self, class: u32, f: impl FnOnce(&mut KernelCounts)) {
        if let Some(c) = self.counts.borrow_mut().get_mut(class as usize) {
            f(c);
        }
    }

    /// The class of `kernel`'s calls, placed on one agent (`pinned`: a
    /// `seq` stage's) or not: their place in the counts (made on first
    /// use), and their kind for the scheduler.
    fn class_of(&self, kernel: &Kernel, pinned: bool) -> u32 {
        let mut counts = self.counts.borrow_mut();
        // By name and arguments' bits: a NaN argument is still the same.
        let same = |k: &Kernel| {
            k.name == kernel.name
                && k.args.len() == kernel.args.len()
                && k.args
                    .iter()
                    .zip(&kernel.args)
                    .all(|(a, b)| a.to_bits() == b.to_bits())
        };
        let at = match counts
            .iter()
            .position(|c| c.pinned == pinned && same(&c.kernel))
        {
            Some(at) => at,
            None => {
                counts.push(KernelCounts {
                    kernel: kernel.clone(),
                    totals: Totals::default(),
                    ended: 0,
                    pinned,
                });
                let class = u32::try_from(counts.len() - 1).unwrap_or(u32::MAX);
                // Each agent's speed at it, as earlier jobs measured.
                let key = kernel_key(kernel);
                let mut sched = self.sched.borrow_mut();
                for link in &self.links {
                    let known = link
                        .kernel_times
                        .lock()
                        .ok()
                        .and_then(|t| t.get(&key).copied());
                    if let Some(secs) = known {
                        sched.seed_busy(link.index, class, secs);
                    }
                }
                counts.len() - 1
            }
        };
        u32::try_from(at).unwrap_or(u32::MAX)
    }

    /// The tasks of each kernel so far: calls begun (`arrived`) and ended
    /// (`done`), in the order the kernels were first called.
    pub fn task_counts(&self) -> Vec<PartCounts> {
        let counts = self.counts.borrow();
        counts
            .iter()
            .map(|c| PartCounts {
                name: format!("tasks of {}", c.kernel),
                arrived: Some(c.totals.arrived),
                done: Some(c.ended),
                sent: None,
                note: String::new(),
            })
            .collect()
    }

    /// Each kernel's calls so far as a stage's totals, in the order the
    /// kernels were first called, and whether they were placed on an
    /// agent (a pipeline's `seq` stages: one at a time each; two such
    /// stages of one kernel are counted together) rather than sent to any.
    pub fn stage_totals(&self) -> Vec<(Kernel, Totals, bool)> {
        let counts = self.counts.borrow();
        counts
            .iter()
            .map(|c| (c.kernel.clone(), c.totals.clone(), c.pinned))
            .collect()
    }

    /// Tasks handed to an agent again so far (theirs was lost, or had lost
    /// their module).
    pub fn resent(&self) -> u64 {
        self.resent.get()
    }

    /// The agents lost so far, by label, in the order they were lost.
    pub fn lost(&self) -> Vec<String> {
        let mut lost: Vec<(Instant, &str)> = self
            .links
            .iter()
            .flat_map(|l| {
                l.deaths
                    .borrow()
                    .iter()
                    .map(|(_, at)| (*at, l.label.as_str()))
                    .collect::<Vec<_>>()
            })
            .collect();
        lost.sort();
        lost.into_iter()
            .map(|(_, label)| label.to_owned())
            .collect()
    }

    /// Why `kernel` cannot run on every agent of the job (those gone too:
    /// they may come back), if it cannot: one does not offer it, or its
    /// WebAssembly module was not pushed to one.
    pub fn lacking(&self, kernel: &Kernel) -> Option<String> {
        let module = modules::module_hash(&kernel.name);
        self.links.iter().find_map(|l| {
            if !offered::offers_any(&l.kernels.borrow(), &kernel.name) {
                return Some(format!("{} does not offer {}", l.label, kernel.name));
            }
            let hash = module.filter(|h| !l.modules.iter().any(|(m, _)| m == h))?;
            Some(format!(
                "module {hash} was not pushed to {} over this job's connection, so it may \
                 lack it: name the module by its file (wasm:FILE.wasm:EXPORT), which pushes \
                 it first",
                l.label
            ))
        })
    }

    /// Each agent's label: `name (address)`.
    pub fn labels(&self) -> Vec<String> {
        self.links.iter().map(|l| l.label.clone()).collect()
    }

    /// Runs `kernel` on `input` on whichever agent has a free credit first.
    /// `task` names the call in errors (e.g. `item 3 part 1`). Tasks are
    /// pure: one lost with its agent is sent again to a live agent, at most
    /// [`MAX_REDISPATCH`] times; only its one result comes back.
    pub async fn call(&self, task: &str, kernel: &Kernel, input: Array) -> Outcome {
        let done = self.call_from(None, task, kernel, input).await;
        done.map(|d| d.data)
    }

    /// [`Dispatcher::call`], telling also which agent ran the task and for
    /// how long.
    pub async fn call_measured(
        &self,
        task: &str,
        kernel: &Kernel,
        input: Array,
    ) -> Result<Done, JobError> {
        self.call_from(None, task, kernel, input).await
    }

    /// Runs `kernel` on agent `home` (a pipeline stage placed there), or on
    /// demand if that agent is gone (or goes during the call). Placed stages
    /// run one call at a time, so they need no credit.
    pub async fn call_at(&self, home: usize, task: &str, kernel: &Kernel, input: Array) -> Outcome {
        let done = self.call_from(Some(home), task, kernel, input).await;
        done.map(|d| d.data)
    }

    async fn call_from(
        &self,
        home: Option<usize>,
        task: &str,
        kernel: &Kernel,
        input: Array,
    ) -> Result<Done, JobError> {
        let key = self.next_call.get();
        self.next_call.set(key + 1);
        let bytes = skelpi_proto::task_bytes(&kernel.name, kernel.args.len(), input.data.len());
        let large = bytes > SMALL_TASK_BYTES;
        let class = self.class_of(kernel, home.is_some());
        if self
            .sched
            .borrow_mut()
            .submit_sized(key, home, large, class)
            .is_err()
        {
            return Err(JobError::NoAgents);
        }
        let (reply, outcome) = async_channel::bounded(1);
        let call = Call {
            task: task.to_owned(),
            kernel: kernel.clone(),
            input: Rc::new(input),
            label: self.trace.map_or(NO_LABEL, |t| t.label(kernel)),
            reply,
            repushed: Vec::new(),
            sent: false,
            pinned: home.is_some(),
            class,
        };
        self.calls.borrow_mut().insert(key, call);
        let _waiting = Waiting { d: self, key };
        self.count(class, |c| c.totals.arrive());
        let began = Instant::now();
        self.pump();
        let outcome = outcome.recv().await.unwrap_or(Err(JobError::Cancelled));
        self.count(class, |c| {
            c.ended += 1;
            if let Ok(done) = &outcome {
                c.totals.finish(done.agent, began.elapsed(), done.busy);
            }
        });
        outcome
    }

    /// Queues every task the scheduler can send now on its agent's link.
    fn pump(&self) {
        loop {
            let send = self
                .sched
                .borrow_mut()
                .next_send(Instant::now(), || NEXT_TASK.fetch_add(1, Ordering::Relaxed));
            let Some(send) = send else { return };
            let mut calls = self.calls.borrow_mut();
            let out = match calls.get_mut(&send.task) {
                Some(call) => {
                    if send.copy {
                        self.copies.set(self.copies.get() + 1);
                    } else if call.sent {
                        self.resent.set(self.resent.get() + 1);
                    } else {
                        call.sent = true;
                        self.count(call.class, |c| c.totals.start());
                    }
                    Out::Task(Outgoing {
                        id: send.attempt,
                        head: Message::Task(TaskHead {
                            id: send.attempt,
                            job: self.job,
                            kernel: call.kernel.name.clone(),
                            args: call.kernel.args.clone(),
                            trace: self.trace.is_some(),
                            deadline_ms: self.deadline_ms.get(),
                        }),
                        input: call.input.clone(),
                        label: call.label,
                    })
                }
                // The scheduler forgets cancelled calls, so this is not
                // reached; if it were, the attempt is given back.
                None => {
                    debug_assert!(false, "task {} sent after its call ended", send.task);
                    let now = Instant::now();
                    self.sched
                        .borrow_mut()
                        .on_result(now, send.agent, send.attempt);
                    continue;
                }
            };
            drop(calls);
            // The scheduler sends only to live agents, whose outboxes are
            // open (a link is closed after the scheduler hears of it).
            let _ = self.links[send.agent].outbox_tx.try_send(out);
        }
    }

    /// Hands a finished call its outcome.
    fn settle(&self, key: u64, outcome: impl FnOnce(&Call) -> Result<Done, JobError>) {
        let call = self.calls.borrow_mut().remove(&key);
        if let Some(call) = call {
            let _ = call.reply.try_send(outcome(&call));
        }
    }

    /// Copies of tasks sent so far (overdue, or at the tail) (not counted in
    /// [`Dispatcher::resent`]).
    pub fn copies(&self) -> u64 {
        self.copies.get()
    }

    /// Number of agents.
    pub fn agents(&self) -> usize {
        self.links.len()
    }

    /// The job's recorder, if it is traced.
    pub fn recorder(&self) -> Option<&'c Recorder> {
        self.trace
    }

    /// Worker threads and base task credits ([`CREDITS_PER_WORKER`] per
    /// thread, what long tasks get) of the agents still live.
    pub fn live_size(&self) -> (usize, usize) {
        let live = self.links.iter().filter(|l| !l.dead.get());
        live.fold((0, 0), |(threads, credits), l| {
            (threads + l.cores, credits + CREDITS_PER_WORKER * l.cores)
        })
    }

    /// Moves every connection's frames: writes queued tasks, reads results
    /// and routes them to their callers; connects again to agents whose
    /// connection failed. It never returns: keep one such future alive for
    /// the whole job, through [`Dispatcher::drain`], and drop it only
    /// after the drain (between frames).
    pub async fn run_io(&self) {
        let links = self
            .links
            .iter()
            .map(|link| Box::pin(self.serve_link(link)));
        let mut all: Vec<_> = links.collect();
        let served = futures_lite::future::poll_fn(|cx| {
            all.retain_mut(|f| f.as_mut().poll(cx).is_pending());
            if all.is_empty() {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        });
        let watched =
            futures_lite::future::or(self.strand_when_none_returns(), self.note_own_stalls());
        let served = futures_lite::future::or(served, watched);
        futures_lite::future::or(served, self.speculate()).await;
        std::future::pending::<()>().await;
    }

    /// Every [`SPECULATE_EVERY`], sends copies of the tasks overdue or that
    /// an idle agent would end sooner at the job's tail (see
    /// [`Scheduler::speculate`]) to other agents. Never returns.
    async fn speculate(&self) {
        let mut told = false;
        let mut every = async_io::Timer::interval(SPECULATE_EVERY);
        loop {
            futures_lite::StreamExt::next(&mut every).await;
            if self.ending.get() {
                continue;
            }
            let copies = self.sched.borrow_mut().speculate(Instant::now());
            if copies == 0 {
                continue;
            }
            let mean = self.sched.borrow().mean_out().unwrap_or_default();
            let job = self.job;
            if std::mem::replace(&mut told, true) {
                log::debug!("job {job}: {copies} more tasks copied to other agents");
            } else {
                log::info!(
                    "job {job}: {copies} task(s) copied to other agents, out far longer than \
                     tasks of their kernel are (up to {mean:.1?} on average, queueing included) \
                     or, at the job's tail, ending sooner on an idle agent: the first result counts"
                );
            }
            self.pump();
        }
    }

    /// One link's I/O on its connection until it dies; then tries to
    /// connect to its agent again (after [`REDIAL_FIRST`], doubling up to
    /// [`REDIAL_MAX`]) and, once it answers, puts it back in the job on
    /// the new connection, its frames queued for the old one dropped.
    // The halves stay borrowed across awaits: only this future uses them,
    // and it is dropped (between frames, after `drain`) with `run_io`.
    #[allow(clippy::await_holding_refcell_ref)]
    async fn serve_link(&self, link: &Link<'c>) {
        {
            let mut sender = link.sender.borrow_mut();
            let mut receiver = link.receiver.borrow_mut();
            self.link_io(link, &mut sender, &mut receiver).await;
            // The agent may be alive (taken for gone when silent): it
            // drops this session's work once the connection closes.
            sender.close();
        }
        let mut pause = REDIAL_FIRST;
        loop {
            self.redial_pause(pause).await;
            pause = (pause * 2).min(REDIAL_MAX);
            let conn = match link.redial.connect(REDIAL_TIMEOUT).await {
                Ok(conn) => conn,
                Err(e) => {
                    log::debug!("job {}: {} is still gone: {e}", self.job, link.label);
                    continue;
                }
            };
            while link.outbox_rx.try_recv().is_ok() {}
            *link.liveness.borrow_mut() = conn.heartbeat().1;
            // An upgraded agent may offer other kernels now.
            *link.kernels.borrow_mut() = conn.info().kernels.clone();
            *link.again.borrow_mut() = Some(conn);
            *link.why_dead.borrow_mut() = None;
            // Parked at the job's end, if it was, on the old connection.
            link.writer_parked.set(false);
            link.reader_parked.set(false);
            link.unsent.borrow_mut().clear();
            link.dead.set(false);
            self.sched.borrow_mut().on_up(link.index);
            self.liveness_changed.notify(usize::MAX);
            log::warn!(
                "job {}: {} is back: it takes tasks again",
                self.job,
                link.label
            );
            self.pump();
            let _ = self.progress_tx.try_send(());
            let up = Instant::now();
            let mut again = link.again.borrow_mut();
            if let Some(conn) = again.as_mut() {
                let (sender, receiver) = conn.halves();
                self.link_io(link, sender, receiver).await;
                sender.close();
            }
            // Tried again at once only if it served a while: an agent that
            // fails each new connection is not hammered.
            if up.elapsed() >= REDIAL_MAX {
                pause = REDIAL_FIRST;
            }
        }
    }

    /// Writes, reads and watches one connection of `link` until the link
    /// dies.
    async fn link_io(&self, link: &Link<'c>, sender: &mut Sender, receiver: &mut Receiver) {
        let died = async {
            loop {
                let listener = link.died.listen();
                if link.dead.get() {
                    return;
                }
                listener.await;
            }
        };
        let watched = futures_lite::future::or(self.write(link, sender), self.watch(link));
        let io = futures_lite::future::or(self.read(link, receiver), watched);
        futures_lite::future::or(died, io).await;
    }

    /// Declares an agent down when it has been silent for
    /// [`DOWN_AFTER_BEATS`](skelpi_wire::handshake::DOWN_AFTER_BEATS) heartbeats — once it has sent one: an agent
    /// that never beats (an older one) is watched by its connection only.
    async fn watch(&self, link: &Link<'c>) {
        let liveness = link.liveness.borrow().clone();
        liveness.silent_past(link.heartbeat).await;
        // A reader stopped at the job's end no longer hears the agent.
        if !link.dead.get() && !link.reader_parked.get() {
            let what = format!(
                "fell silent for {:.1?} (a heartbeat was due every {:?}): declared down",
                liveness.silent_for(),
                link.heartbeat
            );
            self.kill(
                link,
                ClientError::GivenUp {
                    addr: link.addr,
                    what,
                },
            );
        }
        // The link is dead: nothing more to watch, and its other loops end.
        std::future::pending().await
    }

    /// Writes `link`'s queued frames, and its heartbeats, on `sender`.
    async fn write(&self, link: &Link<'c>, sender: &mut Sender) {
        // A heartbeat at once, then after every interval without a task: the
        // agent drops this job's work if the master falls silent. Only to
        // an agent that beats itself: an older one would refuse the frame.
        let mut beats = Beats::new(link.heartbeat, Instant::now());
        // Postponed with every task, the next beat is not set anew each time.
        let mut alarm = Alarm::new();
        loop {
            // A beat due goes before the next task: the first tells the
            // agent this master beats, which a task does not.
            let beating = link.liveness.borrow().beats() > 0;
            if beats.take_due(Instant::now()) && !link.dead.get() && beating {
                self.send_beat(link, sender).await;
            }
            if self.ending.get() {
                return self.park_writer(link).await;
            }
            let next = match link.outbox_rx.try_recv() {
                Ok(first) => Some(Ok(first)),
                Err(async_channel::TryRecvError::Closed) => break,
                Err(async_channel::TryRecvError::Empty) => {
                    // Idle: also woken when the job ends.
                    let ending = self.end.listen();
                    if self.ending.get() {
                        continue;
                    }
                    let task = async { Some(link.outbox_rx.recv().await) };
                    let timer = async {
                        alarm.ring_by(beats.next()).await;
                        None
                    };
                    let end = async {
                        ending.await;
                        None
                    };
                    futures_lite::future::or(task, futures_lite::future::or(timer, end)).await
                }
            };
            match next {
                Some(Ok(first)) if !link.dead.get() => {
                    self.send_batch(link, sender, first).await;
                    beats.postpone(Instant::now());
                }
                Some(Ok(_)) | None => {}
                Some(Err(_)) => break,
            }
        }
    }

    /// The writer's end at the job's end (see [`Dispatcher::drain`]),
    /// between frames: the frames still queued (copies of tasks another
    /// copy finished) are dropped unsent. Never returns: the job drops it.
    async fn park_writer(&self, link: &Link<'c>) {
        while let Ok(out) = link.outbox_rx.try_recv() {
            if let Out::Task(task) = out {
                link.unsent.borrow_mut().push(task.id);
            }
        }
        link.writer_parked.set(true);
        self.end.notify(usize::MAX);
        std::future::pending().await
    }

    /// Queues `first` and the frames queued behind it (up to
    /// [`BATCH_FRAMES`]) on `sender`, then writes them at once: small
    /// tasks share a socket write, and the agent reads them together.
    async fn send_batch(&self, link: &Link<'c>, sender: &mut Sender, first: Out) {
        let mut next = Some(first);
        let (mut queued, mut bytes) = (0, 0);
        while let Some(out) = next.take() {
            match out {
                Out::Task(out) => self.send_task(link, sender, out).await,
                Out::Module(push) => {
                    if let Err(source) = sender.queue(&push).await {
                        let addr = link.addr;
                        self.kill(link, ClientError::Wire { addr, source });
                    }
                }
            }
            queued += 1;
            bytes += sender.last_frame_len();
            if link.dead.get() {
                return;
            }
            if queued < BATCH_FRAMES && bytes < BATCH_BYTES {
                next = link.outbox_rx.try_recv().ok();
            }
        }
        if let Err(source) = sender.flush().await {
            let addr = link.addr;
            self.kill(link, ClientError::Wire { addr, source });
        }
    }

    /// Sends a heartbeat on `link`; it dies if that fails.
    async fn send_beat(&self, link: &Link<'c>, sender: &mut Sender) {
        if let Err(source) = sender.send(&Message::Heartbeat).await {
            self.kill(
                link,
                ClientError::Wire {
                    addr: link.addr,
                    source,
                },
            );
        }
    }

    /// Queues a task on `link` (see [`Dispatcher::send_batch`]): one that
    /// cannot be encoded fails; a link that fails dies. Traced, its frame
    /// is timed as queued: the batch's write follows within microseconds.
    async fn send_task(&self, link: &Link<'c>, sender: &mut Sender, out: Outgoing) {
        let started = Instant::now();
        let sent = sender
            .queue_bulk(&out.head, out.input.shape, &out.input.data)
            .await;
        if let Some(t) = self.trace {
            let (kind, bytes) = (TraceKind::TaskSend, sender.last_frame_len());
            t.frame(
                kind, link.index, out.id, NO_STAGE, started, bytes, out.label,
            );
        }
        if let Err(WireError::Encode(e)) = sent {
            // The input is at fault, not the link (nothing was
            // written): the task fails wherever it would be sent.
            let message = match e {
                EncodeError::TooLarge { len, max } => format!(
                    "input of {} floats ({len} bytes in a frame) exceeds the {} MiB \
                     limit of a frame: split it (map) or send smaller items",
                    out.input.data.len(),
                    max >> 20
                ),
                other => format!("input cannot be sent: {other}"),
            };
            self.finish(link, out.id, Err(Failed::plain(message)));
        } else if let Err(source) = sent {
            log::debug!("task {} not sent", out.id);
            self.kill(
                link,
                ClientError::Wire {
                    addr: link.addr,
                    source,
                },
            );
        }
    }

    /// Reads `link`'s results from `receiver` and routes them.
    async fn read(&self, link: &Link<'c>, receiver: &mut Receiver) {
        if link.dead.get() {
            return;
        }
        loop {
            // Between frames: the job may be ending.
            if self.ending.get() {
                return self.park_reader(link, receiver).await;
            }
            let begun = match futures_lite::future::poll_once(receiver.frame_begun()).await {
                Some(begun) => begun,
                None => {
                    let ending = self.end.listen();
                    if self.ending.get() {
                        continue;
                    }
                    let begun = async { Some(receiver.frame_begun().await) };
                    let end = async {
                        ending.await;
                        None
                    };
                    match futures_lite::future::or(begun, end).await {
                        Some(begun) => begun,
                        None => continue,
                    }
                }
            };
            let mut data = Vec::new();
            let received = match begun {
                Ok(()) => receiver.recv_frame(&mut data).await,
                Err(e) => Err(e),
            };
            let received = match received {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(source) => {
                    self.kill(
                        link,
                        ClientError::Wire {
                            addr: link.addr,
                            source,
                        },
                    );
                    break;
                }
            };
            let (started, frame_len) = (received.started, received.frame_len);
            let (id, outcome) = match received.msg {
                Message::TaskDone(done) => {
                    let shape = received.bulk.unwrap_or(skelpi_proto::Shape::List(0));
                    let ran = Done {
                        data: Array { shape, data },
                        agent: link.index,
                        busy: done.busy_ns.map(Duration::from_nanos),
                    };
                    (done.id, Ok(ran))
                }
                Message::TaskFailed(f) => {
                    let failed = Failed {
                        message: f.error,
                        panicked: f.panicked,
                        missing_module: f.missing_module,
                    };
                    (f.id, Err(failed))
                }
                // The answer to a module pushed again (see `retry`).
                Message::ModuleStored(m) => {
                    log::debug!("{}: module {} stored again", link.label, m.hash);
                    continue;
                }
                Message::Error(e) => {
                    let what = format!("agent reported: {}", e.message);
                    self.kill(
                        link,
                        ClientError::Agent {
                            addr: link.addr,
                            message: what,
                        },
                    );
                    break;
                }
                other => {
                    log::warn!("{}: ignoring unexpected {}", link.label, other.kind_name());
                    continue;
                }
            };
            if let Some(t) = self.trace {
                let kind = TraceKind::ResultRecv;
                t.frame(kind, link.index, id, NO_STAGE, started, frame_len, NO_LABEL);
            }
            self.finish(link, id, outcome);
        }
    }

    /// Ends attempt `id` on `link` with `outcome` (an error: see
    /// [`Failed`]).
    fn finish(&self, link: &Link<'c>, id: u64, outcome: Result<Done, Failed>) {
        // A result counts only if its attempt is still out there: a late
        // one (its agent was declared down, the task sent again) or a
        // repeated one is dropped.
        let now = Instant::now();
        let taken = match &outcome {
            Ok(_) => self.sched.borrow_mut().on_result(now, link.index, id),
            Err(_) => self.sched.borrow_mut().on_failed(now, link.index, id),
        };
        if let (Some(key), Ok(done)) = (taken, &outcome) {
            self.observe(link, key, done.busy);
        }
        match taken {
            Some(key) if self.retry(link, key, &outcome) => {}
            Some(key) => self.settle(key, |call| {
                outcome.map_err(|f| {
                    JobError::Task(TaskError {
                        job: Some(self.job),
                        task: call.task.clone(),
                        kernel: call.kernel.name.clone(),
                        agent: link.label.clone(),
                        message: f.message,
                        panicked: f.panicked,
                    })
                })
            }),
            None => log::debug!("{}: result of task {id} dropped (late)", link.label),
        }
        // Its credit is free: a waiting task may go.
        self.pump();
        let _ = self.progress_tx.try_send(());
    }

    /// Fits `link`'s credits to how long its kernels run, from call
    /// `key`'s result (which ran `busy`): deep for tasks of microseconds
    /// ([`credits_per_worker`]), within what the agent queues
    /// ([`AgentInfo::queued_per_worker`](skelpi_proto::AgentInfo)), back
    /// to [`CREDITS_PER_WORKER`] without a time (an older agent). A result
    /// that ran much longer than the mean sets it at once, so a job whose
    /// tasks turn long does not leave deep queues behind. Only results
    /// that took a credit count. (Large tasks never take more than
    /// [`CREDITS_PER_WORKER`] per worker: see [`Scheduler::submit_sized`].)
    fn observe(&self, link: &Link<'c>, key: u64, busy: Option<Duration>) {
        let Some(class) = self
            .calls
            .borrow()
            .get(&key)
            .filter(|c| !c.pinned)
            .map(|c| c.class)
        else {
            return;
        };
        if let Some(b) = busy {
            self.sched.borrow_mut().ran(link.index, class, b);
        }
        let long = LONG_TASK.as_secs_f64();
        let mean = busy.map(|b| {
            let b = b.as_secs_f64();
            match link.mean_busy.get() {
                Some(m) if b <= 4.0 * m || b < long => m + (b - m) / 8.0,
                // The first, or a long one much longer than the mean (a
                // short one's spikes are a preempted worker's time slice).
                _ => b,
            }
        });
        link.mean_busy.set(mean);
        let mean = mean.map(Duration::from_secs_f64);
        let window = window_per_worker(mean, link.queued_per_worker) * link.cores;
        let mut sched = self.sched.borrow_mut();
        if sched.credits(link.index) != window {
            sched.set_credits(link.index, window);
        }
    }

    /// Task credits of the agents still live, as their windows are now
    /// (see `Dispatcher::observe`): what a farm keeps in flight.
    pub fn credit_window(&self) -> usize {
        let sched = self.sched.borrow();
        let live = self.links.iter().filter(|l| !l.dead.get());
        live.map(|l| sched.credits(l.index)).sum()
    }

    /// Whether the task of call `key`, which failed on `link` for want of
    /// a WebAssembly module once pushed on that link, goes again: the module
    /// is queued to `link`, and the task waits for a credit as a new one
    /// (the agent that just freed one takes it first), once per agent.
    fn retry(&self, link: &Link<'c>, key: u64, outcome: &Result<Done, Failed>) -> bool {
        let Err(Failed {
            missing_module: Some(hash),
            ..
        }) = outcome
        else {
            return false;
        };
        let bytes = link.modules.iter().find(|(h, _)| h == hash).map(|(_, b)| b);
        let Some(bytes) = bytes else {
            return false;
        };
        match self.calls.borrow_mut().get_mut(&key) {
            Some(call) if !call.repushed.contains(&link.index) => call.repushed.push(link.index),
            _ => return false,
        }
        log::info!(
            "job {}: {} no longer has module {hash}: pushing it again, and the task after it",
            self.job,
            link.label
        );
        let push = Message::ModulePush(skelpi_proto::code::ModulePush {
            hash: hash.clone(),
            bytes: bytes.to_vec().into(),
        });
        let _ = link.outbox_tx.try_send(Out::Module(push));
        // Not pinned to the agent: a pinned task takes no credit, and would
        // put it past its task slots.
        let (large, class) = match self.calls.borrow().get(&key) {
            Some(c) => {
                let (name, args) = (&c.kernel.name, c.kernel.args.len());
                let bytes = skelpi_proto::task_bytes(name, args, c.input.data.len());
                (bytes > SMALL_TASK_BYTES, self.class_of(&c.kernel, false))
            }
            None => return false,
        };
        self.sched
            .borrow_mut()
            .submit_sized(key, None, large, class)
            .is_ok()
    }

    /// Marks a link dead: its tasks out are sent again elsewhere (or fail
    /// the job when lost too often; with every agent down they wait, see
    /// [`ALL_DOWN_GRACE`]). Losses while this master was itself stalled
    /// are not held against the tasks.
    fn kill(&self, link: &Link<'c>, why: ClientError) {
        if link.dead.replace(true) {
            return;
        }
        log::warn!("{}: {why}", link.label);
        let message = why.to_string();
        let death = (message, Instant::now());
        link.deaths.borrow_mut().push(death.clone());
        *link.why_dead.borrow_mut() = Some(death);
        link.died.notify(usize::MAX);
        // A job that is ending counts it as stopped.
        self.end.notify(usize::MAX);
        let blameless = self.stalled_lately();
        let down = self
            .sched
            .borrow_mut()
            .on_down_counting(link.index, !blameless);
        for key in down.again {
            if let Some(call) = self.calls.borrow().get(&key) {
                log::warn!(
                    "job {}: task {} ({}) lost with agent {}; sending it again",
                    self.job,
                    call.task,
                    call.kernel,
                    link.label
                );
            }
        }
        for (key, agents) in down.lost {
            self.settle(key, |call| {
                Err(JobError::Lost {
                    task: call.task.clone(),
                    kernel: call.kernel.to_string(),
                    agents: agents
                        .iter()
                        .map(|&a| self.links[a].label.clone())
                        .collect(),
                })
            });
        }
        if down.all_down && !self.ending.get() {
            log::warn!(
                "job {}: every agent is down: waiting up to {ALL_DOWN_GRACE:?} for one to answer \
                 again",
                self.job
            );
        }
        self.liveness_changed.notify(usize::MAX);
        self.pump();
        let _ = self.progress_tx.try_send(());
    }

    /// Waits until no task of the job is out, with the job's
    /// [`Dispatcher::run_io`] future still alive. When only copies whose
    /// tasks another copy finished are left (on a slow agent, or a stalled
    /// one that may never answer), it does not wait for them: each link's
    /// writer stops between frames, dropping what it had not sent, and its
    /// reader then stops between frames too, leaving the results still to
    /// come to the connection, which skips them whenever they come (see
    /// [`Receiver::leave_results`]). A link that does not stop within
    /// `END_GRACE` — still writing a frame to an agent that does not
    /// read, or reading a long one — is given up, its connection made anew
    /// for the next job.
    pub async fn drain(&self) {
        while self.sched.borrow().out() > 0 {
            if self.sched.borrow().only_stale_out() {
                return self.end_io().await;
            }
            let _ = self.progress_rx.recv().await;
        }
    }

    /// Stops every live link's loops between frames (see
    /// [`Dispatcher::drain`]).
    async fn end_io(&self) {
        self.ending.set(true);
        self.end.notify(usize::MAX);
        let stopped = async {
            loop {
                let listener = self.end.listen();
                if self
                    .links
                    .iter()
                    .all(|l| l.dead.get() || l.reader_parked.get())
                {
                    return true;
                }
                listener.await;
            }
        };
        let late = async {
            async_io::Timer::after(END_GRACE).await;
            false
        };
        if futures_lite::future::or(stopped, late).await {
            return;
        }
        for link in &self.links {
            if !link.dead.get() && !link.reader_parked.get() {
                self.kill(
                    link,
                    ClientError::GivenUp {
                        addr: link.addr,
                        what: format!(
                            "was given up: its connection did not stop between frames within \
                             {END_GRACE:?} of the job's end"
                        ),
                    },
                );
            }
        }
    }

    /// At the job's end (after [`Dispatcher::drain`]): what each kernel
    /// took on each agent is kept on its connection for its next jobs;
    /// and where copies that lost are still out, an agent's oldest one has
    /// taken at least as long as it has been out, which is kept if more
    /// than known (a slow agent whose tasks a faster one always finishes
    /// first is never heard to finish one: its next job copies them
    /// sooner).
    pub fn remember_kernel_times(&self) {
        let now = Instant::now();
        let sched = self.sched.borrow();
        let counts = self.counts.borrow();
        for link in &self.links {
            let Ok(mut times) = link.kernel_times.lock() else {
                continue;
            };
            for (class, c) in counts.iter().enumerate() {
                let class = u32::try_from(class).unwrap_or(u32::MAX);
                if let Some(secs) = sched.busy_of(link.index, class) {
                    times.insert(kernel_key(&c.kernel), secs);
                }
            }
        }
        for link in self.links.iter().filter(|l| !l.dead.get()) {
            let Some((sent, class)) = sched.oldest_out(link.index) else {
                continue;
            };
            let Some(kernel) = counts.get(class as usize).map(|c| kernel_key(&c.kernel)) else {
                continue;
            };
            let at_least = now.saturating_duration_since(sent).as_secs_f64();
            if let Ok(mut times) = link.kernel_times.lock() {
                let known = times.entry(kernel).or_insert(at_least);
                *known = known.max(at_least);
            }
        }
    }

    /// The reader's end at the job's end (see [`Dispatcher::drain`]),
    /// between frames: once the writer has stopped, the results of the
    /// tasks still out on the link that were sent are left to `receiver`.
    /// Never returns: the job drops it.
    async fn park_reader(&self, link: &Link<'c>, receiver: &mut Receiver) {
        loop {
            let listener = self.end.listen();
            if link.writer_parked.get() || link.dead.get() {
                break;
            }
            listener.await;
        }
        let unsent = link.unsent.take();
        let out = self.sched.borrow().attempts_on(link.index);
        receiver.leave_results(out.into_iter().filter(|id| !unsent.contains(id)));
        link.reader_parked.set(true);
        self.end.notify(usize::MAX);
        std::future::pending().await
    }
}

impl Dispatcher<'_> {
    /// Marks every live agent that still has tasks in flight dead (the job
    /// gave up waiting for them).
    pub fn abandon_busy(&self, why: &str) {
        for link in &self.links {
            let busy = self.sched.borrow().out_on(link.index) > 0;
            // A link stopped at the job's end left its late results to
            // its connection: it is not waited for.
            if !link.dead.get() && busy && !link.reader_parked.get() {
                self.kill(
                    link,
                    ClientError::GivenUp {
                        addr: link.addr,
                        what: format!("was given up: {why}"),
                    },
                );
            }
        }
    }

    /// The connections made anew during the job (to agents that came
    /// back), by pool position: they replace the pool's.
    pub fn take_rejoined(&self) -> Vec<(usize, AgentConn)> {
        self.links
            .iter()
            .filter_map(|l| l.again.borrow_mut().take().map(|c| (l.index, c)))
            .collect()
    }

    /// Every time each agent was lost during the job, and why, in pool
    /// order.
    pub fn deaths(&self) -> Vec<Vec<(String, Instant)>> {
        self.links
            .iter()
            .map(|l| l.deaths.borrow().clone())
            .collect()
    }

    /// Why each connection died during the job (`None`: still good), in
    /// pool order.
    pub fn casualties(&self) -> Vec<Option<(String, Instant)>> {
        self.links
            .iter()
            .map(|l| l.why_dead.borrow().clone())
            .collect()
    }
}
