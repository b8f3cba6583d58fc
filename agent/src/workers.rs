//! Worker threads: where kernels run, one thread per core, never on the
//! executor that moves bytes. The queue in front of them is bounded, so a
//! master that sends faster than the cores compute is slowed down by TCP
//! backpressure instead of growing the agent's memory.

use crate::kernels::{Array, Kernel, KernelError};
use crate::trace::Recorder;
use skelpi_kernels::call::{CallScope, MemoryBudget, enter};
pub use skelpi_kernels::call::{
    Failure, Reservation, call_kernel, call_kernel_for, keep_going, reserve_memory,
};
use skelpi_proto::JobId;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Which task a worker's result belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tag {
    /// The caller's task id.
    pub id: u64,
    /// The job the task is part of (for logs).
    pub job: JobId,
    /// Record the call in the job's trace.
    pub trace: Option<Traced>,
    /// When the call must be done by (queueing included), if ever.
    pub deadline: Option<Instant>,
}

/// How a traced call is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traced {
    /// The streamed stage it runs for, or `NO_STAGE`.
    pub stage: u32,
    /// When its input arrived: the time until the call is its wait.
    pub since: Instant,
}

/// The result a worker sends back, tagged as its caller asked.
#[derive(Debug)]
pub struct Outcome {
    /// The caller's tag.
    pub tag: Tag,
    /// How long the kernel ran on its worker thread (the task's service
    /// time, without its wait in the queue).
    pub busy: Duration,
    /// The kernel's output or failure.
    pub result: Result<Array, Failure>,
}

struct Job {
    tag: Tag,
    kernel: Arc<dyn Kernel>,
    args: Vec<f64>,
    input: Array,
    reply: async_channel::Sender<Outcome>,
    /// Counts the call for its job until the call is run or dropped (also
    /// when a submit waiting for room is cancelled).
    counted: Counted,
}

/// One call counted in [`JobCounts`] while it lives.
#[derive(Debug)]
struct Counted {
    counts: Arc<JobCounts>,
    job: JobId,
}

impl Counted {
    fn new(counts: &Arc<JobCounts>, job: JobId) -> Counted {
        counts.add(job);
        Counted {
            counts: counts.clone(),
            job,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.counts.done(self.job);
    }
}

/// How long a pool being dropped waits for kernels still running (they
/// are told to stop; the built-ins do within milliseconds): then it goes
/// without them, so an agent always shuts down within systemd's stop
/// timeout.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Kernel memory an agent allows at once when not told: half the
/// machine's, or 512 MiB if that is unknown.
pub fn default_kernel_memory() -> u64 {
    match crate::identity::total_memory() {
        0 => 512 << 20,
        bytes => bytes / 2,
    }
}

/// What a worker tells the kernel call it runs (see [`CallScope`]).
struct CallContext {
    reply: async_channel::Sender<Outcome>,
    stopping: Arc<AtomicBool>,
    memory: Arc<MemoryBudget>,
    deadline: Option<Instant>,
}

impl CallScope for CallContext {
    fn stop(&self) -> Option<KernelError> {
        if self.stopping.load(Ordering::Relaxed) {
            Some(KernelError("stopped: the agent is shutting down".into()))
        } else if self.reply.is_closed() {
            Some(KernelError(
                "stopped: the master or stage that asked for it is gone".into(),
            ))
        } else if self.deadline.is_some_and(|d| Instant::now() > d) {
            Some(past_deadline())
        } else {
            None
        }
    }

    fn memory(&self) -> Option<&Arc<MemoryBudget>> {
        Some(&self.memory)
    }
}

fn past_deadline() -> KernelError {
    KernelError("stopped: its deadline passed (the master's task deadline)".into())
}

/// A fixed pool of worker threads with a bounded queue of jobs.
#[derive(Debug)]
pub struct Workers {
    queue: async_channel::Sender<Job>,
    threads: Vec<JoinHandle<()>>,
    recorder: Arc<Recorder>,
    stopping: Arc<AtomicBool>,
    memory: Arc<MemoryBudget>,
    /// Threads running a kernel now.
    busy: Arc<std::sync::atomic::AtomicUsize>,
    /// Calls queued or running, by job.
    jobs: Arc<JobCounts>,
}

/// Calls queued or running on the workers, by job: whether other jobs'
/// calls wait behind a job's (see [`Workers::others_busy`]).
#[derive(Debug, Default)]
struct JobCounts(std::sync::Mutex<std::collections::HashMap<JobId, usize>>);

impl JobCounts {
    fn add(&self, job: JobId) {
        let mut jobs = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *jobs.entry(job).or_default() += 1;
    }

    fn done(&self, job: JobId) {
        let mut jobs = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = jobs.get_mut(&job) {
            *n -= 1;
            if *n == 0 {
                jobs.remove(&job);
            }
        }
    }

    fn others(&self, job: JobId) -> bool {
        let jobs = self.0.lock().unwrap_or_else(|e| e.into_inner());
        jobs.keys().any(|&j| j != job)
    }
}

impl Workers {
    /// Starts `n` worker threads (at least one); the queue holds
    /// [`MAX_TASKS_PER_WORKER`](skelpi_proto::MAX_TASKS_PER_WORKER) jobs
    /// per thread, as a session of short tasks may have that many there.
    /// Traced calls are recorded in a new [`Recorder`].
    pub fn new(n: usize) -> std::io::Result<Workers> {
        let n = n.max(1);
        let recorder = Arc::new(Recorder::new(n));
        let (queue, jobs) = async_channel::bounded::<Job>(skelpi_proto::MAX_TASKS_PER_WORKER * n);
        let stopping = Arc::new(AtomicBool::new(false));
        let memory = Arc::new(MemoryBudget::new(default_kernel_memory()));
        let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counts = Arc::new(JobCounts::default());
        let threads = (0..n)
            .map(|i| {
                let jobs = jobs.clone();
                let recorder = recorder.clone();
                let (stopping, memory) = (stopping.clone(), memory.clone());
                let busy = busy.clone();
                std::thread::Builder::new()
                    .name(format!("worker-{i}"))
                    .spawn(move || {
                        while let Ok(job) = jobs.recv_blocking() {
                            if job.reply.is_closed() {
                                // Its caller is gone (a master that left):
                                // the call would be wasted.
                                continue;
                            }
                            let at = Instant::now();
                            busy.fetch_add(1, Ordering::Relaxed);
                            let scope = enter(Box::new(CallContext {
                                reply: job.reply.clone(),
                                stopping: stopping.clone(),
                                memory: memory.clone(),
                                deadline: job.tag.deadline,
                            }));
                            let late = job.tag.deadline.is_some_and(|d| at > d);
                            let result = if late {
                                // It waited in the queue past its deadline.
                                Err(Failure {
                                    message: past_deadline().0,
                                    panicked: false,
                                })
                            } else {
                                call_kernel_for(&*job.kernel, job.tag.job, &job.args, job.input)
                            };
                            // A kernel that finished past its deadline
                            // without asking fails all the same.
                            let result = match result {
                                Ok(_) if job.tag.deadline.is_some_and(|d| Instant::now() > d) => {
                                    Err(Failure {
                                        message: past_deadline().0,
                                        panicked: false,
                                    })
                                }
                                other => other,
                            };
                            drop(scope);
                            busy.fetch_sub(1, Ordering::Relaxed);
                            // Done with, before its outcome is sent.
                            drop(job.counted);
                            let busy = at.elapsed();
                            if let Some(t) = job.tag.trace {
                                let tag = job.tag;
                                recorder.kernel(tag.job, i, tag.id, t.stage, at, t.since);
                            }
                            let outcome = Outcome {
                                tag: job.tag,
                                busy,
                                result,
                            };
                            // Never wait for a caller: a session that does
                            // not read would hold this thread from every
                            // other master. Callers keep room for every
                            // outcome they are owed (see `submit`); a gone
                            // caller (its session ended) is not an error.
                            if let Err(async_channel::TrySendError::Full(o)) =
                                job.reply.try_send(outcome)
                            {
                                log::error!(
                                    "job {}: no room for the outcome of task {}: dropped",
                                    o.tag.job,
                                    o.tag.id
                                );
                            }
                        }
                    })
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Workers {
            queue,
            threads,
            recorder,
            stopping,
            memory,
            busy,
            jobs: counts,
        })
    }

    /// Whether calls of jobs other than `job` are queued or running: a
    /// session then keeps to its own slots (see
    /// [`Session::deepening`](crate::session::Session::deepening)).
    pub fn others_busy(&self, job: JobId) -> bool {
        self.jobs.others(job)
    }

    /// Threads running a kernel now, and calls queued for a thread.
    pub fn load(&self) -> (usize, usize) {
        (self.busy.load(Ordering::Relaxed), self.queue.len())
    }

    /// Sets the bytes its kernels may hold at once (see [`reserve_memory`]).
    pub fn set_kernel_memory(&self, bytes: u64) {
        self.memory.set_limit(bytes);
    }

    /// The recorder of traced calls (shared with the sessions).
    pub fn recorder(&self) -> &Arc<Recorder> {
        &self.recorder
    }

    /// Number of worker threads.
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    /// Whether there are no workers (never: there is at least one).
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// Queues a kernel call; waits while the queue is full. The outcome is
    /// sent to `reply` with `tag`, without waiting: `reply` must have room
    /// for every outcome its caller is owed (a worker that found it full
    /// would drop the outcome rather than wait for one caller while the
    /// others' calls queue behind it).
    pub async fn submit(
        &self,
        tag: Tag,
        kernel: Arc<dyn Kernel>,
        args: Vec<f64>,
        input: Array,
        reply: async_channel::Sender<Outcome>,
    ) {
        let job = Job {
            tag,
            kernel,
            args,
            input,
            reply,
            counted: Counted::new(&self.jobs, tag.job),
        };
        // The queue closes only when `self` is dropped, which cannot happen
        // while `self` is borrowed here.
        let _ = self.queue.send(job).await;
    }
}

impl Workers {
    /// Runs one kernel call on the workers and waits for its outcome.
    pub async fn call(
        &self,
        tag: Tag,
        kernel: Arc<dyn Kernel>,
        args: Vec<f64>,
        input: Array,
    ) -> Result<Array, Failure> {
        let (tx, rx) = async_channel::bounded(1);
        self.submit(tag, kernel, args, input, tx).await;
        match rx.recv().await {
            Ok(outcome) => outcome.result,
            Err(_) => Err(Failure {
                message: "the worker threads are gone".into(),
                panicked: false,
            }),
        }
    }
}

impl Drop for Workers {
    /// Tells running kernels to stop and waits for the threads at most
    /// [`SHUTDOWN_GRACE`]; a thread still in a kernel then is left behind
    /// (it ends with the process).
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.queue.close();
        let threads = std::mem::take(&mut self.threads);
        let n = threads.len();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let joined = std::thread::Builder::new()
            .name("worker-join".into())
            .spawn(move || {
                for t in threads {
                    let _ = t.join();
                }
                let _ = done_tx.send(());
            });
        if joined.is_ok() && done_rx.recv_timeout(SHUTDOWN_GRACE).is_err() {
            log::warn!(
                "some of {n} worker threads still run a kernel {SHUTDOWN_GRACE:?} after the \
                 stop: left behind"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Registry;

    #[test]
    fn a_running_kernel_is_told_to_stop_when_its_caller_goes_and_memory_is_budgeted() {
        let workers = Workers::new(1).unwrap();
        workers.set_kernel_memory(100 << 20);
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let reg = Registry::builtin()
            .with("until_told", move |_: &[f64], x: Array| {
                let _ = started_tx.send(());
                let at = Instant::now();
                while at.elapsed() < Duration::from_secs(30) {
                    keep_going()?;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(x)
            })
            .with("hungry", |args: &[f64], x: Array| {
                let _held = reserve_memory(args[0] as u64 * (1 << 20), "hungry")?;
                Ok(x)
            });
        smol::block_on(async {
            let (tx, rx) = async_channel::bounded(1);
            let tag = Tag::default();
            let kernel = reg.get("until_told").unwrap();
            workers
                .submit(tag, kernel, vec![], Array::list(vec![]), tx)
                .await;
            started_rx.recv().unwrap();
            let gone = Instant::now();
            drop(rx);
            // The worker is free again soon: the next call runs.
            let next = workers.call(
                tag,
                reg.get("square").unwrap(),
                vec![],
                Array::list(vec![3.0]),
            );
            assert_eq!(next.await.unwrap().data, [9.0]);
            assert!(
                gone.elapsed() < Duration::from_secs(5),
                "{:?}",
                gone.elapsed()
            );
            let hungry = |mib: f64| {
                workers.call(
                    tag,
                    reg.get("hungry").unwrap(),
                    vec![mib],
                    Array::list(vec![]),
                )
            };
            assert!(hungry(60.0).await.is_ok(), "within the budget");
            let e = hungry(160.0).await.unwrap_err().message;
            assert!(
                e.contains("needs 160 MiB; this agent allows 100 MiB"),
                "{e}"
            );
        });
    }

    #[test]
    fn the_workers_know_which_jobs_have_calls_on_them() {
        let workers = Workers::new(1).unwrap();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = std::sync::Mutex::new(release_rx);
        let reg = Registry::builtin().with("held", move |_: &[f64], x: Array| {
            let _ = release_rx.lock().unwrap().recv();
            Ok(x)
        });
        let tag = |job| Tag {
            id: 1,
            job: JobId(job),
            trace: None,
            deadline: None,
        };
        assert!(!workers.others_busy(JobId(1)), "none at first");
        smol::block_on(async {
            let (tx, rx) = async_channel::bounded(2);
            let held = reg.get("held").unwrap();
            workers
                .submit(tag(7), held, vec![], Array::list(vec![]), tx)
                .await;
            assert!(workers.others_busy(JobId(1)), "job 7 runs");
            assert!(!workers.others_busy(JobId(7)), "its own do not count");
            release_tx.send(()).unwrap();
            rx.recv().await.unwrap();
        });
        // Counted down once run, before its outcome is sent.
        assert!(!workers.others_busy(JobId(1)), "job 7 is done");
    }

    #[test]
    fn a_submit_cancelled_while_waiting_for_room_leaves_no_count() {
        let workers = Workers::new(1).unwrap();
        let open = Arc::new(AtomicBool::new(false));
        let gate = open.clone();
        let reg = Registry::builtin().with("gated", move |_: &[f64], x: Array| {
            let at = Instant::now();
            while !gate.load(Ordering::Relaxed) && at.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(x)
        });
        let tag = |job, id| Tag {
            id,
            job: JobId(job),
            trace: None,
            deadline: None,
        };
        let gated = reg.get("gated").unwrap();
        let (tx, rx) = async_channel::bounded(32);
        smol::block_on(async {
            // One running and a full queue behind it.
            for id in 0..=skelpi_proto::MAX_TASKS_PER_WORKER as u64 {
                let input = Array::list(vec![]);
                workers
                    .submit(tag(7, id), gated.clone(), vec![], input, tx.clone())
                    .await;
            }
            // Job 9's call waits for room, and its caller goes.
            let waiting = workers.submit(
                tag(9, 0),
                gated.clone(),
                vec![],
                Array::list(vec![]),
                tx.clone(),
            );
            assert!(futures_lite::future::poll_once(waiting).await.is_none());
            open.store(true, Ordering::Relaxed);
            for _ in 0..=skelpi_proto::MAX_TASKS_PER_WORKER {
                rx.recv().await.unwrap();
            }
        });
        assert!(
            !workers.others_busy(JobId(1)),
            "no call of job 9 is counted"
        );
    }

    #[test]
    fn kernels_run_on_worker_threads_and_panics_are_failures() {
        let workers = Workers::new(2).unwrap();
        let reg = Registry::builtin().with("thread_name", |_: &[f64], _: Array| {
            let name = std::thread::current().name().unwrap_or("").to_owned();
            Ok(Array::list(vec![name.starts_with("worker-") as u8 as f64]))
        });
        let (tx, rx) = async_channel::bounded(8);
        smol::block_on(async {
            for (id, k) in [(1, "thread_name"), (2, "panic"), (3, "fail"), (4, "square")] {
                let input = Array::list(vec![3.0]);
                let tag = Tag {
                    id,
                    job: JobId(9),
                    trace: None,
                    deadline: None,
                };
                workers
                    .submit(tag, reg.get(k).unwrap(), vec![], input, tx.clone())
                    .await;
            }
            let mut got: Vec<Outcome> = Vec::new();
            for _ in 0..4 {
                got.push(rx.recv().await.unwrap());
            }
            assert!(got.iter().all(|o| o.tag.job == JobId(9)), "tags come back");
            got.sort_by_key(|o| o.tag.id);
            assert_eq!(
                got[0].result.as_ref().unwrap().data,
                [1.0],
                "ran on a worker thread"
            );
            let panic = got[1].result.as_ref().unwrap_err();
            assert!(
                panic.panicked && panic.message.contains("panics, as asked"),
                "{panic:?}"
            );
            let fail = got[2].result.as_ref().unwrap_err();
            assert!(!fail.panicked && fail.message.contains("fails"), "{fail:?}");
            assert_eq!(got[3].result.as_ref().unwrap().data, [9.0]);
        });
    }
}
