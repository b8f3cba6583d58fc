//! Opening a run's stages: connect to every stage's agent (probing its
//! clock first if the run is traced), open the stage there — told where
//! the next one runs — and wait until every stage is ready.

use super::{PartStop, stage_error};
use crate::client::{AgentConn, ClientError};
use crate::runtime::JobError;
use crate::runtime::stream::{OPEN_TIMEOUT, Placement, READY_TIMEOUT, StreamSpec};
use crate::trace::{self, ClockSample, Recorder};
use futures_lite::future;
use skelpi_proto::skeleton::Kernel;
use skelpi_proto::{ErrorCode, Message, StageNext, StageOpen};
use std::time::Instant;

/// [`open`] within [`OPEN_TIMEOUT`]: the job fails if the stages take
/// longer.
pub(super) async fn within_timeout(
    spec: &StreamSpec<'_>,
    on: (&[Placement], &[Kernel]),
    stream: u64,
    recorder: Option<&Recorder>,
    peers: &[usize],
    probes: &mut [Option<Option<Vec<ClockSample>>>],
) -> Result<Vec<AgentConn>, PartStop> {
    future::or(open(spec, on, stream, recorder, peers, probes), async {
        async_io::Timer::after(OPEN_TIMEOUT).await;
        Err(PartStop::Fail(JobError::Invalid(format!(
            "the pipeline's stages did not open within {OPEN_TIMEOUT:?}"
        ))))
    })
    .await
}

/// Connects to every stage's agent, opens the stages (each told where the
/// next one runs) and waits until all are ready. `peers`: each stage's
/// agent; `probes`: each agent's clock probes, taken on its first stage's
/// connection if the run is traced.
async fn open(
    spec: &StreamSpec<'_>,
    (placement, kernels): (&[Placement], &[Kernel]),
    stream: u64,
    recorder: Option<&Recorder>,
    peers: &[usize],
    probes: &mut [Option<Option<Vec<ClockSample>>>],
) -> Result<Vec<AgentConn>, PartStop> {
    let mut conns = Vec::with_capacity(placement.len());
    for (i, p) in placement.iter().enumerate() {
        let lost = |e: ClientError| PartStop::Lost(p.addr, e.to_string(), Instant::now());
        let mut conn = AgentConn::connect(p.addr, spec.key, spec.opts)
            .await
            .map_err(lost)?;
        if let Some(rec) = recorder
            && probes[peers[i]].is_none()
        {
            let probed = trace::probe(&mut conn, rec.clock())
                .await
                .map_err(|e| PartStop::Fail(JobError::Invalid(e.to_string())))?;
            probes[peers[i]] = Some(probed);
        }
        let next = placement.get(i + 1).map(|q| StageNext {
            addr: q.addr.to_string(),
            stage: i as u32 + 1,
        });
        let open = Message::StageOpen(StageOpen {
            stream,
            stage: i as u32,
            kernel: kernels[i].name.clone(),
            args: kernels[i].args.clone(),
            next,
            trace: recorder.is_some(),
        });
        let (sender, _) = conn.halves();
        sender
            .send(&open)
            .await
            .map_err(|e| PartStop::Lost(p.addr, e.to_string(), Instant::now()))?;
        conns.push(conn);
    }
    let deadline = Instant::now() + READY_TIMEOUT;
    for (i, conn) in conns.iter_mut().enumerate() {
        ready(i, conn, (placement, kernels), stream, deadline).await?;
    }
    Ok(conns)
}

/// Waits until `deadline` for stage `i` to say it is ready on `conn`.
async fn ready(
    i: usize,
    conn: &mut AgentConn,
    (placement, kernels): (&[Placement], &[Kernel]),
    stream: u64,
    deadline: Instant,
) -> Result<(), PartStop> {
    let addr = conn.addr();
    let (_, receiver) = conn.halves();
    let mut scratch = Vec::new();
    let left = deadline.saturating_duration_since(Instant::now());
    let got = skelpi_wire::within(left, receiver.recv(&mut scratch)).await;
    let what = format!("stage {i} was not ready within {READY_TIMEOUT:?}");
    let got = got
        .ok_or_else(|| PartStop::Lost(addr, what, Instant::now()))?
        .map_err(|e| PartStop::Lost(addr, e.to_string(), Instant::now()))?;
    match got.msg {
        Message::StageReady(r) if r.stream == stream && r.stage == i as u32 => Ok(()),
        Message::Error(e) if e.code != ErrorCode::BadRequest => Err(stage_error(i, placement, e)),
        Message::Error(e) => Err(PartStop::Fail(JobError::Invalid(format!(
            "stage {i} ({}) on {}: {}",
            kernels[i], placement[i].name, e.message
        )))),
        other => Err(PartStop::Fail(
            ClientError::Protocol {
                addr,
                what: format!("{} while opening stage {i}", other.kind_name()),
            }
            .into(),
        )),
    }
}
