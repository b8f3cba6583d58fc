//! The roles an agent plays for a master. For now: ping and echo (the
//! round-trip benchmark's far end).

use crate::wire::WireError;
use crate::wire::handshake::Established;
use futures_lite::future;
use skelpi_proto::{AgentInfo, ErrorCode, ErrorReply, Message};
use std::net::SocketAddr;

/// Serves one authenticated connection until the master leaves or `stop`
/// completes; in the latter case the master is told the agent is shutting
/// down.
pub async fn serve_session(
    est: Established,
    peer: SocketAddr,
    info: &AgentInfo,
    stop: impl Future<Output = ()>,
) {
    let Established {
        mut sender,
        mut receiver,
        ..
    } = est;
    let mut bulk = Vec::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let next = future::or(async { Some(receiver.recv(&mut bulk).await) }, async {
            stop.as_mut().await;
            None
        })
        .await;
        let Some(next) = next else {
            let bye = Message::Error(ErrorReply {
                code: ErrorCode::ShuttingDown,
                message: "agent is shutting down".into(),
            });
            let _ = sender.send(&bye).await;
            sender.close();
            return;
        };
        let received = match next {
            Ok(r) => r,
            Err(WireError::Closed) => {
                log::info!("master {peer} disconnected");
                return;
            }
            Err(e) => {
                log::warn!("bad input from master {peer}: {e}");
                let reply = Message::Error(ErrorReply {
                    code: ErrorCode::BadRequest,
                    message: e.to_string(),
                });
                let sent = sender.send(&reply).await;
                if e.is_recoverable() && sent.is_ok() {
                    continue;
                }
                sender.close();
                return;
            }
        };
        let result = match received.msg {
            Message::Hello(hello) => {
                log::info!("master {peer} is {:?}", hello.master);
                sender.send(&Message::Welcome(info.clone())).await
            }
            Message::Ping(p) => sender.send(&Message::Pong(p)).await,
            Message::Echo(chunk) => match received.bulk {
                Some(shape) => {
                    sender
                        .send_bulk(&Message::EchoReply(chunk), shape, &bulk)
                        .await
                }
                None => Ok(()),
            },
            Message::Bye => {
                log::info!("master {peer} said goodbye");
                sender.close();
                return;
            }
            Message::Error(e) => {
                log::warn!("master {peer} reported an error: {}", e.message);
                Ok(())
            }
            other => {
                let reply = Message::Error(ErrorReply {
                    code: ErrorCode::Unsupported,
                    message: format!("agent does not handle {} messages", other.kind_name()),
                });
                sender.send(&reply).await
            }
        };
        if let Err(e) = result {
            log::warn!("connection to master {peer} failed: {e}");
            return;
        }
    }
}
