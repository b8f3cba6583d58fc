//! Asking a streamed pipeline's stages how far they have got, for the
//! stall watchdog ([`crate::runtime::stall`]). The questions go over
//! connections of their own, one per agent, opened at the first question
//! and kept for the run: a stage's own connection may be full of items
//! that wait for room in its inbox.

use super::{Placement, StreamSpec};
use crate::client::{AgentConn, ClientError, Reply, unexpected};
use crate::runtime::stall::PartCounts;
use skelpi_proto::skeleton::Kernel;
use skelpi_proto::{Message, StageProgress, StreamRef};
use skelpi_wire::handshake::ConnectOptions;
use std::cell::Cell;
use std::net::SocketAddr;
use std::time::Duration;

/// How long an agent may take to answer (or to accept the connection).
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// Connections for stage questions, by agent address.
#[derive(Default)]
pub(super) struct Probes(Cell<Vec<(SocketAddr, AgentConn)>>);

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Probes")
    }
}

/// What asking a stage's agent came to: `None` for a stage `finished`
/// (not asked), else its agent's answer.
pub(super) type Asked = Option<Result<Option<StageProgress>, String>>;

impl Probes {
    /// Each stage's name (`stage 1 square on pi-2`) and counts, asked of
    /// its agent; a stage `finished` is not asked.
    pub async fn progress(
        &self,
        spec: &StreamSpec<'_>,
        (placement, kernels): (&[Placement], &[Kernel]),
        stream: u64,
        finished: &[Cell<Option<u64>>],
    ) -> Vec<(String, Asked)> {
        let mut conns = self.0.take();
        let mut asked = Vec::with_capacity(placement.len());
        for (i, p) in placement.iter().enumerate() {
            let name = format!("stage {i} {} on {}", kernels[i], p.name);
            if finished[i].get().is_some() {
                asked.push((name, None));
                continue;
            }
            // Boxed: the watchdog polls this deep inside a job's future,
            // whose frames are large in debug builds.
            let counts = Box::pin(ask_one(&mut conns, spec, p.addr, stream, i as u32)).await;
            asked.push((name, Some(counts)));
        }
        self.0.set(conns);
        asked
    }

    /// Each stage's counts, asked of its agent; a stage `finished` (with
    /// that many items) is not asked.
    pub async fn ask(
        &self,
        spec: &StreamSpec<'_>,
        on: (&[Placement], &[Kernel]),
        stream: u64,
        finished: &[Cell<Option<u64>>],
    ) -> Vec<PartCounts> {
        let asked = self.progress(spec, on, stream, finished).await;
        let mut parts = Vec::with_capacity(asked.len());
        for (i, (name, counts)) in asked.into_iter().enumerate() {
            let Some(counts) = counts else {
                let all = finished[i].get();
                let note = "finished".to_owned();
                parts.push(PartCounts {
                    name,
                    arrived: all,
                    done: all,
                    sent: all,
                    note,
                });
                continue;
            };
            parts.push(match counts {
                Ok(Some(c)) => PartCounts {
                    name,
                    arrived: Some(c.arrived),
                    done: Some(c.done),
                    sent: Some(c.sent),
                    note: if c.input_ended { "input ended" } else { "" }.to_owned(),
                },
                Ok(None) => PartCounts::unknown(name, "not running on its agent"),
                Err(why) => PartCounts::unknown(name, &format!("no answer ({why})")),
            });
        }
        parts
    }
}

/// Asks the agent at `addr` for one stage's counts, connecting first if
/// need be; a connection that fails or does not answer in time is dropped.
async fn ask_one(
    conns: &mut Vec<(SocketAddr, AgentConn)>,
    spec: &StreamSpec<'_>,
    addr: SocketAddr,
    stream: u64,
    stage: u32,
) -> Result<Option<StageProgress>, String> {
    let at = match conns.iter().position(|(a, _)| *a == addr) {
        Some(at) => at,
        None => {
            let opts = ConnectOptions {
                heartbeat: Duration::ZERO,
                timeout: ANSWER_WITHIN,
                ..spec.opts.clone()
            };
            let conn = AgentConn::connect(addr, spec.key, &opts)
                .await
                .map_err(|e| e.to_string())?;
            conns.push((addr, conn));
            conns.len() - 1
        }
    };
    let asked = skelpi_wire::within(
        ANSWER_WITHIN,
        stage_progress(&mut conns[at].1, stream, stage),
    )
    .await;
    match asked {
        Some(Ok(counts)) => Ok(counts),
        Some(Err(e)) => {
            conns.swap_remove(at);
            Err(e.to_string())
        }
        None => {
            conns.swap_remove(at);
            Err(format!("none within {ANSWER_WITHIN:?}"))
        }
    }
}

/// How far stage `stage` of stream `stream` has got on `conn`'s agent;
/// `None` if it does not run there (it finished, or never opened) or the
/// agent is too old to say.
async fn stage_progress(
    conn: &mut AgentConn,
    stream: u64,
    stage: u32,
) -> Result<Option<StageProgress>, ClientError> {
    let addr = conn.addr();
    let ask = Message::StageQuery(StreamRef { stream, stage });
    conn.request(&ask, |got| match got {
        Message::StageProgress(p) if (p.stream, p.stage) == (stream, stage) => {
            Ok(Reply::Done(Some(p)))
        }
        Message::Error(_) => Ok(Reply::Done(None)),
        other => Err(unexpected(addr, other, "answering a stage query")),
    })
    .await
}
