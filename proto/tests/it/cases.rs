//! Helpers shared by the test modules: building and decoding frames, hex
//! text, and the fixed cases that the golden files pin.

use skelpi_proto::codec::{self, Decoded};
use skelpi_proto::frame::DEFAULT_MAX_FRAME;
use skelpi_proto::preamble::{Cipher, ClientPreamble, ServerPreamble, Verdict};
use skelpi_proto::trace::{
    ClockReading, Lane, NO_STAGE, TraceBatch, TraceEvent, TraceKind, TraceRequest,
};
use skelpi_proto::{
    AgentInfo, Chunk, ErrorCode, ErrorReply, Hello, JobId, Message, Ping, RawEchoReady, Shape,
    StageFailed, StageNext, StageOpen, StageStats, StreamItem, StreamRef, TaskDone, TaskFailed,
    TaskHead,
};
use std::fmt::Write as _;

/// A message with the array it carries, if any.
#[derive(Debug, Clone)]
pub struct Framed {
    pub msg: Message,
    pub bulk: Option<(Shape, Vec<f64>)>,
}

impl Framed {
    pub fn plain(msg: Message) -> Self {
        Framed { msg, bulk: None }
    }

    pub fn with_bulk(msg: Message, shape: Shape, data: Vec<f64>) -> Self {
        Framed {
            msg,
            bulk: Some((shape, data)),
        }
    }

    /// The whole frame, prefix included, under the default limit.
    pub fn encode(&self) -> Vec<u8> {
        let mut wire = Vec::new();
        let bulk = self.bulk.as_ref().map(|(s, d)| (*s, d.as_slice()));
        codec::encode_frame(&self.msg, bulk, DEFAULT_MAX_FRAME, &mut wire)
            .expect("test frames encode");
        wire
    }

    /// Asserts that `wire` is exactly one frame holding this message, with
    /// floats compared bit for bit (so NaN payloads count).
    pub fn assert_decodes_from(&self, wire: &[u8]) {
        let mut floats = vec![f64::NAN; 3]; // stale contents must be replaced
        let decoded = codec::decode_frame(wire, DEFAULT_MAX_FRAME, &mut floats)
            .unwrap_or_else(|e| panic!("{} does not decode: {e}", self.msg.kind_name()));
        let Decoded::Frame {
            msg,
            bulk,
            consumed,
        } = decoded
        else {
            panic!("a whole frame reported as incomplete: {decoded:?}");
        };
        assert_eq!(msg, self.msg);
        assert_eq!(consumed, wire.len(), "frame does not span the buffer");
        assert_eq!(bulk, self.bulk.as_ref().map(|b| b.0));
        if let Some((_, data)) = &self.bulk {
            assert_eq!(bits(&floats), bits(data), "payload differs");
        }
    }
}

/// Floats as bit patterns, so that NaNs compare equal to themselves.
pub fn bits(data: &[f64]) -> Vec<u64> {
    data.iter().map(|x| x.to_bits()).collect()
}

/// What one golden file holds.
#[derive(Debug, Clone)]
pub enum Value {
    /// A frame, length prefix included.
    Frame(Framed),
    /// The master's 8-byte preamble.
    Client(ClientPreamble),
    /// The agent's 8-byte preamble.
    Server(ServerPreamble),
}

impl Value {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Value::Frame(f) => f.encode(),
            Value::Client(p) => p.encode().to_vec(),
            Value::Server(p) => p.encode().to_vec(),
        }
    }

    /// Asserts that `bytes` decode back to this value.
    pub fn assert_decodes_from(&self, bytes: &[u8]) {
        match self {
            Value::Frame(f) => f.assert_decodes_from(bytes),
            Value::Client(p) => {
                let b = bytes.try_into().expect("a preamble is 8 bytes");
                assert_eq!(ClientPreamble::decode(b).as_ref(), Ok(p));
            }
            Value::Server(p) => {
                let b = bytes.try_into().expect("a preamble is 8 bytes");
                assert_eq!(ServerPreamble::decode(b).as_ref(), Ok(p));
            }
        }
    }
}

/// One golden case: its file stem, a line saying what it is, and the value.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: &'static str,
    pub about: &'static str,
    pub value: Value,
}

/// The agent every `welcome` case describes.
pub fn sample_agent() -> AgentInfo {
    AgentInfo {
        id: "0123456789abcdef".into(),
        name: "pi-1".into(),
        version: skelpi_proto::PROTOCOL_VERSION,
        arch: "aarch64".into(),
        cores: 4,
        memory_bytes: 4 << 30,
        port: 7878,
        kernels: Vec::new(),
        build: None,
        queued_per_worker: 0,
    }
}

/// Every golden case. Adding one here and running with `SKELPI_BLESS=1`
/// creates its file.
pub fn golden_cases() -> Vec<Case> {
    let chunk = Chunk {
        id: 1,
        offset: 0,
        total: 3,
    };
    let frame = |f| Value::Frame(f);
    vec![
        Case {
            name: "ping",
            about: "ping, nonce 1000000 (a 4-byte CBOR integer)",
            value: frame(Framed::plain(Message::Ping(Ping { nonce: 1_000_000 }))),
        },
        Case {
            name: "pong",
            about: "pong answering the golden ping",
            value: frame(Framed::plain(Message::Pong(Ping { nonce: 1_000_000 }))),
        },
        Case {
            name: "hello",
            about: "hello from master \"laptop\"",
            value: frame(Framed::plain(Message::Hello(Hello {
                master: "laptop".into(),
                heartbeat_ms: 0,
            }))),
        },
        Case {
            name: "hello_heartbeat",
            about: "hello from master \"laptop\", asking for a heartbeat every second",
            value: frame(Framed::plain(Message::Hello(Hello {
                master: "laptop".into(),
                heartbeat_ms: 1000,
            }))),
        },
        Case {
            name: "heartbeat",
            about: "heartbeat: [24, null, null]",
            value: frame(Framed::plain(Message::Heartbeat)),
        },
        Case {
            name: "welcome",
            about: "welcome from a 4-core aarch64 agent with 4 GiB on port 7878",
            value: frame(Framed::plain(Message::Welcome(sample_agent()))),
        },
        Case {
            name: "echo_list",
            about: "echo of the list [1.5, -2.0, 3.25], chunk id 1 offset 0 total 3",
            value: frame(Framed::with_bulk(
                Message::Echo(chunk),
                Shape::List(3),
                vec![1.5, -2.0, 3.25],
            )),
        },
        Case {
            name: "echo_matrix",
            about: "echo of the 2x3 matrix [[1, 2, 3], [4, 5, 6]], row-major",
            value: frame(Framed::with_bulk(
                Message::Echo(Chunk {
                    id: 2,
                    offset: 0,
                    total: 6,
                }),
                Shape::Matrix { rows: 2, cols: 3 },
                vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            )),
        },
        Case {
            name: "echo_reply_list",
            about: "echo-reply of the golden echo_list",
            value: frame(Framed::with_bulk(
                Message::EchoReply(chunk),
                Shape::List(3),
                vec![1.5, -2.0, 3.25],
            )),
        },
        Case {
            name: "echo_empty",
            about: "echo of an empty list: tag 86 over a zero-length byte string",
            value: frame(Framed::with_bulk(
                Message::Echo(Chunk {
                    id: 3,
                    offset: 0,
                    total: 0,
                }),
                Shape::List(0),
                vec![],
            )),
        },
        Case {
            name: "error",
            about: "error reply: unsupported, \"no such kernel\"",
            value: frame(Framed::plain(Message::Error(ErrorReply {
                code: ErrorCode::Unsupported,
                message: "no such kernel".into(),
            }))),
        },
        Case {
            name: "bye",
            about: "bye: the smallest frame, [8, null, null]",
            value: frame(Framed::plain(Message::Bye)),
        },
        Case {
            name: "task",
            about: "task: erf_burn(50) on a 2-element list, of job 0x5eed",
            value: frame(Framed::with_bulk(
                Message::Task(TaskHead {
                    id: 7,
                    job: JobId(0x5eed),
                    kernel: "erf_burn".into(),
                    args: vec![50.0],
                    trace: false,
                    deadline_ms: None,
                }),
                Shape::List(2),
                vec![0.5, -0.25],
            )),
        },
        Case {
            name: "task_traced",
            about: "task: as `task`, traced (an untraced task has no trace key)",
            value: frame(Framed::with_bulk(
                Message::Task(TaskHead {
                    id: 7,
                    job: JobId(0x5eed),
                    kernel: "erf_burn".into(),
                    args: vec![50.0],
                    trace: true,
                    deadline_ms: None,
                }),
                Shape::List(2),
                vec![0.5, -0.25],
            )),
        },
        Case {
            name: "task_deadline",
            about: "task: as `task`, due within 1,500 ms of its arrival (a task without one has no deadline_ms key)",
            value: frame(Framed::with_bulk(
                Message::Task(TaskHead {
                    id: 7,
                    job: JobId(0x5eed),
                    kernel: "erf_burn".into(),
                    args: vec![50.0],
                    trace: false,
                    deadline_ms: Some(1500),
                }),
                Shape::List(2),
                vec![0.5, -0.25],
            )),
        },
        Case {
            name: "clock_probe",
            about: "clock-probe: [20, {nonce: 3}, null]",
            value: frame(Framed::plain(Message::ClockProbe(Ping { nonce: 3 }))),
        },
        Case {
            name: "clock_reading",
            about: "clock-reading: the agent's trace clock at -1.5 s when it handled probe 3",
            value: frame(Framed::plain(Message::ClockReading(ClockReading {
                nonce: 3,
                agent_ns: -1_500_000_000,
            }))),
        },
        Case {
            name: "trace_collect",
            about: "trace-collect: the events of job 0x5eed",
            value: frame(Framed::plain(Message::TraceCollect(TraceRequest {
                job: JobId(0x5eed),
            }))),
        },
        Case {
            name: "trace_batch",
            about: "trace-batch: the last batch of job 0x5eed, one kernel call on worker 1, 2 events lost",
            value: frame(Framed::plain(Message::TraceBatch(TraceBatch {
                job: JobId(0x5eed),
                workers: 4,
                dropped: 2,
                events: vec![TraceEvent {
                    kind: TraceKind::Kernel,
                    lane: Lane::worker(1),
                    id: 7,
                    stage: NO_STAGE,
                    start_ns: 1_000_000,
                    dur_ns: 250_000,
                    bytes: 0,
                    wait_ns: 5_000,
                }],
                last: true,
            }))),
        },
        Case {
            name: "task_done",
            about: "task-done: the result of task 7",
            value: frame(Framed::with_bulk(
                Message::TaskDone(TaskDone {
                    id: 7,
                    busy_ns: None,
                }),
                Shape::List(2),
                vec![0.5, -0.25],
            )),
        },
        Case {
            name: "task_done_busy",
            about: "task-done: the result of task 7, whose kernel ran 1.5 ms",
            value: frame(Framed::with_bulk(
                Message::TaskDone(TaskDone {
                    id: 7,
                    busy_ns: Some(1_500_000),
                }),
                Shape::List(2),
                vec![0.5, -0.25],
            )),
        },
        Case {
            name: "module_push",
            about: "module-push: 8 bytes (a CBOR byte string, not an array) claimed to hash to 64 zeros",
            value: frame(Framed::plain(Message::ModulePush(
                skelpi_proto::code::ModulePush {
                    hash: "0".repeat(64),
                    bytes: b"\0asm\x01\0\0\0".to_vec().into(),
                },
            ))),
        },
        Case {
            name: "module_stored",
            about: "module-stored: a module of one kernel",
            value: frame(Framed::plain(Message::ModuleStored(
                skelpi_proto::code::ModuleStored {
                    hash: "ab".repeat(32),
                    kernels: vec![format!("wasm:{}:erf", "ab".repeat(32))],
                },
            ))),
        },
        Case {
            name: "stage_swap",
            about: "stage-swap 2: stage 1 of stream 9 runs scale(3) from its next item",
            value: frame(Framed::plain(Message::StageSwap(
                skelpi_proto::code::StageSwap {
                    id: 2,
                    stream: 9,
                    stage: 1,
                    kernel: "scale".into(),
                    args: vec![3.0],
                },
            ))),
        },
        Case {
            name: "stage_swapped",
            about: "stage-swapped 2: stage 1 of stream 9 runs its new kernel from item 5001",
            value: frame(Framed::plain(Message::StageSwapped(
                skelpi_proto::code::StageSwapped {
                    id: 2,
                    stream: 9,
                    stage: 1,
                    from: 5001,
                    refused: None,
                },
            ))),
        },
        Case {
            name: "stage_swap_refused",
            about: "stage-swapped 2: stage 1 of stream 9 keeps its kernel",
            value: frame(Framed::plain(Message::StageSwapped(
                skelpi_proto::code::StageSwapped {
                    id: 2,
                    stream: 9,
                    stage: 1,
                    from: 0,
                    refused: Some("no kernel \"cube\"".into()),
                },
            ))),
        },
        Case {
            name: "stage_query",
            about: "stage-query: how far is stage 1 of stream 9?",
            value: frame(Framed::plain(Message::StageQuery(StreamRef {
                stream: 9,
                stage: 1,
            }))),
        },
        Case {
            name: "stage_progress",
            about: "stage-progress: stage 1 of stream 9 took 416 items, ran 409 in 2.5 s, passed on 408; its input goes on",
            value: frame(Framed::plain(Message::StageProgress(
                skelpi_proto::StageProgress {
                    stream: 9,
                    stage: 1,
                    arrived: 416,
                    done: 409,
                    sent: 408,
                    input_ended: false,
                    busy_ns: 2_500_000_000,
                },
            ))),
        },
        Case {
            name: "task_failed",
            about: "task-failed: task 7 panicked",
            value: frame(Framed::plain(Message::TaskFailed(TaskFailed {
                id: 7,
                error: "kernel panicked: boom".into(),
                panicked: true,
                missing_module: None,
            }))),
        },
        Case {
            name: "stage_open",
            about: "stage-open: stage 1 of stream 9, matmul_power(4, 100), results to stage 2 at 10.0.0.3:7871",
            value: frame(Framed::plain(Message::StageOpen(StageOpen {
                stream: 9,
                stage: 1,
                kernel: "matmul_power".into(),
                args: vec![4.0, 100.0],
                next: Some(StageNext {
                    addr: "10.0.0.3:7871".into(),
                    stage: 2,
                }),
                trace: false,
            }))),
        },
        Case {
            name: "stage_ready",
            about: "stage-ready: stage 1 of stream 9",
            value: frame(Framed::plain(Message::StageReady(StreamRef {
                stream: 9,
                stage: 1,
            }))),
        },
        Case {
            name: "stream_item",
            about: "stream-item: item 3 of stream 9 for stage 2, a 1x2 matrix",
            value: frame(Framed::with_bulk(
                Message::StreamItem(StreamItem {
                    stream: 9,
                    stage: 2,
                    index: 3,
                }),
                Shape::Matrix { rows: 1, cols: 2 },
                vec![1.0, -2.0],
            )),
        },
        Case {
            name: "stream_end",
            about: "stream-end: no more items for stage 2 of stream 9",
            value: frame(Framed::plain(Message::StreamEnd(StreamRef {
                stream: 9,
                stage: 2,
            }))),
        },
        Case {
            name: "stage_failed",
            about: "stage-failed: stage 1 of stream 9 failed on item 3",
            value: frame(Framed::plain(Message::StageFailed(StageFailed {
                stream: 9,
                stage: 1,
                index: 3,
                error: "the fail kernel fails, as asked".into(),
                panicked: false,
            }))),
        },
        Case {
            name: "stage_stats",
            about: "stage-stats: stage 1 of stream 9 ran 200 items for 0.3 s over 0.35 s",
            value: frame(Framed::plain(Message::StageStats(StageStats {
                stream: 9,
                stage: 1,
                items: 200,
                busy_ns: 300_000_000,
                span_ns: 350_000_000,
            }))),
        },
        Case {
            name: "raw_echo_open",
            about: "raw-echo-open: [9, null, null]",
            value: frame(Framed::plain(Message::RawEchoOpen)),
        },
        Case {
            name: "raw_echo_ready",
            about: "raw-echo-ready: [10, {port: 40000, token: [0, 1, .., 15]}, null]",
            value: frame(Framed::plain(Message::RawEchoReady(RawEchoReady {
                port: 40000,
                token: std::array::from_fn(|i| i as u8),
            }))),
        },
        Case {
            name: "client_preamble",
            about: "master preamble: version 1, AES hardware, encrypted transport",
            value: Value::Client(ClientPreamble {
                version: 1,
                aes_hw: true,
                plaintext: false,
            }),
        },
        Case {
            name: "client_preamble_plaintext",
            about: "master preamble: version 1, no AES hardware, asks for plaintext",
            value: Value::Client(ClientPreamble {
                version: 1,
                aes_hw: false,
                plaintext: true,
            }),
        },
        Case {
            name: "server_preamble_accept_aes",
            about: "agent preamble: version 1, accept with AES-GCM, encrypted",
            value: Value::Server(ServerPreamble {
                version: 1,
                verdict: Verdict::Accept {
                    cipher: Cipher::AesGcm,
                    plaintext: false,
                },
            }),
        },
        Case {
            name: "server_preamble_accept_chacha_plaintext",
            about: "agent preamble: version 1, accept with ChaChaPoly, plaintext after auth",
            value: Value::Server(ServerPreamble {
                version: 1,
                verdict: Verdict::Accept {
                    cipher: Cipher::ChaChaPoly,
                    plaintext: true,
                },
            }),
        },
        Case {
            name: "server_preamble_version_mismatch",
            about: "agent preamble: version 1, refuses a master of another version",
            value: Value::Server(ServerPreamble {
                version: 1,
                verdict: Verdict::VersionMismatch,
            }),
        },
        Case {
            name: "server_preamble_plaintext_refused",
            about: "agent preamble: version 1, refuses plaintext",
            value: Value::Server(ServerPreamble {
                version: 1,
                verdict: Verdict::PlaintextRefused,
            }),
        },
    ]
}

/// Hex text as written to golden files: 32 bytes a line, lower case.
pub fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::new();
    for line in bytes.chunks(32) {
        for b in line {
            write!(s, "{b:02x}").unwrap();
        }
        s.push('\n');
    }
    s
}

/// Parses hex text, skipping whitespace and `#` comment lines.
pub fn from_hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.bytes())
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    assert!(digits.len().is_multiple_of(2), "odd number of hex digits");
    digits
        .chunks(2)
        .map(|p| {
            let p = std::str::from_utf8(p).expect("hex is ascii");
            u8::from_str_radix(p, 16).unwrap_or_else(|_| panic!("bad hex digits {p:?}"))
        })
        .collect()
}

/// A directory under `proto/tests/`.
pub fn tests_dir(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(name)
}
