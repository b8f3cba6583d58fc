//! Byte streams over a TCP socket, plain or inside Noise transport messages,
//! with buffering that lets bulk payloads bypass the buffers.

use crate::WireError;
use async_net::TcpStream;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use skelpi_proto::preamble::{MAX_NOISE_MSG, NOISE_TAG};
use snow::StatelessTransportState;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Largest plaintext in one Noise transport message.
const NOISE_PLAIN: usize = MAX_NOISE_MSG - NOISE_TAG;
/// Socket read buffer: room for two whole Noise messages.
const RAW_BUF: usize = 2 * (MAX_NOISE_MSG + 2);
/// Reads at least this large go straight from the socket to the caller.
const DIRECT_READ: usize = 32 * 1024;
/// Outgoing bytes are written once this many are buffered.
const WRITE_BUF: usize = 256 * 1024;

/// Bytes a connection moved on its socket, both directions, including
/// framing and encryption overhead.
#[derive(Debug, Default)]
pub struct WireStats {
    sent: AtomicU64,
    received: AtomicU64,
}

impl WireStats {
    /// Bytes written to the socket so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Bytes read from the socket so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    pub(crate) fn add_sent(&self, n: usize) {
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn add_received(&self, n: usize) {
        self.received.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// The cipher state shared by both halves; each half keeps its own nonce.
pub(crate) type Cipher = Option<Arc<StatelessTransportState>>;

/// The reading half: plaintext bytes out of the socket.
pub(crate) struct ByteReader {
    stream: TcpStream,
    cipher: Cipher,
    nonce: u64,
    raw: Box<[u8]>,
    raw_pos: usize,
    raw_end: usize,
    plain: Box<[u8]>,
    plain_pos: usize,
    plain_end: usize,
    stats: Arc<WireStats>,
}

impl ByteReader {
    /// A reader whose next Noise message has nonce `nonce`.
    pub(crate) fn new(
        stream: TcpStream,
        cipher: Cipher,
        nonce: u64,
        stats: Arc<WireStats>,
    ) -> Self {
        let plain_len = if cipher.is_some() { MAX_NOISE_MSG } else { 0 };
        ByteReader {
            stream,
            cipher,
            nonce,
            raw: vec![0; RAW_BUF].into_boxed_slice(),
            raw_pos: 0,
            raw_end: 0,
            plain: vec![0; plain_len].into_boxed_slice(),
            plain_pos: 0,
            plain_end: 0,
            stats,
        }
    }

    /// Reads more socket bytes into the raw buffer, compacting it first.
    async fn fill_raw(&mut self) -> Result<(), WireError> {
        if self.raw_pos > 0 {
            self.raw.copy_within(self.raw_pos..self.raw_end, 0);
            self.raw_end -= self.raw_pos;
            self.raw_pos = 0;
        }
        let n = self.stream.read(&mut self.raw[self.raw_end..]).await?;
        if n == 0 {
            return Err(WireError::Closed);
        }
        self.stats.add_received(n);
        self.raw_end += n;
        Ok(())
    }

    fn take_raw(&mut self, dst: &mut [u8]) -> usize {
        let n = dst.len().min(self.raw_end - self.raw_pos);
        dst[..n].copy_from_slice(&self.raw[self.raw_pos..self.raw_pos + n]);
        self.raw_pos += n;
        n
    }

    /// Waits until bytes are here to read, taking none: what arrives is
    /// kept, so it may be dropped midway.
    pub(crate) async fn readable(&mut self) -> Result<(), WireError> {
        if self.plain_pos < self.plain_end || self.raw_pos < self.raw_end {
            return Ok(());
        }
        self.fill_raw().await
    }

    /// Reads at least one byte into `dst`; returns how many.
    pub(crate) async fn read_some(&mut self, dst: &mut [u8]) -> Result<usize, WireError> {
        if dst.is_empty() {
            return Ok(0);
        }
        match self.cipher.clone() {
            None => self.read_plain(dst).await,
            Some(cipher) => self.read_noise(&cipher, dst).await,
        }
    }

    async fn read_plain(&mut self, dst: &mut [u8]) -> Result<usize, WireError> {
        if self.raw_pos < self.raw_end {
            return Ok(self.take_raw(dst));
        }
        if dst.len() >= DIRECT_READ {
            let n = self.stream.read(dst).await?;
            if n == 0 {
                return Err(WireError::Closed);
            }
            self.stats.add_received(n);
            return Ok(n);
        }
        self.fill_raw().await?;
        Ok(self.take_raw(dst))
    }

    async fn read_noise(
        &mut self,
        cipher: &StatelessTransportState,
        dst: &mut [u8],
    ) -> Result<usize, WireError> {
        if self.plain_pos < self.plain_end {
            let n = dst.len().min(self.plain_end - self.plain_pos);
            dst[..n].copy_from_slice(&self.plain[self.plain_pos..self.plain_pos + n]);
            self.plain_pos += n;
            return Ok(n);
        }
        loop {
            while self.raw_end - self.raw_pos < 2 {
                self.fill_raw().await?;
            }
            let len =
                u16::from_be_bytes([self.raw[self.raw_pos], self.raw[self.raw_pos + 1]]) as usize;
            if len < NOISE_TAG {
                return Err(WireError::Decrypt);
            }
            while self.raw_end - self.raw_pos < 2 + len {
                self.fill_raw().await?;
            }
            let msg = &self.raw[self.raw_pos + 2..self.raw_pos + 2 + len];
            let nonce = self.nonce;
            // Decrypt straight into the caller's buffer when it has room for
            // the whole message (the cipher works in place there).
            let n = if dst.len() >= len {
                cipher.read_message(nonce, msg, dst)
            } else {
                cipher.read_message(nonce, msg, &mut self.plain)
            }
            .map_err(|_| WireError::Decrypt)?;
            self.nonce += 1;
            self.raw_pos += 2 + len;
            if n == 0 {
                continue;
            }
            if dst.len() >= len {
                return Ok(n);
            }
            self.plain_pos = 0;
            self.plain_end = n;
            let k = dst.len().min(n);
            dst[..k].copy_from_slice(&self.plain[..k]);
            self.plain_pos = k;
            return Ok(k);
        }
    }

    /// Fills `dst` completely.
    pub(crate) async fn read_exact(&mut self, mut dst: &mut [u8]) -> Result<(), WireError> {
        while !dst.is_empty() {
            let n = self.read_some(dst).await?;
            dst = &mut dst[n..];
        }
        Ok(())
    }

    /// Reads and drops `n` bytes.
    pub(crate) async fn skip(&mut self, mut n: usize) -> Result<(), WireError> {
        let mut scratch = [0u8; 4096];
        while n > 0 {
            let k = n.min(scratch.len());
            let got = self.read_some(&mut scratch[..k]).await?;
            n -= got;
        }
        Ok(())
    }
}

/// The writing half: plaintext bytes into the socket.
pub(crate) struct ByteWriter {
    stream: TcpStream,
    cipher: Cipher,
    nonce: u64,
    /// Plaintext waiting to fill a Noise message (encrypted mode only).
    pending: Vec<u8>,
    /// Bytes ready for the socket.
    out: Vec<u8>,
    stats: Arc<WireStats>,
}

impl ByteWriter {
    /// A writer whose next Noise message gets nonce `nonce`.
    pub(crate) fn new(
        stream: TcpStream,
        cipher: Cipher,
        nonce: u64,
        stats: Arc<WireStats>,
    ) -> Self {
        ByteWriter {
            stream,
            cipher,
            nonce,
            pending: Vec::with_capacity(NOISE_PLAIN),
            out: Vec::with_capacity(WRITE_BUF + MAX_NOISE_MSG + 2),
            stats,
        }
    }

    /// Queues `data`; may write to the socket when buffers fill.
    pub(crate) async fn write(&mut self, mut data: &[u8]) -> Result<(), WireError> {
        let Some(cipher) = self.cipher.clone() else {
            if self.out.len() + data.len() <= WRITE_BUF {
                self.out.extend_from_slice(data);
                return Ok(());
            }
            self.write_out().await?;
            self.stream.write_all(data).await?;
            self.stats.add_sent(data.len());
            return Ok(());
        };
        while !data.is_empty() {
            if self.pending.is_empty() && data.len() >= NOISE_PLAIN {
                let (piece, rest) = data.split_at(NOISE_PLAIN);
                self.seal(&cipher, piece)?;
                data = rest;
            } else {
                let k = data.len().min(NOISE_PLAIN - self.pending.len());
                self.pending.extend_from_slice(&data[..k]);
                data = &data[k..];
                if self.pending.len() == NOISE_PLAIN {
                    let piece = std::mem::take(&mut self.pending);
                    self.seal(&cipher, &piece)?;
                    self.pending = piece;
                    self.pending.clear();
                }
            }
            if self.out.len() >= WRITE_BUF {
                self.write_out().await?;
            }
        }
        Ok(())
    }

    /// Encrypts one Noise message into `out`.
    fn seal(&mut self, cipher: &StatelessTransportState, piece: &[u8]) -> Result<(), WireError> {
        let start = self.out.len();
        let len = piece.len() + NOISE_TAG;
        self.out.resize(start + 2 + len, 0);
        let n = cipher
            .write_message(self.nonce, piece, &mut self.out[start + 2..])
            .map_err(|e| WireError::Io(std::io::Error::other(format!("noise: {e}"))))?;
        debug_assert_eq!(n, len);
        self.nonce += 1;
        self.out[start..start + 2].copy_from_slice(&(n as u16).to_be_bytes());
        Ok(())
    }

    async fn write_out(&mut self) -> Result<(), WireError> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.stats.add_sent(self.out.len());
            self.out.clear();
        }
        Ok(())
    }

    /// Seals what is pending and writes everything to the socket.
    pub(crate) async fn flush(&mut self) -> Result<(), WireError> {
        if let Some(cipher) = self.cipher.clone()
            && !self.pending.is_empty()
        {
            let piece = std::mem::take(&mut self.pending);
            self.seal(&cipher, &piece)?;
            self.pending = piece;
            self.pending.clear();
        }
        self.write_out().await
    }

    /// Shuts the write side of the socket down.
    pub(crate) fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }

    /// The socket, to shut from elsewhere (see [`crate::Closer`]).
    pub(crate) fn socket(&self) -> TcpStream {
        self.stream.clone()
    }
}
