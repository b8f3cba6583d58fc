//! Hostile input: each test hands the decoder bytes a buggy or malicious
//! peer could send and asserts the exact error, so that "bad bytes" are
//! told apart and nothing panics or allocates by the peer's say-so.

use skelpi_proto::codec::{self, Decoded};
use skelpi_proto::frame::{self, DEFAULT_MAX_FRAME, HARD_MAX_FRAME};
use skelpi_proto::preamble::{self, ClientPreamble, PreambleError, ServerPreamble};
use skelpi_proto::{Chunk, DecodeError, EncodeError, Message, Ping, Shape};

/// `[kind, body, ...]` heads used below, without the length prefix.
const PING_HEAD: &[u8] = &[0x83, 0x03, 0xa1, 0x65, b'n', b'o', b'n', b'c', b'e', 0x07];
const ECHO_HEAD: &[u8] = &[
    0x83, 0x05, 0xa3, 0x62, b'i', b'd', 0x01, 0x66, b'o', b'f', b'f', b's', b'e', b't', 0x00, 0x65,
    b't', b'o', b't', b'a', b'l', 0x03,
];
const NULL: u8 = 0xf6;

/// Prefixes `body` with its true length.
fn frame(parts: &[&[u8]]) -> Vec<u8> {
    let body = parts.concat();
    let mut wire = (body.len() as u32).to_be_bytes().to_vec();
    wire.extend_from_slice(&body);
    wire
}

fn decode(wire: &[u8]) -> Result<Decoded, DecodeError> {
    let mut floats = Vec::new();
    let got = codec::decode_frame(wire, DEFAULT_MAX_FRAME, &mut floats);
    if got.is_err() {
        assert_eq!(floats.capacity(), 0, "allocated for a refused frame");
    }
    got
}

fn bad_bulk(wire: &[u8]) {
    match decode(wire) {
        Err(DecodeError::BadBulk(_)) => {}
        other => panic!("expected BadBulk, got {other:?}"),
    }
}

fn malformed(wire: &[u8]) {
    match decode(wire) {
        Err(DecodeError::Malformed(_)) => {}
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn the_sanity_frames_decode() {
    // The building blocks below are valid as given; each test breaks one thing.
    assert!(matches!(
        decode(&frame(&[PING_HEAD, &[NULL]])),
        Ok(Decoded::Frame {
            msg: Message::Ping(Ping { nonce: 7 }),
            ..
        })
    ));
    let echo = frame(&[ECHO_HEAD, &[0xd8, 0x56, 0x48], &[0; 8]]);
    assert!(matches!(
        decode(&echo),
        Ok(Decoded::Frame {
            bulk: Some(Shape::List(1)),
            ..
        })
    ));
}

#[test]
fn a_4_gib_length_prefix_is_too_large_before_any_allocation() {
    let wire = [0xff, 0xff, 0xff, 0xff, 0x83];
    assert_eq!(
        decode(&wire),
        Err(DecodeError::TooLarge {
            len: 0xffff_ffff,
            max: DEFAULT_MAX_FRAME
        })
    );
}

#[test]
fn a_length_one_above_the_limit_is_too_large() {
    let len = DEFAULT_MAX_FRAME + 1;
    assert_eq!(
        decode(&len.to_be_bytes()),
        Err(DecodeError::TooLarge {
            len: len.into(),
            max: DEFAULT_MAX_FRAME
        })
    );
    // Exactly at the limit is only "need more".
    assert_eq!(
        decode(&DEFAULT_MAX_FRAME.to_be_bytes()),
        Ok(Decoded::NeedMore(DEFAULT_MAX_FRAME as usize))
    );
}

#[test]
fn no_limit_exceeds_the_hard_cap() {
    let len = HARD_MAX_FRAME + 1;
    assert_eq!(
        frame::frame_len(len.to_be_bytes(), u32::MAX),
        Err(DecodeError::TooLarge {
            len: len.into(),
            max: HARD_MAX_FRAME
        })
    );
}

#[test]
fn a_length_below_the_smallest_message_is_too_short() {
    for len in 0..frame::MIN_FRAME {
        assert_eq!(
            decode(&len.to_be_bytes()),
            Err(DecodeError::TooShort { len })
        );
    }
}

#[test]
fn a_byte_string_shorter_than_the_frame_is_bad_bulk() {
    // Says 8 bytes, but the frame holds 16 after it.
    bad_bulk(&frame(&[ECHO_HEAD, &[0xd8, 0x56, 0x48], &[0; 16]]));
}

#[test]
fn a_byte_string_longer_than_the_frame_is_bad_bulk() {
    // Says 16 bytes, but the frame ends after 8.
    bad_bulk(&frame(&[ECHO_HEAD, &[0xd8, 0x56, 0x50], &[0; 8]]));
}

#[test]
fn a_byte_string_length_near_u64_max_is_bad_bulk_not_overflow() {
    // 0x5b: byte string with an 8-byte length, 2^64 - 8 (a multiple of 8).
    let huge = [0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xf8];
    bad_bulk(&frame(&[ECHO_HEAD, &[0xd8, 0x56], &huge, &[0; 8]]));
    // And through the matrix path: rows * cols * 8 overflows u64.
    let m = [
        0xd8, 0x28, 0x82, 0x82, 0x1b, 0x20, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xd8, 0x56, 0x40,
    ];
    bad_bulk(&frame(&[ECHO_HEAD, &m]));
}

#[test]
fn a_payload_not_a_multiple_of_8_is_bad_bulk() {
    // 23 bytes: consistent with the frame, not with f64.
    bad_bulk(&frame(&[ECHO_HEAD, &[0xd8, 0x56, 0x57], &[0; 23]]));
}

#[test]
fn a_matrix_shape_that_disagrees_with_its_payload_is_bad_bulk() {
    // 2 x 3 = 6 elements declared, 5 elements (40 bytes) sent.
    let descriptor = [0xd8, 0x28, 0x82, 0x82, 0x02, 0x03, 0xd8, 0x56, 0x58, 0x28];
    bad_bulk(&frame(&[ECHO_HEAD, &descriptor, &[0; 40]]));
}

#[test]
fn a_matrix_without_tag_86_or_with_three_dimensions_is_bad_bulk() {
    // Shape [2, 3] but a plain byte string instead of tag 86.
    bad_bulk(&frame(&[
        ECHO_HEAD,
        &[0xd8, 0x28, 0x82, 0x82, 0x02, 0x03, 0x58, 0x30],
        &[0; 48],
    ]));
    // Shape [1, 2, 3]: only two dimensions are spoken.
    bad_bulk(&frame(&[
        ECHO_HEAD,
        &[
            0xd8, 0x28, 0x82, 0x83, 0x01, 0x02, 0x03, 0xd8, 0x56, 0x58, 0x30,
        ],
        &[0; 48],
    ]));
}

#[test]
fn an_indefinite_or_foreign_typed_array_is_bad_bulk() {
    // Indefinite-length byte string: cannot be read in place.
    bad_bulk(&frame(&[
        ECHO_HEAD,
        &[0xd8, 0x56, 0x5f, 0x48],
        &[0; 8],
        &[0xff],
    ]));
    // Tag 82 is f64 *big* endian: not ours.
    bad_bulk(&frame(&[ECHO_HEAD, &[0xd8, 0x52, 0x48], &[0; 8]]));
    // A CBOR array of floats (the 9 B/element form) is refused.
    bad_bulk(&frame(&[ECHO_HEAD, &[0x81, 0xfb], &[0; 8]]));
}

#[test]
fn an_unknown_kind_is_named() {
    for (kind, bytes) in [
        (0, &[0x00][..]),
        (200, &[0x18, 0xc8]),
        (
            u64::MAX,
            &[0x1b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ),
    ] {
        assert_eq!(
            decode(&frame(&[&[0x83], bytes, &[NULL, NULL]])),
            Err(DecodeError::UnknownKind(kind))
        );
    }
}

#[test]
fn trailing_garbage_inside_a_frame_is_malformed() {
    // After a message without bulk.
    malformed(&frame(&[PING_HEAD, &[NULL, 0x00]]));
    malformed(&frame(&[&[0x83, 0x08, NULL, NULL], b"junk"]));
    // After a bulk payload the byte string no longer ends the frame.
    bad_bulk(&frame(&[ECHO_HEAD, &[0xd8, 0x56, 0x48], &[0; 8], b"junk"]));
}

#[test]
fn bytes_after_a_frame_are_left_for_the_next_one() {
    let mut wire = frame(&[&[0x83, 0x08, NULL, NULL]]);
    wire.extend_from_slice(&[0x00, 0x00]);
    assert_eq!(
        decode(&wire),
        Ok(Decoded::Frame {
            msg: Message::Bye,
            bulk: None,
            consumed: 8
        })
    );
}

#[test]
fn a_plain_kind_carrying_an_array_is_a_bulk_mismatch() {
    assert_eq!(
        decode(&frame(&[PING_HEAD, &[0xd8, 0x56, 0x48], &[0; 8]])),
        Err(DecodeError::BulkMismatch {
            kind: "ping",
            what: "cannot carry an array"
        })
    );
    // Even an empty array.
    assert_eq!(
        decode(&frame(&[&[0x83, 0x08, NULL], &[0xd8, 0x56, 0x40]])),
        Err(DecodeError::BulkMismatch {
            kind: "bye",
            what: "cannot carry an array"
        })
    );
}

#[test]
fn an_echo_without_an_array_is_a_bulk_mismatch() {
    assert_eq!(
        decode(&frame(&[ECHO_HEAD, &[NULL]])),
        Err(DecodeError::BulkMismatch {
            kind: "echo",
            what: "must carry an array"
        })
    );
}

#[test]
fn the_wrong_cbor_shape_is_malformed() {
    // Not an array of 3.
    malformed(&frame(&[&[0x82, 0x08, NULL, NULL]]));
    malformed(&frame(&[&[0x9f, 0x08, NULL, NULL, 0xff]]));
    // The kind is text, not a number.
    malformed(&frame(&[&[0x83, 0x61, b'x', NULL, NULL]]));
    // Reserved additional-information value 28: not CBOR at all.
    malformed(&frame(&[&[0x83, 0x1c, NULL, NULL]]));
    // A ping whose nonce is a string.
    malformed(&frame(&[
        &[0x83, 0x03, 0xa1, 0x65],
        b"nonce",
        &[0x61, b'7', NULL],
    ]));
    // A hello whose master name is not UTF-8.
    malformed(&frame(&[
        &[0x83, 0x01, 0xa1, 0x66],
        b"master",
        &[0x62, 0xff, 0xfe, NULL],
    ]));
}

#[test]
fn a_whole_frame_that_ends_inside_its_head_is_malformed() {
    // The length says 6 bytes; the ping body needs more.
    malformed(&frame(&[&PING_HEAD[..6]]));
    // decode_head given the whole frame agrees; given less, it waits.
    assert!(matches!(
        codec::decode_head(&PING_HEAD[..6], 6),
        Err(DecodeError::Malformed(_))
    ));
    assert_eq!(codec::decode_head(&PING_HEAD[..6], 11), Ok(None));
}

#[test]
fn the_encoder_refuses_what_the_decoder_would() {
    let chunk = Chunk {
        id: 1,
        offset: 0,
        total: 2,
    };
    let mut out = Vec::new();
    let ping = Message::Ping(Ping { nonce: 1 });
    assert_eq!(
        codec::encode_frame(
            &ping,
            Some((Shape::List(1), &[1.0])),
            DEFAULT_MAX_FRAME,
            &mut out
        ),
        Err(EncodeError::BulkMismatch {
            kind: "ping",
            what: "cannot carry an array"
        })
    );
    assert_eq!(
        codec::encode_frame(&Message::Echo(chunk), None, DEFAULT_MAX_FRAME, &mut out),
        Err(EncodeError::BulkMismatch {
            kind: "echo",
            what: "must carry an array"
        })
    );
    let shape = Shape::Matrix { rows: 2, cols: 2 };
    assert_eq!(
        codec::encode_frame(
            &Message::Echo(chunk),
            Some((shape, &[1.0, 2.0])),
            DEFAULT_MAX_FRAME,
            &mut out
        ),
        Err(EncodeError::ShapeMismatch { shape, elements: 2 })
    );
    // A shape whose byte size overflows u64 is too large, not a panic.
    let huge = Shape::Matrix {
        rows: u64::MAX,
        cols: 2,
    };
    assert!(matches!(
        codec::encode_head(&Message::Echo(chunk), Some(huge), HARD_MAX_FRAME, &mut out),
        Err(EncodeError::TooLarge { .. })
    ));
    assert!(out.is_empty(), "refused frames leave no bytes behind");
}

#[test]
fn a_preamble_with_bad_magic_is_named() {
    let mut b = ClientPreamble {
        version: 1,
        aes_hw: true,
        plaintext: false,
    }
    .encode();
    b[..4].copy_from_slice(b"GET ");
    assert_eq!(
        ClientPreamble::decode(b),
        Err(PreambleError::BadMagic(*b"GET "))
    );
    assert_eq!(
        ServerPreamble::decode(b),
        Err(PreambleError::BadMagic(*b"GET "))
    );
}

#[test]
fn a_client_preamble_with_unknown_bits_is_malformed() {
    let ok = ClientPreamble {
        version: 1,
        aes_hw: false,
        plaintext: false,
    }
    .encode();
    for (at, byte) in [(6, 0x04), (6, 0x80), (7, 0x01)] {
        let mut b = ok;
        b[at] = byte;
        assert_eq!(
            ClientPreamble::decode(b),
            Err(PreambleError::Malformed("unknown capability bits")),
            "byte {at} = {byte:#x}"
        );
    }
}

#[test]
fn a_server_preamble_with_unknown_values_is_malformed() {
    let ok = *b"SKPI\x00\x01\x00\x00";
    let mut b = ok;
    b[7] = 2;
    assert_eq!(
        ServerPreamble::decode(b),
        Err(PreambleError::Malformed("unknown cipher"))
    );
    let mut b = ok;
    b[6] = 4;
    assert_eq!(
        ServerPreamble::decode(b),
        Err(PreambleError::Malformed("unknown verdict"))
    );
}

#[test]
fn a_handshake_length_out_of_range_is_malformed() {
    let out_of_range = Err(PreambleError::Malformed(
        "handshake message length out of range",
    ));
    assert_eq!(preamble::handshake_len([0, 0]), out_of_range);
    let over = (preamble::MAX_HANDSHAKE_MSG as u16 + 1).to_be_bytes();
    assert_eq!(preamble::handshake_len(over), out_of_range);
    assert_eq!(preamble::handshake_len([0xff, 0xff]), out_of_range);
    assert_eq!(
        preamble::handshake_len((preamble::MAX_HANDSHAKE_MSG as u16).to_be_bytes()),
        Ok(preamble::MAX_HANDSHAKE_MSG)
    );
}
