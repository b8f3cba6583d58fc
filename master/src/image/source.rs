//! Making the output image from the base: a copy, or the decompressed
//! stream of an `.xz` base (recognised by its magic bytes, not its name).

use super::ImageError;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

/// The first bytes of every `.xz` stream.
const XZ_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0x00];

/// Whether `base` starts with the `.xz` magic bytes.
pub fn is_xz(base: &Path) -> Result<bool, ImageError> {
    let mut head = [0u8; 6];
    let mut f = File::open(base).map_err(ImageError::io(base))?;
    let n = read_up_to(&mut f, &mut head).map_err(ImageError::io(base))?;
    Ok(n == head.len() && head == XZ_MAGIC)
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
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

/// Writes the raw image of `base` to `out` (created or truncated),
/// decompressing an `.xz` base. `progress` gets the number of base bytes
/// read each time some are (its total is the base's size).
pub fn write_raw(base: &Path, out: &Path, progress: impl FnMut(u64)) -> Result<u64, ImageError> {
    let xz = is_xz(base)?;
    let input = File::open(base).map_err(ImageError::io(base))?;
    let counted = Counting {
        inner: BufReader::with_capacity(1 << 20, input),
        progress,
    };
    let mut output = File::create(out).map_err(ImageError::io(out))?;
    let copied = if xz {
        let mut decoder = liblzma::read::XzDecoder::new_multi_decoder(counted);
        io::copy(&mut decoder, &mut output).map_err(|e| {
            if e.kind() == io::ErrorKind::InvalidData || e.kind() == io::ErrorKind::Other {
                ImageError::Base {
                    path: base.to_owned(),
                    what: format!("is not a valid .xz file ({e})"),
                }
            } else {
                ImageError::io(base)(e)
            }
        })?
    } else {
        let mut counted = counted;
        io::copy(&mut counted, &mut output).map_err(ImageError::io(out))?
    };
    output.flush().map_err(ImageError::io(out))?;
    Ok(copied)
}
