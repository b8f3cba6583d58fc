//! Messages that replace an agent's own binary (`skelpi deploy`): a
//! manifest signed with the deploy key, the binary in bounded chunks, and
//! the restart into it. The agent checks everything before it switches:
//! the signature against its deploy public key, the architecture and
//! protocol, the size and SHA-256 of what arrived, and that the binary
//! runs here (its self-check).
//!
//! The exchange, on one authenticated connection:
//!
//! ```text
//! master                               agent
//! DeployOffer {manifest, signature} ─►
//!                                   ◄─ DeployAccepted          (or Error)
//! DeployChunk {offset, bytes} ...   ─►                         (Error on a bad one)
//! DeployFinish                      ─►
//!                                   ◄─ DeployStaged {version}  (or Error)
//! DeployRestart                     ─►
//!                                   ◄─ DeployRestarting, then the agent restarts
//! ... (on a new connection, once the new binary passed the master's check)
//! DeployCommit                      ─►
//!                                   ◄─ DeployCommitted         (or Error)
//! ```
//!
//! A binary that restarted but was never committed is rolled back at the
//! agent's next start.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// The largest agent binary a deploy may carry (a debug build with its
/// symbols is about 100 MiB; a release build for a board, 5 to 15).
pub const MAX_BINARY_BYTES: u64 = 256 << 20;

/// Bytes of binary in one [`DeployChunk`]: well inside a frame of the
/// default size.
pub const CHUNK_BYTES: usize = 256 << 10;

/// What the deploy key signs: which binary, for which boards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// SHA-256 of the binary, 64 lower-case hex digits.
    pub sha256: String,
    /// Its length in bytes.
    pub size: u64,
    /// The architecture it runs on, as agents name theirs
    /// (`std::env::consts::ARCH`: `x86_64`, `aarch64`, `arm`).
    pub arch: String,
    /// The wire protocol version the deploying master speaks: the binary
    /// must speak it too (its self-check says).
    pub protocol: u16,
    /// Its version (`skelpi-agent --version`), when the master could read
    /// it; the agent checks it against the binary's self-check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// When it was signed (milliseconds since the Unix epoch, the
    /// signer's clock): an agent takes no manifest signed before or at the
    /// last one it restarted into, so a signed manifest is used once and
    /// an older one cannot be replayed to install an older build.
    pub issued_at: u64,
    /// The agent it is for (its id): the master signs one manifest per
    /// board, so another board refuses it.
    pub agent: String,
}

impl Manifest {
    /// The bytes the deploy key signs: the manifest's CBOR encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing plain data to a Vec cannot fail.
        let _ = ciborium::into_writer(self, &mut out);
        out
    }

    /// Reads a manifest from its signed bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Manifest, String> {
        ciborium::from_reader(bytes).map_err(|e| format!("the manifest is not valid CBOR: {e}"))
    }
}

/// Master → agent: the signed manifest of the binary about to come.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployOffer {
    /// [`Manifest::to_bytes`].
    pub manifest: ByteBuf,
    /// The Ed25519 signature of `manifest` by the deploy key (64 bytes;
    /// empty: unsigned, always refused).
    pub signature: ByteBuf,
}

/// Master → agent: bytes of the binary, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployChunk {
    /// Where these bytes go in the binary; must follow the previous chunk.
    pub offset: u64,
    /// At most [`CHUNK_BYTES`] of it.
    pub bytes: ByteBuf,
}

/// Agent → master: the binary is stored and passed its checks; it runs at
/// the next restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployStaged {
    /// Its SHA-256.
    pub sha256: String,
    /// The version its self-check reported.
    pub version: String,
}

/// Master → agent: the deployed binary with this hash, on trial here,
/// passed the master's check (commit) or failed it (abort).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployRef {
    /// Its SHA-256.
    pub sha256: String,
}

/// An agent's build, in its handshake reply: what runs, and how its last
/// deploy ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Build {
    /// The agent's version (`skelpi-agent --version`).
    pub version: String,
    /// SHA-256 of the binary when it runs one that `skelpi deploy` put
    /// there; absent for the one installed with the board.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed: Option<String>,
    /// Whether it can be deployed to (it has a deploy public key and a
    /// state directory).
    #[serde(default)]
    pub deployable: bool,
    /// Whether the deployed binary it runs is on trial (restarted into,
    /// not yet committed: it is rolled back at the next start).
    #[serde(default)]
    pub on_trial: bool,
    /// What happened to the last binary deployed here, when it did not
    /// become the running one ("rolled back: ...").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
}

/// What a binary's `--self-check` prints first.
pub const SELF_CHECK_BANNER: &str = "skelpi-agent self-check ok";

/// What `skelpi-agent --self-check` prints: the banner, then its version,
/// protocol and architecture as `key=value` lines.
pub fn self_check_report(version: &str, arch: &str) -> String {
    format!(
        "{SELF_CHECK_BANNER}\nversion={version}\nprotocol={}\narch={arch}\n",
        crate::PROTOCOL_VERSION
    )
}

/// The `key=value` lines of a self-check's output; `None` when it does
/// not start with the banner (not a skelpi agent).
pub fn parse_self_check(text: &str) -> Option<std::collections::HashMap<String, String>> {
    let rest = text.strip_prefix(SELF_CHECK_BANNER)?;
    Some(
        rest.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_round_trips_through_its_signed_bytes() {
        let m = Manifest {
            sha256: "ab".repeat(32),
            size: 12,
            arch: "aarch64".into(),
            protocol: crate::PROTOCOL_VERSION,
            version: Some("0.1.0".into()),
            issued_at: 1_790_000_000_000,
            agent: "0123456789abcdef".into(),
        };
        assert_eq!(Manifest::from_bytes(&m.to_bytes()), Ok(m));
        assert!(Manifest::from_bytes(b"\xff").is_err());
    }

    #[test]
    fn a_self_check_report_parses_back() {
        let report = parse_self_check(&self_check_report("1.2.3", "arm")).unwrap();
        assert_eq!(report["version"], "1.2.3");
        assert_eq!(report["arch"], "arm");
        assert_eq!(report["protocol"], crate::PROTOCOL_VERSION.to_string());
        assert_eq!(parse_self_check("hello\nversion=1"), None);
    }
}
