//! On-demand task dispatch with credits.

use super::{JobError, TaskError};
use crate::client::{AgentConn, ClientError};
use crate::trace::{NO_LABEL, Recorder};
use skelpi_agent::kernels::Array;
use skelpi_agent::wire::handshake::DOWN_AFTER_BEATS;
use skelpi_agent::wire::{Liveness, Receiver, Sender};
use skelpi_proto::skeleton::Kernel;
use skelpi_proto::trace::{NO_STAGE, TraceKind};
use skelpi_proto::{JobId, Message, TaskHead};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use std::time::Instant;

/// Credits per agent worker: one task running, one queued behind it.
pub const CREDITS_PER_WORKER: usize = 2;

/// Times a task lost with its agent is sent again, to another live agent,
/// before the job fails naming it (a task that keeps killing agents).
pub const MAX_REDISPATCH: usize = 3;

/// Frames a connection's writer holds (callers wait beyond that).
const OUTBOX: usize = 16;

/// Task ids are unique in the process, so a late result of an aborted job
/// can never be taken for a result of the next one.
static NEXT_TASK: AtomicU64 = AtomicU64::new(1);

type Outcome = Result<Array, JobError>;

/// A task frame waiting for its connection's writer.
struct Outgoing {
    id: u64,
    head: Message,
    /// Shared with its caller, which keeps it to send again if the agent
    /// is lost.
    input: Rc<Array>,
    /// Its kernel's label in the job's trace, if traced.
    label: u32,
}

/// A task in flight: who asked, for what, and where the result goes.
struct Pending {
    task: String,
    kernel: String,
    reply: async_channel::Sender<Outcome>,
}

struct Link<'c> {
    /// Its position in the pool (its connection number in traces).
    index: usize,
    label: String,
    addr: SocketAddr,
    sender: RefCell<&'c mut Sender>,
    receiver: RefCell<&'c mut Receiver>,
    /// Frames for the writer. Callers only queue: a frame, once queued, is
    /// written whole even if its caller is cancelled, so a job that stops
    /// never cuts a frame.
    outbox_tx: async_channel::Sender<Outgoing>,
    outbox_rx: async_channel::Receiver<Outgoing>,
    pending: RefCell<HashMap<u64, Pending>>,
    /// The heartbeat asked of the agent (zero: none), and when the
    /// connection last heard from it.
    heartbeat: Duration,
    liveness: Arc<Liveness>,
    dead: Cell<bool>,
    why_dead: RefCell<Option<(String, Instant)>>,
}

/// Hands kernel calls to the agents of a cluster for the duration of one
/// job. Its I/O loops ([`Dispatcher::run_io`]) must run alongside
/// the calls.
pub struct Dispatcher<'c> {
    job: JobId,
    trace: Option<&'c Recorder>,
    links: Vec<Link<'c>>,
    tokens_tx: async_channel::Sender<usize>,
    tokens_rx: async_channel::Receiver<usize>,
    progress_tx: async_channel::Sender<()>,
    progress_rx: async_channel::Receiver<()>,
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
        let total: usize = credits.iter().sum();
        let (tokens_tx, tokens_rx) = async_channel::bounded(total.max(1));
        for round in 0..credits.iter().copied().max().unwrap_or(0) {
            for (i, &c) in credits.iter().enumerate() {
                if round < c {
                    let _ = tokens_tx.try_send(i);
                }
            }
        }
        if conns.is_empty() {
            tokens_tx.close();
        }
        let links = conns
            .iter_mut()
            .enumerate()
            .map(|(index, conn)| {
                let label = format!("{} ({})", conn.info().name, conn.addr());
                let addr = conn.addr();
                let (heartbeat, liveness) = conn.heartbeat();
                let (sender, receiver) = conn.halves();
                let (outbox_tx, outbox_rx) = async_channel::bounded(OUTBOX);
                Link {
                    index,
                    label,
                    addr,
                    sender: RefCell::new(sender),
                    receiver: RefCell::new(receiver),
                    outbox_tx,
                    outbox_rx,
                    pending: RefCell::new(HashMap::new()),
                    heartbeat,
                    liveness,
                    dead: Cell::new(false),
                    why_dead: RefCell::new(None),
                }
            })
            .collect();
        let (progress_tx, progress_rx) = async_channel::bounded(1);
        Dispatcher {
            job,
            trace,
            links,
            tokens_tx,
            tokens_rx,
            progress_tx,
            progress_rx,
        }
    }

    /// Runs `kernel` on `input` on whichever agent has a free credit first.
    /// `task` names the call in errors (e.g. `item 3 part 1`). Tasks are
    /// pure: one lost with its agent is sent again to a live agent, at most
    /// [`MAX_REDISPATCH`] times; only its one result comes back.
    pub async fn call(&self, task: &str, kernel: &Kernel, input: Array) -> Outcome {
        self.call_from(None, task, kernel, Rc::new(input)).await
    }

    /// Runs `kernel` on agent `home` (a pipeline stage placed there), or on
    /// demand if that agent is gone (or goes during the call). Placed stages
    /// run one call at a time, so they need no credit.
    pub async fn call_at(&self, home: usize, task: &str, kernel: &Kernel, input: Array) -> Outcome {
        self.call_from(Some(home), task, kernel, Rc::new(input))
            .await
    }

    async fn call_from(
        &self,
        mut home: Option<usize>,
        task: &str,
        kernel: &Kernel,
        input: Rc<Array>,
    ) -> Outcome {
        let mut lost: Vec<String> = Vec::new();
        loop {
            let (link, credit) = match home.take() {
                Some(h) if self.links.get(h).is_some_and(|l| !l.dead.get()) => (h, false),
                _ => (self.credit().await?, true),
            };
            let result = self.call_on(link, task, kernel, input.clone()).await;
            let dead = self.links[link].dead.get();
            if credit && !dead {
                let _ = self.tokens_tx.try_send(link);
            }
            match result {
                Err(JobError::Agent(_)) if dead => {
                    lost.push(self.links[link].label.clone());
                    if lost.len() > MAX_REDISPATCH {
                        return Err(JobError::Lost {
                            task: task.to_owned(),
                            kernel: kernel.to_string(),
                            agents: lost,
                        });
                    }
                    log::warn!(
                        "job {}: task {task} ({kernel}) lost with agent {}; sending it again",
                        self.job,
                        self.links[link].label
                    );
                }
                other => return other,
            }
        }
    }

    /// Waits for a credit of a live agent; fails when every agent is gone.
    async fn credit(&self) -> Result<usize, JobError> {
        loop {
            let i = self
                .tokens_rx
                .recv()
                .await
                .map_err(|_| JobError::NoAgents)?;
            if !self.links[i].dead.get() {
                return Ok(i);
            }
        }
    }

    /// Number of agents.
    pub fn agents(&self) -> usize {
        self.links.len()
    }

    async fn call_on(&self, i: usize, task: &str, kernel: &Kernel, input: Rc<Array>) -> Outcome {
        let link = &self.links[i];
        let id = NEXT_TASK.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = async_channel::bounded(1);
        let head = Message::Task(TaskHead {
            id,
            job: self.job,
            kernel: kernel.name.clone(),
            args: kernel.args.clone(),
            trace: self.trace.is_some(),
        });
        let label = self.trace.map_or(NO_LABEL, |t| t.label(kernel));
        let out = Outgoing {
            id,
            head,
            input,
            label,
        };
        let queued = link.outbox_tx.send(out).await;
        if queued.is_err() {
            return Err(self.dead_error(link));
        }
        // No await between queueing and registering: the result cannot
        // arrive before its entry exists.
        link.pending.borrow_mut().insert(
            id,
            Pending {
                task: task.to_owned(),
                kernel: kernel.name.clone(),
                reply: tx,
            },
        );
        rx.recv()
            .await
            .unwrap_or_else(|_| Err(self.dead_error(link)))
    }

    fn dead_error(&self, link: &Link<'c>) -> JobError {
        let what = link
            .why_dead
            .borrow()
            .as_ref()
            .map(|(why, _)| why.clone())
            .unwrap_or_else(|| "the connection ended before the task's result arrived".into());
        ClientError::Protocol {
            addr: link.addr,
            what,
        }
        .into()
    }

    /// Moves every connection's frames: writes queued tasks, reads results
    /// and routes them to their callers. It never returns: keep one such
    /// future alive for the whole job, through [`Dispatcher::drain`], and
    /// drop it only after the drain (between frames).
    pub async fn run_io(&self) {
        let readers = self.links.iter().map(|link| {
            let watched = futures_lite::future::or(self.write(link), self.watch(link));
            Box::pin(futures_lite::future::or(self.read(link), watched))
        });
        let mut all: Vec<_> = readers.collect();
        futures_lite::future::poll_fn(|cx| {
            all.retain_mut(|f| f.as_mut().poll(cx).is_pending());
            if all.is_empty() {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
        std::future::pending::<()>().await;
    }

    /// Declares an agent down when it has been silent for
    /// [`DOWN_AFTER_BEATS`] heartbeats — once it has sent one: an agent
    /// that never beats (an older one) is watched by its connection only.
    async fn watch(&self, link: &Link<'c>) {
        if link.heartbeat.is_zero() {
            return std::future::pending().await;
        }
        let down_after = link.heartbeat * DOWN_AFTER_BEATS;
        let tick = link.heartbeat / 4;
        while !link.dead.get() {
            async_io::Timer::after(tick).await;
            let silent = link.liveness.silent_for();
            if link.liveness.beats() > 0 && silent >= down_after && !link.dead.get() {
                let what = format!(
                    "silent for {silent:.1?} (a heartbeat was due every {:?}): declared down",
                    link.heartbeat
                );
                self.kill(
                    link,
                    ClientError::Protocol {
                        addr: link.addr,
                        what,
                    },
                );
            }
        }
        // The link is dead: nothing more to watch, and its other loops end.
        std::future::pending().await
    }

    // Only this writer uses the sender; the borrow lasts as long as the
    // link's I/O future.
    #[allow(clippy::await_holding_refcell_ref)]
    async fn write(&self, link: &Link<'c>) {
        let mut sender = link.sender.borrow_mut();
        // A heartbeat at once, then after every interval without a task: the
        // agent drops this job's work if the master falls silent.
        let mut beat_now = !link.heartbeat.is_zero();
        loop {
            let next = if std::mem::take(&mut beat_now) {
                None
            } else {
                let task = async { Some(link.outbox_rx.recv().await) };
                futures_lite::future::or(task, async {
                    if link.heartbeat.is_zero() {
                        std::future::pending::<()>().await;
                    }
                    async_io::Timer::after(link.heartbeat).await;
                    None
                })
                .await
            };
            let out = match next {
                Some(Ok(out)) => out,
                Some(Err(_)) => break,
                None if link.dead.get() => continue,
                None => {
                    if let Err(source) = sender.send(&Message::Heartbeat).await {
                        self.kill(
                            link,
                            ClientError::Wire {
                                addr: link.addr,
                                source,
                            },
                        );
                    }
                    continue;
                }
            };
            if link.dead.get() {
                continue;
            }
            let started = Instant::now();
            let sent = sender
                .send_bulk(&out.head, out.input.shape, &out.input.data)
                .await;
            if let Some(t) = self.trace {
                let (kind, bytes) = (TraceKind::TaskSend, sender.last_frame_len());
                t.frame(
                    kind, link.index, out.id, NO_STAGE, started, bytes, out.label,
                );
            }
            if let Err(source) = sent {
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
    }

    // The receiver stays borrowed across awaits: only one reader per link
    // runs, and it is dropped (between frames, after `drain`) with the
    // link's I/O future.
    #[allow(clippy::await_holding_refcell_ref)]
    async fn read(&self, link: &Link<'c>) {
        if link.dead.get() {
            return;
        }
        let mut receiver = link.receiver.borrow_mut();
        loop {
            let mut data = Vec::new();
            let received = match receiver.recv(&mut data).await {
                Ok(r) => r,
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
                    (done.id, Ok(Array { shape, data }))
                }
                Message::TaskFailed(f) => (f.id, Err((f.error, f.panicked))),
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
            let entry = link.pending.borrow_mut().remove(&id);
            if let Some(p) = entry {
                let outcome = outcome.map_err(|(message, panicked)| {
                    JobError::Task(TaskError {
                        job: Some(self.job),
                        task: p.task,
                        kernel: p.kernel,
                        agent: link.label.clone(),
                        message,
                        panicked,
                    })
                });
                let _ = p.reply.try_send(outcome);
            }
            let _ = self.progress_tx.try_send(());
        }
    }

    /// Marks a link dead and fails the calls waiting on it.
    fn kill(&self, link: &Link<'c>, why: ClientError) {
        log::warn!("{}: {why}", link.label);
        link.dead.set(true);
        let message = why.to_string();
        *link.why_dead.borrow_mut() = Some((message.clone(), Instant::now()));
        for (_, p) in link.pending.borrow_mut().drain() {
            let _ = p.reply.try_send(Err(JobError::Agent(ClientError::Protocol {
                addr: link.addr,
                what: message.clone(),
            })));
        }
        link.outbox_tx.close();
        if self.links.iter().all(|l| l.dead.get()) {
            self.tokens_tx.close();
        }
        let _ = self.progress_tx.try_send(());
    }

    /// Waits until no task is in flight on a live agent, so that a job that
    /// ends early (an error) leaves every connection between frames. Run it
    /// with the job's [`Dispatcher::run_io`] future still alive.
    pub async fn drain(&self) {
        loop {
            let busy = self
                .links
                .iter()
                .any(|l| !l.dead.get() && !l.pending.borrow().is_empty());
            if !busy {
                return;
            }
            let _ = self.progress_rx.recv().await;
        }
    }
}

impl Dispatcher<'_> {
    /// Marks every live agent that still has tasks in flight dead (the job
    /// gave up waiting for them).
    pub fn abandon_busy(&self, why: &str) {
        for link in &self.links {
            if !link.dead.get() && !link.pending.borrow().is_empty() {
                self.kill(
                    link,
                    ClientError::Protocol {
                        addr: link.addr,
                        what: why.to_owned(),
                    },
                );
            }
        }
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
