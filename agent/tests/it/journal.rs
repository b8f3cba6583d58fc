//! Journal logging over journald's native socket protocol: the real agent
//! binary, with its stderr standing for the journal stream systemd would
//! give it, logs structured records to a socket this test listens on.
//!
//! A private journald cannot be started here without systemd as PID 1, so
//! the test plays journald's part on the socket (systemd.io
//! JOURNAL_NATIVE_PROTOCOL): in a private mount namespace (`unshare`, needs
//! root; CI has it) a tmpfs covers `/run` and the test's directory is bound
//! on `/run/systemd/journal`, where the agent's journal logger sends its
//! datagrams. Nothing outside the namespace changes.

use super::support::{KillOnDrop, TempDir, key_file};
use async_net::TcpStream;
use skelpi_proto::{Hello, JobId, Message, Shape, TaskHead};
use skelpi_wire::handshake;
use skelpi_wire::key::ClusterKey;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

/// One journal record: its fields.
type Record = HashMap<String, String>;

/// Parses a native-protocol datagram: `KEY=value\n` fields, or `KEY\n`, a
/// 64-bit little-endian length, the value and `\n` for values that may hold
/// newlines.
fn parse(mut d: &[u8]) -> Record {
    let mut fields = Record::new();
    while !d.is_empty() {
        let end = d.iter().position(|&b| b == b'\n').expect("field ends");
        let line = &d[..end];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            let (k, v) = (&line[..eq], &line[eq + 1..]);
            fields.insert(lossy(k), lossy(v));
            d = &d[end + 1..];
        } else {
            let key = lossy(line);
            let rest = &d[end + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            let value = &rest[8..8 + len];
            assert_eq!(
                rest[8 + len],
                b'\n',
                "binary field {key} ends with a newline"
            );
            fields.insert(key, lossy(value));
            d = &rest[8 + len + 1..];
        }
    }
    fields
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
#[ignore = "needs root (a private /run/systemd/journal, unshare --mount): scripts/test.sh runs it as root"]
fn under_systemd_the_agent_logs_structured_records_to_the_journal() {
    let dir = TempDir::new("journal");
    let key = ClusterKey::generate().unwrap();
    let key_path = key_file(&dir.0, "cluster.key", &key);
    let journal_dir = dir.0.join("journal");
    std::fs::create_dir(&journal_dir).unwrap();
    let socket = UnixDatagram::bind(journal_dir.join("socket")).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // systemd's JOURNAL_STREAM names the stream on the service's stderr:
    // here a file, so anything not sent to the journal is kept to look at.
    let stderr_path = dir.0.join("stderr");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let meta = stderr.metadata().unwrap();
    let agent_id = "0123456789abcdef";
    let script = r#"mount -t tmpfs skelpi-test /run && mkdir -p /run/systemd/journal \
        && mount --bind "$1" /run/systemd/journal \
        && exec "$0" --listen 127.0.0.1:0 --no-mdns --id "$2" --key-file "$3""#;
    let child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .arg(env!("CARGO_BIN_EXE_skelpi-agent"))
        .arg(&journal_dir)
        .arg(agent_id)
        .arg(&key_path)
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let stderr_text = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    // The next record; the logger's empty probe datagram is skipped.
    let next = || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = socket.recv(&mut buf).unwrap_or_else(|e| {
                panic!(
                    "no journal record within 20 s ({e}); stderr: {}",
                    stderr_text()
                )
            });
            if n > 0 {
                return parse(&buf[..n]);
            }
        }
    };

    // The first record: the agent says where it listens, naming itself.
    let status = next();
    let message = &status["MESSAGE"];
    assert!(message.contains("listening on 127.0.0.1:"), "{status:?}");
    assert_eq!(status["SKELPI_AGENT_ID"], agent_id, "{status:?}");
    assert_eq!(status["SYSLOG_IDENTIFIER"], "skelpi-agent", "{status:?}");
    assert_eq!(status["PRIORITY"], "5", "info is notice: {status:?}");
    let addr: std::net::SocketAddr = message
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap()
        .parse()
        .unwrap();

    // A master runs one good and one failing task of a job.
    let job = JobId(0x5eed_0000_cafe);
    smol::block_on(async {
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut est = handshake::connect(stream, &key, &Default::default())
            .await
            .unwrap();
        let hello = Message::Hello(Hello {
            master: "journal test".into(),
            heartbeat_ms: 0,
        });
        est.sender.send(&hello).await.unwrap();
        let mut bulk = Vec::new();
        assert!(matches!(
            est.receiver.recv(&mut bulk).await.unwrap().msg,
            Message::Welcome(_)
        ));
        for (id, kernel) in [(1, "square"), (2, "fail")] {
            let task = Message::Task(TaskHead {
                id,
                job,
                kernel: kernel.into(),
                args: vec![],
                trace: false,
                deadline_ms: None,
            });
            est.sender
                .send_bulk(&task, Shape::List(1), &[3.0])
                .await
                .unwrap();
            let reply = est.receiver.recv(&mut bulk).await.unwrap().msg;
            assert_eq!(
                reply.kind_name(),
                ["task-done", "task-failed"][id as usize - 1]
            );
        }
    });

    // The job's records carry its id and the agent's; the failure is a
    // warning. Other records (the master connecting) may come between.
    let mut job_records = Vec::new();
    for _ in 0..20 {
        let r = next();
        assert_eq!(r["SKELPI_AGENT_ID"], agent_id, "{r:?}");
        if r.get("SKELPI_JOB").map(String::as_str) == Some("00005eed0000cafe") {
            job_records.push(r);
            if job_records.len() == 2 {
                break;
            }
        }
    }
    assert_eq!(job_records.len(), 2, "{job_records:?}");
    let (first, failed) = (&job_records[0], &job_records[1]);
    assert!(first["MESSAGE"].contains("tasks from master"), "{first:?}");
    assert!(
        failed["MESSAGE"].contains("task 2") && failed["MESSAGE"].contains("fail"),
        "{failed:?}"
    );
    assert_eq!(
        failed["PRIORITY"], "4",
        "a failed task is a warning: {failed:?}"
    );

    Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(child.0.wait().unwrap().success());
    // Everything went to the journal; nothing to stderr.
    assert_eq!(stderr_text(), "");
}
