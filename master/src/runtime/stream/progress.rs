//! Asking a streamed pipeline's stages how far they have got, for the
//! stall watchdog ([`crate::runtime::stall`]). The questions go over
//! connections of their own, one per agent, opened at the first question
//! and kept for the run: a stage's own connection may be full of items
//! that wait for room in its inbox.

use super::{Placement, StreamSpec};
use crate::client::AgentConn;
use crate::runtime::stall::PartCounts;
use futures_lite::future;
use skelpi_agent::wire::handshake::ConnectOptions;
use skelpi_proto::StageProgress;
use skelpi_proto::skeleton::Kernel;
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

impl Probes {
    /// Each stage's counts, asked of its agent; a stage `finished` (with
    /// that many items) is not asked.
    pub async fn ask(
        &self,
        spec: &StreamSpec<'_>,
        (placement, kernels): (&[Placement], &[Kernel]),
        stream: u64,
        finished: &[Cell<Option<u64>>],
    ) -> Vec<PartCounts> {
        let mut conns = self.0.take();
        let mut parts = Vec::with_capacity(placement.len());
        for (i, p) in placement.iter().enumerate() {
            let name = format!("stage {i} {} on {}", kernels[i], p.name);
            if let Some(items) = finished[i].get() {
                let all = Some(items);
                let note = "finished".to_owned();
                parts.push(PartCounts {
                    name,
                    arrived: all,
                    done: all,
                    sent: all,
                    note,
                });
                continue;
            }
            let counts = ask_one(&mut conns, spec, p.addr, stream, i as u32).await;
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
        self.0.set(conns);
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
    let asked = future::or(
        async { Some(conns[at].1.stage_progress(stream, stage).await) },
        async {
            async_io::Timer::after(ANSWER_WITHIN).await;
            None
        },
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
