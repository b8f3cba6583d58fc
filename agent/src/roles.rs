//! The roles an agent plays for a master. For now: ping and echo (the
//! round-trip benchmark's far end).

use crate::raw_echo;
use crate::wire::WireError;
use crate::wire::handshake::Established;
use futures_lite::future;
use skelpi_proto::{AgentInfo, ErrorCode, ErrorReply, Message, RawEchoReady};
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
        local_addr,
        ..
    } = est;
    let (raw_tx, raw_rx) = async_channel::bounded(1);
    let raw = raw_echo::serve_opened(raw_rx, peer.ip());
    let mut bulk = Vec::new();
    let mut stop = std::pin::pin!(stop);
    let session = async {
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
                Message::RawEchoOpen => match open_raw_echo(local_addr.ip()) {
                    Ok((listener, port)) => {
                        let _ = raw_tx.try_send(listener);
                        sender
                            .send(&Message::RawEchoReady(RawEchoReady { port }))
                            .await
                    }
                    Err(e) => {
                        let reply = Message::Error(ErrorReply {
                            code: ErrorCode::Unsupported,
                            message: format!("cannot open a raw echo socket: {e}"),
                        });
                        sender.send(&reply).await
                    }
                },
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
    };
    future::or(session, raw).await;
}

/// Binds an ephemeral port on `ip` for a raw echo baseline.
fn open_raw_echo(ip: std::net::IpAddr) -> std::io::Result<(async_net::TcpListener, u16)> {
    let std_listener = std::net::TcpListener::bind((ip, 0))?;
    let port = std_listener.local_addr()?.port();
    Ok((async_net::TcpListener::try_from(std_listener)?, port))
}
