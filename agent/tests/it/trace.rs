//! The agent's side of tracing, over a real connection: clock probes, and
//! events recorded for traced tasks only, collected by job.

use skelpi_agent::local::{LocalAgent, LocalOptions};
use skelpi_proto::trace::{ClockReading, TraceKind, TraceRequest};
use skelpi_proto::{JobId, Message, Ping, Shape, TaskHead};
use skelpi_wire::handshake::{self, ConnectOptions, Established};
use skelpi_wire::key::ClusterKey;

async fn connect(agent: &LocalAgent, key: &ClusterKey) -> Established {
    let stream = async_net::TcpStream::connect(agent.addr()).await.unwrap();
    handshake::connect(stream, key, &ConnectOptions::default())
        .await
        .unwrap()
}

#[test]
fn traced_tasks_are_recorded_by_job_and_untraced_ones_not_at_all() {
    let key = ClusterKey::generate().unwrap();
    let offset = 7_000_000_000;
    let opts = LocalOptions {
        workers: 2,
        clock_offset_ns: offset,
        ..LocalOptions::default()
    };
    let agent = LocalAgent::start("trace-test", key.clone(), opts).unwrap();
    smol::block_on(async {
        let mut est = connect(&agent, &key).await;
        let mut bulk = Vec::new();

        // The clock reading carries the offset and moves forward.
        let mut readings = Vec::new();
        for nonce in [1, 2] {
            est.sender
                .send(&Message::ClockProbe(Ping { nonce }))
                .await
                .unwrap();
            match est.receiver.recv(&mut bulk).await.unwrap().msg {
                Message::ClockReading(ClockReading { nonce: n, agent_ns }) => {
                    assert_eq!(n, nonce);
                    readings.push(agent_ns);
                }
                other => panic!("expected a clock reading, got {other:?}"),
            }
        }
        assert!(
            readings[0] >= offset && readings[1] > readings[0],
            "{readings:?}"
        );

        let (traced, untraced) = (JobId(0xa), JobId(0xb));
        let input = [1.0, 2.0, 3.0];
        for id in 1..=6u64 {
            let job = if id <= 3 { traced } else { untraced };
            let task = Message::Task(TaskHead {
                id,
                job,
                kernel: if id == 2 { "fail" } else { "square" }.into(),
                args: vec![],
                trace: job == traced,
                deadline_ms: None,
            });
            est.sender
                .send_bulk(&task, Shape::List(3), &input)
                .await
                .unwrap();
        }
        for _ in 0..6 {
            let got = est.receiver.recv(&mut bulk).await.unwrap().msg;
            assert!(
                matches!(got, Message::TaskDone(_) | Message::TaskFailed(_)),
                "{got:?}"
            );
        }

        let mut collect = async |job: JobId| {
            est.sender
                .send(&Message::TraceCollect(TraceRequest { job }))
                .await
                .unwrap();
            let mut events = Vec::new();
            loop {
                match est.receiver.recv(&mut bulk).await.unwrap().msg {
                    Message::TraceBatch(b) => {
                        assert_eq!((b.job, b.workers, b.dropped), (job, 2, 0));
                        events.extend(b.events);
                        if b.last {
                            return events;
                        }
                    }
                    other => panic!("expected a trace batch, got {other:?}"),
                }
            }
        };
        let events = collect(traced).await;
        for kind in [
            TraceKind::TaskRecv,
            TraceKind::Kernel,
            TraceKind::ResultSend,
        ] {
            let mut ids: Vec<u64> = events
                .iter()
                .filter(|e| e.kind == kind)
                .map(|e| e.id)
                .collect();
            ids.sort();
            assert_eq!(
                ids,
                [1, 2, 3],
                "{kind:?}: one per traced task, failed one too"
            );
        }
        assert_eq!(events.len(), 9);
        for e in &events {
            assert!(e.start_ns >= offset, "{e:?} on the agent's (offset) clock");
            match e.kind {
                TraceKind::Kernel => {
                    assert!(e.lane.as_worker().is_some() && e.bytes == 0, "{e:?}")
                }
                k => {
                    let (_, send) = e.lane.as_conn().expect("frames are on connection lanes");
                    assert_eq!(send, k.is_send(), "{e:?}");
                    assert!(e.bytes > 24, "{e:?}: a frame with 3 floats");
                }
            }
        }
        // Receive, call, send: in that order for each task.
        for id in 1..=3 {
            let at = |k: TraceKind| {
                events
                    .iter()
                    .find(|e| e.id == id && e.kind == k)
                    .unwrap()
                    .start_ns
            };
            assert!(at(TraceKind::TaskRecv) <= at(TraceKind::Kernel));
            assert!(at(TraceKind::Kernel) <= at(TraceKind::ResultSend));
        }
        assert!(
            collect(untraced).await.is_empty(),
            "untraced tasks record nothing"
        );
    });
}
