//! Making the output image from the base: a copy, or the decompressed
//! stream of an `.xz` base (recognised by its magic bytes, not its name).

use super::ImageError;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The first bytes of every `.xz` stream.
const XZ_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0x00];

/// Whether the file at `path` is an `.xz` stream (by its magic bytes).
pub fn is_xz(path: &Path) -> io::Result<bool> {
    let mut head = [0u8; XZ_MAGIC.len()];
    let mut file = File::open(path)?;
    let mut read = 0;
    while read < head.len() {
        match file.read(&mut head[read..])? {
            0 => break,
            n => read += n,
        }
    }
    Ok(read == head.len() && head == XZ_MAGIC)
}

/// A reader that reports how many bytes have gone through it.
struct Counting<R, F> {
    inner: R,
    progress: F,
}

impl<R: Read, F: FnMut(u64)> Read for Counting<R, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.progress)(n as u64);
        Ok(n)
    }
}

/// Writes the raw image of `base` to `out` (created; it must not exist),
/// decompressing an `.xz` base. `progress` gets the number of base bytes
/// read each time some are (its total is the base's size).
pub fn write_raw(base: &Path, out: &Path, progress: impl FnMut(u64)) -> Result<u64, ImageError> {
    let input = File::open(base).map_err(ImageError::io(base))?;
    let mut input = BufReader::with_capacity(1 << 20, input);
    // A regular file fills the buffer: its first bytes tell the format.
    let xz = input
        .fill_buf()
        .map_err(ImageError::io(base))?
        .starts_with(&XZ_MAGIC);
    let counted = Counting {
        inner: input,
        progress,
    };
    // The image will hold the cluster key and the wifi key: only its owner
    // may read it. A file (or link) already there is not followed.
    let mut output = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(ImageError::io(out))?;
    let read_error = |e: io::Error| {
        if xz && matches!(e.kind(), io::ErrorKind::InvalidData | io::ErrorKind::Other) {
            ImageError::Base {
                path: base.to_owned(),
                what: format!("is not a valid .xz file ({e})"),
            }
        } else {
            ImageError::io(base)(e)
        }
    };
    let mut reader: Box<dyn Read> = if xz {
        Box::new(liblzma::read::XzDecoder::new_multi_decoder(counted))
    } else {
        Box::new(counted)
    };
    // Read and write errors are told apart: a full disk names the output.
    let mut buf = vec![0u8; 1 << 20];
    let mut copied = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(e)),
        };
        output.write_all(&buf[..n]).map_err(ImageError::io(out))?;
        copied += n as u64;
    }
    output.flush().map_err(ImageError::io(out))?;
    Ok(copied)
}
