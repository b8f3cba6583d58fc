//! The baseline every skelpi number is compared with: raw async-net TCP to
//! the same agent, served by the same agent thread (the agent's raw echo
//! socket, [`skelpi_agent::raw_echo`]) — no framing, no encryption, no
//! protocol — measured in the same run.

use async_net::TcpStream;
use futures_lite::{AsyncReadExt, AsyncWriteExt, future};
use skelpi::client::{AgentConn, ClientError, Reply, unexpected};
use skelpi_proto::Message;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A client of an agent's raw echo socket ([`RawClient::open`]).
#[derive(Debug)]
pub struct RawClient {
    stream: TcpStream,
}

impl RawClient {
    /// Asks `conn`'s agent for its raw TCP echo socket (one per
    /// connection) and connects to it within the request deadline (a
    /// failure to connect leaves `conn` usable).
    pub async fn open(conn: &mut AgentConn) -> Result<RawClient, ClientError> {
        let addr = conn.addr();
        let ready = conn
            .request(&Message::RawEchoOpen, |got| match got {
                Message::RawEchoReady(r) => Ok(Reply::Done(r)),
                other => Err(unexpected(addr, other, "answering raw-echo-open")),
            })
            .await?;
        let raw = SocketAddr::new(addr.ip(), ready.port);
        let limit = skelpi::client::REQUEST_TIMEOUT;
        let opened = skelpi_wire::within(limit, RawClient::connect(raw, &ready.token)).await;
        let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "no connection");
        opened
            .unwrap_or_else(|| Err(timed_out()))
            .map_err(|source| ClientError::Baseline { addr: raw, source })
    }

    /// Connects with `TCP_NODELAY`, like skelpi connections, and unlocks
    /// the socket with the token the agent gave over the session.
    pub async fn connect(addr: SocketAddr, token: &[u8; 16]) -> std::io::Result<RawClient> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        stream.write_all(token).await?;
        Ok(RawClient { stream })
    }

    /// Writes `data` while reading its echo into `out` (same length);
    /// returns the round-trip time. Gives up after
    /// [`skelpi::client::REQUEST_TIMEOUT`].
    pub async fn echo(&mut self, data: &[u8], out: &mut [u8]) -> std::io::Result<Duration> {
        let start = Instant::now();
        let mut w = self.stream.clone();
        let mut r = self.stream.clone();
        let limit = skelpi::client::REQUEST_TIMEOUT;
        future::or(
            future::try_zip(w.write_all(data), r.read_exact(out)),
            async {
                async_io::Timer::after(limit).await;
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no echo within {limit:?}"),
                ))
            },
        )
        .await?;
        Ok(start.elapsed())
    }
}
