//! Where a pool's agents are found: mDNS on the local link, unicast
//! DNS-SD under a domain, or the SRV records of a name (a Kubernetes
//! headless Service's). [`find`] asks every source given and merges what
//! they found: an agent found by two sources is used once.

use crate::discover::{DiscoverError, DiscoverOptions, DiscoveredAgent, discover};
use crate::dnssd::{self, DnsError, DnsOptions};
use std::net::SocketAddr;
use std::time::Duration;

/// One place agents are found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// mDNS, on one interface or all (`mdns`, `mdns:eth0`).
    Mdns(Option<String>),
    /// Unicast DNS-SD: `_skelpi._tcp.DOMAIN` (`dns-sd:DOMAIN`).
    DnsSd(String),
    /// The SRV records of a name (`srv:NAME`), e.g.
    /// `_skelpi._tcp.skelpi.NAMESPACE.svc.cluster.local`.
    Srv(String),
    /// Agents by address, `host[:port]` (a pool file's `agents`; shown
    /// as `agents`).
    Agents(Vec<String>),
}

impl std::str::FromStr for Source {
    type Err = SourceError;

    fn from_str(s: &str) -> Result<Source, SourceError> {
        parse_source(s).map_err(SourceError::Syntax)
    }
}

/// A source from its written form, or how to write it.
fn parse_source(s: &str) -> Result<Source, String> {
    let (kind, rest) = s.split_once(':').unwrap_or((s, ""));
    let rest = rest.trim();
    match (kind.trim(), rest) {
        ("mdns", "") if !s.contains(':') => Ok(Source::Mdns(None)),
        ("mdns", "") => Err(format!(
            "{s:?} names no interface: write mdns (every interface) or mdns:INTERFACE"
        )),
        ("mdns", iface) => Ok(Source::Mdns(Some(iface.to_owned()))),
        ("dns-sd", "") | ("srv", "") => Err(format!(
            "{s:?} names no {}: write {kind}:{}",
            if kind == "srv" {
                "record name"
            } else {
                "domain"
            },
            if kind == "srv" {
                "_skelpi._tcp.skelpi.NAMESPACE.svc.cluster.local"
            } else {
                "DOMAIN"
            }
        )),
        ("dns-sd", domain) => {
            crate::dnssd::check_domain(domain)?;
            Ok(Source::DnsSd(domain.to_owned()))
        }
        ("srv", name) => {
            crate::dnssd::check_name(name)?;
            Ok(Source::Srv(name.to_owned()))
        }
        _ => Err(format!(
            "{s:?} is not a source of agents: give mdns, mdns:INTERFACE, dns-sd:DOMAIN or srv:NAME"
        )),
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Mdns(None) => write!(f, "mdns"),
            Source::Mdns(Some(i)) => write!(f, "mdns:{i}"),
            Source::DnsSd(d) => write!(f, "dns-sd:{d}"),
            Source::Srv(n) => write!(f, "srv:{n}"),
            Source::Agents(_) => write!(f, "agents"),
        }
    }
}

/// A source written wrong, or one that could not be asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// Not a source (`mdns`, `mdns:IF`, `dns-sd:DOMAIN`, `srv:NAME`), or
    /// one whose domain or name is not a DNS name; the message says how
    /// to write it.
    #[error("{0}")]
    Syntax(String),
    /// mDNS browsing could not run.
    #[error("mDNS discovery failed: {0}")]
    Mdns(#[from] DiscoverError),
    /// A DNS lookup failed (no server, no answer, no records...).
    #[error(transparent)]
    Dns(#[from] DnsError),
    /// Agents named by host name did not resolve in the time given.
    #[error("the agents' names did not resolve within {0:?}")]
    NamesTimeout(Duration),
}

/// An agent a source found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Where to connect.
    pub addr: SocketAddr,
    /// What it announced (mDNS and DNS-SD; an SRV record says nothing:
    /// its identity comes with its hello).
    pub agent: Option<DiscoveredAgent>,
    /// The SRV target it was found as (SRV sources only).
    pub target: Option<String>,
    /// The sources that found it, first first (`mdns`, `dns-sd:lab`...).
    pub sources: Vec<String>,
}

/// What [`find`] found, and what it could not use, with why.
#[derive(Debug, Default)]
pub struct Finding {
    /// Agents, one per identity (or address, for SRV targets).
    pub found: Vec<Found>,
    /// Sources that failed and records that did not resolve, each a
    /// sentence naming it.
    pub problems: Vec<String>,
    /// How many sources failed outright (not merely found nobody).
    pub failed: usize,
}

/// How [`find`] asks.
#[derive(Debug, Clone)]
pub struct FindOptions {
    /// How long each source may take.
    pub timeout: Duration,
    /// The DNS server for `dns-sd:` and `srv:` sources (`None`: the
    /// system's, from `/etc/resolv.conf`).
    pub dns_server: Option<SocketAddr>,
    /// mDNS: stop browsing once this many agents answered.
    pub expect: Option<usize>,
}

/// Asks every source in turn. A source that fails is a problem, not an
/// error: the others still count. Agents found twice (same id, or same
/// address) are kept once, with both sources.
pub async fn find(sources: &[Source], opts: &FindOptions) -> Finding {
    let mut finding = Finding::default();
    for source in sources {
        let label = source.to_string();
        match find_one(source, opts).await {
            Ok((found, problems)) => {
                if found.is_empty() && problems.is_empty() {
                    finding.problems.push(format!(
                        "{label}: no agents answered within {:?}",
                        opts.timeout
                    ));
                }
                for f in found {
                    merge(&mut finding.found, f);
                }
                let named = problems.into_iter().map(|p| format!("{label}: {p}"));
                finding.problems.extend(named);
            }
            Err(e) => {
                finding.failed += 1;
                finding.problems.push(format!("{label}: {e}"));
            }
        }
    }
    finding
}

/// What one source found, and what it skipped.
async fn find_one(
    source: &Source,
    opts: &FindOptions,
) -> Result<(Vec<Found>, Vec<String>), SourceError> {
    let label = source.to_string();
    let announced = |agent: DiscoveredAgent| Found {
        addr: agent.socket_addr(),
        agent: Some(agent),
        target: None,
        sources: vec![label.clone()],
    };
    // The servers to ask in turn, sharing the time given.
    let dns = || -> Result<Vec<SocketAddr>, DnsError> {
        match opts.dns_server {
            Some(s) => Ok(vec![s]),
            None => dnssd::system_servers(),
        }
    };
    match source {
        Source::Mdns(interface) => {
            let (timeout, expect, interface) = (opts.timeout, opts.expect, interface.clone());
            let found = smol::unblock(move || {
                discover(&DiscoverOptions {
                    timeout,
                    expect,
                    interface,
                })
            })
            .await?;
            Ok((found.into_iter().map(announced).collect(), Vec::new()))
        }
        Source::DnsSd(domain) => {
            let browse = |o: DnsOptions| async move { dnssd::browse(domain, &o).await };
            let browsed = dnssd::ask_in_turn(&dns()?, opts.timeout, browse).await?;
            Ok((
                browsed.agents.into_iter().map(announced).collect(),
                browsed.skipped,
            ))
        }
        Source::Agents(list) => {
            // Host names resolve by the system's resolver, which blocks:
            // off this thread, and within the time given.
            let entries = list.clone();
            let resolved = skelpi_wire::within(
                opts.timeout,
                smol::unblock(move || {
                    let one = |e: &String| crate::pool::parse_agents(std::slice::from_ref(e));
                    entries
                        .iter()
                        .map(|e| (e.clone(), one(e)))
                        .collect::<Vec<_>>()
                }),
            )
            .await
            .ok_or(SourceError::NamesTimeout(opts.timeout))?;
            let mut found = Vec::new();
            let mut skipped = Vec::new();
            for (entry, got) in resolved {
                match got {
                    Ok(addrs) => found.extend(addrs.into_iter().map(|addr| Found {
                        addr,
                        agent: None,
                        target: Some(entry.clone()),
                        sources: vec![label.clone()],
                    })),
                    Err(e) => skipped.push(e.to_string()),
                }
            }
            Ok((found, skipped))
        }
        Source::Srv(name) => {
            let srv = |o: DnsOptions| async move { dnssd::srv(name, &o).await };
            let (targets, skipped) = dnssd::ask_in_turn(&dns()?, opts.timeout, srv).await?;
            let found = targets
                .into_iter()
                .map(|(target, addr)| Found {
                    addr,
                    agent: None,
                    target: Some(target),
                    sources: vec![label.clone()],
                })
                .collect();
            Ok((found, skipped))
        }
    }
}

/// Adds `new` to `found`, or its source to the agent already there (same
/// id, or same address).
fn merge(found: &mut Vec<Found>, new: Found) {
    let id = |f: &Found| f.agent.as_ref().map(|a| a.info.id.clone());
    let same = found
        .iter_mut()
        .find(|f| f.addr == new.addr || (id(f).is_some() && id(f) == id(&new)));
    match same {
        Some(f) => {
            for s in new.sources {
                if !f.sources.contains(&s) {
                    f.sources.push(s);
                }
            }
            if f.agent.is_none() {
                f.agent = new.agent;
            }
        }
        None => found.push(new),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_and_print_back() {
        for s in [
            "mdns",
            "mdns:eth0",
            "dns-sd:lab.test",
            "srv:_skelpi._tcp.skelpi.pis.svc.cluster.local",
        ] {
            assert_eq!(s.parse::<Source>().unwrap().to_string(), s);
        }
        let e = "dns-sd:".parse::<Source>().unwrap_err().to_string();
        assert!(e.contains("names no domain"), "{e}");
        let e = "mdns:".parse::<Source>().unwrap_err().to_string();
        assert!(e.contains("names no interface"), "{e}");
        let e = "dns-sd:x..test".parse::<Source>().unwrap_err().to_string();
        assert!(e.contains("\"x..test\" is not a DNS name"), "{e}");
        let e = "dns-sd:_skelpi._tcp.lab.test"
            .parse::<Source>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("write the domain alone (lab.test)"), "{e}");
        let e = "consul:x".parse::<Source>().unwrap_err().to_string();
        assert!(
            e.contains("give mdns, mdns:INTERFACE, dns-sd:DOMAIN or srv:NAME"),
            "{e}"
        );
    }

    #[test]
    fn an_agent_found_twice_is_kept_once_with_both_sources() {
        let by_srv = Found {
            addr: "10.0.0.5:7871".parse().unwrap(),
            agent: None,
            target: Some("pi1.lab.".into()),
            sources: vec!["srv:x".into()],
        };
        let mut found = vec![by_srv.clone()];
        merge(
            &mut found,
            Found {
                sources: vec!["mdns".into()],
                target: None,
                ..by_srv
            },
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].sources, ["srv:x", "mdns"]);
    }
}
