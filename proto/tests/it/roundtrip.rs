//! Round-trip properties: whatever the encoder writes, the decoder reads
//! back, a byte at a time or all at once.

use crate::cases::{Framed, bits};
use proptest::prelude::*;
use skelpi_proto::codec::{self, Decoded};
use skelpi_proto::frame::{CHUNK_ELEMENTS, DEFAULT_MAX_FRAME, LEN_PREFIX};
use skelpi_proto::{
    AgentInfo, Chunk, EncodeError, ErrorCode, ErrorReply, Hello, JobId, Message, Ping,
    RawEchoReady, Shape, StageFailed, StageNext, StageOpen, StageStats, StreamItem, StreamRef,
    TaskDone, TaskFailed, TaskHead,
};

/// Any f64 bit pattern, NaNs with payloads and signs included.
fn any_f64_bits() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => any::<u64>().prop_map(f64::from_bits),
        // Quiet and signalling NaNs with random payloads and either sign.
        1 => (any::<bool>(), 1..(1u64 << 52)).prop_map(|(neg, payload)| {
            f64::from_bits(((neg as u64) << 63) | (0x7ff << 52) | payload)
        }),
        1 => prop::sample::select(vec![0.0, -0.0, f64::INFINITY, f64::NEG_INFINITY, f64::MIN_POSITIVE, 5e-324]),
    ]
}

fn chunk() -> impl Strategy<Value = Chunk> {
    (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(id, offset, total)| Chunk {
        id,
        offset,
        total,
    })
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop::sample::select(vec![
        ErrorCode::BadRequest,
        ErrorCode::Unsupported,
        ErrorCode::ShuttingDown,
        ErrorCode::Unknown,
    ])
}

fn agent_info() -> impl Strategy<Value = AgentInfo> {
    (
        any::<String>(),
        any::<String>(),
        any::<u16>(),
        any::<String>(),
        any::<u32>(),
        any::<u64>(),
        any::<u16>(),
        proptest::collection::vec(any::<String>(), 0..4),
        proptest::option::of(any::<(String, Option<String>, (bool, bool), Option<String>)>()),
        any::<u32>(),
    )
        .prop_map(
            |(id, name, version, arch, cores, memory_bytes, port, kernels, build, queued)| {
                AgentInfo {
                    id,
                    name,
                    version,
                    arch,
                    cores,
                    memory_bytes,
                    port,
                    kernels,
                    build: build.map(
                        |(version, deployed, (deployable, on_trial), last_failure)| {
                            Box::new(skelpi_proto::deploy::Build {
                                version,
                                deployed,
                                deployable,
                                on_trial,
                                last_failure,
                            })
                        },
                    ),
                    queued_per_worker: queued,
                }
            },
        )
}

/// Every kind that carries no array.
fn plain_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<String>(), any::<u32>()).prop_map(|(master, heartbeat_ms)| Message::Hello(Hello {
            master,
            heartbeat_ms
        })),
        Just(Message::Heartbeat),
        agent_info().prop_map(Message::Welcome),
        any::<u64>().prop_map(|nonce| Message::Ping(Ping { nonce })),
        any::<u64>().prop_map(|nonce| Message::Pong(Ping { nonce })),
        (error_code(), any::<String>())
            .prop_map(|(code, message)| Message::Error(ErrorReply { code, message })),
        Just(Message::Bye),
        Just(Message::RawEchoOpen),
        (any::<u16>(), any::<[u8; 16]>())
            .prop_map(|(port, token)| Message::RawEchoReady(RawEchoReady { port, token })),
        (
            any::<u64>(),
            any::<String>(),
            any::<bool>(),
            proptest::option::of(any::<String>())
        )
            .prop_map(|(id, error, panicked, missing_module)| {
                Message::TaskFailed(TaskFailed {
                    id,
                    error,
                    panicked,
                    missing_module,
                })
            }),
        stage_message(),
        trace_message(),
        code_message(),
    ]
}

/// The kinds that change code on agents.
fn code_message() -> impl Strategy<Value = Message> {
    use skelpi_proto::code::{ModulePush, ModuleStored, StageSwap, StageSwapped};
    prop_oneof![
        (
            any::<String>(),
            proptest::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(hash, bytes)| Message::ModulePush(ModulePush {
                hash,
                bytes: bytes.into()
            })),
        (
            any::<String>(),
            proptest::collection::vec(any::<String>(), 0..4)
        )
            .prop_map(|(hash, kernels)| Message::ModuleStored(ModuleStored { hash, kernels })),
        (
            any::<u64>(),
            any::<u32>(),
            any::<String>(),
            proptest::collection::vec(-1e9..1e9f64, 0..3)
        )
            .prop_map(
                |(stream, stage, kernel, args)| Message::StageSwap(StageSwap {
                    id: stream ^ 7,
                    stream,
                    stage,
                    kernel,
                    args
                })
            ),
        (
            any::<u64>(),
            any::<u32>(),
            any::<u64>(),
            proptest::option::of(any::<String>())
        )
            .prop_map(|(stream, stage, from, refused)| {
                Message::StageSwapped(StageSwapped {
                    id: from ^ 3,
                    stream,
                    stage,
                    from,
                    refused,
                })
            }),
    ]
}

/// The tracing kinds.
fn trace_message() -> impl Strategy<Value = Message> {
    use skelpi_proto::trace::{
        ClockReading, Lane, TraceBatch, TraceEvent, TraceKind, TraceRequest,
    };
    let kind = prop_oneof![
        Just(TraceKind::TaskSend),
        Just(TraceKind::TaskRecv),
        Just(TraceKind::ResultSend),
        Just(TraceKind::ResultRecv),
        Just(TraceKind::ItemSend),
        Just(TraceKind::ItemRecv),
        Just(TraceKind::Kernel),
    ];
    let event = (
        kind,
        any::<u32>(),
        any::<[u64; 4]>(),
        any::<u32>(),
        any::<i64>(),
    )
        .prop_map(
            |(kind, lane, [id, dur_ns, bytes, wait_ns], stage, start_ns)| TraceEvent {
                kind,
                lane: Lane(lane),
                id,
                stage,
                start_ns,
                dur_ns,
                bytes,
                wait_ns,
            },
        );
    prop_oneof![
        any::<u64>().prop_map(|nonce| Message::ClockProbe(Ping { nonce })),
        (any::<u64>(), any::<i64>())
            .prop_map(|(nonce, agent_ns)| Message::ClockReading(ClockReading { nonce, agent_ns })),
        any::<u64>().prop_map(|j| Message::TraceCollect(TraceRequest { job: JobId(j) })),
        (
            any::<[u64; 2]>(),
            any::<u32>(),
            prop::collection::vec(event, 0..5),
            any::<bool>()
        )
            .prop_map(|([job, dropped], workers, events, last)| {
                Message::TraceBatch(TraceBatch {
                    job: JobId(job),
                    workers,
                    dropped,
                    events,
                    last,
                })
            }),
    ]
}

/// The pipeline-stage kinds that carry no array.
fn stage_message() -> impl Strategy<Value = Message> {
    let at = (any::<u64>(), any::<u32>());
    prop_oneof![
        (
            at,
            any::<String>(),
            prop::collection::vec(-1e12f64..1e12, 0..4),
            prop::option::of((any::<String>(), any::<u32>())),
            any::<bool>()
        )
            .prop_map(|((stream, stage), kernel, args, next, trace)| {
                Message::StageOpen(StageOpen {
                    stream,
                    stage,
                    kernel,
                    args,
                    next: next.map(|(addr, stage)| StageNext { addr, stage }),
                    trace,
                })
            }),
        at.prop_map(|(stream, stage)| Message::StageReady(StreamRef { stream, stage })),
        at.prop_map(|(stream, stage)| Message::StreamEnd(StreamRef { stream, stage })),
        (at, any::<u64>(), any::<String>(), any::<bool>()).prop_map(
            |((stream, stage), index, error, panicked)| {
                Message::StageFailed(StageFailed {
                    stream,
                    stage,
                    index,
                    error,
                    panicked,
                })
            }
        ),
        (at, any::<[u64; 3]>()).prop_map(|((stream, stage), [items, busy_ns, span_ns])| {
            Message::StageStats(StageStats {
                stream,
                stage,
                items,
                busy_ns,
                span_ns,
            })
        }),
        at.prop_map(|(stream, stage)| Message::StageQuery(StreamRef { stream, stage })),
        (at, any::<[u64; 4]>(), any::<bool>()).prop_map(
            |((stream, stage), [arrived, done, sent, busy_ns], input_ended)| {
                Message::StageProgress(skelpi_proto::StageProgress {
                    stream,
                    stage,
                    arrived,
                    done,
                    sent,
                    input_ended,
                    busy_ns,
                })
            }
        ),
        (any::<Vec<u8>>(), any::<Vec<u8>>()).prop_map(|(manifest, signature)| {
            Message::DeployOffer(skelpi_proto::deploy::DeployOffer {
                manifest: manifest.into(),
                signature: signature.into(),
            })
        }),
        Just(Message::DeployAccepted),
        (any::<u64>(), any::<Vec<u8>>()).prop_map(|(offset, bytes)| {
            Message::DeployChunk(skelpi_proto::deploy::DeployChunk {
                offset,
                bytes: bytes.into(),
            })
        }),
        Just(Message::DeployFinish),
        (any::<String>(), any::<String>()).prop_map(|(sha256, version)| {
            Message::DeployStaged(skelpi_proto::deploy::DeployStaged { sha256, version })
        }),
        Just(Message::DeployRestart),
        Just(Message::DeployRestarting),
        any::<String>()
            .prop_map(|sha256| Message::DeployCommit(skelpi_proto::deploy::DeployRef { sha256 })),
        any::<String>()
            .prop_map(|sha256| Message::DeployAbort(skelpi_proto::deploy::DeployRef { sha256 })),
        Just(Message::DeployCommitted),
        Just(Message::HealthQuery),
        (
            any::<(Option<String>, String, Option<u64>, u64)>(),
            any::<(u32, u32, u32, u32)>(),
            any::<(Option<u64>, Option<u64>, Option<u32>)>(),
            (0.0..100.0f64, -40.0..120.0f64),
        )
            .prop_map(
                |(
                    (model, version, uptime_s, agent_uptime_s),
                    (workers, busy_workers, queued_calls, sessions),
                    (memory_total, memory_available, throttled),
                    (load, temp),
                )| {
                    Message::Health(Box::new(skelpi_proto::health::HealthReport {
                        model,
                        version,
                        uptime_s,
                        agent_uptime_s,
                        workers,
                        busy_workers,
                        queued_calls,
                        sessions,
                        load_1m: Some(load),
                        memory_total,
                        memory_available,
                        cpu_temp_c: Some(temp),
                        throttled,
                    }))
                }
            ),
    ]
}

/// A shape of at most `max_elements` elements, with data of that size.
fn bulk(max_elements: u64) -> impl Strategy<Value = (Shape, Vec<f64>)> {
    let side = (max_elements as f64).sqrt() as u64;
    prop_oneof![
        (0..=max_elements).prop_map(Shape::List),
        (0..=side, 0..=side).prop_map(|(rows, cols)| Shape::Matrix { rows, cols }),
    ]
    .prop_flat_map(|shape| {
        let n = shape.elements().unwrap() as usize;
        (Just(shape), prop::collection::vec(any_f64_bits(), n))
    })
}

/// Any message, with an array when its kind carries one.
fn framed(max_elements: u64) -> impl Strategy<Value = Framed> {
    prop_oneof![
        plain_message().prop_map(Framed::plain),
        (chunk(), any::<bool>(), bulk(max_elements)).prop_map(|(c, reply, (shape, data))| {
            let msg = if reply {
                Message::EchoReply(c)
            } else {
                Message::Echo(c)
            };
            Framed::with_bulk(msg, shape, data)
        }),
        (
            any::<u64>(),
            any::<u64>(),
            any::<String>(),
            prop::collection::vec(-1e12f64..1e12, 0..4),
            bulk(max_elements),
            (any::<bool>(), prop::option::of(any::<u32>()))
        )
            .prop_map(
                |(id, job, kernel, args, (shape, data), (trace, deadline_ms))| {
                    let head = TaskHead {
                        id,
                        job: JobId(job),
                        kernel,
                        args,
                        trace,
                        deadline_ms,
                    };
                    Framed::with_bulk(Message::Task(head), shape, data)
                }
            ),
        (any::<u64>(), any::<Option<u64>>(), bulk(max_elements)).prop_map(
            |(id, busy_ns, (shape, data))| {
                let done = TaskDone { id, busy_ns };
                Framed::with_bulk(Message::TaskDone(done), shape, data)
            }
        ),
        (any::<u64>(), any::<u32>(), any::<u64>(), bulk(max_elements)).prop_map(
            |(stream, stage, index, (shape, data))| {
                let item = StreamItem {
                    stream,
                    stage,
                    index,
                };
                Framed::with_bulk(Message::StreamItem(item), shape, data)
            }
        ),
    ]
}

/// Bytes of a CBOR unsigned integer (RFC 8949 §3).
fn uint_len(v: u64) -> usize {
    match v {
        0..24 => 1,
        24..0x100 => 2,
        0x100..0x1_0000 => 3,
        0x1_0000..0x1_0000_0000 => 5,
        _ => 9,
    }
}

/// Bytes of the Chunk body: map(3) and the keys "id", "offset", "total".
fn chunk_len(c: &Chunk) -> usize {
    1 + (1 + 2) + uint_len(c.id) + (1 + 6) + uint_len(c.offset) + (1 + 5) + uint_len(c.total)
}

proptest! {
    #[test]
    fn every_message_round_trips(f in framed(4096)) {
        let wire = f.encode();
        f.assert_decodes_from(&wire);
    }

    /// The split API (head, then payload written by the caller) produces
    /// the same bytes as `encode_frame`, and `decode_head` finds the payload
    /// where the floats' bytes are.
    #[test]
    fn head_and_payload_split_where_the_floats_are(f in framed(512)) {
        let wire = f.encode();
        let mut split = Vec::new();
        let payload = codec::encode_head(&f.msg, f.bulk.as_ref().map(|b| b.0), DEFAULT_MAX_FRAME, &mut split).unwrap();
        let data = f.bulk.as_ref().map(|b| b.1.as_slice()).unwrap_or_default();
        prop_assert_eq!(payload, data.len() * 8);
        split.extend_from_slice(skelpi_proto::bulk::f64_bytes(data));
        prop_assert_eq!(&split, &wire);

        let body = &wire[LEN_PREFIX..];
        let head = codec::decode_head(body, body.len()).unwrap().unwrap();
        prop_assert_eq!(&head.msg, &f.msg);
        match (&head.bulk, &f.bulk) {
            (None, None) => {}
            (Some(h), Some((shape, data))) => {
                prop_assert_eq!(h.shape, *shape);
                prop_assert_eq!(h.elements(), data.len());
                prop_assert_eq!(h.offset + h.byte_len, body.len());
                prop_assert_eq!(&body[h.offset..], skelpi_proto::bulk::f64_bytes(data));
            }
            other => prop_assert!(false, "bulk mismatch: {other:?}"),
        }
    }

    /// Every strict prefix of a frame is "need more", with the exact count
    /// of missing bytes once the prefix is known; never an error.
    #[test]
    fn every_prefix_needs_more(f in framed(32)) {
        let wire = f.encode();
        let mut floats = Vec::new();
        for k in 0..wire.len() {
            let got = codec::decode_frame(&wire[..k], DEFAULT_MAX_FRAME, &mut floats);
            let want = if k < LEN_PREFIX { LEN_PREFIX - k } else { wire.len() - k };
            prop_assert_eq!(got, Ok(Decoded::NeedMore(want)), "prefix of {} bytes", k);
        }
    }

    /// `decode_head` on the first k bytes of a frame body is `None` until the
    /// head is complete and then exactly the frame's head.
    #[test]
    fn decode_head_on_any_prefix_is_none_or_right(f in framed(32)) {
        let wire = f.encode();
        let body = &wire[LEN_PREFIX..];
        let full = codec::decode_head(body, body.len()).unwrap().unwrap();
        let head_end = full.bulk.map_or(body.len(), |b| b.offset);
        for k in 0..=body.len() {
            let got = codec::decode_head(&body[..k], body.len());
            if k < head_end {
                prop_assert_eq!(got, Ok(None), "prefix of {} bytes", k);
            } else {
                prop_assert_eq!(got, Ok(Some(full.clone())), "prefix of {} bytes", k);
            }
        }
    }

    /// Frames back to back in one buffer decode one at a time, in order.
    #[test]
    fn concatenated_frames_decode_in_order(fs in prop::collection::vec(framed(16), 1..8)) {
        let wire: Vec<u8> = fs.iter().flat_map(|f| f.encode()).collect();
        let mut rest = &wire[..];
        for f in &fs {
            let mut floats = Vec::new();
            let Ok(Decoded::Frame { consumed, .. }) = codec::decode_frame(rest, DEFAULT_MAX_FRAME, &mut floats) else {
                panic!("frame did not decode");
            };
            f.assert_decodes_from(&rest[..consumed]);
            rest = &rest[consumed..];
        }
        prop_assert!(rest.is_empty());
    }

    /// A list of n floats costs exactly 8n bytes plus a head that does not
    /// grow with n (beyond the byte-string length's own width): no per-element
    /// overhead, unlike a CBOR array of floats (9n) or Erlang's 9n + 7.
    #[test]
    fn a_list_of_n_floats_is_8n_plus_a_small_head(
        n in prop_oneof![0..64usize, 0..=CHUNK_ELEMENTS],
        c in chunk(),
    ) {
        let data = vec![0.25; n];
        let mut wire = Vec::new();
        codec::encode_frame(&Message::Echo(c), Some((Shape::List(n as u64), &data)), DEFAULT_MAX_FRAME, &mut wire).unwrap();
        let overhead = wire.len() - 8 * n;
        // prefix, array(3), kind, body, tag 86 (2 bytes), byte-string header.
        let want = LEN_PREFIX + 1 + 1 + chunk_len(&c) + 2 + uint_len(8 * n as u64);
        prop_assert_eq!(overhead, want);
        // The largest possible Chunk (three 9-byte integers) and a byte string
        // over 64 KiB bound every echo's overhead.
        prop_assert!(overhead <= 57, "overhead {overhead}");
    }

    /// With the ids and offsets of real traffic (below 65536), an echo's
    /// whole overhead stays within 40 bytes.
    #[test]
    fn echo_overhead_is_at_most_40_bytes(
        n in 0..=CHUNK_ELEMENTS,
        id in 0..0x1_0000u64,
        offset in 0..0x1_0000u64,
        total in 0..0x1_0000u64,
    ) {
        let data = vec![1.0; n];
        let mut wire = Vec::new();
        let msg = Message::EchoReply(Chunk { id, offset, total });
        codec::encode_frame(&msg, Some((Shape::List(n as u64), &data)), DEFAULT_MAX_FRAME, &mut wire).unwrap();
        prop_assert!(wire.len() - 8 * n <= 40, "overhead {}", wire.len() - 8 * n);
    }
}

/// A full chunk (CHUNK_ELEMENTS floats) fits the default frame, whatever its
/// Chunk numbers.
#[test]
fn a_full_chunk_fits_the_default_frame() {
    let data = vec![f64::from_bits(0x7ff4_0000_0000_0001); CHUNK_ELEMENTS];
    let worst = Chunk {
        id: u64::MAX,
        offset: u64::MAX,
        total: u64::MAX,
    };
    let f = Framed::with_bulk(
        Message::Echo(worst),
        Shape::List(CHUNK_ELEMENTS as u64),
        data,
    );
    f.assert_decodes_from(&f.encode());
}

/// The largest list a default frame holds encodes and decodes; one float
/// more is refused by the encoder with the length it would have had.
#[test]
fn the_default_limit_is_exact() {
    let c = Chunk {
        id: 9,
        offset: 0,
        total: 0,
    };
    let max = DEFAULT_MAX_FRAME as usize;
    // Frame body: array(3), kind, Chunk, tag 86, 5-byte byte-string header.
    let head = 1 + 1 + chunk_len(&c) + 2 + 5;
    let n = (max - head) / 8;
    let data: Vec<f64> = (0..n + 1).map(|i| i as f64).collect();

    let fits = Framed::with_bulk(Message::Echo(c), Shape::List(n as u64), data[..n].to_vec());
    let wire = fits.encode();
    assert!(wire.len() - LEN_PREFIX <= max);
    assert!(wire.len() - LEN_PREFIX + 8 > max);
    fits.assert_decodes_from(&wire);

    let mut out = vec![0xaa];
    let err = codec::encode_frame(
        &Message::Echo(c),
        Some((Shape::List(n as u64 + 1), &data)),
        DEFAULT_MAX_FRAME,
        &mut out,
    );
    assert_eq!(
        err,
        Err(EncodeError::TooLarge {
            len: (head + 8 * (n + 1)) as u64,
            max: DEFAULT_MAX_FRAME,
        })
    );
    assert_eq!(out, [0xaa], "a refused frame leaves the buffer as it was");
}

/// The decoder reuses the caller's float buffer and leaves no stale
/// elements behind.
#[test]
fn the_float_buffer_is_reused_and_resized() {
    let big = Framed::with_bulk(
        Message::Echo(Chunk {
            id: 1,
            offset: 0,
            total: 100,
        }),
        Shape::List(100),
        vec![7.0; 100],
    );
    let small = Framed::with_bulk(
        Message::EchoReply(Chunk {
            id: 1,
            offset: 0,
            total: 2,
        }),
        Shape::List(2),
        vec![1.0, 2.0],
    );
    let mut floats = Vec::new();
    codec::decode_frame(&big.encode(), DEFAULT_MAX_FRAME, &mut floats).unwrap();
    let capacity = floats.capacity();
    codec::decode_frame(&small.encode(), DEFAULT_MAX_FRAME, &mut floats).unwrap();
    assert_eq!(bits(&floats), bits(&[1.0, 2.0]));
    assert_eq!(floats.capacity(), capacity);
}
