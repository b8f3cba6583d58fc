//! Receiving a new agent binary (`skelpi deploy`), checking it, staging
//! it, restarting into it on the master's word, and committing it once
//! the master checked it (see [`crate::launch`] for which binary runs).
//!
//! A deploy is refused, with a message that says why, unless this agent
//! has a deploy public key and a state directory, the manifest is signed
//! by that key, names this agent's architecture and protocol, was signed
//! after the last manifest committed here (no replay of an older build),
//! and the bytes that arrive are exactly the manifest's (size and
//! SHA-256). The binary is then run once in its self-check mode
//! (`--self-check`, which exits at once): it must run on this board and
//! report the manifest's architecture, protocol and version. Only then is
//! it staged; the running agent is untouched until the master asks it to
//! restart, and a staged binary never restarted into is dropped at the
//! next start.
//!
//! One deploy at a time: another master's offer is refused while one is
//! checked, or made progress in the last [`UPLOAD_IDLE`] (and at most
//! [`UPLOAD_DEADLINE`] after it began). File writes and hashing run off
//! the executor.

use crate::launch::{Files, Role};
use ring::digest::{Context, SHA256};
use skelpi_proto::deploy::{
    Build, DeployChunk, DeployOffer, DeployRef, DeployStaged, MAX_BINARY_BYTES, Manifest,
};
use skelpi_proto::{Message, PROTOCOL_VERSION};
use skelpi_wire::deploy_key::DeployPublicKey;
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A deploy idle this long may be replaced by another master's.
pub const UPLOAD_IDLE: Duration = Duration::from_secs(30);

/// A deploy this old may be replaced however busy it is.
pub const UPLOAD_DEADLINE: Duration = Duration::from_secs(600);

/// A binary on trial not committed this long after it started goes back
/// to the one before (its master died mid-roll, say).
pub const COMMIT_DEADLINE: Duration = Duration::from_secs(600);

/// An agent's deploy set-up and the deploy in progress.
#[derive(Debug)]
pub struct Deployer {
    /// The key manifests must be signed with (`None`: every deploy is
    /// refused).
    public: Option<DeployPublicKey>,
    /// Where binaries are kept (`None`: every deploy is refused).
    files: Option<Files>,
    /// Which binary this process is, and its SHA-256 when deployed.
    role: Role,
    deployed: Option<String>,
    committed: AtomicBool,
    /// A signal asked the agent to stop: no restart into a new binary.
    stopping: AtomicBool,
    slot: Mutex<Slot>,
    restart: event_listener::Event,
    restarting: AtomicBool,
}

impl Default for Deployer {
    fn default() -> Self {
        Deployer::new(None, None, (Role::Installed, None))
    }
}

/// The deploy in progress.
#[derive(Debug, Default)]
enum Slot {
    #[default]
    Free,
    Uploading(Box<Upload>),
    /// Being checked (its file is no longer written).
    Checking {
        peer: SocketAddr,
    },
    /// Checked and staged, waiting for its master's restart request.
    Staged {
        peer: SocketAddr,
        since: Instant,
        issued_at: u64,
    },
}

struct Upload {
    peer: SocketAddr,
    manifest: Manifest,
    /// Out while a chunk is written off the executor.
    file: Option<(File, Context)>,
    received: u64,
    began: Instant,
    touched: Instant,
    /// The first chunk that was refused, said at the finish.
    failed: Option<String>,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field("peer", &self.peer)
            .field("sha256", &self.manifest.sha256)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl Slot {
    /// Whether `peer` may start a deploy now; else who holds the slot.
    fn holder(&self, peer: SocketAddr, now: Instant) -> Option<SocketAddr> {
        let (holder, began, touched) = match self {
            Slot::Free => return None,
            Slot::Uploading(u) => (u.peer, u.began, u.touched),
            // A check ends within the self-check's bound.
            Slot::Checking { peer } => return Some(*peer),
            Slot::Staged { peer, since, .. } => (*peer, *since, *since),
        };
        let stale = now.duration_since(touched) >= UPLOAD_IDLE
            || now.duration_since(began) >= UPLOAD_DEADLINE;
        (holder != peer && !stale).then_some(holder)
    }
}

impl Deployer {
    /// Deploys refused, saying why.
    pub fn disabled() -> Deployer {
        Deployer::default()
    }

    /// Deploys checked against `public`, binaries kept in `files`; this
    /// process is the binary in `role` (with its SHA-256 when deployed).
    pub fn new(
        public: Option<DeployPublicKey>,
        files: Option<Files>,
        (role, deployed): (Role, Option<String>),
    ) -> Deployer {
        Deployer {
            public,
            files,
            role,
            deployed,
            committed: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            slot: Mutex::new(Slot::Free),
            restart: event_listener::Event::new(),
            restarting: AtomicBool::new(false),
        }
    }

    /// Whether deploys can be accepted at all.
    pub fn enabled(&self) -> bool {
        self.public.is_some() && self.files.is_some()
    }

    /// Whether this process is a deployed binary not yet committed.
    pub fn on_trial(&self) -> bool {
        self.role == Role::Trial && !self.committed.load(Ordering::SeqCst)
    }

    /// The build this agent reports, with `version` its own and
    /// `deployed` the SHA-256 of the deployed binary it runs.
    pub fn build(&self, version: &str, deployed: Option<String>) -> Build {
        Build {
            version: version.to_owned(),
            deployed,
            deployable: self.enabled(),
            on_trial: self.on_trial(),
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

    /// Whether a restart was asked for (and no signal asked to stop).
    pub fn restarting(&self) -> bool {
        self.restarting.load(Ordering::SeqCst) && !self.stopping.load(Ordering::SeqCst)
    }

    /// A signal asked the agent to stop: it stops, and restarts into no
    /// binary.
    pub fn signal_seen(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// A binary on trial that is still not committed goes back to the one
    /// before, and the agent restarts (see [`COMMIT_DEADLINE`]).
    pub fn give_up_trial(&self, why: &str) {
        if let Some(files) = &self.files
            && self.on_trial()
        {
            files.roll_back(why);
            self.restart_now();
        }
    }

    fn restart_now(&self) {
        self.restarting.store(true, Ordering::SeqCst);
        self.restart.notify(usize::MAX);
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Handles a deploy message from `peer` to this agent (`agent`, its
    /// id); the reply, if any.
    pub async fn handle(
        &self,
        agent: &str,
        peer: SocketAddr,
        msg: Message,
    ) -> Option<Result<Message, String>> {
        match msg {
            Message::DeployOffer(offer) => Some(self.offer(agent, peer, offer)),
            Message::DeployChunk(chunk) => self.chunk(peer, chunk).await.err().map(Err),
            Message::DeployFinish => Some(self.finish(peer).await),
            Message::DeployRestart => Some(self.ask_restart(peer)),
            Message::DeployCommit(r) => Some(self.commit(peer, &r)),
            Message::DeployAbort(r) => Some(self.abort(peer, &r)),
            other => Some(Err(format!("{} is no deploy message", other.kind_name()))),
        }
    }

    fn offer(&self, agent: &str, peer: SocketAddr, offer: DeployOffer) -> Result<Message, String> {
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
        if manifest.agent != agent {
            return Err(format!(
                "the manifest was signed for agent {}, this is agent {agent}",
                manifest.agent
            ));
        }
        check_manifest(&manifest)?;
        if self.restarting() || self.stopping.load(Ordering::SeqCst) {
            return Err("this agent is restarting: try again once it answers".to_owned());
        }
        if self.on_trial() {
            return Err(
                "this agent runs a deployed binary on trial, not yet committed: \
                        deploy again once its deploy is over (committed, or rolled back)"
                    .to_owned(),
            );
        }
        let last = files.last_issued();
        if manifest.issued_at <= last {
            return Err(format!(
                "the manifest was signed at {} (ms since the Unix epoch), not after the last \
                 one this agent restarted into ({last}): a replay, or an older build; deploy \
                 anew (a master whose clock is behind cannot deploy here)",
                manifest.issued_at
            ));
        }
        let mut slot = self.slot();
        let now = Instant::now();
        if let Some(holder) = slot.holder(peer, now) {
            return Err(format!(
                "master {holder} is deploying to this agent now; try again when it is done"
            ));
        }
        if matches!(*slot, Slot::Staged { .. }) {
            files.unstage();
        }
        let file = files
            .fresh_incoming()
            .map_err(|e| format!("cannot write {}: {e}", files.incoming().display()))?;
        log::info!(
            "master {peer} offers agent binary {} ({} bytes, {})",
            manifest.sha256,
            manifest.size,
            manifest.version.as_deref().unwrap_or("version not said")
        );
        *slot = Slot::Uploading(Box::new(Upload {
            peer,
            manifest,
            file: Some((file, Context::new(&SHA256))),
            received: 0,
            began: now,
            touched: now,
            failed: None,
        }));
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

    /// Writes a chunk (off the executor); `Err` only for a chunk without
    /// an upload of this master's (a refused chunk is said at the finish).
    async fn chunk(&self, peer: SocketAddr, chunk: DeployChunk) -> Result<(), String> {
        let (file, end) = {
            let mut slot = self.slot();
            let Slot::Uploading(up) = &mut *slot else {
                return Err("a deploy chunk without an accepted offer".to_owned());
            };
            if up.peer != peer {
                return Err("a deploy chunk without an accepted offer".to_owned());
            }
            if up.failed.is_some() || chunk.bytes.is_empty() {
                return Ok(());
            }
            let end = chunk.offset.saturating_add(chunk.bytes.len() as u64);
            if chunk.offset != up.received {
                up.failed = Some(format!(
                    "a chunk at byte {} arrived where byte {} was due",
                    chunk.offset, up.received
                ));
                return Ok(());
            }
            if end > up.manifest.size {
                up.failed = Some(format!(
                    "more bytes arrived than the manifest's {}",
                    up.manifest.size
                ));
                return Ok(());
            }
            let Some(file) = up.file.take() else {
                return Ok(());
            };
            (file, end)
        };
        let written = smol::unblock(move || {
            let (mut file, mut hash) = file;
            let w = file.write_all(&chunk.bytes);
            hash.update(&chunk.bytes);
            (file, hash, w)
        })
        .await;
        let mut slot = self.slot();
        if let Slot::Uploading(up) = &mut *slot
            && up.peer == peer
        {
            let (file, hash, w) = written;
            match w {
                Ok(()) => {
                    up.received = end;
                    up.touched = Instant::now();
                }
                Err(e) => up.failed = Some(format!("cannot store the binary: {e}")),
            }
            up.file = Some((file, hash));
        }
        Ok(())
    }

    async fn finish(&self, peer: SocketAddr) -> Result<Message, String> {
        let files = self.files.clone().ok_or_else(|| self.why_disabled())?;
        let up = {
            let mut slot = self.slot();
            match std::mem::take(&mut *slot) {
                Slot::Uploading(up) if up.peer == peer => {
                    *slot = Slot::Checking { peer };
                    up
                }
                other => {
                    *slot = other;
                    return Err("nothing of yours was uploaded to finish".to_owned());
                }
            }
        };
        let manifest = up.manifest.clone();
        let checked = {
            let files = files.clone();
            smol::unblock(move || check_upload(&files, *up)).await
        };
        let mut slot = self.slot();
        match checked {
            Ok(version) => {
                log::info!(
                    "staged agent binary {} (version {version}) from master {peer}",
                    manifest.sha256
                );
                *slot = Slot::Staged {
                    peer,
                    since: Instant::now(),
                    issued_at: manifest.issued_at,
                };
                Ok(Message::DeployStaged(DeployStaged {
                    sha256: manifest.sha256,
                    version,
                }))
            }
            Err(why) => {
                files.drop_incoming();
                *slot = Slot::Free;
                Err(why)
            }
        }
    }

    fn ask_restart(&self, peer: SocketAddr) -> Result<Message, String> {
        let files = self.files.as_ref().ok_or_else(|| self.why_disabled())?;
        if self.stopping.load(Ordering::SeqCst) {
            return Err("this agent is stopping (a signal): no restart into a new binary".into());
        }
        let mut slot = self.slot();
        let issued_at = match *slot {
            Slot::Staged {
                peer: p, issued_at, ..
            } if p == peer => issued_at,
            _ => return Err("no binary of yours is staged here: deploy one first".to_owned()),
        };
        // Its manifest is used: it cannot be replayed to restart again.
        files
            .set_last_issued(issued_at)
            .and_then(|()| files.stage_to_trial())
            .map_err(|e| format!("cannot make the staged binary the next to run: {e}"))?;
        *slot = Slot::Free;
        log::info!("master {peer} asked for a restart into the staged binary");
        self.restart_now();
        Ok(Message::DeployRestarting)
    }

    /// The files, when `r` names the binary this process is, on trial.
    fn on_trial_as(&self, r: &DeployRef) -> Result<&Files, String> {
        let files = self.files.as_ref().ok_or_else(|| self.why_disabled())?;
        if !self.on_trial() {
            return Err("no deployed binary is on trial here".to_owned());
        }
        match &self.deployed {
            Some(sha) if *sha == r.sha256 => Ok(files),
            sha => Err(format!(
                "the binary on trial here is {}, not {}",
                sha.as_deref().unwrap_or("?"),
                r.sha256
            )),
        }
    }

    /// The master's check failed: back to the binary before, at once.
    fn abort(&self, peer: SocketAddr, r: &DeployRef) -> Result<Message, String> {
        let files = self.on_trial_as(r)?;
        files.roll_back(&format!("its master {peer} found it failing its check"));
        self.restart_now();
        Ok(Message::DeployRestarting)
    }

    fn commit(&self, peer: SocketAddr, r: &DeployRef) -> Result<Message, String> {
        let files = self.on_trial_as(r)?;
        files
            .promote()
            .map_err(|e| format!("cannot make the binary on trial current: {e}"))?;
        self.committed.store(true, Ordering::SeqCst);
        log::info!("master {peer} committed the deployed binary: it is the current one now");
        Ok(Message::DeployCommitted)
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
    if m.sha256.len() != 64
        || !m
            .sha256
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err("the manifest's sha256 is not 64 lower-case hex digits".to_owned());
    }
    Ok(())
}

/// Checks a finished upload (size, hash, self-check) and stages it; its
/// version.
fn check_upload(files: &Files, up: Upload) -> Result<String, String> {
    if let Some(why) = up.failed {
        return Err(why);
    }
    if up.received != up.manifest.size {
        return Err(format!(
            "the upload is truncated: {} of the manifest's {} bytes arrived",
            up.received, up.manifest.size
        ));
    }
    let (file, hash) = up
        .file
        .ok_or_else(|| "the upload was still being written".to_owned())?;
    let sha256 = hex(hash.finish().as_ref());
    if sha256 != up.manifest.sha256 {
        return Err(format!(
            "the binary's SHA-256 is {sha256}, the signed manifest says {}",
            up.manifest.sha256
        ));
    }
    file.sync_all()
        .map_err(|e| format!("cannot store the binary: {e}"))?;
    drop(file);
    let manifest = &up.manifest;
    let report = skelpi_wire::self_check::run(&files.incoming())
        .map_err(|why| format!("the binary {why}"))?;
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
        .stage(&manifest.sha256, &version, manifest.issued_at)
        .map_err(|e| format!("cannot stage the binary: {e}"))?;
    Ok(version)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
