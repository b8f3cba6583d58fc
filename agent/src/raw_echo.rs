//! The raw TCP echo that benchmarks use as their baseline: no framing, no
//! encryption, served by the same agent thread as skelpi's own echo role,
//! so that "skelpi vs raw TCP" compares protocols, not placements.
//!
//! A master asks for it over its authenticated session
//! ([`skelpi_proto::Message::RawEchoOpen`]); the agent binds an ephemeral
//! port on the session's address and accepts one connection from the same
//! master address. The socket lives no longer than the session.

use async_net::{TcpListener, TcpStream};
use futures_lite::{AsyncReadExt, AsyncWriteExt, future};
use std::net::IpAddr;
use std::time::Duration;

/// How long an opened raw echo socket waits for the master to connect.
pub const ACCEPT_WINDOW: Duration = Duration::from_secs(10);

/// Echo buffer: reads of up to this many bytes are written straight back.
const BUF: usize = 256 * 1024;

/// Echoes every byte read from `stream` back to it until end of stream.
pub async fn echo(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; BUF];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Serves the raw echo sockets a session opens: each listener received
/// from `opened` accepts one connection from `master` within
/// [`ACCEPT_WINDOW`] and echoes it. Never returns while `opened` is open.
pub async fn serve_opened(opened: async_channel::Receiver<TcpListener>, master: IpAddr) {
    while let Ok(listener) = opened.recv().await {
        let accepted = future::or(
            async {
                loop {
                    match listener.accept().await {
                        Ok((stream, peer)) if peer.ip() == master => return Some(stream),
                        Ok((_, peer)) => log::warn!("raw echo: refused {peer}, not the master"),
                        Err(e) => {
                            log::warn!("raw echo: accept failed: {e}");
                            return None;
                        }
                    }
                }
            },
            async {
                async_io::Timer::after(ACCEPT_WINDOW).await;
                log::warn!("raw echo: the master did not connect within {ACCEPT_WINDOW:?}");
                None
            },
        )
        .await;
        drop(listener);
        if let Some(stream) = accepted {
            echo(stream).await;
        }
    }
    future::pending::<()>().await;
}
