//! Opening: the stage finds its kernel, registers its inbox and connects
//! to the next stage's agent before it tells the master it is ready, or
//! refuses. (Between finding the kernel and registering, `run_stage`
//! prepares the trace recorder of a traced stream.)

use super::Stage;
use super::compute::Program;
use crate::kernels::Kernel;
use crate::state::AgentState;
use crate::streams::{Registration, StageInput};
use skelpi_proto::text::quoted;
use skelpi_proto::{ErrorCode, Hello, Message, StageOpen, StreamRef};
use skelpi_wire::handshake::{self, ConnectOptions};
use skelpi_wire::{Receiver, Sender};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// What an opened stage holds while it runs.
pub(super) struct Opened<'a> {
    /// The kernel it runs first, and its arguments.
    pub(super) program: Program,
    /// Its inbox, why its input was cut, and its counts.
    pub(super) input: StageInput,
    /// Its inbox's place in the agent's streams, removed when dropped.
    pub(super) registration: Registration<'a>,
    /// The link to the next stage's agent, if there is a next stage.
    pub(super) next: Option<(Sender, Receiver)>,
}

impl<'a> Stage<'a> {
    /// Finds the kernel `name` the stage is to run first; if this agent
    /// has no such kernel, refuses the stage to the master instead, and
    /// gives nothing.
    pub(super) async fn find_kernel(&self, name: &str) -> Option<Arc<dyn Kernel>> {
        match self.config.kernels.find_unblocked(name).await {
            Ok(k) => Some(k),
            Err(why) => {
                let what = format!("agent {}: {why}", self.config.info.name);
                self.refuse(ErrorCode::BadRequest, what).await;
                None
            }
        }
    }

    /// Opens the stage as `open` asks, to run `kernel` first: registers
    /// its inbox, connects to the next stage's agent, and tells the master
    /// the stage is ready; if any of that fails, refuses the stage to the
    /// master instead, and gives nothing.
    pub(super) async fn open(
        &self,
        open: &StageOpen,
        kernel: Arc<dyn Kernel>,
    ) -> Option<Opened<'a>> {
        let config = self.config;
        let args = open.args.clone();
        let (input, registration) =
            match config.streams.register(self.stream, self.stage, open.trace) {
                Ok(r) => r,
                Err(what) => {
                    self.refuse(ErrorCode::BadRequest, what).await;
                    return None;
                }
            };
        let next = match &open.next {
            None => None,
            Some(n) => {
                match connect(config, &n.addr, self.link.plaintext, self.link.heartbeat).await {
                    Ok(halves) => Some(halves),
                    Err(e) => {
                        let what = format!("cannot reach stage {} at {}: {e}", n.stage, n.addr);
                        self.refuse(ErrorCode::LinkLost, what).await;
                        return None;
                    }
                }
            }
        };
        let (job, stage) = (self.job, self.stage);
        log::info!(
            skelpi_job:% = job;
            "job {job}: stage {stage} runs {}{}, sending to {}",
            open.kernel,
            quoted(&format!("{:?}", open.args)),
            open.next.as_ref().map_or("the master", |n| n.addr.as_str())
        );
        let ready = StreamRef {
            stream: self.stream,
            stage,
        };
        self.report(Message::StageReady(ready)).await;
        Some(Opened {
            program: Program { kernel, args },
            input,
            registration,
            next,
        })
    }
}

/// Opens an authenticated connection to the next stage's agent at `addr`
/// (an address, never a name to resolve) and greets it, asking for a
/// heartbeat every `heartbeat` (zero: none), so that an agent that turns
/// the connection away is known before any item is sent.
async fn connect(
    config: &AgentState,
    addr: &str,
    plaintext: bool,
    heartbeat: Duration,
) -> Result<(Sender, Receiver), String> {
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an address (ip:port)"))?;
    let limit = Duration::from_secs(10);
    let stream = skelpi_wire::dial(addr, limit)
        .await
        .map_err(|e| e.to_string())?;
    let opts = ConnectOptions {
        plaintext,
        ..Default::default()
    };
    let est = handshake::connect(stream, &config.key, &opts)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, mut receiver) = (est.sender, est.receiver);
    let hello = Message::Hello(Hello {
        master: format!("stage link from agent {}", config.info.name),
        heartbeat_ms: heartbeat.as_millis().try_into().unwrap_or(u32::MAX),
    });
    sender.send(&hello).await.map_err(|e| e.to_string())?;
    let mut scratch = Vec::new();
    let answer = skelpi_wire::within(limit, receiver.recv(&mut scratch))
        .await
        .transpose()
        .map_err(|e| e.to_string())?;
    match answer.map(|r| r.msg) {
        Some(Message::Welcome(_)) => Ok((sender, receiver)),
        Some(Message::Error(e)) => Err(e.message),
        Some(other) => Err(format!("it answered hello with {}", other.kind_name())),
        None => Err(format!("no answer to hello within {limit:?}")),
    }
}
