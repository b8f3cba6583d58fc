//! The baseline every skelpi number is compared with: raw async-net TCP on
//! loopback, measured in the same process — an echo server that writes back
//! what it reads, and a ping-pong of small messages. No framing, no
//! encryption, no protocol.

use async_net::{TcpListener, TcpStream};
use futures_lite::{AsyncReadExt, AsyncWriteExt, future};
use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A raw TCP echo server on `127.0.0.1`, on its own thread and executor
/// (as an in-process agent runs).
#[derive(Debug)]
pub struct RawEchoServer {
    addr: SocketAddr,
    stop: Option<async_channel::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RawEchoServer {
    /// Binds an ephemeral loopback port and starts serving.
    pub fn start() -> std::io::Result<RawEchoServer> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = std_listener.local_addr()?;
        let listener = TcpListener::try_from(std_listener)?;
        let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("raw-echo".into())
            .spawn(move || {
                let ex = std::rc::Rc::new(smol::LocalExecutor::new());
                let spawner = ex.clone();
                let acceptor = ex.spawn(async move {
                    while let Ok((stream, _)) = listener.accept().await {
                        spawner.spawn(echo_conn(stream)).detach();
                    }
                });
                smol::block_on(ex.run(async {
                    let _ = stop_rx.recv().await;
                }));
                drop(acceptor);
            })?;
        Ok(RawEchoServer {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for RawEchoServer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn echo_conn(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; 256 * 1024];
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

/// A client of [`RawEchoServer`].
#[derive(Debug)]
pub struct RawClient {
    stream: TcpStream,
}

impl RawClient {
    /// Connects with `TCP_NODELAY`, like skelpi connections.
    pub async fn connect(addr: SocketAddr) -> std::io::Result<RawClient> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(RawClient { stream })
    }

    /// Writes `data` while reading its echo into `out` (same length);
    /// returns the round-trip time.
    pub async fn echo(&mut self, data: &[u8], out: &mut [u8]) -> std::io::Result<Duration> {
        let start = Instant::now();
        let mut w = self.stream.clone();
        let mut r = self.stream.clone();
        future::try_zip(w.write_all(data), r.read_exact(out)).await?;
        Ok(start.elapsed())
    }
}
