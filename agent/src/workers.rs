//! Worker threads: where kernels run, one thread per core, never on the
//! executor that moves bytes. The queue in front of them is bounded, so a
//! master that sends faster than the cores compute is slowed down by TCP
//! backpressure instead of growing the agent's memory.

use crate::kernels::{Array, Kernel};
use crate::trace::Recorder;
use skelpi_proto::JobId;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How a kernel call ended badly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What went wrong.
    pub message: String,
    /// The kernel panicked.
    pub panicked: bool,
}

/// Which task a worker's result belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tag {
    /// The caller's task id.
    pub id: u64,
    /// The job the task is part of (for logs).
    pub job: JobId,
    /// Record the call in the job's trace.
    pub trace: Option<Traced>,
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
}

/// A fixed pool of worker threads with a bounded queue of jobs.
#[derive(Debug)]
pub struct Workers {
    queue: async_channel::Sender<Job>,
    threads: Vec<JoinHandle<()>>,
    recorder: Arc<Recorder>,
}

impl Workers {
    /// Starts `n` worker threads (at least one); the queue holds `2 n` jobs.
    /// Traced calls are recorded in a new [`Recorder`].
    pub fn new(n: usize) -> std::io::Result<Workers> {
        let n = n.max(1);
        let recorder = Arc::new(Recorder::new(n));
        let (queue, jobs) = async_channel::bounded::<Job>(2 * n);
        let threads = (0..n)
            .map(|i| {
                let jobs = jobs.clone();
                let recorder = recorder.clone();
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
                            let result =
                                call_kernel_for(&*job.kernel, job.tag.job, &job.args, job.input);
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
        })
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
    fn drop(&mut self) {
        self.queue.close();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Runs a kernel on this thread, turning a panic into a [`Failure`].
pub fn call_kernel(kernel: &dyn Kernel, args: &[f64], input: Array) -> Result<Array, Failure> {
    call_kernel_for(kernel, JobId::default(), args, input)
}

/// [`call_kernel`] for job `job` ([`Kernel::call_for`]).
pub fn call_kernel_for(
    kernel: &dyn Kernel,
    job: JobId,
    args: &[f64],
    input: Array,
) -> Result<Array, Failure> {
    match catch_unwind(AssertUnwindSafe(|| kernel.call_for(job, args, input))) {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(Failure {
            message: e.0,
            panicked: false,
        }),
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            Err(Failure {
                message: format!("kernel panicked: {what}"),
                panicked: true,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Registry;

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
