//! The cluster key: one 256-bit secret shared by the master and every agent.
//!
//! The key is the Noise pre-shared key of the whole cluster (DESIGN §3). It is
//! generated from the OS CSPRNG and kept in a file of 64 lower-case hex
//! characters and a newline, so it can be handed to a service with systemd's
//! `LoadCredential=` or copied to a board by hand.
//!
//! # Examples
//!
//! ```
//! use skelpi_wire::key::ClusterKey;
//!
//! let key = ClusterKey::generate()?;
//! // Debug output never shows key material.
//! assert_eq!(format!("{key:?}"), "ClusterKey(<redacted>)");
//! # Ok::<(), skelpi_wire::key::KeyError>(())
//! ```
//!
//! # Implementation
//!
//! A key file is refused when its mode grants anything to group or others,
//! and is written with mode 0600 set when the file is created, so there is no
//! window in which another user can open it. Errors name paths, lengths,
//! positions and modes, never key bytes. Buffers that held the key are
//! overwritten with zeros when they are done with; this is best effort (no
//! `unsafe`, so the compiler may in principle keep copies elsewhere).

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Length of the key in bytes.
const KEY_LEN: usize = 32;
/// Length of the key in hex characters.
const HEX_LEN: usize = 2 * KEY_LEN;
/// A key file larger than this is not read (it cannot be a key).
const MAX_FILE_LEN: u64 = 4096;

/// The cluster key: 32 random bytes.
///
/// Its `Debug` output is redacted, and its bytes are overwritten with zeros
/// when it is dropped. Clones (one per in-process agent or connection
/// task) are zeroed likewise.
#[derive(Clone)]
pub struct ClusterKey([u8; KEY_LEN]);

/// What can go wrong while making, loading or writing a cluster key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The OS random number generator failed.
    #[error("cannot read the OS random number generator")]
    Random(#[source] getrandom::Error),
    /// There is no key file at the path.
    #[error("no cluster key at {}: create one with `skelpi keygen`", path.display())]
    NotFound {
        /// Where the key was looked for.
        path: PathBuf,
    },
    /// The key file may be read or written by group or others.
    #[error(
        "cluster key {} has mode {mode:04o}, which lets group or others at it: \
         run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits (`mode & 0o7777`).
        mode: u32,
    },
    /// The path names something other than a regular file.
    #[error(
        "cluster key {} is {what}, not a file: name the file `skelpi keygen` wrote",
        path.display()
    )]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is: "a directory", "a FIFO"...
        what: &'static str,
    },
    /// The key file's content is not a key.
    #[error("cluster key {} is malformed: {problem}", path.display())]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// What is wrong with its content.
        problem: Malformed,
    },
    /// The key file exists and overwriting was not asked for.
    #[error("refusing to overwrite the existing cluster key {}", path.display())]
    Exists {
        /// The key file.
        path: PathBuf,
    },
    /// Any other I/O error on a path.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being done, e.g. "read".
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// What is wrong with the content of a key file. Never holds key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Malformed {
    /// After trimming whitespace, the content is not 64 characters long.
    #[error("expected {HEX_LEN} hex characters, found {found}")]
    WrongLength {
        /// How many bytes there were after trimming whitespace.
        found: usize,
    },
    /// A byte that is not a hex digit (counted from 1, from the file's start).
    #[error("non-hex character at position {position}")]
    NonHex {
        /// 1-based byte position in the file.
        position: usize,
    },
}

impl ClusterKey {
    /// Makes a new key from the OS CSPRNG.
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = [0u8; KEY_LEN];
        getrandom::fill(&mut bytes).map_err(KeyError::Random)?;
        Ok(Self(bytes))
    }

    /// Wraps existing key bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The key bytes, e.g. for the Noise pre-shared key.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Loads a key file.
    ///
    /// Refuses a file whose mode grants anything to group or others
    /// (`mode & 0o077 != 0`), with an error that names the path, the mode and
    /// the fix (`chmod 600 PATH`). A missing file gives an error that names
    /// the path and suggests `skelpi keygen`. The content must be 64 hex
    /// digits (either case), optionally surrounded by whitespace.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        // Non-blocking: opening a FIFO with no writer would wait for ever.
        let nonblocking = rustix::fs::OFlags::NONBLOCK.bits() as i32;
        let opened = OpenOptions::new()
            .read(true)
            .custom_flags(nonblocking)
            .open(path);
        let file = opened.map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => KeyError::NotFound {
                path: path.to_owned(),
            },
            _ => io_error("open", path, source),
        })?;
        // Check the file we opened, not whatever the path names by now.
        let meta = file.metadata().map_err(|e| io_error("stat", path, e))?;
        if !meta.is_file() {
            return Err(KeyError::NotAFile {
                path: path.to_owned(),
                what: kind_of(&meta.file_type()),
            });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        let mut text = Vec::with_capacity(HEX_LEN + 1);
        let read = file.take(MAX_FILE_LEN + 1).read_to_end(&mut text);
        let parsed = read.map_err(|e| io_error("read", path, e)).and_then(|_| {
            parse_hex(&text).map_err(|problem| KeyError::Malformed {
                path: path.to_owned(),
                problem,
            })
        });
        text.fill(0);
        parsed.map(Self)
    }

    /// Writes the key to `path` as 64 lower-case hex characters and a newline.
    ///
    /// The file is created with mode 0600 (set at creation, never loosened),
    /// and missing parent directories are created with mode 0700. An
    /// existing file is refused unless `overwrite`; then it is replaced
    /// atomically by writing a temporary file in the same directory and
    /// renaming it over the old one.
    pub fn write(&self, path: &Path, overwrite: bool) -> Result<(), KeyError> {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io_error("create directory", dir, e))?;

        let mut text = self.to_hex_line();
        let result = if overwrite {
            write_replacing(path, dir, &text)
        } else {
            write_new(path, &text)
        };
        text.fill(0);
        result
    }

    /// The file content: hex digits and a newline.
    fn to_hex_line(&self) -> [u8; HEX_LEN + 1] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [b'\n'; HEX_LEN + 1];
        for (i, byte) in self.0.iter().enumerate() {
            out[2 * i] = DIGITS[usize::from(byte >> 4)];
            out[2 * i + 1] = DIGITS[usize::from(byte & 0x0f)];
        }
        out
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(<redacted>)")
    }
}

impl Drop for ClusterKey {
    fn drop(&mut self) {
        self.0.fill(0);
        // Keep the zeroing from being optimised away as a dead store.
        std::hint::black_box(&self.0);
    }
}

/// The default key path: `$SKELPI_KEY_FILE` if set; else
/// `$CREDENTIALS_DIRECTORY/cluster.key` (systemd `LoadCredential=`); else
/// `$XDG_CONFIG_HOME/skelpi/cluster.key`; else
/// `$HOME/.config/skelpi/cluster.key`. Empty variables count as unset, and so
/// does a relative `XDG_CONFIG_HOME` (as the XDG spec says). With none of
/// these, `cluster.key` in the current directory.
pub fn default_key_path() -> PathBuf {
    key_path_from(|name| std::env::var_os(name))
}

/// [`default_key_path`] with the environment passed in, for tests.
fn key_path_from(var: impl Fn(&str) -> Option<OsString>) -> PathBuf {
    let var = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(file) = var("SKELPI_KEY_FILE") {
        return file;
    }
    if let Some(dir) = var("CREDENTIALS_DIRECTORY") {
        return dir.join("cluster.key");
    }
    if let Some(dir) = var("XDG_CONFIG_HOME").filter(|d| d.is_absolute()) {
        return dir.join("skelpi").join("cluster.key");
    }
    if let Some(home) = var("HOME") {
        return home.join(".config").join("skelpi").join("cluster.key");
    }
    PathBuf::from("cluster.key")
}

/// Parses a key file's content: 64 hex digits with optional surrounding
/// whitespace. Errors carry positions and lengths, never content.
pub(crate) fn parse_hex(text: &[u8]) -> Result<[u8; KEY_LEN], Malformed> {
    let start = text
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(text.len());
    let end = text
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    let digits = &text[start..end];
    // Report the first bad byte before a bad length: it says more about a
    // file that is not a key at all.
    if let Some(i) = digits.iter().position(|b| !b.is_ascii_hexdigit()) {
        return Err(Malformed::NonHex {
            position: start + i + 1,
        });
    }
    if digits.len() != HEX_LEN {
        return Err(Malformed::WrongLength {
            found: digits.len(),
        });
    }
    let mut key = [0u8; KEY_LEN];
    for (byte, pair) in key.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (hex_value(pair[0]) << 4) | hex_value(pair[1]);
    }
    Ok(key)
}

/// The value of an ASCII hex digit (checked by the caller).
fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}

/// What a file that is not a regular file is, in words.
fn kind_of(kind: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

/// Creates `path` (which must not exist) with mode 0600 and writes `text`.
fn write_new(path: &Path, text: &[u8]) -> Result<(), KeyError> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| match source.kind() {
            io::ErrorKind::AlreadyExists => KeyError::Exists {
                path: path.to_owned(),
            },
            _ => io_error("create", path, source),
        })?;
    fill_and_sync(file, text).map_err(|e| {
        // Leave no half-written key behind.
        let _ = fs::remove_file(path);
        io_error("write", path, e)
    })
}

/// Replaces `path` atomically: a 0600 temporary file in `dir`, then rename.
fn write_replacing(path: &Path, dir: &Path, text: &[u8]) -> Result<(), KeyError> {
    let mut name = OsString::from(".");
    name.push(path.file_name().unwrap_or_else(|| "cluster.key".as_ref()));
    name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(name);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io_error("create", &tmp, e))?;
    let result = fill_and_sync(file, text)
        .map_err(|e| io_error("write", &tmp, e))
        .and_then(|()| fs::rename(&tmp, path).map_err(|e| io_error("replace", path, e)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    // Make the rename itself durable; failing to is not worth an error.
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Writes all of `text` to `file` and flushes it to disk.
fn fill_and_sync(mut file: File, text: &[u8]) -> io::Result<()> {
    file.write_all(text)?;
    file.sync_all()
}

fn io_error(action: &'static str, path: &Path, source: io::Error) -> KeyError {
    KeyError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("skelpi-key-test-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            Self(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn hex_of(key: &ClusterKey) -> String {
        key.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn sample() -> ClusterKey {
        ClusterKey::from_bytes(std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0xa5))
    }

    #[test]
    fn generated_keys_differ() {
        let a = ClusterKey::generate().unwrap();
        let b = ClusterKey::generate().unwrap();
        assert_ne!(a.as_bytes(), b.as_bytes());
    }

    #[test]
    fn write_then_load_round_trips() {
        let dir = TempDir::new();
        let path = dir.0.join("cluster.key");
        let key = ClusterKey::generate().unwrap();
        key.write(&path, false).unwrap();
        assert_eq!(ClusterKey::load(&path).unwrap().as_bytes(), key.as_bytes());
    }

    #[test]
    fn a_fifo_or_a_directory_is_refused_at_once_as_not_a_file() {
        let dir = TempDir::new();
        let fifo = dir.0.join("fifo.key");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        fs::set_permissions(&fifo, fs::Permissions::from_mode(0o600)).unwrap();
        // A FIFO with no writer: a blocking open would wait for ever.
        let (tx, rx) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || tx.send(ClusterKey::load(&path).map(|_| ())));
        let got = rx.recv_timeout(std::time::Duration::from_secs(10));
        let e = got
            .expect("loading a FIFO returns")
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a FIFO, not a file"), "{e}");
        let e = ClusterKey::load(&dir.0).unwrap_err().to_string();
        assert!(e.contains("is a directory, not a file"), "{e}");
    }

    #[test]
    fn file_format_is_lower_hex_and_newline() {
        let dir = TempDir::new();
        let path = dir.0.join("cluster.key");
        let key = sample();
        key.write(&path, false).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}\n", hex_of(&key)));
    }

    #[test]
    fn file_is_created_with_mode_0600_and_parents_0700() {
        let dir = TempDir::new();
        let parent = dir.0.join("a").join("b");
        let path = parent.join("cluster.key");
        sample().write(&path, false).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(mode_of(&parent), 0o700);
        assert_eq!(mode_of(&dir.0.join("a")), 0o700);
    }

    #[test]
    fn load_refuses_group_or_world_access() {
        let dir = TempDir::new();
        let path = dir.0.join("cluster.key");
        sample().write(&path, false).unwrap();
        for mode in [0o640, 0o604, 0o620, 0o602] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = ClusterKey::load(&path).unwrap_err();
            assert!(matches!(err, KeyError::Permissions { mode: m, .. } if m == mode));
            let msg = err.to_string();
            assert!(msg.contains(&format!("{mode:04o}")), "{msg}");
            assert!(
                msg.contains(&format!("chmod 600 {}", path.display())),
                "{msg}"
            );
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        ClusterKey::load(&path).unwrap();
    }

    #[test]
    fn missing_file_names_path_and_keygen() {
        let dir = TempDir::new();
        let path = dir.0.join("nope.key");
        let err = ClusterKey::load(&path).unwrap_err();
        assert!(matches!(err, KeyError::NotFound { .. }));
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("skelpi keygen"), "{msg}");
    }

    #[test]
    fn load_accepts_surrounding_whitespace_and_upper_case() {
        let dir = TempDir::new();
        let path = dir.0.join("cluster.key");
        let key = sample();
        let text = format!("\n  {}\t\r\n\n", hex_of(&key).to_uppercase());
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(ClusterKey::load(&path).unwrap().as_bytes(), key.as_bytes());
    }

    #[test]
    fn malformed_content_is_refused_without_echoing_it() {
        let dir = TempDir::new();
        let path = dir.0.join("cluster.key");
        let hex = hex_of(&sample());
        let cases = [
            (String::new(), Malformed::WrongLength { found: 0 }),
            ("  \n".to_owned(), Malformed::WrongLength { found: 0 }),
            (hex[..62].to_owned(), Malformed::WrongLength { found: 62 }),
            (format!("{hex}00"), Malformed::WrongLength { found: 66 }),
            (
                format!("{}g{}", &hex[..9], &hex[10..]),
                Malformed::NonHex { position: 10 },
            ),
            (
                format!(" {} {}", &hex[..32], &hex[32..]),
                Malformed::NonHex { position: 34 },
            ),
            (format!("key={hex}"), Malformed::NonHex { position: 1 }),
        ];
        for (text, want) in cases {
            fs::write(&path, &text).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            let err = ClusterKey::load(&path).unwrap_err();
            match &err {
                KeyError::Malformed { problem, .. } => assert_eq!(problem, &want, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
            let msg = err.to_string();
            assert!(msg.contains(&want.to_string()), "{msg}");
            assert!(!msg.contains(&hex[..8]), "{msg}");
        }
    }

    #[test]
    fn oversized_file_is_malformed() {
        let dir = TempDir::new();
        let path = dir.0.join("cluster.key");
        fs::write(&path, "a".repeat(1 << 20)).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = ClusterKey::load(&path).unwrap_err();
        assert!(matches!(
            err,
            KeyError::Malformed {
                problem: Malformed::WrongLength { .. },
                ..
            }
        ));
    }

    #[test]
    fn write_refuses_to_overwrite_unless_asked() {
        let dir = TempDir::new();
        let path = dir.0.join("cluster.key");
        let first = sample();
        first.write(&path, false).unwrap();

        let second = ClusterKey::generate().unwrap();
        let err = second.write(&path, false).unwrap_err();
        assert!(matches!(err, KeyError::Exists { .. }));
        assert!(err.to_string().contains(&path.display().to_string()));
        assert_eq!(
            ClusterKey::load(&path).unwrap().as_bytes(),
            first.as_bytes()
        );

        second.write(&path, true).unwrap();
        assert_eq!(
            ClusterKey::load(&path).unwrap().as_bytes(),
            second.as_bytes()
        );
        assert_eq!(mode_of(&path), 0o600);
        // The temporary file is gone.
        assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 1);
    }

    #[test]
    fn overwrite_of_a_loose_file_leaves_it_0600() {
        let dir = TempDir::new();
        let path = dir.0.join("cluster.key");
        fs::write(&path, "old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        sample().write(&path, true).unwrap();
        assert_eq!(mode_of(&path), 0o600);
    }

    #[test]
    fn debug_is_redacted() {
        let key = sample();
        let hex = hex_of(&key);
        for shown in [format!("{key:?}"), format!("{key:#?}")] {
            assert_eq!(shown, "ClusterKey(<redacted>)");
            assert!(!shown.contains(&hex[..4]));
        }
    }

    #[test]
    fn default_path_precedence() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        let all = &[
            ("SKELPI_KEY_FILE", "/k/file"),
            ("CREDENTIALS_DIRECTORY", "/run/credentials/x"),
            ("XDG_CONFIG_HOME", "/xdg"),
            ("HOME", "/home/u"),
        ];
        assert_eq!(key_path_from(env(all)), Path::new("/k/file"));
        assert_eq!(
            key_path_from(env(&all[1..])),
            Path::new("/run/credentials/x/cluster.key")
        );
        assert_eq!(
            key_path_from(env(&all[2..])),
            Path::new("/xdg/skelpi/cluster.key")
        );
        assert_eq!(
            key_path_from(env(&all[3..])),
            Path::new("/home/u/.config/skelpi/cluster.key")
        );
        assert_eq!(
            key_path_from(env(&[
                ("SKELPI_KEY_FILE", ""),
                ("XDG_CONFIG_HOME", "rel"),
                ("HOME", "/h")
            ])),
            Path::new("/h/.config/skelpi/cluster.key")
        );
        assert_eq!(key_path_from(env(&[])), Path::new("cluster.key"));
    }
}
