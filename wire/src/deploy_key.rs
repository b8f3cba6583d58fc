//! The deploy key: who may replace the agents' own binaries.
//!
//! Holding the cluster key lets a master run kernels; replacing an agent's
//! native code is a stronger right, so it has a key of its own: an Ed25519
//! signing key kept by the cluster's owner (`skelpi keygen --deploy`),
//! whose public half goes on every board (`/etc/skelpi/deploy.pub`). An
//! agent checks each deploy's manifest against it and refuses every deploy
//! when it has none.
//!
//! Both files are 64 hex digits and a newline: the private one is the
//! Ed25519 seed, kept like the cluster key (mode 0600, read without
//! following a FIFO, zeroed after use); the public one may be read by
//! anyone.
//!
//! ```
//! use skelpi_wire::deploy_key::DeployKey;
//!
//! let key = DeployKey::generate()?;
//! let signature = key.sign(b"manifest");
//! assert!(key.public().verify(b"manifest", &signature).is_ok());
//! assert!(key.public().verify(b"another", &signature).is_err());
//! # Ok::<(), skelpi_wire::deploy_key::DeployKeyError>(())
//! ```

use crate::key::{ClusterKey, KeyError, parse_hex};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where boards keep the deploy public key.
pub const DEFAULT_PUBLIC_KEY_PATH: &str = "/etc/skelpi/deploy.pub";

/// Where `skelpi` keeps the deploy signing key unless told:
/// `$SKELPI_DEPLOY_KEY_FILE`, else `deploy.key` beside the default cluster
/// key's directory (`$XDG_CONFIG_HOME/skelpi` or `~/.config/skelpi`).
pub fn default_key_path() -> PathBuf {
    if let Some(file) = std::env::var_os("SKELPI_DEPLOY_KEY_FILE").filter(|v| !v.is_empty()) {
        return PathBuf::from(file);
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        });
    match config {
        Some(dir) => dir.join("skelpi").join("deploy.key"),
        None => PathBuf::from("deploy.key"),
    }
}

/// The public file is at most this long.
const MAX_PUBLIC_FILE: u64 = 4096;

/// The deploy signing key (private).
pub struct DeployKey {
    pair: Ed25519KeyPair,
    seed: ClusterKey,
}

/// The deploy public key: what agents check manifests against.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DeployPublicKey([u8; 32]);

/// What went wrong with a deploy key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeployKeyError {
    /// No private key at the path.
    #[error("no deploy key at {}: create one with `skelpi keygen --deploy`", path.display())]
    NotFound {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The private key file could not be used (as a cluster key file
    /// could not: mode, content, kind of file).
    #[error("cannot use deploy key {}: {}", path.display(), describe(source))]
    Private {
        /// The file.
        path: PathBuf,
        /// Why.
        source: KeyError,
    },
    /// The public key file could not be read.
    #[error("cannot read deploy public key {}: {source}", path.display())]
    PublicIo {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The public key file holds no public key.
    #[error("deploy public key {} is malformed: {problem}", path.display())]
    PublicMalformed {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: crate::key::Malformed,
    },
    /// The seed is no Ed25519 key (cannot happen for 32 bytes).
    #[error("the deploy key is not an Ed25519 key")]
    Rejected,
}

/// A signature that does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the signature does not match the deploy public key")]
pub struct BadSignature;

/// A key error without the "cluster key" noun its own message starts with.
fn describe(e: &KeyError) -> String {
    match e {
        KeyError::Permissions { mode, path } => format!(
            "it has mode {mode:04o}, which lets group or others at it: run `chmod 600 {}`",
            path.display()
        ),
        KeyError::NotAFile { what, .. } => format!("it is {what}, not a file"),
        KeyError::Malformed { problem, .. } => format!("it is malformed: {problem}"),
        KeyError::Exists { .. } => "it exists already (pass --force to replace it)".to_owned(),
        other => {
            let mut text = other.to_string();
            if let Some(cause) = std::error::Error::source(other) {
                text = format!("{text}: {cause}");
            }
            text
        }
    }
}

impl DeployKey {
    /// A new key from the OS CSPRNG.
    pub fn generate() -> Result<DeployKey, DeployKeyError> {
        let seed = ClusterKey::generate().map_err(|source| DeployKeyError::Private {
            path: PathBuf::new(),
            source,
        })?;
        DeployKey::from_seed(seed)
    }

    fn from_seed(seed: ClusterKey) -> Result<DeployKey, DeployKeyError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed.as_bytes())
            .map_err(|_| DeployKeyError::Rejected)?;
        Ok(DeployKey { pair, seed })
    }

    /// Reads a private key file (mode 0600, 64 hex digits).
    pub fn load(path: &Path) -> Result<DeployKey, DeployKeyError> {
        let seed = ClusterKey::load(path).map_err(|source| match source {
            KeyError::NotFound { path } => DeployKeyError::NotFound { path },
            source => DeployKeyError::Private {
                path: path.to_owned(),
                source,
            },
        })?;
        DeployKey::from_seed(seed)
    }

    /// Writes the private key (mode 0600) to `path`, refusing to replace
    /// a file unless `overwrite`.
    pub fn write(&self, path: &Path, overwrite: bool) -> Result<(), DeployKeyError> {
        self.seed
            .write(path, overwrite)
            .map_err(|source| DeployKeyError::Private {
                path: path.to_owned(),
                source,
            })
    }

    /// Its public half.
    pub fn public(&self) -> DeployPublicKey {
        let mut bytes = [0; 32];
        bytes.copy_from_slice(self.pair.public_key().as_ref());
        DeployPublicKey(bytes)
    }

    /// Signs `message` (64 bytes).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }
}

impl fmt::Debug for DeployKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeployKey(public {})", self.public())
    }
}

impl DeployPublicKey {
    /// Reads a public key file: 64 hex digits, surrounding whitespace
    /// allowed.
    pub fn load(path: &Path) -> Result<DeployPublicKey, DeployKeyError> {
        let io = |source| DeployKeyError::PublicIo {
            path: path.to_owned(),
            source,
        };
        let mut text = Vec::new();
        std::fs::File::open(path)
            .map_err(io)?
            .take(MAX_PUBLIC_FILE)
            .read_to_end(&mut text)
            .map_err(io)?;
        parse_hex(&text)
            .map(DeployPublicKey)
            .map_err(|problem| DeployKeyError::PublicMalformed {
                path: path.to_owned(),
                problem,
            })
    }

    /// Reads a public key file that may say there is none: empty, or
    /// `none` (the fallback a systemd unit sets when the board has no
    /// key, see `SetCredential=` in the unit).
    pub fn load_optional(path: &Path) -> Result<Option<DeployPublicKey>, DeployKeyError> {
        let text = std::fs::read(path).map_err(|source| DeployKeyError::PublicIo {
            path: path.to_owned(),
            source,
        })?;
        match text.trim_ascii() {
            b"" | b"none" => Ok(None),
            _ => DeployPublicKey::load(path).map(Some),
        }
    }

    /// Writes it as 64 hex digits and a newline (mode 0644).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, format!("{self}\n"))
    }

    /// Checks that `signature` is this key's signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), BadSignature> {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message, signature)
            .map_err(|_| BadSignature)
    }

    /// Its first 16 hex digits, to name it in messages.
    pub fn fingerprint(&self) -> String {
        self.to_string()[..16].to_owned()
    }
}

impl fmt::Display for DeployPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for DeployPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeployPublicKey({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_their_files() {
        let dir = std::env::temp_dir().join(format!("skelpi-deploy-key-{}", std::process::id()));
        let key = DeployKey::generate().unwrap();
        key.write(&dir.join("deploy.key"), false).unwrap();
        key.public().write(&dir.join("deploy.pub")).unwrap();
        let again = DeployKey::load(&dir.join("deploy.key")).unwrap();
        let public = DeployPublicKey::load(&dir.join("deploy.pub")).unwrap();
        assert_eq!(again.public(), key.public());
        assert_eq!(public, key.public());
        let sig = again.sign(b"m");
        assert_eq!(public.verify(b"m", &sig), Ok(()));
        assert_eq!(public.verify(b"m", &[]), Err(BadSignature));
        let other = DeployKey::generate().unwrap();
        assert_eq!(other.public().verify(b"m", &sig), Err(BadSignature));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_missing_or_loose_private_key_says_what_to_do() {
        let dir = std::env::temp_dir().join(format!("skelpi-deploy-key2-{}", std::process::id()));
        let e = DeployKey::load(&dir.join("none")).unwrap_err().to_string();
        assert!(e.contains("skelpi keygen --deploy"), "{e}");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("loose"), "00".repeat(32)).unwrap();
        let e = DeployKey::load(&dir.join("loose")).unwrap_err().to_string();
        assert!(e.contains("chmod 600") && !e.contains("cluster key"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
