//! The real `skelpi-agent` binary: key checks, clean shutdown, and bounded
//! memory under a stream of bad peers.

use super::support::{TempDir, key_file, run_agent, start_agent};
use async_net::TcpStream;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use skelpi_proto::{Message, Ping};
use skelpi_wire::handshake::{self, HandshakeError};
use skelpi_wire::key::ClusterKey;
use std::os::unix::fs::PermissionsExt;

#[test]
fn refuses_to_start_without_a_key() {
    let dir = TempDir::new("nokey");
    let missing = dir.0.join("absent.key");
    let (code, stderr) = run_agent(&["--no-mdns", "--key-file", missing.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(missing.to_str().unwrap()), "{stderr}");
    assert!(stderr.contains("skelpi keygen"), "{stderr}");
}

#[test]
fn refuses_a_group_or_world_readable_key() {
    let dir = TempDir::new("loosekey");
    let path = key_file(&dir.0, "cluster.key", &ClusterKey::generate().unwrap());
    for mode in [0o644, 0o640] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let (code, stderr) = run_agent(&["--no-mdns", "--key-file", path.to_str().unwrap()]);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains("chmod 600"), "{stderr}");
    }
}

/// A wrong `--interface` is said as such, without pointing at
/// `--no-mdns` (mDNS is not what failed). Bound to loopback, the agent
/// refuses before announcing anything.
#[test]
fn a_wrong_interface_flag_is_named_without_the_no_mdns_hint() {
    let dir = TempDir::new("interface");
    let path = key_file(&dir.0, "cluster.key", &ClusterKey::generate().unwrap());
    let key = path.to_str().unwrap();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--interface",
        "lo",
        "--key-file",
        key,
    ];
    let (code, stderr) = run_agent(&args);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--interface needs --listen on 0.0.0.0 or ::"),
        "{stderr}"
    );
    assert!(!stderr.contains("--no-mdns"), "{stderr}");
}

#[test]
fn sigterm_shuts_down_cleanly_with_exit_zero() {
    let dir = TempDir::new("term");
    let path = key_file(&dir.0, "cluster.key", &ClusterKey::generate().unwrap());
    let mut agent = start_agent(&[
        "--no-mdns",
        "--listen",
        "127.0.0.1:0",
        "--key-file",
        path.to_str().unwrap(),
    ]);
    let lines = std::mem::replace(&mut agent.lines, std::sync::mpsc::channel().1);
    let exit = agent.terminate().unwrap();
    assert_eq!(exit.code(), Some(0));
    let said: Vec<String> = lines.try_iter().collect();
    assert!(said.iter().any(|l| l.contains("shutting down")), "{said:?}");
}

async fn good_ping(addr: std::net::SocketAddr, key: &ClusterKey) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut est = handshake::connect(stream, key, &Default::default())
        .await
        .unwrap();
    est.sender
        .send(&Message::Ping(Ping { nonce: 1 }))
        .await
        .unwrap();
    let mut bulk = Vec::new();
    let got = est.receiver.recv(&mut bulk).await.unwrap();
    assert_eq!(got.msg, Message::Pong(Ping { nonce: 1 }));
}

/// One bad peer of three kinds: a wrong key, random bytes, a 4 GiB claim.
async fn bad_peer(addr: std::net::SocketAddr, i: usize, wrong: &ClusterKey) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    match i % 3 {
        0 => {
            let err = handshake::connect(s, wrong, &Default::default())
                .await
                .unwrap_err();
            assert!(matches!(err, HandshakeError::KeyRejected), "{err}");
        }
        1 => {
            let mut junk = [0u8; 512];
            getrandom::fill(&mut junk).unwrap();
            let _ = s.write_all(&junk).await;
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink).await;
        }
        _ => {
            // A valid preamble, then a Noise message length claim of 64 KiB
            // and a frame-style 4 GiB claim.
            let _ = s
                .write_all(b"SKPI\x00\x01\x00\x00\xff\xff\xff\xff\xff\xff")
                .await;
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink).await;
        }
    }
}

#[test]
fn bad_peers_are_refused_without_growing_memory() {
    let dir = TempDir::new("bad");
    let key = ClusterKey::generate().unwrap();
    let path = key_file(&dir.0, "cluster.key", &key);
    let agent = start_agent(&[
        "--no-mdns",
        "--listen",
        "127.0.0.1:0",
        "--key-file",
        path.to_str().unwrap(),
    ]);
    let wrong = ClusterKey::generate().unwrap();
    smol::block_on(async {
        // Warm up: let the allocator and the log pipe reach steady state.
        for i in 0..150 {
            bad_peer(agent.addr, i, &wrong).await;
        }
        good_ping(agent.addr, &key).await;
        let before = agent.rss().unwrap();
        for i in 0..1000 {
            bad_peer(agent.addr, i, &wrong).await;
            if i % 250 == 0 {
                good_ping(agent.addr, &key).await;
            }
        }
        good_ping(agent.addr, &key).await;
        let after = agent.rss().unwrap();
        let growth = after.saturating_sub(before);
        eprintln!("agent RSS before {before} B, after 1000 bad peers {after} B, growth {growth} B");
        assert!(growth <= 1 << 20, "RSS grew by {growth} bytes");
    });
    // The agent logged why it refused them.
    let said: Vec<String> = agent.lines.try_iter().collect();
    assert!(
        said.iter().any(|l| l.contains("failed authentication")),
        "no refusal logged"
    );
}
