//! Pipelines of `seq` stages streamed agent to agent: the master feeds the
//! first stage and reads the last; items never come back in between (see
//! `skelpi_agent::stages`).
//!
//! Every stage gets a connection of its own from the master: to open it,
//! to hear of its failures and its measurements, and — for the first stage
//! — to feed it, for the last to read its results. Closing them (on an
//! error, or when the caller drops the job) stops every stage.

use super::{JobError, TaskError};
use crate::client::{AgentConn, ClientError};
use crate::trace::{self, ClockSample, Recorder, Trace, TraceError};
use futures_lite::future;
use skelpi_agent::kernels::Array;
use skelpi_agent::key::ClusterKey;
use skelpi_agent::wire::handshake::ConnectOptions;
use skelpi_proto::skeleton::{Kernel, Skeleton};
use skelpi_proto::trace::TraceKind;
use skelpi_proto::{JobId, Message, Shape, StageNext, StageOpen, StreamItem, StreamRef};
use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

/// One concurrent part of a running pipeline: the feed, or one stage's
/// listener (which ends with the stage's report).
type Part<'a> = Pin<Box<dyn Future<Output = Result<Option<StageReport>, JobError>> + 'a>>;

/// How long stages may take to open (connect to their successor).
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a stage runs.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The agent's address (also given to the previous stage).
    pub addr: SocketAddr,
    /// Its name, for reports and errors.
    pub name: String,
}

/// What one stage measured, on its agent's clock.
#[derive(Debug, Clone, PartialEq)]
pub struct StageReport {
    /// Position, from 0.
    pub stage: usize,
    /// Its kernel.
    pub kernel: Kernel,
    /// The agent it ran on (name).
    pub agent: String,
    /// Items it processed.
    pub items: u64,
    /// Time its kernel calls took, all items together (worker queueing
    /// included).
    pub busy: Duration,
    /// From the first item's arrival to the last's.
    pub span: Duration,
}

/// Runs `stages` (one kernel each) placed on `placement` (one agent each,
/// possibly repeated) over `inputs`, handing each result and its index to
/// `on_result` in input order, feeding one input every `interval` if
/// given (later if the first stage is full), else as fast as it takes them.
/// Returns each stage's report.
pub async fn run_pipeline(
    placement: &[Placement],
    key: &ClusterKey,
    opts: &ConnectOptions,
    stages: &[Kernel],
    inputs: impl IntoIterator<Item = Array>,
    interval: Option<Duration>,
    on_result: impl FnMut(u64, Array),
) -> Result<Vec<StageReport>, JobError> {
    run_pipeline_with(
        placement, key, opts, stages, inputs, interval, on_result, None,
    )
    .await
}

/// [`run_pipeline`], traced when `trace_out` is given: the merged trace
/// of a pipeline that ran to its end is put there (one that failed leaves
/// [`TraceError::Stopped`]).
#[allow(clippy::too_many_arguments)]
pub async fn run_pipeline_with(
    placement: &[Placement],
    key: &ClusterKey,
    opts: &ConnectOptions,
    stages: &[Kernel],
    inputs: impl IntoIterator<Item = Array>,
    interval: Option<Duration>,
    mut on_result: impl FnMut(u64, Array),
    mut trace_out: Option<&mut Result<Trace, TraceError>>,
) -> Result<Vec<StageReport>, JobError> {
    if let Some(out) = trace_out.as_deref_mut() {
        *out = Err(TraceError::Stopped);
    }
    assert_eq!(placement.len(), stages.len(), "one placement per stage");
    let n = stages.len();
    if n == 0 {
        return Err(JobError::Invalid(
            "a pipeline needs at least one stage".into(),
        ));
    }
    // The stream id is the job id the agents log.
    let job = JobId(rand::random());
    let stream = job.0;
    log::debug!("job {job}: pipeline of {n} streamed stages");
    let recorder_owned = trace_out.is_some().then(Recorder::new);
    let recorder = recorder_owned.as_ref();
    // Distinct agents, in order of first use, and each stage's agent.
    let mut agents: Vec<SocketAddr> = Vec::new();
    let peers: Vec<usize> = placement
        .iter()
        .map(|p| match agents.iter().position(|a| *a == p.addr) {
            Some(i) => i,
            None => {
                agents.push(p.addr);
                agents.len() - 1
            }
        })
        .collect();
    // Each agent's clock probes (inner `None`: it does not trace).
    let mut probes: Vec<Option<Option<Vec<ClockSample>>>> = vec![None; agents.len()];
    let opened = future::or(
        async {
            let mut conns = Vec::with_capacity(n);
            for (i, p) in placement.iter().enumerate() {
                let mut conn = AgentConn::connect(p.addr, key, opts).await?;
                if let Some(rec) = recorder
                    && probes[peers[i]].is_none()
                {
                    let probed = trace::probe(&mut conn, rec.clock())
                        .await
                        .map_err(|e| JobError::Invalid(e.to_string()))?;
                    probes[peers[i]] = Some(probed);
                }
                let next = placement.get(i + 1).map(|q| StageNext {
                    addr: q.addr.to_string(),
                    stage: i as u32 + 1,
                });
                let open = Message::StageOpen(StageOpen {
                    stream,
                    stage: i as u32,
                    kernel: stages[i].name.clone(),
                    args: stages[i].args.clone(),
                    next,
                    trace: recorder.is_some(),
                });
                let (sender, _) = conn.halves();
                sender
                    .send(&open)
                    .await
                    .map_err(|source| ClientError::Wire {
                        addr: p.addr,
                        source,
                    })?;
                conns.push(conn);
            }
            for (i, conn) in conns.iter_mut().enumerate() {
                let addr = conn.addr();
                let (_, receiver) = conn.halves();
                let mut scratch = Vec::new();
                let got = receiver
                    .recv(&mut scratch)
                    .await
                    .map_err(|source| ClientError::Wire { addr, source })?;
                match got.msg {
                    Message::StageReady(r) if r.stream == stream && r.stage == i as u32 => {}
                    Message::Error(e) => {
                        return Err(JobError::Invalid(format!(
                            "stage {i} ({}) on {}: {}",
                            stages[i], placement[i].name, e.message
                        )));
                    }
                    other => {
                        return Err(ClientError::Protocol {
                            addr,
                            what: format!("{} while opening stage {i}", other.kind_name()),
                        }
                        .into());
                    }
                }
            }
            Ok(conns)
        },
        async {
            async_io::Timer::after(OPEN_TIMEOUT).await;
            Err(JobError::Invalid(format!(
                "the pipeline's stages did not open within {OPEN_TIMEOUT:?}"
            )))
        },
    )
    .await;
    let mut conns = opened?;

    // Split every connection: the first's sender feeds, every receiver
    // listens to its stage.
    // Items sent to stage 0; every stage must report that many.
    let fed = Cell::new(0u64);
    let mut halves: Vec<_> = conns.iter_mut().map(|c| (c.addr(), c.halves())).collect();
    let mut tasks: Vec<Part<'_>> = Vec::new();
    let mut on_result = Some(&mut on_result);
    let mut inputs = Some(inputs);
    let fed = &fed;
    for (i, (addr, (sender, receiver))) in halves.iter_mut().enumerate() {
        let addr = *addr;
        let wire = move |source| JobError::Agent(ClientError::Wire { addr, source });
        if let Some(inputs) = inputs.take() {
            let sender = &mut **sender;
            let feed = async move {
                let mut due = std::time::Instant::now();
                for (index, data) in inputs.into_iter().enumerate() {
                    if let Some(every) = interval {
                        async_io::Timer::at(due).await;
                        due = due.checked_add(every).unwrap_or(due);
                    }
                    let head = Message::StreamItem(StreamItem {
                        stream,
                        stage: 0,
                        index: index as u64,
                    });
                    let started = std::time::Instant::now();
                    sender
                        .send_bulk(&head, data.shape, &data.data)
                        .await
                        .map_err(wire)?;
                    if let Some(rec) = recorder {
                        let bytes = sender.last_frame_len();
                        let (kind, id) = (TraceKind::ItemSend, index as u64);
                        rec.frame(kind, 0, id, 0, started, bytes, trace::NO_LABEL);
                    }
                    fed.set(index as u64 + 1);
                }
                let end = Message::StreamEnd(StreamRef { stream, stage: 0 });
                sender.send(&end).await.map_err(wire)?;
                Ok(None)
            };
            tasks.push(Box::pin(feed));
        }
        let results = if i + 1 == n { on_result.take() } else { None };
        let receiver = &mut **receiver;
        let kernel = &stages[i];
        let agent = &placement[i].name;
        let listen = async move {
            let mut results = results;
            let mut expected = 0u64;
            let mut ended = false;
            let mut data = Vec::new();
            loop {
                let got = receiver.recv(&mut data).await.map_err(wire)?;
                match got.msg {
                    Message::StreamItem(item) if results.is_some() && item.stage == n as u32 => {
                        if item.index != expected {
                            return Err(JobError::Invalid(format!(
                                "the pipeline returned item {} where {expected} was due",
                                item.index
                            )));
                        }
                        expected += 1;
                        if let Some(rec) = recorder {
                            let (at, bytes) = (got.started, got.frame_len);
                            let (kind, id, stage) = (TraceKind::ItemRecv, item.index, item.stage);
                            rec.frame(kind, i, id, stage, at, bytes, trace::NO_LABEL);
                        }
                        let shape = got.bulk.unwrap_or(Shape::List(0));
                        let out = Array {
                            shape,
                            data: std::mem::take(&mut data),
                        };
                        if let Some(f) = results.as_mut() {
                            f(item.index, out);
                        }
                    }
                    Message::StreamEnd(_) if results.is_some() => ended = true,
                    Message::StageFailed(f) => {
                        return Err(TaskError {
                            job: Some(JobId(stream)),
                            task: format!("item {}", f.index),
                            kernel: kernel.name.clone(),
                            agent: format!("{agent} ({addr})"),
                            message: f.error,
                            panicked: f.panicked,
                        }
                        .into());
                    }
                    Message::StageStats(s) => {
                        let all = fed.get();
                        if s.items != all || (results.is_some() && (!ended || expected != all)) {
                            return Err(JobError::Invalid(format!(
                                "stage {i} on {agent} ended after {} of {all} items \
                                 ({expected} results came back)",
                                s.items
                            )));
                        }
                        return Ok(Some(StageReport {
                            stage: i,
                            kernel: kernel.clone(),
                            agent: agent.clone(),
                            items: s.items,
                            busy: Duration::from_nanos(s.busy_ns),
                            span: Duration::from_nanos(s.span_ns),
                        }));
                    }
                    Message::Error(e) => {
                        return Err(ClientError::Agent {
                            addr,
                            message: format!("stage {i}: {}", e.message),
                        }
                        .into());
                    }
                    other => {
                        return Err(ClientError::Protocol {
                            addr,
                            what: format!("{} from stage {i}", other.kind_name()),
                        }
                        .into());
                    }
                }
            }
        };
        tasks.push(Box::pin(listen));
    }
    // Poll everything; the first error ends the pipeline (the connections
    // close when the caller's job ends, which stops every stage). A stage
    // that failed makes its neighbours complain too, over other
    // connections: a task error arriving shortly after is the one reported.
    let mut reports = Vec::with_capacity(n);
    let mut outcome = poll_all(&mut tasks, &mut reports).await;
    if let Err(first) = &outcome
        && !matches!(first, JobError::Task(_))
    {
        let grace = async {
            async_io::Timer::after(Duration::from_millis(500)).await;
            Ok(())
        };
        if let Err(task @ JobError::Task(_)) =
            future::or(poll_all(&mut tasks, &mut reports), grace).await
        {
            outcome = Err(task);
        }
    }
    drop(tasks);
    drop(halves);
    outcome?;
    if let Some(out) = trace_out
        && let Some(rec) = recorder_owned
    {
        // Each agent once, on the connection of its first stage (agents
        // are numbered in that order).
        let firsts: Vec<usize> = (0..agents.len())
            .filter_map(|a| peers.iter().position(|&p| p == a))
            .collect();
        let on = conns
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| firsts.contains(i))
            .map(|(_, c)| c);
        let before = probes.into_iter().map(Option::flatten).collect();
        let agents = trace::gather(on, before, rec.clock(), job).await;
        let kernels = stages.iter().map(Kernel::to_string).collect();
        let tree = Skeleton::pipe(stages.iter().cloned().map(Skeleton::seq)).to_string();
        *out = Ok(trace::merge::merge(&rec.finish(job, tree, kernels, agents)));
    }
    for c in conns {
        c.close().await;
    }
    reports.sort_by_key(|r| r.stage);
    Ok(reports)
}

/// Polls every part until all are done or one fails (the failed one is
/// removed; the others can be polled again).
async fn poll_all(
    tasks: &mut Vec<Part<'_>>,
    reports: &mut Vec<StageReport>,
) -> Result<(), JobError> {
    future::poll_fn(|cx| {
        let mut i = 0;
        while i < tasks.len() {
            match tasks[i].as_mut().poll(cx) {
                std::task::Poll::Ready(Ok(report)) => {
                    reports.extend(report);
                    drop(tasks.swap_remove(i));
                }
                std::task::Poll::Ready(Err(e)) => {
                    drop(tasks.swap_remove(i));
                    return std::task::Poll::Ready(Err(e));
                }
                std::task::Poll::Pending => i += 1,
            }
        }
        if tasks.is_empty() {
            std::task::Poll::Ready(Ok(()))
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}
