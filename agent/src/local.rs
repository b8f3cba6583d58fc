//! In-process agents on loopback: the embedded cluster that tests and the
//! default benchmark run on when no board answers.

use crate::identity;
use crate::kernels::Registry;
use crate::server;
use crate::state::AgentState;
use skelpi_proto::AgentInfo;
use skelpi_wire::handshake::AcceptOptions;
use skelpi_wire::key::ClusterKey;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The stack of an in-process agent's executor thread: that of the
/// daemon's, which runs on the main thread (8 MiB). The default 2 MiB of a
/// spawned thread is too little in debug builds, where the trace rings
/// (`Recorder::prepare`) are built on the stack before they are boxed.
const EXECUTOR_STACK: usize = 8 << 20;

/// Options of an in-process agent.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Grant masters' requests for a plaintext transport.
    pub allow_plaintext: bool,
    /// Worker threads it reports (and will run kernels on).
    pub workers: usize,
    /// Shift of its trace clock, nanoseconds (see
    /// [`crate::trace::Recorder::set_clock_offset`]).
    pub clock_offset_ns: i64,
    /// Its kernels (`None`: the built-in ones).
    pub kernels: Option<Registry>,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            allow_plaintext: true,
            workers: 1,
            clock_offset_ns: 0,
            kernels: None,
        }
    }
}

/// An agent serving on `127.0.0.1` from its own thread, with no mDNS.
/// Dropping it shuts it down and joins its thread.
#[derive(Debug)]
pub struct LocalAgent {
    addr: SocketAddr,
    info: AgentInfo,
    stop: Option<async_channel::Sender<()>>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl LocalAgent {
    /// Binds `127.0.0.1:0` and starts serving.
    pub fn start(name: &str, key: ClusterKey, opts: LocalOptions) -> std::io::Result<LocalAgent> {
        let std_listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = std_listener.local_addr()?;
        let listener = async_net::TcpListener::try_from(std_listener)?;
        let info = identity::local_info(name, None, opts.workers, addr.port());
        let config = AgentState::new(
            info,
            key,
            AcceptOptions {
                allow_plaintext: opts.allow_plaintext,
                ..AcceptOptions::default()
            },
        )?
        .with_kernels(opts.kernels.unwrap_or_else(Registry::builtin));
        let info = config.info.clone();
        let config = Arc::new(config);
        config
            .workers
            .recorder()
            .set_clock_offset(opts.clock_offset_ns);
        let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name(format!("agent-{name}"))
            .stack_size(EXECUTOR_STACK)
            .spawn(move || {
                smol::block_on(server::serve(listener, config, async move {
                    let _ = stop_rx.recv().await;
                }))
            })?;
        Ok(LocalAgent {
            addr,
            info,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What it says about itself.
    pub fn info(&self) -> &AgentInfo {
        &self.info
    }
}

impl Drop for LocalAgent {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
