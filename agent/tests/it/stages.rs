//! The stage role at the protocol level: what a stage refuses, and items
//! addressed to stages that do not run here.

use skelpi_agent::local::{LocalAgent, LocalOptions};
use skelpi_proto::{Message, Shape, StageNext, StageOpen, StreamItem, StreamRef};
use skelpi_wire::handshake::{self, ConnectOptions, Established};
use skelpi_wire::key::ClusterKey;

async fn session(agent: &LocalAgent, key: &ClusterKey) -> Established {
    let stream = async_net::TcpStream::connect(agent.addr()).await.unwrap();
    handshake::connect(stream, key, &ConnectOptions::default())
        .await
        .unwrap()
}

async fn next_message(est: &mut Established) -> Message {
    let mut bulk = Vec::new();
    est.receiver.recv(&mut bulk).await.unwrap().msg
}

fn open(stream: u64, kernel: &str, next: Option<&str>) -> Message {
    Message::StageOpen(StageOpen {
        stream,
        stage: 0,
        kernel: kernel.into(),
        args: vec![],
        next: next.map(|addr| StageNext {
            addr: addr.into(),
            stage: 1,
        }),
        trace: false,
    })
}

#[test]
fn stages_that_cannot_run_are_refused_with_the_reason() {
    let key = ClusterKey::generate().unwrap();
    let agent = LocalAgent::start("stage-host", key.clone(), LocalOptions::default()).unwrap();
    // A listener that is not an agent: it accepts and says nothing useful.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    drop(silent);
    smol::block_on(async {
        for (msg, expected) in [
            (
                open(1, "no_such_kernel", None),
                "no kernel \"no_such_kernel\"",
            ),
            (
                open(2, "square", Some("pi4.local:7871")),
                "is not an address",
            ),
            (
                open(3, "square", Some(&silent_addr)),
                "cannot reach stage 1",
            ),
        ] {
            let mut est = session(&agent, &key).await;
            est.sender.send(&msg).await.unwrap();
            match next_message(&mut est).await {
                Message::Error(e) => assert!(e.message.contains(expected), "{}", e.message),
                other => panic!("expected an error, got {other:?}"),
            }
        }
        // Items for a stage that does not run here are refused by name.
        let mut est = session(&agent, &key).await;
        let item = Message::StreamItem(StreamItem {
            stream: 42,
            stage: 3,
            index: 0,
        });
        est.sender
            .send_bulk(&item, Shape::List(1), &[1.0])
            .await
            .unwrap();
        match next_message(&mut est).await {
            Message::Error(e) => {
                assert!(
                    e.message.contains("no stage 3 of job 000000000000002a"),
                    "{}",
                    e.message
                )
            }
            other => panic!("expected an error, got {other:?}"),
        }
        // A stage with nothing to do ends at once, and reports zero items.
        est.sender.send(&open(7, "square", None)).await.unwrap();
        assert!(matches!(
            next_message(&mut est).await,
            Message::StageReady(_)
        ));
        let end = Message::StreamEnd(StreamRef {
            stream: 7,
            stage: 0,
        });
        est.sender.send(&end).await.unwrap();
        assert_eq!(
            next_message(&mut est).await,
            Message::StreamEnd(StreamRef {
                stream: 7,
                stage: 1
            })
        );
        match next_message(&mut est).await {
            Message::StageStats(s) => assert_eq!((s.stream, s.items), (7, 0)),
            other => panic!("expected stats, got {other:?}"),
        }
    });
}

#[test]
fn a_stage_whose_successor_falls_silent_reports_its_link_lost_within_four_beats() {
    let key = ClusterKey::generate().unwrap();
    let agent = LocalAgent::start("stage-host", key.clone(), LocalOptions::default()).unwrap();
    // The next stage's "agent": it greets, beats once, then says nothing
    // with its connection open (a board that hangs, or a broken path
    // between two boards while both still reach the master).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let next_addr = listener.local_addr().unwrap().to_string();
    let info = skelpi_proto::AgentInfo {
        id: "0123456789abcdef".into(),
        name: "hung".into(),
        version: skelpi_proto::PROTOCOL_VERSION,
        arch: "x86_64".into(),
        cores: 1,
        memory_bytes: 0,
        port: 0,
        kernels: Vec::new(),
        build: None,
        queued_per_worker: 0,
    };
    let (asked_tx, asked_rx) = std::sync::mpsc::channel();
    let hung = std::thread::spawn({
        let key = key.clone();
        move || {
            let (stream, _) = listener.accept().unwrap();
            smol::block_on(async {
                let stream = async_net::TcpStream::try_from(stream).unwrap();
                let opts = handshake::AcceptOptions::default();
                let mut est = handshake::accept(stream, &key, &opts).await.unwrap();
                let Message::Hello(hello) = next_message(&mut est).await else {
                    panic!("a stage link starts with hello");
                };
                asked_tx.send(hello.heartbeat_ms).unwrap();
                est.sender.send(&Message::Welcome(info)).await.unwrap();
                est.sender.send(&Message::Heartbeat).await.unwrap();
                // Silent until the stage gives up on this link.
                let mut bulk = Vec::new();
                while est.receiver.recv(&mut bulk).await.is_ok() {}
            });
        }
    });
    smol::block_on(async {
        let mut est = session(&agent, &key).await;
        let hello = Message::Hello(skelpi_proto::Hello {
            master: "test".into(),
            heartbeat_ms: 100,
        });
        est.sender.send(&hello).await.unwrap();
        assert!(matches!(next_message(&mut est).await, Message::Welcome(_)));
        est.sender
            .send(&open(9, "square", Some(&next_addr)))
            .await
            .unwrap();
        assert!(matches!(
            next_message(&mut est).await,
            Message::StageReady(_)
        ));
        let ready = std::time::Instant::now();
        assert_eq!(
            asked_rx.recv().unwrap(),
            100,
            "the master's heartbeat, passed on"
        );
        let bounded = futures_lite::future::or(next_message(&mut est), async {
            async_io::Timer::after(std::time::Duration::from_secs(10)).await;
            panic!("the stage never reported its silent successor")
        });
        match bounded.await {
            Message::Error(e) => {
                assert!(
                    e.message.contains("lost its link to stage 1") && e.message.contains("silent"),
                    "{}",
                    e.message
                );
            }
            other => panic!("expected the link's loss, got {other:?}"),
        }
        // Four beats of 100 ms, checked four times a beat (the silence
        // began at the beat, before the stage was ready).
        let noticed = ready.elapsed();
        assert!(
            noticed < std::time::Duration::from_secs(2),
            "noticed after {noticed:?}"
        );
    });
    hung.join().unwrap();
}

#[test]
fn a_stage_whose_input_link_ends_before_the_end_of_the_stream_reports_it() {
    // Stage 1 runs here for the master; its items come over a link of
    // their own, as from stage 0's agent, which sends two items and then
    // goes away without the end of the stream. The stage runs what came,
    // then says its input was lost, instead of waiting for ever.
    let key = ClusterKey::generate().unwrap();
    let agent = LocalAgent::start("stage-host", key.clone(), LocalOptions::default()).unwrap();
    smol::block_on(async {
        let mut master = session(&agent, &key).await;
        let stage1 = Message::StageOpen(StageOpen {
            stream: 11,
            stage: 1,
            kernel: "square".into(),
            args: vec![],
            next: None,
            trace: false,
        });
        master.sender.send(&stage1).await.unwrap();
        assert!(matches!(
            next_message(&mut master).await,
            Message::StageReady(_)
        ));
        let mut link = session(&agent, &key).await;
        for index in 0..2 {
            let item = Message::StreamItem(StreamItem {
                stream: 11,
                stage: 1,
                index,
            });
            let x = index as f64 + 2.0;
            link.sender
                .send_bulk(&item, Shape::List(1), &[x])
                .await
                .unwrap();
        }
        drop(link);
        let bounded = async {
            let mut results = Vec::new();
            loop {
                let mut bulk = Vec::new();
                let got = master.receiver.recv(&mut bulk).await.unwrap();
                match got.msg {
                    Message::StreamItem(i) => results.push((i.index, bulk[0])),
                    other => return (results, other),
                }
            }
        };
        let limit = std::time::Duration::from_secs(10);
        let (results, last) = futures_lite::future::or(bounded, async {
            async_io::Timer::after(limit).await;
            panic!("the stage did not report its lost input within {limit:?}")
        })
        .await;
        assert_eq!(results, [(0, 4.0), (1, 9.0)], "what came was run");
        match last {
            Message::Error(e) => {
                assert_eq!(e.code, skelpi_proto::ErrorCode::InputLost, "{}", e.message);
                assert!(
                    e.message
                        .contains("stage 1 lost its input from stage 0 (item 2 was next)"),
                    "{}",
                    e.message
                );
            }
            other => panic!("expected the input's loss, got {other:?}"),
        }
    });
}
