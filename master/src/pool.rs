//! Where the agents of a job come from: `--agents` (the `.hosts.erlang`
//! replacement), `--local N`, or the sources of [`crate::sources`] (mDNS
//! by default; unicast DNS-SD and SRV records past the local link).

use crate::client::ClientError;
use crate::cluster::Cluster;
use crate::sources::{FindOptions, Source, find};
use skelpi_wire::handshake::ConnectOptions;
use skelpi_wire::key::{self, ClusterKey};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

/// The port agents listen on unless told otherwise.
pub const DEFAULT_PORT: u16 = 7871;

/// How to form the pool.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Explicit agents, `host[:port]`.
    pub agents: Vec<String>,
    /// Run on this many in-process agents instead.
    pub local: Option<usize>,
    /// How long to browse mDNS when neither is given.
    pub discover_timeout: Duration,
    /// Browse on this network interface only.
    pub interface: Option<String>,
    /// Where to find agents when none are named (empty: mDNS, on
    /// `interface` if given).
    pub sources: Vec<Source>,
    /// The DNS server of `dns-sd:` and `srv:` sources (`None`: the
    /// system's).
    pub dns_server: Option<SocketAddr>,
    /// When discovery finds nobody, fall back to a local cluster of one
    /// agent per core (the main job does this; other commands fail). Only
    /// with the `local` feature.
    pub fallback_local: bool,
    /// Cluster key file [default: `key::default_key_path()`].
    pub key_file: Option<PathBuf>,
    /// Ask for plaintext transport after authentication.
    pub plaintext: bool,
    /// Explicit agents that cannot be reached are left out (and said so in
    /// the pool's origin) instead of failing the pool; they, and agents
    /// found by named sources that could not be reached, are listed in
    /// [`Pool::unreachable`].
    pub skip_unreachable: bool,
    /// The heartbeat to ask of every agent (see
    /// [`ConnectOptions::heartbeat`]); `None`: the default.
    pub heartbeat: Option<Duration>,
}

/// Why no pool could be formed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PoolError {
    /// An `--agents` entry does not resolve.
    #[error("cannot resolve agent address {0:?} (expected host or host:port)")]
    BadAddress(String),
    /// Discovery found no agent.
    #[error("no agents answered on mDNS within {0:?}; name them with --agents or use --local N")]
    NoneFound(Duration),
    /// Discovery failed.
    #[error("mDNS discovery failed: {0}")]
    Discover(String),
    /// The sources asked found no agent, each for the reason given.
    #[error("no agents found: {}; name them with --agents or use --local N", .0.join("; "))]
    NoneFoundIn(Vec<String>),
    /// Agents were discovered but none could be used.
    #[error("agents were found but none could be used: {0}")]
    NoneReachable(String),
    /// The key file is unusable.
    #[error("cannot use cluster key {path}: {reason}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An embedded cluster was asked of a build without one.
    #[error(
        "this program was built without in-process agents (the skelpi library's `local` \
         feature): name agents with --agents, or rebuild with that feature"
    )]
    NoLocalAgents,
    /// Connecting failed.
    #[error(transparent)]
    Client(#[from] crate::client::ClientError),
}

/// What [`connect`] formed, and how.
#[derive(Debug)]
pub struct Pool {
    /// The connected cluster.
    pub cluster: Cluster,
    /// One line saying where the agents came from.
    pub origin: String,
    /// Agents left out as unreachable (with `skip_unreachable`: explicit
    /// ones, and those found by named sources), with why.
    pub unreachable: Vec<(SocketAddr, String)>,
}

/// Parses `host[:port]` into socket addresses (first resolution of each).
pub fn parse_agents(list: &[String]) -> Result<Vec<SocketAddr>, PoolError> {
    list.iter()
        .map(|s| {
            let s = s.trim();
            let with_port = if s.parse::<SocketAddr>().is_ok() || has_port(s) {
                s.to_owned()
            } else {
                format!("{s}:{DEFAULT_PORT}")
            };
            with_port
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| PoolError::BadAddress(s.to_owned()))
        })
        .collect()
}

/// "1 agent", "3 agents".
pub fn agents(n: usize) -> String {
    if n == 1 {
        "1 agent".into()
    } else {
        format!("{n} agents")
    }
}

fn has_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.contains(':') && port.parse::<u16>().is_ok(),
        None => false,
    }
}

/// Forms the pool: explicit agents, a local cluster, or discovered agents
/// (with a local fallback if `opts.fallback_local`).
pub async fn connect(opts: &PoolOptions) -> Result<Pool, PoolError> {
    let defaults = ConnectOptions::default();
    let connect_opts = ConnectOptions {
        plaintext: opts.plaintext,
        heartbeat: opts.heartbeat.unwrap_or(defaults.heartbeat),
        ..defaults
    };
    if let Some(n) = opts.local {
        return local(
            n,
            &connect_opts,
            format!("embedded local cluster of {}", agents(n)),
        )
        .await;
    }
    if !opts.agents.is_empty() {
        let addrs = parse_agents(&opts.agents)?;
        let origin = format!("{} from --agents", agents(addrs.len()));
        let key = load_key(opts)?;
        if opts.skip_unreachable {
            let (cluster, failed) = Cluster::connect_reachable(&addrs, &key, &connect_opts).await;
            return reachable(cluster, &failed, origin, "skipping an unreachable agent")
                .map(|pool| with_unreachable(pool, &failed));
        }
        let cluster = Cluster::connect(&addrs, &key, &connect_opts).await?;
        return Ok(Pool {
            cluster,
            origin,
            unreachable: Vec::new(),
        });
    }
    // Sources named (a pool file, --discover): a key that cannot be used
    // is said before any time is spent looking.
    let named_key = match opts.sources.is_empty() {
        true => None,
        false => Some(load_key(opts)?),
    };
    let (addrs, origin) = {
        let timeout = opts.discover_timeout;
        let sources = match opts.sources.as_slice() {
            [] => vec![Source::Mdns(opts.interface.clone())],
            given => given.to_vec(),
        };
        let only_mdns = sources.iter().all(|s| matches!(s, Source::Mdns(_)));
        let finding = find(
            &sources,
            &FindOptions {
                timeout,
                dns_server: opts.dns_server,
                expect: None,
            },
        )
        .await;
        for problem in &finding.problems {
            log::warn!("{problem}");
        }
        if finding.found.is_empty() {
            // Only where no source was asked for: sources named and found
            // empty are an error, not a reason to run elsewhere.
            if opts.fallback_local && opts.sources.is_empty() && cfg!(feature = "local") {
                let n = std::thread::available_parallelism().map_or(1, |n| n.get());
                return local(
                    n,
                    &connect_opts,
                    format!(
                        "no agents answered on mDNS within {timeout:?}: running on an embedded local cluster of {} (one per core)",
                        agents(n)
                    ),
                )
                .await;
            }
            if only_mdns && finding.failed == 0 {
                return Err(PoolError::NoneFound(timeout));
            }
            return Err(PoolError::NoneFoundIn(finding.problems));
        }
        let origin = if only_mdns {
            format!("{} found by mDNS", agents(finding.found.len()))
        } else {
            // The sources that found agents, in the order asked.
            let labels: Vec<String> = sources
                .iter()
                .map(ToString::to_string)
                .filter(|l| finding.found.iter().any(|f| f.sources.contains(l)))
                .collect();
            format!(
                "{} found by {}",
                agents(finding.found.len()),
                labels.join(", ")
            )
        };
        (
            finding.found.iter().map(|f| f.addr).collect::<Vec<_>>(),
            origin,
        )
    };
    // Discovered agents are hints: one that refuses our key belongs to
    // another cluster, one that does not answer is gone. Skip them.
    let key = match named_key {
        Some(key) => key,
        None => load_key(opts)?,
    };
    let (cluster, failed) = Cluster::connect_reachable(&addrs, &key, &connect_opts).await;
    let pool = reachable(cluster, &failed, origin, "skipping a discovered agent")?;
    // Agents named (in a pool file, or by --discover) are the user's;
    // agents that merely answered mDNS may be another cluster's.
    Ok(match opts.skip_unreachable && !opts.sources.is_empty() {
        true => with_unreachable(pool, &failed),
        false => pool,
    })
}

/// The pool of the agents that answered (`failed`: those that did not,
/// each logged after `skipping`); an error if none did.
fn reachable(
    cluster: Cluster,
    failed: &[ClientError],
    origin: String,
    skipping: &str,
) -> Result<Pool, PoolError> {
    for e in failed {
        log::warn!("{skipping}: {e}");
    }
    if cluster.agents().is_empty() {
        let why: Vec<String> = failed.iter().map(|e| e.to_string()).collect();
        return Err(PoolError::NoneReachable(why.join("; ")));
    }
    let origin = match failed {
        [] => origin,
        [one] => format!("{origin} (1 skipped: {one})"),
        [first, ..] => format!("{origin} ({} skipped: {first}; ...)", failed.len()),
    };
    Ok(Pool {
        cluster,
        origin,
        unreachable: Vec::new(),
    })
}

/// `pool`, with the agents it could not reach (`failed`), each with why.
/// An agent reached at another address too is not among them.
fn with_unreachable(mut pool: Pool, failed: &[ClientError]) -> Pool {
    pool.unreachable = failed
        .iter()
        .filter_map(|e| Some((e.addr()?, e.to_string())))
        .collect();
    pool
}

#[cfg(feature = "local")]
async fn local(n: usize, opts: &ConnectOptions, origin: String) -> Result<Pool, PoolError> {
    let cluster = Cluster::local(n.max(1), opts).await?;
    Ok(Pool {
        cluster,
        origin,
        unreachable: Vec::new(),
    })
}

#[cfg(not(feature = "local"))]
async fn local(_: usize, _: &ConnectOptions, _: String) -> Result<Pool, PoolError> {
    Err(PoolError::NoLocalAgents)
}

/// Loads the cluster key named by the options or the default path.
pub fn load_key(opts: &PoolOptions) -> Result<ClusterKey, PoolError> {
    let path = opts.key_file.clone().unwrap_or_else(key::default_key_path);
    ClusterKey::load(&path).map_err(|e| PoolError::Key {
        path,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_get_the_default_port() {
        let got = parse_agents(&[
            "127.0.0.1".into(),
            "127.0.0.1:9000".into(),
            "[::1]:7".into(),
        ])
        .unwrap();
        assert_eq!(got[0].port(), DEFAULT_PORT);
        assert_eq!(got[1].port(), 9000);
        assert_eq!(got[2].port(), 7);
        assert!(matches!(
            parse_agents(&["no such host.invalid:1".into()]),
            Err(PoolError::BadAddress(_))
        ));
    }
}
