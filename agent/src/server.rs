//! The agent's server: accepts masters, authenticates them, and serves each
//! connection's requests until it closes or the agent shuts down.

use crate::key::ClusterKey;
use crate::roles;
use crate::wire::handshake::{self, AcceptOptions};
use async_net::{TcpListener, TcpStream};
use futures_lite::future;
use skelpi_proto::AgentInfo;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// What a serving agent needs.
#[derive(Debug)]
pub struct ServerConfig {
    /// What the agent says about itself.
    pub info: AgentInfo,
    /// The cluster key masters must prove they hold.
    pub key: ClusterKey,
    /// Handshake and frame limits.
    pub accept: AcceptOptions,
}

/// Serves connections from `listener` until `shutdown` completes; then stops
/// accepting, ends every open session and returns.
///
/// Sessions run on a single-threaded executor owned by this call: the
/// executor only moves bytes; CPU-bound work belongs on worker threads.
pub async fn serve(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let ex = Rc::new(smol::LocalExecutor::new());
    let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
    let accept_loop = {
        let ex = ex.clone();
        async move {
            let mut sessions: Vec<smol::Task<()>> = Vec::new();
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(conn) => conn,
                    Err(e) => {
                        log::warn!("accept failed: {e}; retrying");
                        async_io::Timer::after(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                sessions.retain(|t| !t.is_finished());
                let config = config.clone();
                let stop = stop_rx.clone();
                sessions.push(ex.spawn(session(stream, peer, config, stop)));
            }
        }
    };
    // The accept loop is a task of its own so that it is polled only when a
    // connection arrives, not every time a session wakes the executor.
    let acceptor = ex.spawn(accept_loop);
    ex.run(shutdown).await;
    drop(acceptor);
    drop(stop_tx);
    // Sessions see the closed stop channel and end; let them say goodbye.
    ex.run(async {
        while !ex.is_empty() {
            future::yield_now().await;
        }
    })
    .await;
    Ok(())
}

async fn session(
    stream: TcpStream,
    peer: SocketAddr,
    config: Arc<ServerConfig>,
    stop: async_channel::Receiver<()>,
) {
    let stopped = async {
        let _ = stop.recv().await;
    };
    let run = async {
        let est = match handshake::accept(stream, &config.key, &config.accept).await {
            Ok(est) => est,
            Err(e) => {
                log::warn!("refused connection from {peer}: {e}");
                return;
            }
        };
        log::info!(
            "master {peer} authenticated ({:?}{})",
            est.cipher,
            if est.plaintext {
                ", plaintext transport"
            } else {
                ""
            }
        );
        roles::serve_session(est, peer, &config.info).await;
    };
    future::or(run, stopped).await;
}
