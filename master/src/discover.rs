//! Finding agents on the local network by browsing DNS-SD over mDNS.
//!
//! [`discover`] browses [`SERVICE_TYPE`] for a bounded time and returns what
//! the agents announced (the agent announces the same `skelpi_proto::dnssd` form).
//!
//! # Implementation
//!
//! mdns-sd reports a service as resolved as soon as it has one address, so
//! the first `ServiceResolved` event may carry only IPv4 or only IPv6; later
//! events for the same fullname add the rest. Events are therefore merged per
//! fullname, and then per TXT `id`: an agent renamed by mDNS conflict
//! resolution, or seen under two names, is still one agent.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mdns_sd::{IfKind, RecvTimeoutError, ResolvedService, ServiceDaemon, ServiceEvent};
use skelpi_proto::AgentInfo;
use skelpi_proto::dnssd::{SERVICE_TYPE, parse_txt};

/// How long [`discover`] waits for its daemon to confirm the shutdown.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

/// An agent found by [`discover`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredAgent {
    /// What the agent announced; `name` is its DNS-SD instance name.
    pub info: AgentInfo,
    /// Every address announced for it, sorted, IPv4 first, no duplicates.
    ///
    /// IPv6 scope ids are not kept, so a link-local IPv6 address is only
    /// usable together with the interface it was found on.
    pub addrs: Vec<IpAddr>,
    /// DNS-SD instance name, e.g. `pi1` of `pi1._skelpi._tcp.local.`.
    pub instance: String,
}

impl DiscoveredAgent {
    /// The address to connect to: first IPv4 (else first address) + info.port.
    ///
    /// # Panics
    ///
    /// If `addrs` is empty, which [`discover`] never returns.
    pub fn socket_addr(&self) -> SocketAddr {
        let ip = self
            .addrs
            .iter()
            .find(|ip| ip.is_ipv4())
            .or_else(|| self.addrs.first())
            .expect("a discovered agent has an address");
        SocketAddr::new(*ip, self.info.port)
    }
}

/// How [`discover`] browses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoverOptions {
    /// The longest time to browse.
    pub timeout: Duration,
    /// Return early once this many distinct ids are resolved.
    pub expect: Option<usize>,
    /// Browse on this network interface only (e.g. `lo`, `eth0`);
    /// `None` browses on every interface.
    pub interface: Option<String>,
}

/// Errors of [`discover`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoverError {
    /// The mDNS daemon refused or failed an operation.
    #[error("mdns daemon cannot {op}: {source}")]
    Daemon {
        /// What was asked of the daemon, e.g. `browse`.
        op: &'static str,
        /// The error reported by mdns-sd.
        #[source]
        source: mdns_sd::Error,
    },
    /// The mDNS daemon stopped sending events before the browse ended.
    #[error("mdns daemon stopped while browsing")]
    DaemonStopped,
}

impl DiscoverError {
    fn daemon(op: &'static str) -> impl FnOnce(mdns_sd::Error) -> Self {
        move |source| Self::Daemon { op, source }
    }
}

/// Browses SERVICE_TYPE for up to `timeout` (blocking; no async needed), merging every resolved
/// event per service fullname (addresses union), deduplicating by TXT id, and returns agents
/// sorted by (name, id).
///
/// Agents announced on 127.0.0.1 are included. Never browses past
/// `timeout`, and shuts its daemon down before returning. An announcement
/// whose TXT record does not parse is skipped with a warning.
pub fn discover(opts: &DiscoverOptions) -> Result<Vec<DiscoveredAgent>, DiscoverError> {
    let daemon = ServiceDaemon::new().map_err(DiscoverError::daemon("start"))?;
    let found = browse(&daemon, opts);
    match daemon.shutdown() {
        Ok(done) => {
            if done.recv_timeout(SHUTDOWN_WAIT).is_err() {
                log::warn!("mdns daemon did not confirm shutdown within {SHUTDOWN_WAIT:?}");
            }
        }
        Err(e) => log::warn!("cannot shut down mdns daemon: {e}"),
    }
    Ok(merge_by_id(found?))
}

/// One service fullname as seen so far.
#[derive(Debug)]
struct Seen {
    info: AgentInfo,
    addrs: BTreeSet<IpAddr>,
}

/// Collects resolved services until `opts.timeout` passes or `opts.expect`
/// ids are known. Keys are service fullnames.
fn browse(
    daemon: &ServiceDaemon,
    opts: &DiscoverOptions,
) -> Result<HashMap<String, Seen>, DiscoverError> {
    let deadline = Instant::now() + opts.timeout;
    match &opts.interface {
        // Queries go out on the named interface only.
        Some(name) => daemon
            .disable_interface(IfKind::All)
            .and_then(|()| daemon.enable_interface(IfKind::Name(name.clone())))
            .map_err(DiscoverError::daemon("select the browsing interface"))?,
        // Loopback is on by default in mdns-sd 0.21; agents on 127.0.0.1
        // must stay visible if that default changes.
        None => daemon
            .enable_interface(IfKind::LoopbackV4)
            .map_err(DiscoverError::daemon("enable loopback interface"))?,
    }
    let events = daemon
        .browse(SERVICE_TYPE)
        .map_err(DiscoverError::daemon("browse"))?;

    let mut seen: HashMap<String, Seen> = HashMap::new();
    loop {
        if let Some(expect) = opts.expect {
            let ids: BTreeSet<&str> = seen.values().map(|s| s.info.id.as_str()).collect();
            if ids.len() >= expect {
                break;
            }
        }
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        match events.recv_timeout(left) {
            Ok(ServiceEvent::ServiceResolved(service)) => resolved(&mut seen, &service),
            Ok(ServiceEvent::ServiceRemoved(_, fullname)) => {
                if seen.remove(&fullname).is_some() {
                    log::debug!("{fullname} said goodbye");
                }
            }
            Ok(other) => log::trace!("mdns: {other:?}"),
            Err(RecvTimeoutError::Timeout) => break,
            Err(RecvTimeoutError::Disconnected) => return Err(DiscoverError::DaemonStopped),
        }
    }
    Ok(seen)
}

/// Merges one resolved event into `seen`: the latest TXT record wins, the
/// addresses add up.
fn resolved(seen: &mut HashMap<String, Seen>, service: &ResolvedService) {
    let fullname = service.get_fullname();
    let instance = instance_name(fullname);
    let props: Vec<(String, String)> = service
        .get_properties()
        .iter()
        .map(|p| (p.key().to_owned(), p.val_str().to_owned()))
        .collect();
    let info = match parse_txt(instance, &props) {
        Ok(info) => info,
        Err(e) => {
            log::warn!("skipping {instance:?}: {e}");
            return;
        }
    };
    let addrs = service.get_addresses().iter().map(|a| a.to_ip_addr());
    log::debug!(
        "resolved {fullname} (id {}) at {:?}",
        info.id,
        service.get_addresses()
    );
    let entry = seen.entry(fullname.to_owned()).or_insert_with(|| Seen {
        info: info.clone(),
        addrs: BTreeSet::new(),
    });
    entry.info = info;
    entry.addrs.extend(addrs);
}

/// The instance part of a fullname: `pi1` of `pi1._skelpi._tcp.local.`.
fn instance_name(fullname: &str) -> &str {
    fullname
        .strip_suffix(SERVICE_TYPE)
        .and_then(|rest| rest.strip_suffix('.'))
        .unwrap_or(fullname)
}

/// One agent per id: addresses of all its fullnames, info and instance of
/// the first fullname in order. Agents with no address are left out.
fn merge_by_id(seen: HashMap<String, Seen>) -> Vec<DiscoveredAgent> {
    let found = seen.into_iter().map(|(fullname, seen)| DiscoveredAgent {
        info: seen.info,
        addrs: seen.addrs.into_iter().collect(),
        instance: instance_name(&fullname).to_owned(),
    });
    merge_agents(found.collect())
}

/// One agent per id (how mDNS and unicast DNS-SD agree on who is who):
/// the addresses of all its instances, the info and instance of the first
/// by instance name; agents with no address left out; sorted by (name,
/// id), every IPv4 address before every IPv6 one.
pub(crate) fn merge_agents(mut found: Vec<DiscoveredAgent>) -> Vec<DiscoveredAgent> {
    found.sort_by(|a, b| a.instance.cmp(&b.instance));
    let mut by_id: BTreeMap<String, (DiscoveredAgent, BTreeSet<IpAddr>)> = BTreeMap::new();
    for agent in found {
        let (_, addrs) = by_id
            .entry(agent.info.id.clone())
            .or_insert_with(|| (agent.clone(), BTreeSet::new()));
        addrs.extend(agent.addrs);
    }
    let mut agents: Vec<DiscoveredAgent> = by_id
        .into_values()
        .filter(|(_, addrs)| !addrs.is_empty())
        .map(|(mut agent, addrs)| {
            // `IpAddr` orders every IPv4 address before every IPv6 one.
            agent.addrs = addrs.into_iter().collect();
            agent
        })
        .collect();
    agents.sort_by(|a, b| (&a.info.name, &a.info.id).cmp(&(&b.info.name, &b.info.id)));
    agents
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_is_the_fullname_without_the_type() {
        assert_eq!(instance_name("pi1._skelpi._tcp.local."), "pi1");
        assert_eq!(
            instance_name("pi.lab (2)._skelpi._tcp.local."),
            "pi.lab (2)"
        );
        assert_eq!(instance_name("odd.local."), "odd.local.");
    }

    #[test]
    fn one_agent_under_two_instances_is_one_agent_with_both_addresses() {
        let agent = |instance: &str, ip: &str| DiscoveredAgent {
            info: AgentInfo {
                id: "a1".into(),
                name: "pi1".into(),
                version: 1,
                arch: "arm".into(),
                cores: 4,
                memory_bytes: 1,
                port: 7871,
                kernels: Vec::new(),
                build: None,
                queued_per_worker: 0,
            },
            addrs: vec![ip.parse().unwrap()],
            instance: instance.into(),
        };
        let merged = merge_agents(vec![agent("pi1-b", "10.0.1.5"), agent("pi1", "10.0.0.5")]);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].instance, "pi1");
        assert_eq!(merged[0].addrs.len(), 2);
    }

    #[test]
    fn socket_addr_prefers_ipv4() {
        let agent = DiscoveredAgent {
            info: AgentInfo {
                id: "1".into(),
                name: "pi".into(),
                version: 1,
                arch: "arm".into(),
                cores: 4,
                memory_bytes: 1,
                port: 9000,
                kernels: Vec::new(),
                build: None,
                queued_per_worker: 0,
            },
            addrs: vec!["10.0.0.2".parse().unwrap(), "fe80::1".parse().unwrap()],
            instance: "pi".into(),
        };
        assert_eq!(agent.socket_addr(), "10.0.0.2:9000".parse().unwrap());
        let v6_only = DiscoveredAgent {
            addrs: vec!["fd00::2".parse().unwrap()],
            ..agent
        };
        assert_eq!(v6_only.socket_addr(), "[fd00::2]:9000".parse().unwrap());
    }

    #[test]
    fn ipv4_sorts_first() {
        let mut addrs: Vec<IpAddr> = vec![
            "::1".parse().unwrap(),
            "192.168.1.9".parse().unwrap(),
            "10.0.0.1".parse().unwrap(),
        ];
        addrs.sort();
        assert!(addrs[0].is_ipv4() && addrs[1].is_ipv4() && addrs[2].is_ipv6());
    }
}
