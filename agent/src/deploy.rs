//! Receiving a new agent binary (`skelpi deploy`), checking it, and
//! staging it for the launcher ([`crate::launch`]) to start.
//!
//! A deploy is refused, with a message that says why, unless this agent
//! has a deploy public key and a state directory, the manifest is signed
//! by that key, names this agent's architecture and protocol, and the
//! bytes that arrive are exactly the manifest's (size and SHA-256). The
//! binary is then run once in its self-check mode (`--self-check`, which
//! exits at once): it must run on this board and report the manifest's
//! architecture, protocol and version. Only then is it staged; the
//! running agent is untouched until the master asks it to restart.
//!
//! One upload at a time: a second master's offer is refused while another
//! upload made progress in the last [`UPLOAD_IDLE`].

use crate::launch::Files;
use ring::digest::{Context, SHA256};
use skelpi_proto::deploy::{
    Build, DeployChunk, DeployOffer, DeployStaged, MAX_BINARY_BYTES, Manifest,
};
use skelpi_proto::{Message, PROTOCOL_VERSION};
use skelpi_wire::deploy_key::DeployPublicKey;
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// An upload idle this long may be replaced by another master's.
pub const UPLOAD_IDLE: Duration = Duration::from_secs(30);

/// How long the new binary's self-check may take.
pub const SELF_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// What the self-check prints first.
pub const SELF_CHECK_BANNER: &str = "skelpi-agent self-check ok";

/// An agent's deploy set-up and the upload in progress.
#[derive(Debug, Default)]
pub struct Deployer {
    /// The key manifests must be signed with (`None`: every deploy is
    /// refused).
    public: Option<DeployPublicKey>,
    /// Where binaries are kept (`None`: every deploy is refused).
    files: Option<Files>,
    upload: Mutex<Option<Upload>>,
    restart: event_listener::Event,
    restarting: std::sync::atomic::AtomicBool,
}

struct Upload {
    peer: SocketAddr,
    manifest: Manifest,
    file: File,
    received: u64,
    hash: Context,
    touched: Instant,
    /// The first chunk that was refused, said at the finish.
    failed: Option<String>,
    staged: bool,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field("peer", &self.peer)
            .field("sha256", &self.manifest.sha256)
            .field("received", &self.received)
            .field("staged", &self.staged)
            .finish_non_exhaustive()
    }
}

impl Deployer {
    /// Deploys refused, saying why.
    pub fn disabled() -> Deployer {
        Deployer::default()
    }

    /// Deploys checked against `public`, binaries kept in `files`.
    pub fn new(public: Option<DeployPublicKey>, files: Option<Files>) -> Deployer {
        Deployer {
            public,
            files,
            ..Deployer::default()
        }
    }

    /// Whether deploys can be accepted at all.
    pub fn enabled(&self) -> bool {
        self.public.is_some() && self.files.is_some()
    }

    /// The build this agent reports, with `version` its own.
    pub fn build(&self, version: &str, deployed: Option<String>) -> Build {
        Build {
            version: version.to_owned(),
            deployed,
            deployable: self.enabled(),
            last_failure: self.files.as_ref().and_then(Files::last_failure),
        }
    }

    /// Completes once a master has asked for a restart into a staged
    /// binary.
    pub async fn restart_requested(&self) {
        loop {
            let listener = self.restart.listen();
            if self.restarting() {
                return;
            }
            listener.await;
        }
    }

    /// Whether a restart was asked for.
    pub fn restarting(&self) -> bool {
        self.restarting.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Handles a deploy message from `peer`; the reply, if any.
    pub async fn handle(&self, peer: SocketAddr, msg: Message) -> Option<Result<Message, String>> {
        match msg {
            Message::DeployOffer(offer) => Some(self.offer(peer, offer)),
            Message::DeployChunk(chunk) => self.chunk(peer, chunk).err().map(Err),
            Message::DeployFinish => Some(self.finish(peer).await),
            Message::DeployRestart => Some(self.ask_restart(peer)),
            other => Some(Err(format!("{} is no deploy message", other.kind_name()))),
        }
    }

    fn offer(&self, peer: SocketAddr, offer: DeployOffer) -> Result<Message, String> {
        let (Some(public), Some(files)) = (&self.public, &self.files) else {
            return Err(self.why_disabled());
        };
        if offer.signature.is_empty() {
            return Err(
                "the manifest is unsigned: deploys must be signed with the deploy key \
                        (`skelpi deploy --deploy-key FILE`)"
                    .to_owned(),
            );
        }
        public
            .verify(&offer.manifest, &offer.signature)
            .map_err(|_| {
                format!(
                    "the manifest is not signed by this agent's deploy key ({}...): sign with the \
                 key whose public half is on the board",
                    public.fingerprint()
                )
            })?;
        let manifest = Manifest::from_bytes(&offer.manifest)?;
        check_manifest(&manifest)?;
        let mut upload = self.upload.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(other) = upload.as_ref()
            && other.peer != peer
            && other.touched.elapsed() < UPLOAD_IDLE
        {
            return Err(format!(
                "master {} is deploying to this agent now; try again when it is done",
                other.peer
            ));
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o700)
            .open(files.incoming())
            .map_err(|e| format!("cannot write {}: {e}", files.incoming().display()))?;
        log::info!(
            "master {peer} offers agent binary {} ({} bytes, {})",
            manifest.sha256,
            manifest.size,
            manifest.version.as_deref().unwrap_or("version not said")
        );
        *upload = Some(Upload {
            peer,
            manifest,
            file,
            received: 0,
            hash: Context::new(&SHA256),
            touched: Instant::now(),
            failed: None,
            staged: false,
        });
        Ok(Message::DeployAccepted)
    }

    fn why_disabled(&self) -> String {
        match (&self.public, &self.files) {
            (None, _) => format!(
                "this agent has no deploy public key, so it refuses every deploy: put the \
                 `.pub` file `skelpi keygen --deploy` wrote at {} (or start it with \
                 --deploy-pubkey FILE)",
                skelpi_wire::deploy_key::DEFAULT_PUBLIC_KEY_PATH
            ),
            _ => "this agent has no state directory to keep binaries in, so it refuses every \
                  deploy: start it with --state-dir DIR (systemd's StateDirectory= sets one)"
                .to_owned(),
        }
    }

    fn chunk(&self, peer: SocketAddr, chunk: DeployChunk) -> Result<(), String> {
        let mut upload = self.upload.lock().unwrap_or_else(|e| e.into_inner());
        let Some(up) = upload.as_mut().filter(|u| u.peer == peer && !u.staged) else {
            return Err("a deploy chunk without an accepted offer".to_owned());
        };
        up.touched = Instant::now();
        if up.failed.is_some() {
            return Ok(());
        }
        let end = chunk.offset.saturating_add(chunk.bytes.len() as u64);
        let refused = if chunk.offset != up.received {
            Some(format!(
                "a chunk at byte {} arrived where byte {} was due",
                chunk.offset, up.received
            ))
        } else if end > up.manifest.size {
            Some(format!(
                "more bytes arrived than the manifest's {}",
                up.manifest.size
            ))
        } else {
            up.file
                .write_all(&chunk.bytes)
                .err()
                .map(|e| format!("cannot store the binary: {e}"))
        };
        match refused {
            Some(why) => up.failed = Some(why),
            None => {
                up.hash.update(&chunk.bytes);
                up.received = end;
            }
        }
        Ok(())
    }

    async fn finish(&self, peer: SocketAddr) -> Result<Message, String> {
        let files = self.files.clone().ok_or_else(|| self.why_disabled())?;
        let (manifest, file, hash) = {
            let mut upload = self.upload.lock().unwrap_or_else(|e| e.into_inner());
            let Some(up) = upload.take_if(|u| u.peer == peer && !u.staged) else {
                return Err("nothing was uploaded to finish".to_owned());
            };
            if let Some(why) = up.failed {
                return Err(why);
            }
            if up.received != up.manifest.size {
                return Err(format!(
                    "the upload is truncated: {} of the manifest's {} bytes arrived",
                    up.received, up.manifest.size
                ));
            }
            (up.manifest, up.file, up.hash)
        };
        let sha256 = hex(hash.finish().as_ref());
        if sha256 != manifest.sha256 {
            return Err(format!(
                "the binary's SHA-256 is {sha256}, the signed manifest says {}",
                manifest.sha256
            ));
        }
        let checked = {
            let files = files.clone();
            let manifest = manifest.clone();
            smol::unblock(move || stage(&files, file, &manifest)).await
        };
        let version = checked?;
        log::info!("staged agent binary {sha256} (version {version}) from master {peer}");
        let mut upload = self.upload.lock().unwrap_or_else(|e| e.into_inner());
        *upload = Some(Upload {
            peer,
            manifest,
            file: File::open("/dev/null").map_err(|e| e.to_string())?,
            received: 0,
            hash: Context::new(&SHA256),
            touched: Instant::now(),
            failed: None,
            staged: true,
        });
        Ok(Message::DeployStaged(DeployStaged { sha256, version }))
    }

    fn ask_restart(&self, peer: SocketAddr) -> Result<Message, String> {
        let upload = self.upload.lock().unwrap_or_else(|e| e.into_inner());
        if !upload.as_ref().is_some_and(|u| u.staged && u.peer == peer) {
            return Err("no binary of yours is staged here: deploy one first".to_owned());
        }
        log::info!("master {peer} asked for a restart into the staged binary");
        self.restarting
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.restart.notify(usize::MAX);
        Ok(Message::DeployRestarting)
    }
}

/// What an agent checks in a manifest before taking any bytes.
fn check_manifest(m: &Manifest) -> Result<(), String> {
    let arch = std::env::consts::ARCH;
    if m.arch != arch {
        return Err(format!(
            "the binary is for {}, this agent runs on {arch}: pass the {arch} build",
            m.arch
        ));
    }
    if m.protocol != PROTOCOL_VERSION {
        return Err(format!(
            "the deploying master speaks protocol {}, this agent {PROTOCOL_VERSION}: deploy \
             with a master of the same protocol",
            m.protocol
        ));
    }
    if m.size == 0 || m.size > MAX_BINARY_BYTES {
        return Err(format!(
            "a binary of {} bytes: it must have 1 to {MAX_BINARY_BYTES}",
            m.size
        ));
    }
    if m.sha256.len() != 64 || !m.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("the manifest's sha256 is not 64 hex digits".to_owned());
    }
    Ok(())
}

/// Stores the checked binary as the trial and runs its self-check; its
/// version.
fn stage(files: &Files, file: File, manifest: &Manifest) -> Result<String, String> {
    file.sync_all()
        .map_err(|e| format!("cannot store the binary: {e}"))?;
    drop(file);
    let trial = files.incoming();
    let report = self_check(&trial)?;
    let expect = |key: &str, want: &str| match report.get(key) {
        Some(got) if got == want => Ok(()),
        got => Err(format!(
            "the binary's self-check reports {key} {}, expected {want}",
            got.map_or("(none)", String::as_str)
        )),
    };
    expect("arch", &manifest.arch)?;
    expect("protocol", &manifest.protocol.to_string())?;
    if let Some(v) = &manifest.version {
        expect("version", v)?;
    }
    let version = report.get("version").cloned().unwrap_or_default();
    files
        .stage(&manifest.sha256, &version)
        .map_err(|e| format!("cannot stage the binary: {e}"))?;
    Ok(version)
}

/// Runs `path --self-check`; the `key=value` lines it printed.
fn self_check(path: &std::path::Path) -> Result<std::collections::HashMap<String, String>, String> {
    use std::process::{Command, Stdio};
    let mut child = Command::new(path)
        .arg("--self-check")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("the binary does not run on this board: {e}"))?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < SELF_CHECK_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the binary's self-check did not end within {SELF_CHECK_TIMEOUT:?}"
                ));
            }
            Err(e) => return Err(format!("cannot wait for the binary's self-check: {e}")),
        }
    };
    let output = child
        .wait_with_output()
        .map_err(|e| format!("cannot read the self-check: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !status.success() || !stdout.starts_with(SELF_CHECK_BANNER) {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let said = skelpi_proto::text::clip(stderr.trim(), 200).into_owned();
        return Err(format!(
            "the binary failed its self-check ({status}){}",
            if said.is_empty() {
                String::new()
            } else {
                format!(": {said}")
            }
        ));
    }
    Ok(stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect())
}

/// What `--self-check` prints: the banner and `key=value` lines.
pub fn self_check_report(version: &str) -> String {
    format!(
        "{SELF_CHECK_BANNER}\nversion={version}\nprotocol={PROTOCOL_VERSION}\narch={}\n",
        std::env::consts::ARCH
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
