//! skelpi-wire: the authenticated transport shared by the agent and the
//! master — the cluster key, the Noise handshake, and framed, optionally
//! encrypted message channels over TCP.
//!
//! After [`handshake::connect`] or [`handshake::accept`] a connection is two
//! independent halves, a [`Sender`] and a [`Receiver`], so one task can
//! stream chunks out while another reads replies. Each half counts the bytes
//! it moved on the socket in a shared [`WireStats`]. [`dial`] opens the
//! socket within a time limit and [`within`] bounds any other wait.
#![forbid(unsafe_code)]

pub mod alarm;
mod channel;
pub mod deploy_key;
mod error;
pub mod handshake;
pub mod key;
pub mod self_check;
mod stream;

pub use channel::{Closer, Liveness, Received, Receiver, Sender};
pub use error::WireError;
pub use stream::WireStats;

use async_net::TcpStream;
use std::net::SocketAddr;
use std::time::Duration;

/// The name this machine goes by: its host name, or `skelpi-agent` if
/// it has none (a master names itself so in its hello, an agent
/// announces itself so unless told otherwise).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "skelpi-agent".to_owned())
}

/// Runs `fut` for at most `limit`: its output, or `None` if time ran out
/// first (then `fut` is dropped).
pub async fn within<T>(limit: Duration, fut: impl Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        async_io::Timer::after(limit).await;
        None
    })
    .await
}

/// Why [`dial`] found no connection.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The connection was refused or failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// The system's reason.
        #[source]
        source: std::io::Error,
    },
    /// No connection within the limit.
    #[error("no connection to {addr} within {limit:?}")]
    Timeout {
        /// Where.
        addr: SocketAddr,
        /// The limit.
        limit: Duration,
    },
}

/// Opens a TCP connection to `addr` within `limit`.
pub async fn dial(addr: SocketAddr, limit: Duration) -> Result<TcpStream, DialError> {
    within(limit, TcpStream::connect(addr))
        .await
        .ok_or(DialError::Timeout { addr, limit })?
        .map_err(|source| DialError::Connect { addr, source })
}
