//! Bulk `f64` data as RFC 8746 typed arrays.
//!
//! A list of `n` floats is tag 86 (IEEE 754 binary64, little endian) over a
//! byte string of `8 n` bytes. A matrix is tag 40 (multi-dimensional array,
//! row-major) over `[[rows, cols], 86(bytes)]`. Never a CBOR array of floats:
//! that costs 9 bytes per element and cannot be read in place.
//!
//! The payload bytes are always the last bytes of a frame, so a receiver can
//! read them straight from the socket into an aligned `Vec<f64>` with
//! [`f64_bytes_mut`], with no intermediate buffer.

use ciborium_ll::{Decoder, Encoder, Header};
use serde::{Deserialize, Serialize};

/// RFC 8746 tag: typed array of IEEE 754 binary64, little endian.
pub const TAG_F64_LE: u64 = 86;
/// RFC 8746 tag: multi-dimensional array, row-major order.
pub const TAG_MULTI_DIM: u64 = 40;

/// The shape of a bulk array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Shape {
    /// A flat list of this many elements.
    List(u64),
    /// A matrix, stored row-major.
    Matrix {
        /// Number of rows.
        rows: u64,
        /// Number of columns.
        cols: u64,
    },
}

impl Shape {
    /// Number of elements, or `None` if it overflows `u64`.
    pub fn elements(&self) -> Option<u64> {
        match *self {
            Shape::List(n) => Some(n),
            Shape::Matrix { rows, cols } => rows.checked_mul(cols),
        }
    }

    /// Number of payload bytes (8 per element), or `None` on overflow.
    pub fn byte_len(&self) -> Option<u64> {
        self.elements()?.checked_mul(8)
    }
}

/// Views a float slice as its little-endian bytes without copying.
///
/// On a big-endian host this would not be the wire order; skelpi's boards and
/// laptops are little-endian, and a big-endian build fails to compile here
/// rather than send wrong bytes.
pub fn f64_bytes(data: &[f64]) -> &[u8] {
    assert_little_endian();
    bytemuck::cast_slice(data)
}

/// Views a float slice as mutable little-endian bytes, so that a receiver can
/// read the wire payload straight into it. The slice is `f64`-aligned by
/// construction; bytes are never cast the other way.
pub fn f64_bytes_mut(data: &mut [f64]) -> &mut [u8] {
    assert_little_endian();
    bytemuck::cast_slice_mut(data)
}

const fn assert_little_endian() {
    #[cfg(target_endian = "big")]
    compile_error!("skelpi's zero-copy f64 wire format needs a little-endian host");
}

/// Writes the descriptor that precedes the payload: CBOR null when there is
/// no array, else the tags and byte-string header.
pub(crate) fn write_descriptor(
    enc: &mut Encoder<&mut Vec<u8>>,
    shape: Option<Shape>,
) -> Result<(), std::io::Error> {
    let Some(shape) = shape else {
        return enc.push(Header::Simple(ciborium_ll::simple::NULL));
    };
    if let Shape::Matrix { rows, cols } = shape {
        enc.push(Header::Tag(TAG_MULTI_DIM))?;
        enc.push(Header::Array(Some(2)))?;
        enc.push(Header::Array(Some(2)))?;
        enc.push(Header::Positive(rows))?;
        enc.push(Header::Positive(cols))?;
    }
    let len = shape.byte_len().unwrap_or(u64::MAX);
    enc.push(Header::Tag(TAG_F64_LE))?;
    enc.push(Header::Bytes(Some(len as usize)))
}

/// What reading a descriptor found.
pub(crate) enum Descriptor {
    /// CBOR null: no array follows.
    None,
    /// An array of this shape; its payload bytes follow.
    Array(Shape),
}

/// Reads a descriptor. `Err(None)` means the input ended early, `Err(Some)`
/// that the bytes are wrong.
pub(crate) fn read_descriptor(dec: &mut Decoder<&mut &[u8]>) -> Result<Descriptor, Option<String>> {
    let mut shape = None;
    match pull(dec)? {
        Header::Simple(ciborium_ll::simple::NULL) => return Ok(Descriptor::None),
        Header::Tag(TAG_MULTI_DIM) => {
            expect(dec, Header::Array(Some(2)), "multi-dimensional array of 2")?;
            expect(dec, Header::Array(Some(2)), "a 2-dimensional shape")?;
            let rows = positive(dec, "row count")?;
            let cols = positive(dec, "column count")?;
            shape = Some(Shape::Matrix { rows, cols });
            expect(
                dec,
                Header::Tag(TAG_F64_LE),
                "typed array tag 86 (f64 little endian)",
            )?;
        }
        Header::Tag(TAG_F64_LE) => {}
        other => {
            return Err(Some(format!(
                "expected null, tag 86 or tag 40 before the payload, found {other:?}"
            )));
        }
    }
    let len = match pull(dec)? {
        Header::Bytes(Some(len)) => len as u64,
        other => {
            return Err(Some(format!(
                "expected a definite byte string, found {other:?}"
            )));
        }
    };
    if len % 8 != 0 {
        return Err(Some(format!(
            "payload of {len} bytes is not a whole number of f64"
        )));
    }
    let shape = shape.unwrap_or(Shape::List(len / 8));
    if shape.byte_len() != Some(len) {
        return Err(Some(format!(
            "shape {shape:?} does not match a payload of {len} bytes"
        )));
    }
    Ok(Descriptor::Array(shape))
}

fn pull(dec: &mut Decoder<&mut &[u8]>) -> Result<Header, Option<String>> {
    dec.pull().map_err(|e| match e {
        ciborium_ll::Error::Io(_) => None,
        ciborium_ll::Error::Syntax(at) => Some(format!("invalid CBOR at byte {at}")),
    })
}

fn expect(dec: &mut Decoder<&mut &[u8]>, want: Header, what: &str) -> Result<(), Option<String>> {
    let got = pull(dec)?;
    if got == want {
        Ok(())
    } else {
        Err(Some(format!("expected {what}, found {got:?}")))
    }
}

fn positive(dec: &mut Decoder<&mut &[u8]>, what: &str) -> Result<u64, Option<String>> {
    match pull(dec)? {
        Header::Positive(n) => Ok(n),
        other => Err(Some(format!("expected {what}, found {other:?}"))),
    }
}
