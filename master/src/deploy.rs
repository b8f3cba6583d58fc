//! `skelpi deploy`: new agent binaries onto the pool, one board (or batch)
//! at a time, while the cluster keeps working.
//!
//! For each board: the binary for its architecture goes with a manifest
//! signed by the deploy key ([`skelpi_wire::deploy_key`]), in chunks; the
//! agent checks it (see `skelpi_agent::deploy`) and stages it; on the
//! master's word it closes its connections (masters running jobs send its
//! unfinished tasks elsewhere) and restarts into it; the roll waits until
//! the board answers again running that binary, pings it and runs a small
//! check job on it, then goes on. The first failure stops the roll: the
//! boards not reached keep their binary, and the report says each board's
//! state. A binary that does not come up is rolled back by the board's
//! launcher, and the report says so.

use crate::client::{AgentConn, ClientError, Reply, unexpected};
use crate::cluster::Cluster;
use skelpi_proto::deploy::{
    CHUNK_BYTES, DeployChunk, DeployOffer, DeployStaged, MAX_BINARY_BYTES, Manifest,
};
use skelpi_proto::{Array, Message, PROTOCOL_VERSION};
use skelpi_wire::deploy_key::DeployKey;
use skelpi_wire::handshake::ConnectOptions;
use skelpi_wire::key::ClusterKey;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// How long a board may take to answer again on its new binary.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a restarting board is tried.
const RETRY_EVERY: Duration = Duration::from_millis(200);

/// An agent binary to deploy.
#[derive(Debug, Clone)]
pub struct Binary {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its bytes.
    pub bytes: Arc<[u8]>,
    /// The architecture it runs on, as agents name theirs.
    pub arch: String,
    /// Its SHA-256, 64 lower-case hex digits.
    pub sha256: String,
    /// Its version, when this machine could run its self-check.
    pub version: Option<String>,
}

/// Why a deploy could not start or went wrong.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DeployError {
    /// A binary could not be used.
    #[error("cannot deploy {}: {why}", path.display())]
    Binary {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// Two binaries for one architecture.
    #[error("{} and {} are both {arch} binaries: pass one per architecture", first.display(), second.display())]
    SameArch {
        /// The architecture.
        arch: String,
        /// One binary.
        first: PathBuf,
        /// The other.
        second: PathBuf,
    },
    /// Boards whose architecture no binary serves.
    #[error(
        "no binary for {arch} ({agents}): pass one with --binary (the binaries given are for {given})"
    )]
    NoBinaryFor {
        /// Their architecture.
        arch: String,
        /// The boards, by name.
        agents: String,
        /// The architectures of the binaries given.
        given: String,
    },
    /// Boards that refuse every deploy.
    #[error("{agents} cannot be deployed to: {why}")]
    NotDeployable {
        /// The boards, by name.
        agents: String,
        /// Why.
        why: &'static str,
    },
    /// The pool has no agent.
    #[error("the pool has no agent to deploy to")]
    NoAgents,
    /// In-process agents were named.
    #[error(
        "--local agents run inside this process and cannot be upgraded: deploy to agents \
         started as daemons (--agents, or found on mDNS)"
    )]
    Local,
}

impl Binary {
    /// Reads an agent binary: at most [`MAX_BINARY_BYTES`], an ELF
    /// executable whose architecture agents can name. When this machine
    /// can run it, its self-check gives its version and protocol, and a
    /// protocol this master does not speak is refused here.
    pub fn read(path: &Path) -> Result<Binary, DeployError> {
        let fail = |why: String| DeployError::Binary {
            path: path.to_owned(),
            why,
        };
        let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
        if meta.len() > MAX_BINARY_BYTES {
            return Err(fail(format!(
                "it has {} bytes, more than the {MAX_BINARY_BYTES} a deploy carries",
                meta.len()
            )));
        }
        let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        let arch = elf_arch(&bytes).map_err(fail)?.to_owned();
        let sha256 = sha256_hex(&bytes);
        let mut version = None;
        if arch == std::env::consts::ARCH {
            let report =
                skelpi_wire::self_check::run(path).map_err(|why| fail(format!("it {why}")))?;
            let protocol = report.get("protocol").and_then(|p| p.parse::<u16>().ok());
            if protocol != Some(PROTOCOL_VERSION) {
                return Err(fail(format!(
                    "it speaks protocol {}, this skelpi {PROTOCOL_VERSION}: deploy with a \
                     skelpi of the same protocol",
                    protocol.map_or("(not said)".to_owned(), |p| p.to_string())
                )));
            }
            version = report.get("version").cloned();
        }
        Ok(Binary {
            path: path.to_owned(),
            bytes: bytes.into(),
            arch,
            sha256,
            version,
        })
    }

    /// Its manifest for the agent with id `agent`, signed at `issued_at`
    /// (milliseconds since the Unix epoch: an agent takes no manifest
    /// signed before or at the last one it restarted into).
    pub fn manifest(&self, issued_at: u64, agent: &str) -> Manifest {
        Manifest {
            sha256: self.sha256.clone(),
            size: self.bytes.len() as u64,
            arch: self.arch.clone(),
            protocol: PROTOCOL_VERSION,
            version: self.version.clone(),
            issued_at,
            agent: agent.to_owned(),
        }
    }

    /// Its signed offer to the agent with id `agent`, signed now.
    pub fn offer(&self, key: &DeployKey, agent: &str) -> DeployOffer {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let manifest = self.manifest(now, agent).to_bytes();
        DeployOffer {
            signature: key.sign(&manifest).into(),
            manifest: manifest.into(),
        }
    }
}

/// The SHA-256 of `bytes`, 64 lower-case hex digits (what manifests say).
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The architecture of an ELF executable, as `std::env::consts::ARCH`
/// names it.
fn elf_arch(bytes: &[u8]) -> Result<&'static str, String> {
    use object::{Architecture, Object};
    let file = object::File::parse(bytes)
        .map_err(|e| format!("it is not an executable agents can run ({e})"))?;
    if file.format() != object::BinaryFormat::Elf {
        return Err("it is not a Linux (ELF) executable".to_owned());
    }
    Ok(match file.architecture() {
        Architecture::X86_64 => "x86_64",
        Architecture::Aarch64 => "aarch64",
        Architecture::Arm => "arm",
        Architecture::Riscv64 => "riscv64",
        other => {
            return Err(format!(
                "it is built for {other:?}, which no skelpi board runs"
            ));
        }
    })
}

/// A board of the pool, as a deploy sees it.
#[derive(Debug, Clone)]
pub struct Board {
    /// Its name.
    pub name: String,
    /// Its id (what a manifest is signed for).
    pub id: String,
    /// Its address.
    pub addr: SocketAddr,
    /// Its architecture.
    pub arch: String,
    /// The version it runs ("?" when it does not say).
    pub version: String,
    /// The deployed binary it runs, if any.
    pub deployed: Option<String>,
    /// Whether it accepts deploys.
    pub deployable: bool,
    /// Whether its deployed binary is on trial (not committed).
    pub on_trial: bool,
}

impl Board {
    /// The board a connection reaches.
    pub fn of(conn: &AgentConn) -> Board {
        let info = conn.info();
        let build = info.build.clone().unwrap_or_default();
        Board {
            name: info.name.clone(),
            id: info.id.clone(),
            addr: conn.addr(),
            arch: info.arch.clone(),
            version: if build.version.is_empty() {
                "?".to_owned()
            } else {
                build.version
            },
            deployed: build.deployed,
            deployable: build.deployable,
            on_trial: build.on_trial,
        }
    }
}

/// One board's part in a roll.
#[derive(Debug, Clone)]
pub struct Step {
    /// The board.
    pub board: Board,
    /// Index of its binary among those given.
    pub binary: usize,
    /// It runs that binary already: nothing to do.
    pub current: bool,
}

/// The plan of a roll: which binary goes where, in order. Refuses,
/// before anything is sent, a pool with a board no binary serves, a
/// board that refuses deploys, or two binaries for one architecture.
pub fn plan(boards: &[Board], binaries: &[Binary]) -> Result<Vec<Step>, DeployError> {
    if boards.is_empty() {
        return Err(DeployError::NoAgents);
    }
    for (i, a) in binaries.iter().enumerate() {
        if let Some(b) = binaries[i + 1..].iter().find(|b| b.arch == a.arch) {
            return Err(DeployError::SameArch {
                arch: a.arch.clone(),
                first: a.path.clone(),
                second: b.path.clone(),
            });
        }
    }
    let names = |pick: &dyn Fn(&Board) -> bool| {
        boards
            .iter()
            .filter(|b| pick(b))
            .map(|b| b.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for board in boards {
        if !binaries.iter().any(|b| b.arch == board.arch) {
            let arch = board.arch.clone();
            return Err(DeployError::NoBinaryFor {
                agents: names(&|b| b.arch == arch),
                given: binaries
                    .iter()
                    .map(|b| b.arch.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                arch,
            });
        }
    }
    let refusing = names(&|b| !b.deployable);
    if !refusing.is_empty() {
        return Err(DeployError::NotDeployable {
            agents: refusing,
            why: "they have no deploy public key or no state directory (put the `.pub` file \
                  of `skelpi keygen --deploy` at /etc/skelpi/deploy.pub, or start them with \
                  --deploy-pubkey and --state-dir)",
        });
    }
    Ok(boards
        .iter()
        .map(|board| {
            let binary = binaries
                .iter()
                .position(|b| b.arch == board.arch)
                .unwrap_or_default();
            Step {
                board: board.clone(),
                binary,
                current: board.deployed.as_deref() == Some(&binaries[binary].sha256)
                    && !board.on_trial,
            }
        })
        .collect())
}

/// How to roll.
#[derive(Debug, Clone)]
pub struct RollOptions {
    /// Boards upgraded at once.
    pub batch: usize,
    /// How long a board may take to answer again on its new binary.
    pub ready_timeout: Duration,
}

impl Default for RollOptions {
    fn default() -> Self {
        RollOptions {
            batch: 1,
            ready_timeout: DEFAULT_READY_TIMEOUT,
        }
    }
}

/// Where a board's upgrade stands, for progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Bytes of its binary sent so far, of `total`.
    Uploading {
        /// Sent.
        sent: u64,
        /// In all.
        total: u64,
    },
    /// It checked and staged the binary (its version).
    Staged(String),
    /// It is restarting into it.
    Restarting,
    /// It answers again on the new binary; the check job runs.
    Checking,
    /// Its part is over.
    Done(Outcome),
}

/// How a board's part ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It runs the new binary and passed the check.
    Upgraded {
        /// The version it runs now.
        version: String,
        /// From its restart to answering on the new binary.
        took: Duration,
    },
    /// It ran that binary already.
    AlreadyCurrent,
    /// Its upgrade failed (it keeps, or went back to, its old binary
    /// unless the message says otherwise).
    Failed(String),
    /// The roll stopped before reaching it: it keeps its binary.
    NotReached,
}

/// Rolls `binaries` over the pool of `cluster` as `plan` says, signing
/// with `key`; `progress` hears each board's steps. Returns each board's
/// outcome, in plan order; the roll stops at the first failure.
pub async fn roll(
    cluster: &mut Cluster,
    steps: &[Step],
    binaries: &[Binary],
    key: &DeployKey,
    opts: &RollOptions,
    mut progress: impl FnMut(&Board, Progress),
) -> Vec<(Board, Outcome)> {
    let (cluster_key, connect) = (cluster.key().clone(), cluster.connect_options().clone());
    let mut outcomes: Vec<(Board, Outcome)> = Vec::new();
    let mut failed = false;
    for batch in steps.chunks(opts.batch.max(1)) {
        if failed {
            outcomes.extend(batch.iter().map(|s| (s.board.clone(), Outcome::NotReached)));
            continue;
        }
        let mut restarted = Vec::new();
        for step in batch {
            let board = &step.board;
            if failed {
                progress(board, Progress::Done(Outcome::NotReached));
                outcomes.push((board.clone(), Outcome::NotReached));
                continue;
            }
            if step.current {
                progress(board, Progress::Done(Outcome::AlreadyCurrent));
                outcomes.push((board.clone(), Outcome::AlreadyCurrent));
                continue;
            }
            let binary = &binaries[step.binary];
            let conn = cluster
                .agents_mut()
                .iter_mut()
                .find(|c| c.addr() == board.addr);
            let staged = match conn {
                Some(conn) => {
                    let offer = binary.offer(key, &board.id);
                    let up = upload(conn, &offer, binary, |sent| {
                        let total = binary.bytes.len() as u64;
                        progress(board, Progress::Uploading { sent, total });
                    });
                    match up.await {
                        Ok(staged) => {
                            progress(board, Progress::Staged(staged.version.clone()));
                            restart(conn).await.map(|()| Instant::now())
                        }
                        Err(e) => Err(e),
                    }
                }
                None => Err(ClientError::Protocol {
                    addr: board.addr,
                    what: "is no longer in the pool".to_owned(),
                }),
            };
            match staged {
                Ok(at) => {
                    progress(board, Progress::Restarting);
                    restarted.push((step, at));
                }
                Err(e) => {
                    failed = true;
                    let outcome = Outcome::Failed(e.to_string());
                    progress(board, Progress::Done(outcome.clone()));
                    outcomes.push((board.clone(), outcome));
                }
            }
        }
        for (step, at) in restarted {
            let board = &step.board;
            let sha = &binaries[step.binary].sha256;
            let back = come_back(board.addr, &cluster_key, &connect, sha, opts.ready_timeout).await;
            let outcome = match back {
                Ok(conn) => {
                    let took = at.elapsed();
                    progress(board, Progress::Checking);
                    let sha = &binaries[step.binary].sha256;
                    match check(conn, &cluster_key, &connect, sha).await {
                        Ok(version) => Outcome::Upgraded { version, took },
                        Err(why) => Outcome::Failed(why),
                    }
                }
                Err(why) => Outcome::Failed(why),
            };
            failed |= matches!(outcome, Outcome::Failed(_));
            progress(board, Progress::Done(outcome.clone()));
            outcomes.push((board.clone(), outcome));
        }
    }
    outcomes
}

/// Sends the offer and the binary; the agent's word that it staged it.
pub async fn upload(
    conn: &mut AgentConn,
    offer: &DeployOffer,
    binary: &Binary,
    mut sent: impl FnMut(u64),
) -> Result<DeployStaged, ClientError> {
    let addr = conn.addr();
    conn.request(&Message::DeployOffer(offer.clone()), |got| match got {
        Message::DeployAccepted => Ok(Reply::Done(())),
        other => Err(unexpected(addr, other, "answering a deploy offer")),
    })
    .await?;
    let mut offset = 0;
    for part in binary.bytes.chunks(CHUNK_BYTES) {
        let chunk = DeployChunk {
            offset,
            bytes: part.to_vec().into(),
        };
        conn.send_only(&Message::DeployChunk(chunk)).await?;
        offset += part.len() as u64;
        sent(offset);
    }
    let staged = conn
        .request(&Message::DeployFinish, |got| match got {
            Message::DeployStaged(s) => Ok(Reply::Done(s)),
            other => Err(unexpected(addr, other, "checking the deployed binary")),
        })
        .await?;
    if staged.sha256 != binary.sha256 {
        return Err(ClientError::Protocol {
            addr,
            what: format!("staged binary {}, not {}", staged.sha256, binary.sha256),
        });
    }
    Ok(staged)
}

/// Asks the agent to restart into its staged binary.
pub async fn restart(conn: &mut AgentConn) -> Result<(), ClientError> {
    let addr = conn.addr();
    conn.request(&Message::DeployRestart, |got| match got {
        Message::DeployRestarting => Ok(Reply::Done(())),
        other => Err(unexpected(addr, other, "asked to restart")),
    })
    .await
}

/// Waits until the agent at `addr` answers running binary `sha256`; says
/// why not (rolled back, or not back within `bound`).
pub async fn come_back(
    addr: SocketAddr,
    key: &ClusterKey,
    opts: &ConnectOptions,
    sha256: &str,
    bound: Duration,
) -> Result<AgentConn, String> {
    let deadline = Instant::now() + bound;
    let opts = ConnectOptions {
        timeout: opts.timeout.min(Duration::from_secs(2)),
        ..opts.clone()
    };
    let mut last = String::from("it did not answer");
    while Instant::now() < deadline {
        match AgentConn::connect(addr, key, &opts).await {
            Ok(conn) => {
                let build = conn.info().build.clone().unwrap_or_default();
                if build.deployed.as_deref() == Some(sha256) {
                    return Ok(conn);
                }
                if let Some(failure) = build.last_failure.filter(|f| f.contains(sha256)) {
                    conn.close().await;
                    return Err(failure);
                }
                last = "it answered on its old binary".to_owned();
                conn.close().await;
            }
            Err(e) => last = e.to_string(),
        }
        async_io::Timer::after(RETRY_EVERY).await;
    }
    Err(format!(
        "it did not answer on the new binary within {bound:?} (last: {last}); it may still \
         come up on it, on trial: uncommitted, it goes back to its old binary at its next \
         restart"
    ))
}

/// Pings the upgraded agent and runs a small farm on it (when it offers
/// `square`), then commits its binary `sha256`; the version it runs. A
/// failed check aborts the binary: the agent goes back to the one before.
async fn check(
    mut conn: AgentConn,
    key: &ClusterKey,
    opts: &ConnectOptions,
    sha256: &str,
) -> Result<String, String> {
    let addr = conn.addr();
    let info = conn.info().clone();
    let version = info.build.map(|b| b.version).unwrap_or_default();
    let checked = match conn.ping().await {
        Err(e) => Err(e.to_string()),
        Ok(_) if info.kernels.iter().any(|k| k == "square") => check_job(addr, key, opts).await,
        Ok(_) => Ok(()),
    };
    let sha256 = sha256.to_owned();
    if let Err(why) = checked {
        let aborted = AgentConn::connect(addr, key, opts)
            .await
            .map(|mut c| async move {
                let r = c
                    .request(
                        &Message::DeployAbort(skelpi_proto::deploy::DeployRef { sha256 }),
                        |got| match got {
                            Message::DeployRestarting => Ok(Reply::Done(())),
                            other => Err(unexpected(addr, other, "asked to abort")),
                        },
                    )
                    .await;
                c.close().await;
                r
            });
        let aborted = match aborted {
            Ok(a) => a.await,
            Err(e) => Err(e),
        };
        return Err(match aborted {
            Ok(()) => format!("it failed its check ({why}): rolled back to its binary before"),
            Err(e) => format!(
                "it failed its check ({why}), and could not be told to roll back ({e}): it \
                 goes back to its binary before at its next restart"
            ),
        });
    }
    let commit = Message::DeployCommit(skelpi_proto::deploy::DeployRef { sha256 });
    let committed = conn
        .request(&commit, |got| match got {
            Message::DeployCommitted => Ok(Reply::Done(())),
            other => Err(unexpected(addr, other, "asked to commit")),
        })
        .await;
    conn.close().await;
    committed.map_err(|e| format!("the commit failed: {e}"))?;
    Ok(version)
}

/// A farm of `square` over 8 items on the agent at `addr` alone.
async fn check_job(
    addr: SocketAddr,
    key: &ClusterKey,
    opts: &ConnectOptions,
) -> Result<(), String> {
    let mut one = Cluster::connect(&[addr], key, opts)
        .await
        .map_err(|e| e.to_string())?;
    let tree = "farm(seq(square))"
        .parse()
        .map_err(|e: skelpi_proto::skeleton_text::ParseError| e.to_string())?;
    let inputs: Vec<Array> = (0..8).map(|i| Array::list(vec![f64::from(i)])).collect();
    let out = one.run(&tree, inputs).await.map_err(|e| e.to_string());
    one.close().await;
    let right = out?
        .iter()
        .enumerate()
        .all(|(i, a)| a.data == [(i * i) as f64]);
    if right {
        Ok(())
    } else {
        Err("the check job's results were wrong".to_owned())
    }
}
