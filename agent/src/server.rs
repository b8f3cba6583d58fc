//! The agent's server: accepts masters, authenticates them, and serves each
//! connection's requests until it closes or the agent shuts down.

use crate::admission::{Admission, HandshakeSlot};
use crate::roles;
use crate::state::AgentState;
use async_net::{TcpListener, TcpStream};
use futures_lite::future;
use skelpi_proto::{ErrorCode, ErrorReply, Message};
use skelpi_wire::handshake;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// How long sessions get to say goodbye when the agent shuts down.
const GOODBYE_GRACE: Duration = Duration::from_secs(2);

/// Serves connections from `listener` until `shutdown` completes; then stops
/// accepting, tells every open session to end (masters receive a
/// "shutting down" error) and returns once they have, or after a short grace.
///
/// Sessions run on a single-threaded executor owned by this call: the
/// executor only moves bytes; CPU-bound work belongs on worker threads.
pub async fn serve(
    listener: TcpListener,
    config: Arc<AgentState>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let ex = Rc::new(smol::LocalExecutor::new());
    // Sessions hold a clone of `alive_tx`; `alive_rx` closes when all ended.
    let (alive_tx, alive_rx) = async_channel::bounded::<()>(1);
    let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
    let admission = Admission::new(config.max_connections);
    let acceptor = {
        let ex = ex.clone();
        ex.clone().spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(conn) => conn,
                    Err(e) => {
                        log::warn!("accept failed: {e}; retrying");
                        async_io::Timer::after(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let now = std::time::Instant::now();
                let (slot, evicted) = admission.handshake(peer.ip(), now, bytes_waiting(&stream));
                if let Some(why) = evicted {
                    admission
                        .complaints
                        .warn(|| format!("connection from {peer}: {why}"));
                }
                let alive = alive_tx.clone();
                let config = config.clone();
                let stop = stop_rx.clone();
                let admission = admission.clone();
                ex.spawn(async move {
                    session(stream, peer, config, admission, slot, stop).await;
                    drop(alive);
                })
                .detach();
                // Let the new session read what its peer already sent
                // before a burst of connections in the backlog can evict
                // it as silent.
                future::yield_now().await;
            }
        })
    };
    ex.run(shutdown).await;
    drop(acceptor);
    drop(stop_tx);
    ex.run(future::or(
        async {
            let _ = alive_rx.recv().await;
        },
        async {
            async_io::Timer::after(GOODBYE_GRACE).await;
        },
    ))
    .await;
    Ok(())
}

/// Whether bytes from the peer of `stream` wait unread (a peek that
/// never blocks: the socket is non-blocking).
fn bytes_waiting(stream: &TcpStream) -> impl Fn() -> bool + 'static {
    let socket: std::sync::Arc<async_io::Async<std::net::TcpStream>> = stream.clone().into();
    move || matches!(socket.get_ref().peek(&mut [0u8; 1]), Ok(n) if n > 0)
}

async fn session(
    stream: TcpStream,
    peer: SocketAddr,
    config: Arc<AgentState>,
    admission: Rc<Admission>,
    slot: HandshakeSlot,
    stop: async_channel::Receiver<()>,
) {
    // The handshake ends early if the agent stops, or if a newer
    // connection takes its place in the budget.
    let interrupted = async {
        future::or(
            async {
                let _ = stop.recv().await;
            },
            slot.evicted(),
        )
        .await;
        None
    };
    let est = match future::or(
        async {
            let spoke = || slot.spoke();
            Some(handshake::accept_noting(stream, &config.key, &config.accept, spoke).await)
        },
        interrupted,
    )
    .await
    {
        None => return,
        Some(Ok(est)) => est,
        Some(Err(e)) => {
            admission
                .complaints
                .warn(|| format!("refused connection from {peer}: {e}"));
            return;
        }
    };
    let _session = match admission.session(slot) {
        Ok(s) => s,
        Err(why) => {
            let mut sender = est.sender;
            let busy = Message::Error(ErrorReply {
                code: ErrorCode::Unsupported,
                message: format!("agent is busy: {why}"),
            });
            let _ = sender.send(&busy).await;
            sender.close();
            admission
                .complaints
                .warn(|| format!("turned away master {peer}: {why}"));
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
    let _counted = config.master_connected();
    roles::serve_session(est, peer, &config, async {
        let _ = stop.recv().await;
    })
    .await;
}
