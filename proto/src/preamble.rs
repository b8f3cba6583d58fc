//! The plaintext preamble that opens every connection, before the Noise
//! handshake.
//!
//! The master sends 8 bytes: magic `SKPI`, its protocol version (u16, big
//! endian), a capability byte (bit 0: it has AES hardware; bit 1: it asks
//! for a plaintext transport after authentication) and a zero byte. The agent
//! answers with 8 bytes: magic, its version, a verdict byte and the chosen
//! cipher. Both preambles are fed to Noise as the prologue, so a man in the
//! middle who rewrites them (to force a weaker choice) breaks the handshake.
//!
//! # Examples
//! ```
//! use skelpi_proto::preamble::*;
//! let hello = ClientPreamble { version: 1, aes_hw: true, plaintext: false };
//! let answer = answer(&ClientPreamble::decode(hello.encode())?, 1, true, false);
//! assert_eq!(answer.verdict, Verdict::Accept { cipher: Cipher::AesGcm, plaintext: false });
//! # Ok::<(), PreambleError>(())
//! ```

use thiserror::Error;

/// First bytes of every skelpi connection.
pub const MAGIC: [u8; 4] = *b"SKPI";
/// Length of either preamble.
pub const PREAMBLE_LEN: usize = 8;
/// Largest Noise handshake message accepted (NNpsk0 needs 48 bytes and 32).
pub const MAX_HANDSHAKE_MSG: usize = 256;
/// Largest Noise transport message (the Noise spec's limit).
pub const MAX_NOISE_MSG: usize = 65535;
/// Authentication tag added to every Noise transport message.
pub const NOISE_TAG: usize = 16;

const CAP_AES: u8 = 1;
const CAP_PLAINTEXT: u8 = 2;

/// The master's opening bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientPreamble {
    /// Protocol version the master speaks.
    pub version: u16,
    /// The master has AES instructions.
    pub aes_hw: bool,
    /// The master asks to skip encryption after authenticating.
    pub plaintext: bool,
}

/// The agent's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerPreamble {
    /// Protocol version the agent speaks.
    pub version: u16,
    /// What the agent decided.
    pub verdict: Verdict,
}

/// The agent's decision on a master's preamble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Proceed with the Noise handshake using this cipher.
    Accept {
        /// Cipher of the Noise handshake and (unless plaintext) the transport.
        cipher: Cipher,
        /// After authentication, frames travel unencrypted.
        plaintext: bool,
    },
    /// The versions differ; the agent closes the connection.
    VersionMismatch,
    /// The master asked for plaintext and the agent does not allow it.
    PlaintextRefused,
}

/// The Noise cipher of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    /// ChaCha20-Poly1305 with BLAKE2s: fastest without AES instructions.
    ChaChaPoly,
    /// AES-256-GCM with SHA-256: fastest when both ends have AES instructions.
    AesGcm,
}

impl Cipher {
    /// The full Noise protocol name for the NNpsk0 pattern with this cipher.
    pub fn noise_params(self) -> &'static str {
        match self {
            Cipher::ChaChaPoly => "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s",
            Cipher::AesGcm => "Noise_NNpsk0_25519_AESGCM_SHA256",
        }
    }
}

/// Why a preamble was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PreambleError {
    /// The peer does not speak skelpi at all.
    #[error("not a skelpi peer: expected magic \"SKPI\", got {0:02x?}")]
    BadMagic([u8; 4]),
    /// A byte that must be zero or known was not.
    #[error("malformed preamble: {0}")]
    Malformed(&'static str),
}

impl ClientPreamble {
    /// The 8 bytes on the wire.
    pub fn encode(&self) -> [u8; PREAMBLE_LEN] {
        let v = self.version.to_be_bytes();
        let caps = (if self.aes_hw { CAP_AES } else { 0 })
            | (if self.plaintext { CAP_PLAINTEXT } else { 0 });
        [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], v[0], v[1], caps, 0]
    }

    /// Parses the 8 bytes a master sent.
    pub fn decode(b: [u8; PREAMBLE_LEN]) -> Result<Self, PreambleError> {
        check_magic(&b)?;
        if b[6] & !(CAP_AES | CAP_PLAINTEXT) != 0 || b[7] != 0 {
            return Err(PreambleError::Malformed("unknown capability bits"));
        }
        Ok(ClientPreamble {
            version: u16::from_be_bytes([b[4], b[5]]),
            aes_hw: b[6] & CAP_AES != 0,
            plaintext: b[6] & CAP_PLAINTEXT != 0,
        })
    }
}

impl ServerPreamble {
    /// The 8 bytes on the wire.
    pub fn encode(&self) -> [u8; PREAMBLE_LEN] {
        let v = self.version.to_be_bytes();
        let (verdict, cipher) = match self.verdict {
            Verdict::Accept { cipher, plaintext } => (if plaintext { 1 } else { 0 }, cipher as u8),
            Verdict::VersionMismatch => (2, 0),
            Verdict::PlaintextRefused => (3, 0),
        };
        [
            MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], v[0], v[1], verdict, cipher,
        ]
    }

    /// Parses the 8 bytes an agent sent.
    pub fn decode(b: [u8; PREAMBLE_LEN]) -> Result<Self, PreambleError> {
        check_magic(&b)?;
        let cipher = match b[7] {
            0 => Cipher::ChaChaPoly,
            1 => Cipher::AesGcm,
            _ => return Err(PreambleError::Malformed("unknown cipher")),
        };
        let verdict = match b[6] {
            0 => Verdict::Accept {
                cipher,
                plaintext: false,
            },
            1 => Verdict::Accept {
                cipher,
                plaintext: true,
            },
            // A refusal names no cipher: its byte is zero, as `encode` writes
            // it, so that every accepted preamble has one encoding.
            2 | 3 if b[7] != 0 => return Err(PreambleError::Malformed("cipher set in a refusal")),
            2 => Verdict::VersionMismatch,
            3 => Verdict::PlaintextRefused,
            _ => return Err(PreambleError::Malformed("unknown verdict")),
        };
        Ok(ServerPreamble {
            version: u16::from_be_bytes([b[4], b[5]]),
            verdict,
        })
    }
}

fn check_magic(b: &[u8; PREAMBLE_LEN]) -> Result<(), PreambleError> {
    let magic = [b[0], b[1], b[2], b[3]];
    if magic == MAGIC {
        Ok(())
    } else {
        Err(PreambleError::BadMagic(magic))
    }
}

/// The agent's decision: same version required; AES-GCM only when both ends
/// have AES hardware; plaintext only when asked for and allowed.
pub fn answer(
    client: &ClientPreamble,
    version: u16,
    aes_hw: bool,
    allow_plaintext: bool,
) -> ServerPreamble {
    let verdict = if client.version != version {
        Verdict::VersionMismatch
    } else if client.plaintext && !allow_plaintext {
        Verdict::PlaintextRefused
    } else {
        Verdict::Accept {
            cipher: if client.aes_hw && aes_hw {
                Cipher::AesGcm
            } else {
                Cipher::ChaChaPoly
            },
            plaintext: client.plaintext,
        }
    };
    ServerPreamble { version, verdict }
}

/// The Noise prologue binding both preambles into the handshake.
pub fn prologue(client: &[u8; PREAMBLE_LEN], server: &[u8; PREAMBLE_LEN]) -> [u8; 24] {
    let mut p = [0u8; 24];
    p[..8].copy_from_slice(b"skelpi/1");
    p[8..16].copy_from_slice(client);
    p[16..].copy_from_slice(server);
    p
}

/// Reads the u16 big-endian length of a Noise handshake message and checks
/// it against [`MAX_HANDSHAKE_MSG`] before anything is allocated.
pub fn handshake_len(prefix: [u8; 2]) -> Result<usize, PreambleError> {
    let len = u16::from_be_bytes(prefix) as usize;
    if len == 0 || len > MAX_HANDSHAKE_MSG {
        Err(PreambleError::Malformed(
            "handshake message length out of range",
        ))
    } else {
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every preamble a decoder accepts has exactly one encoding: decoding
    /// then encoding gives back the same 8 bytes. Exhaustive over the two
    /// bytes that carry choices.
    #[test]
    fn accepted_preambles_are_canonical() {
        let mut accepted = (0, 0);
        for b6 in 0..=255u8 {
            for b7 in 0..=255u8 {
                let b = [b'S', b'K', b'P', b'I', 0x12, 0x34, b6, b7];
                if let Ok(p) = ClientPreamble::decode(b) {
                    assert_eq!(p.encode(), b, "client {b:02x?}");
                    accepted.0 += 1;
                }
                if let Ok(p) = ServerPreamble::decode(b) {
                    assert_eq!(p.encode(), b, "server {b:02x?}");
                    accepted.1 += 1;
                }
            }
        }
        // Client: 4 capability combinations. Server: 2 accepts x 2 ciphers + 2 refusals.
        assert_eq!(accepted, (4, 6));
    }

    #[test]
    fn a_refusal_naming_a_cipher_is_malformed() {
        for verdict in [2, 3] {
            let b = [b'S', b'K', b'P', b'I', 0, 1, verdict, 1];
            assert_eq!(
                ServerPreamble::decode(b),
                Err(PreambleError::Malformed("cipher set in a refusal"))
            );
        }
    }

    #[test]
    fn the_agent_picks_aes_only_when_both_ends_have_it() {
        let client = |aes_hw, plaintext| ClientPreamble {
            version: 1,
            aes_hw,
            plaintext,
        };
        let accept = |cipher, plaintext| Verdict::Accept { cipher, plaintext };
        let cases = [
            // (master aes, master plaintext, agent aes, agent allows plaintext) -> verdict
            ((true, false, true, false), accept(Cipher::AesGcm, false)),
            (
                (true, false, false, false),
                accept(Cipher::ChaChaPoly, false),
            ),
            (
                (false, false, true, false),
                accept(Cipher::ChaChaPoly, false),
            ),
            ((true, true, true, true), accept(Cipher::AesGcm, true)),
            ((false, true, false, false), Verdict::PlaintextRefused),
        ];
        for ((c_aes, c_plain, a_aes, allow), want) in cases {
            let got = answer(&client(c_aes, c_plain), 1, a_aes, allow);
            assert_eq!(
                got,
                ServerPreamble {
                    version: 1,
                    verdict: want
                }
            );
        }
        // A version mismatch wins over everything else; the agent states its own.
        let got = answer(&client(true, true), 2, true, false);
        assert_eq!(
            got,
            ServerPreamble {
                version: 2,
                verdict: Verdict::VersionMismatch
            }
        );
    }

    #[test]
    fn the_prologue_binds_both_preambles_in_order() {
        let c = [1; PREAMBLE_LEN];
        let s = [2; PREAMBLE_LEN];
        let p = prologue(&c, &s);
        assert_eq!(&p[..8], b"skelpi/1");
        assert_eq!(p[8..16], c);
        assert_eq!(p[16..], s);
        assert_ne!(prologue(&s, &c), p);
    }
}
