//! The raw TCP echo that benchmarks use as their baseline: no framing, no
//! encryption, served by the same agent thread as skelpi's own echo role,
//! so that "skelpi vs raw TCP" compares protocols, not placements.
//!
//! A master asks for it over its authenticated session
//! ([`skelpi_proto::Message::RawEchoOpen`]); the agent binds an ephemeral
//! port on the session's address and answers with the port and a random
//! token. It then accepts one connection from the same master address that
//! sends that token first (compared in constant time), and echoes it. One
//! raw echo per session; the socket lives no longer than the session.

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

/// An opened raw echo socket and the token that unlocks it.
#[derive(Debug)]
pub struct Opened {
    /// The listening socket.
    pub listener: TcpListener,
    /// What the master must send first.
    pub token: [u8; 16],
}

/// Binds an ephemeral port on `ip` and draws a token.
pub fn open(ip: IpAddr) -> std::io::Result<Opened> {
    let std_listener = std::net::TcpListener::bind((ip, 0))?;
    let mut token = [0u8; 16];
    getrandom::fill(&mut token).map_err(std::io::Error::other)?;
    Ok(Opened {
        listener: TcpListener::try_from(std_listener)?,
        token,
    })
}

/// Serves the raw echo socket a session opens: accepts, within
/// [`ACCEPT_WINDOW`], one connection from `master` that opens with the
/// token, and echoes it. Never returns while `opened` is open.
pub async fn serve_opened(opened: async_channel::Receiver<Opened>, master: IpAddr) {
    while let Ok(Opened { listener, token }) = opened.recv().await {
        let accepted = future::or(
            async {
                loop {
                    match listener.accept().await {
                        Ok((stream, peer)) if peer.ip() == master => {
                            if let Some(stream) = unlock(stream, &token).await {
                                return Some(stream);
                            }
                            log::warn!("raw echo: refused {peer}, wrong token");
                        }
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

/// Reads the 16-byte token (within 2 s) and checks it in constant time.
async fn unlock(mut stream: TcpStream, token: &[u8; 16]) -> Option<TcpStream> {
    use subtle::ConstantTimeEq;
    let mut got = [0u8; 16];
    let read = skelpi_wire::within(Duration::from_secs(2), stream.read_exact(&mut got))
        .await
        .is_some_and(|r| r.is_ok());
    (read && bool::from(got.ct_eq(token))).then_some(stream)
}
