//! Golden byte vectors: `tests/golden/<case>.hex` pins the bytes of every
//! message kind and preamble. A change to the wire format shows up here as a
//! failing test, and is made on purpose with `SKELPI_BLESS=1`.

use crate::cases::{Framed, Value, from_hex, golden_cases, tests_dir, to_hex};
use skelpi_proto::{JobId, Message, Shape, TaskHead};
use std::collections::BTreeSet;

fn blessing() -> bool {
    std::env::var_os("SKELPI_BLESS").is_some_and(|v| v == "1")
}

#[test]
fn every_case_encodes_to_its_file_and_decodes_back() {
    let dir = tests_dir("golden");
    for case in golden_cases() {
        let path = dir.join(format!("{}.hex", case.name));
        let encoded = case.value.encode();
        if blessing() {
            let text = format!("# {}\n{}", case.about, to_hex(&encoded));
            std::fs::write(&path, text).unwrap();
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run with SKELPI_BLESS=1 to create it",
                path.display()
            )
        });
        let pinned = from_hex(&text);
        assert_eq!(
            to_hex(&encoded),
            to_hex(&pinned),
            "{}: the encoder no longer produces the pinned bytes",
            case.name
        );
        case.value.assert_decodes_from(&pinned);
    }
}

#[test]
fn golden_directory_holds_only_known_cases() {
    let known: BTreeSet<String> = golden_cases()
        .iter()
        .map(|c| format!("{}.hex", c.name))
        .collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(tests_dir("golden"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    if !blessing() {
        assert_eq!(on_disk, known, "stray or missing golden files");
    }
}

/// The echo_list vector assembled by hand from RFC 8949 (CBOR) and RFC 8746
/// (typed arrays), independently of the encoder, so that the golden file is
/// not merely what the code happened to write.
#[test]
fn echo_list_matches_rfc_8746_by_hand() {
    #[rustfmt::skip]
    let by_hand: Vec<u8> = [
        &[0x00, 0x00, 0x00, 0x32][..], // u32 BE frame length: 50 bytes follow
        &[0x83],                       // array(3): [kind, body, bulk]
        &[0x05],                       // unsigned(5): kind echo
        &[0xa3],                       // map(3): the Chunk body
        &[0x62, b'i', b'd'], &[0x01],                              // "id": 1
        &[0x66, b'o', b'f', b'f', b's', b'e', b't'], &[0x00],      // "offset": 0
        &[0x65, b't', b'o', b't', b'a', b'l'], &[0x03],            // "total": 3
        // RFC 8746 §2.1: tag 86 = IEEE 754 binary64, little endian. Tag
        // numbers 24..=255 take one following byte: 0xd8 0x56.
        &[0xd8, 0x56],
        // Byte string (major type 2) of 24 = 3 * 8 bytes; 24 no longer fits
        // in the initial byte, so 0x58 then one length byte 0x18.
        &[0x58, 0x18],
        &[0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xf8, 0x3f], //  1.5  = 0x3ff8000000000000, LE
        &[0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc0], // -2.0  = 0xc000000000000000, LE
        &[0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x40], //  3.25 = 0x400a000000000000, LE
    ]
    .concat();
    assert_eq!(by_hand.len(), 4 + 0x32);
    let case = golden_cases()
        .into_iter()
        .find(|c| c.name == "echo_list")
        .unwrap();
    assert_eq!(to_hex(&case.value.encode()), to_hex(&by_hand));
    let file = std::fs::read_to_string(tests_dir("golden").join("echo_list.hex")).unwrap();
    assert_eq!(to_hex(&from_hex(&file)), to_hex(&by_hand));
}

/// The matrix vector by hand: RFC 8746 §3.1 tag 40 (row-major) over
/// `[[rows, cols], 86(bytes)]`.
#[test]
fn echo_matrix_descriptor_matches_rfc_8746_by_hand() {
    let case = golden_cases()
        .into_iter()
        .find(|c| c.name == "echo_matrix")
        .unwrap();
    let Value::Frame(framed) = &case.value else {
        unreachable!()
    };
    let wire = case.value.encode();
    let payload = 6 * 8;
    #[rustfmt::skip]
    let descriptor = [
        0xd8, 0x28,       // tag 40: multi-dimensional array, row-major
        0x82,             // array(2): [shape, data]
        0x82, 0x02, 0x03, // shape [2, 3]
        0xd8, 0x56,       // tag 86: f64 little endian
        0x58, 0x30,       // byte string of 48 bytes
    ];
    let head_end = wire.len() - payload;
    assert_eq!(wire[head_end - descriptor.len()..head_end], descriptor);
    let floats = &framed.bulk.as_ref().unwrap().1;
    assert_eq!(wire[head_end..], *skelpi_proto::bulk::f64_bytes(floats));
}

/// Bye is the smallest frame there is, and MIN_FRAME says so.
#[test]
fn bye_is_the_minimum_frame() {
    let bye = golden_cases()
        .into_iter()
        .find(|c| c.name == "bye")
        .unwrap()
        .value
        .encode();
    // [8, null, null]: array(3), unsigned(8), null body (unit), null bulk.
    assert_eq!(bye, [0, 0, 0, 4, 0x83, 0x08, 0xf6, 0xf6]);
    assert_eq!(bye.len() - 4, skelpi_proto::frame::MIN_FRAME as usize);
}

/// A stage's progress from an agent older than the `busy_ns` field (the
/// bytes `stage_progress.hex` pinned before it) still decodes, busy 0.
#[test]
fn stage_progress_without_busy_decodes_as_zero() {
    let before_busy = from_hex(
        "0000003c83181ea66673747265616d0965737461676501676172726976656419\
         01a064646f6e651901996473656e741901986b696e7075745f656e646564f4f6",
    );
    let expected = Framed::plain(Message::StageProgress(skelpi_proto::StageProgress {
        stream: 9,
        stage: 1,
        arrived: 416,
        done: 409,
        sent: 408,
        input_ended: false,
        busy_ns: 0,
    }));
    expected.assert_decodes_from(&before_busy);
}

/// A task from a master older than the `job` field (the bytes `task.hex`
/// pinned before it) still decodes, as job 0: the field is optional, so
/// the protocol version did not change.
#[test]
fn a_task_without_a_job_decodes_as_job_zero() {
    let before_job = from_hex(
        "00000033830ba362696407666b65726e656c686572665f6275726e6461726773\
         81f95240d85650000000000000e03f000000000000d0bf",
    );
    let expected = Framed::with_bulk(
        Message::Task(TaskHead {
            id: 7,
            job: JobId(0),
            kernel: "erf_burn".into(),
            args: vec![50.0],
            trace: false,
            deadline_ms: None,
        }),
        Shape::List(2),
        vec![0.5, -0.25],
    );
    expected.assert_decodes_from(&before_job);
}
