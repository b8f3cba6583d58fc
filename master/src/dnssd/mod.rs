//! Finding agents through an ordinary DNS server, past the first router
//! where mDNS stops: unicast DNS-SD (RFC 6763) under a domain, and the SRV
//! records of a name (a Kubernetes headless Service's).
//!
//! - [`browse`] asks for the PTR records of `_skelpi._tcp.DOMAIN`, then
//!   each instance's SRV and TXT records and its target's addresses. The
//!   TXT record is the one agents announce on mDNS
//!   ([`skelpi_proto::dnssd::txt_properties`]), and agents are merged by
//!   its `id` as mDNS discovery merges them: one agent under two names is
//!   one agent.
//! - [`srv`] asks for the SRV records of a name and their targets'
//!   addresses: agents known by address only (their identity comes with
//!   their hello).
//! - [`zone_lines`] and [`dnsmasq_lines`] write the records for agents
//!   found, for an operator to put in their DNS server.
//!
//! # Implementation
//! hickory-proto builds and parses the messages; one query goes over UDP
//! (tried [`TRIES`] times within the timeout), and again over TCP when the
//! answer came truncated (`exchange.rs`). The server is recursive or
//! authoritative for the names asked: no iteration is done here. Without
//! a server named, resolv.conf's are asked in turn ([`system_servers`],
//! [`ask_in_turn`]).

mod exchange;
mod records;

use exchange::lookup;

pub use records::{dnsmasq_lines, has_routable_address, zone_lines};

use crate::discover::DiscoveredAgent;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR, SRV};
use hickory_proto::rr::{Name, RData, RecordType};
use skelpi_proto::AgentInfo;
use skelpi_proto::dnssd::parse_txt;
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// The DNS-SD service of agents, without its domain.
pub const SERVICE: &str = "_skelpi._tcp";

/// UDP sends of one query within its timeout.
pub const TRIES: u32 = 3;

/// Instances (or SRV targets) resolved at once.
pub const AT_ONCE: usize = 32;

/// The TTL of the records [`zone_lines`] writes, seconds.
pub const RECORD_TTL: u32 = 120;

/// Where and how long to ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsOptions {
    /// The DNS server.
    pub server: SocketAddr,
    /// The longest time one lookup ([`browse`], [`srv`]) may take on this
    /// server ([`ask_in_turn`] gives each server a share of the time).
    pub timeout: Duration,
}

/// Why a lookup failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// No DNS server was named and none could be read from the system.
    #[error("no DNS server: {0} (name one with --dns-server ADDR)")]
    NoServer(String),
    /// A name given is not a DNS name.
    #[error("{name:?} is not a DNS name: {why}")]
    BadName {
        /// The name given.
        name: String,
        /// Why not.
        why: String,
    },
    /// The server did not answer in time.
    #[error(
        "the DNS server {server} did not answer within {waited:?} (is it running, and reachable from here?)"
    )]
    NoAnswer {
        /// The server.
        server: SocketAddr,
        /// How long it was waited for.
        waited: Duration,
    },
    /// Nothing listens at the server's address (the port is closed).
    #[error("nothing answers DNS at {server} (its port is closed: is the server's address right?)")]
    Closed {
        /// The server.
        server: SocketAddr,
    },
    /// The server answered with an error.
    #[error(
        "the DNS server {server} answered {code} for {name} {kind}{}",
        refused_hint(code)
    )]
    Refused {
        /// The server.
        server: SocketAddr,
        /// The name asked.
        name: String,
        /// The record type asked.
        kind: String,
        /// Its answer (SERVFAIL, REFUSED...).
        code: ResponseCode,
    },
    /// The name has no records of the kind asked.
    #[error("{name} has no {kind} records at {server}{hint}")]
    NoRecords {
        /// The server.
        server: SocketAddr,
        /// The name asked.
        name: String,
        /// The record type asked.
        kind: String,
        /// What to check.
        hint: &'static str,
    },
    /// A message could not be made or read.
    #[error("DNS message to or from {server}: {why}")]
    Malformed {
        /// The server.
        server: SocketAddr,
        /// What went wrong.
        why: String,
    },
    /// The socket failed.
    #[error("DNS exchange with {server}: {source}")]
    Io {
        /// The server.
        server: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl DnsError {
    /// Whether another server may do better: this one could not be
    /// reached, or failed, refused or does not implement the query (as a
    /// stub resolver then tries the next; a name without records is an
    /// answer).
    pub fn worth_another_server(&self) -> bool {
        match self {
            DnsError::NoAnswer { .. } | DnsError::Closed { .. } | DnsError::Io { .. } => true,
            DnsError::Refused { code, .. } => matches!(
                code,
                ResponseCode::ServFail | ResponseCode::Refused | ResponseCode::NotImp
            ),
            _ => false,
        }
    }
}

fn refused_hint(code: &ResponseCode) -> &'static str {
    if *code == ResponseCode::Refused {
        " (it serves no such name and forwards nowhere, or refuses this address: is the domain right?)"
    } else {
        ""
    }
}

/// What [`browse`] found: the agents, and each instance it could not
/// resolve, with why.
#[derive(Debug, Default)]
pub struct Browsed {
    /// Agents, merged by id, sorted by (name, id).
    pub agents: Vec<DiscoveredAgent>,
    /// Instances left out, e.g. `pi3._skelpi._tcp.lab.: no SRV record`.
    pub skipped: Vec<String>,
}

/// The `nameserver`s of `/etc/resolv.conf` (port 53), in its order.
/// Lines it does not know are skipped, as the system's resolver skips
/// them.
pub fn system_servers() -> Result<Vec<SocketAddr>, DnsError> {
    let path = "/etc/resolv.conf";
    let text = std::fs::read(path).map_err(|e| DnsError::NoServer(format!("{path}: {e}")))?;
    servers_in(path, &text)
}

/// The `nameserver`s of a resolv.conf's `text` (read from `path`).
fn servers_in(path: &str, text: &[u8]) -> Result<Vec<SocketAddr>, DnsError> {
    let (conf, errors) = resolv_conf::Config::parse_with_errors(text);
    let servers: Vec<SocketAddr> = conf
        .nameservers
        .iter()
        .map(|ip| SocketAddr::new(IpAddr::from(ip), 53))
        .collect();
    if servers.is_empty() {
        let why = errors.first().map_or(String::new(), |e| format!(" ({e})"));
        return Err(DnsError::NoServer(format!(
            "{path} names no nameserver{why}"
        )));
    }
    Ok(servers)
}

/// Servers of resolv.conf a stub resolver asks, at most (glibc's MAXNS).
pub const MAX_SERVERS: usize = 3;

/// Runs `ask` with each of `servers` (the first [`MAX_SERVERS`]) in turn,
/// within `timeout` in all, as a stub resolver goes down resolv.conf's
/// list: the next only while one is no good
/// ([`DnsError::worth_another_server`]; said as a warning), each with an
/// equal share of the time left. The last server's error is returned if
/// none answered.
pub async fn ask_in_turn<T, F, Fut>(
    servers: &[SocketAddr],
    timeout: Duration,
    mut ask: F,
) -> Result<T, DnsError>
where
    F: FnMut(DnsOptions) -> Fut,
    Fut: std::future::Future<Output = Result<T, DnsError>>,
{
    let servers = &servers[..servers.len().min(MAX_SERVERS)];
    let deadline = Instant::now() + timeout;
    let mut last = DnsError::NoServer("no DNS server given".into());
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    for (i, &server) in servers.iter().enumerate() {
        // The first share exactly (one server: the whole time given, as
        // said when it does not answer), then of what is left, in
        // whole milliseconds.
        let share = match i {
            0 => timeout / count(servers.len()),
            _ => {
                let left = deadline.saturating_duration_since(Instant::now());
                let ms = (left / count(servers.len() - i)).as_millis();
                Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
            }
        };
        match ask(DnsOptions {
            server,
            timeout: share,
        })
        .await
        {
            Err(e) if e.worth_another_server() && i + 1 < servers.len() => {
                log::warn!("{e}; asking the next nameserver");
                last = e;
            }
            Err(e) if e.worth_another_server() => last = e,
            done => return done,
        }
    }
    Err(last)
}

/// `host[:port]` (port 53 by default) as a server address.
pub fn parse_server(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = s.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    Err(format!(
        "{s:?} is not a DNS server address (an IP address, optionally with :port)"
    ))
}

fn name(s: &str) -> Result<Name, DnsError> {
    let mut n = Name::from_utf8(s).map_err(|e| DnsError::BadName {
        name: s.to_owned(),
        why: e.to_string(),
    })?;
    n.set_fqdn(true);
    Ok(n)
}

/// Checks that `domain` can hold agents' records: a DNS name, not empty,
/// not already under `_skelpi._tcp` (the service is added to it).
pub fn check_domain(domain: &str) -> Result<(), String> {
    let bare = domain.trim_end_matches('.');
    if bare.is_empty() {
        return Err("the domain is empty: give one, e.g. cluster.example".into());
    }
    if let Some(rest) = bare.strip_prefix(&format!("{SERVICE}.")) {
        return Err(format!(
            "{domain:?} starts with {SERVICE}, which is added to the domain: write the domain alone ({rest})"
        ));
    }
    check_name(bare)
}

/// Checks that `s` is a DNS name (labels of 1 to 63 bytes, no spaces).
pub fn check_name(s: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{s:?} is not a DNS name: {why}"));
    let bare = s.trim_end_matches('.');
    if bare.is_empty() {
        return bad("it is empty");
    }
    if bare.split('.').any(str::is_empty) {
        return bad("it has an empty label (two dots in a row)");
    }
    if bare.split('.').any(|l| l.len() > 63) {
        return bad("a label is longer than 63 bytes");
    }
    if bare.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("it holds a space");
    }
    name(bare).map(|_| ()).map_err(|e| e.to_string())
}

/// The service name browsed under `domain`: `_skelpi._tcp.DOMAIN.`.
pub fn service_name(domain: &str) -> Result<Name, DnsError> {
    name(&format!("{SERVICE}.{}", domain.trim_end_matches('.')))
}

/// Browses `_skelpi._tcp.DOMAIN` at the server of `opts`: every instance
/// its PTR records name, resolved by SRV, TXT and address records.
/// Instances that do not resolve are left out (and listed in
/// [`Browsed::skipped`]); a domain with no PTR record is an error naming it.
pub async fn browse(domain: &str, opts: &DnsOptions) -> Result<Browsed, DnsError> {
    let deadline = Instant::now() + opts.timeout;
    let service = service_name(domain)?;
    let ptrs = lookup(&service, RecordType::PTR, opts, deadline).await?;
    let instances: BTreeSet<Name> = ptrs
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::PTR(PTR(target)) => Some(target.clone()),
            _ => None,
        })
        .collect();
    if instances.is_empty() {
        return Err(no_records(opts, &service, RecordType::PTR));
    }
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    let instances: Vec<Name> = instances.into_iter().collect();
    for batch in instances.chunks(AT_ONCE) {
        let lookups = batch.iter().map(|i| resolve_instance(i, opts, deadline));
        for (instance, got) in batch
            .iter()
            .zip(crate::join::join_all(lookups.collect()).await)
        {
            match got {
                Ok(agent) => found.push(agent),
                Err(why) => skipped.push(format!("{instance}: {why}")),
            }
        }
    }
    Ok(Browsed {
        agents: crate::discover::merge_agents(found),
        skipped,
    })
}

/// One instance's agent: its SRV record's port and target's addresses,
/// its TXT record's info.
async fn resolve_instance(
    instance: &Name,
    opts: &DnsOptions,
    deadline: Instant,
) -> Result<DiscoveredAgent, DnsError> {
    let srv = lookup(instance, RecordType::SRV, opts, deadline).await?;
    let Some((port, target)) = srv.answers.iter().find_map(|r| match &r.data {
        RData::SRV(s) => Some((s.port, s.target.clone())),
        _ => None,
    }) else {
        return Err(no_records(opts, instance, RecordType::SRV));
    };
    let txt = lookup(instance, RecordType::TXT, opts, deadline).await?;
    let props: Vec<(String, String)> = txt
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(t) => Some(t),
            _ => None,
        })
        .flat_map(|t| t.txt_data.iter())
        .map(|entry| {
            let entry = String::from_utf8_lossy(entry);
            match entry.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (entry.into_owned(), String::new()),
            }
        })
        .collect();
    let label = instance_label(instance);
    let mut info: AgentInfo = parse_txt(&label, &props).map_err(|e| DnsError::Malformed {
        server: opts.server,
        why: format!("TXT record of {instance}: {e}"),
    })?;
    info.port = port;
    let addrs = target_addresses(&srv, &target, opts, deadline).await?;
    Ok(DiscoveredAgent {
        info,
        addrs: addrs.into_iter().collect(),
        instance: label,
    })
}

/// `pi1` of `pi1._skelpi._tcp.lab.`: the instance's first label (raw: an
/// RFC 6763 instance name may hold spaces and dots).
fn instance_label(instance: &Name) -> String {
    let first = instance.iter().next();
    first.map_or_else(
        || instance.to_utf8(),
        |l| String::from_utf8_lossy(l).into_owned(),
    )
}

/// The addresses of `target` that came with `msg` (in its additional
/// section, as servers often send with SRV answers), through the CNAME
/// records it holds for that name.
fn addresses_in(msg: &Message, target: &Name) -> BTreeSet<IpAddr> {
    let records = || msg.additionals.iter().chain(&msg.answers);
    let mut names = vec![target.clone()];
    // A chain of aliases, bounded by the records there are.
    for _ in 0..records().count() {
        let last = names.last().expect("one name at least");
        let alias = records().find_map(|r| match &r.data {
            RData::CNAME(c) if &r.name == last && !names.contains(&c.0) => Some(c.0.clone()),
            _ => None,
        });
        match alias {
            Some(next) => names.push(next),
            None => break,
        }
    }
    records()
        .filter(|r| names.contains(&r.name))
        .filter_map(|r| match &r.data {
            RData::A(A(ip)) => Some(IpAddr::V4(*ip)),
            RData::AAAA(AAAA(ip)) => Some(IpAddr::V6(*ip)),
            _ => None,
        })
        .collect()
}

/// `target`'s A and AAAA records (none of either: an error).
async fn addresses(
    target: &Name,
    opts: &DnsOptions,
    deadline: Instant,
) -> Result<BTreeSet<IpAddr>, DnsError> {
    let mut addrs = BTreeSet::new();
    for kind in [RecordType::A, RecordType::AAAA] {
        match lookup(target, kind, opts, deadline).await {
            Ok(msg) => addrs.extend(addresses_in(&msg, target)),
            Err(DnsError::NoRecords { .. }) => {}
            // An IPv6 question some resolvers drop costs nothing when the
            // IPv4 one was answered.
            Err(_) if kind == RecordType::AAAA && !addrs.is_empty() => {}
            Err(e) => return Err(e),
        }
    }
    if addrs.is_empty() {
        return Err(no_records(opts, target, RecordType::A));
    }
    Ok(addrs)
}

/// The SRV records of `srv_name` (e.g. `_skelpi._tcp.skelpi.NS.svc.cluster.local`),
/// each as its target and the socket address of its target's first
/// address (IPv4 first) and port, in priority order. Targets without an
/// address are left out, and listed second, with why.
pub async fn srv(
    srv_name: &str,
    opts: &DnsOptions,
) -> Result<(Vec<(String, SocketAddr)>, Vec<String>), DnsError> {
    let deadline = Instant::now() + opts.timeout;
    let asked = name(srv_name)?;
    let msg = lookup(&asked, RecordType::SRV, opts, deadline).await?;
    let mut records: Vec<&SRV> = msg
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some(s),
            _ => None,
        })
        .collect();
    if records.is_empty() {
        return Err(no_records(opts, &asked, RecordType::SRV));
    }
    records.sort_by_key(|s| (s.priority, std::cmp::Reverse(s.weight)));
    let (mut found, mut skipped) = (Vec::new(), Vec::new());
    for batch in records.chunks(AT_ONCE) {
        let lookups = batch
            .iter()
            .map(|s| target_addresses(&msg, &s.target, opts, deadline));
        for (s, got) in batch
            .iter()
            .zip(crate::join::join_all(lookups.collect()).await)
        {
            match got {
                Ok(addrs) => {
                    if let Some(ip) = addrs.first() {
                        found.push((s.target.to_utf8(), SocketAddr::new(*ip, s.port)));
                    }
                }
                // A target that does not resolve is skipped, named; the
                // others still count.
                Err(e) => skipped.push(format!("{}: {e}", s.target)),
            }
        }
    }
    Ok((found, skipped))
}

/// The addresses of an SRV record's `target`: those that came with `msg`,
/// else asked.
async fn target_addresses(
    msg: &Message,
    target: &Name,
    opts: &DnsOptions,
    deadline: Instant,
) -> Result<BTreeSet<IpAddr>, DnsError> {
    let addrs = addresses_in(msg, target);
    if addrs.is_empty() {
        return addresses(target, opts, deadline).await;
    }
    Ok(addrs)
}

fn no_records(opts: &DnsOptions, name: &Name, kind: RecordType) -> DnsError {
    DnsError::NoRecords {
        server: opts.server,
        name: name.to_utf8(),
        kind: kind.to_string(),
        hint: match kind {
            RecordType::PTR => {
                " (is the domain right, and does the server serve its agents' records? `skelpi dns-records` prints them)"
            }
            _ => "",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Record;

    #[test]
    fn a_targets_addresses_are_found_through_its_aliases() {
        let mut msg = Message::query();
        let target = name("pod1.lab.test").unwrap();
        let real = name("node1.lab.test").unwrap();
        let cname = hickory_proto::rr::rdata::CNAME(real.clone());
        msg.answers
            .push(Record::from_rdata(target.clone(), 60, RData::CNAME(cname)));
        msg.answers.push(Record::from_rdata(
            real,
            60,
            RData::A(A([10, 0, 0, 7].into())),
        ));
        let other = name("other.lab.test").unwrap();
        msg.answers.push(Record::from_rdata(
            other,
            60,
            RData::A(A([10, 0, 0, 8].into())),
        ));
        let got: Vec<IpAddr> = addresses_in(&msg, &target).into_iter().collect();
        assert_eq!(got, [IpAddr::from([10, 0, 0, 7])]);
    }

    #[test]
    fn a_server_is_an_ip_with_an_optional_port() {
        assert_eq!(
            parse_server("10.0.0.1").unwrap(),
            "10.0.0.1:53".parse().unwrap()
        );
        assert_eq!(
            parse_server("10.0.0.1:5353").unwrap(),
            "10.0.0.1:5353".parse().unwrap()
        );
        assert_eq!(parse_server("[::1]").unwrap(), "[::1]:53".parse().unwrap());
        assert!(
            parse_server("dns.example")
                .unwrap_err()
                .contains("not a DNS server address")
        );
    }

    #[test]
    fn every_nameserver_of_resolv_conf_is_read_past_lines_it_does_not_know() {
        // `nameserver bogus` and `frobnicate` are errors to resolv-conf
        // (its strict parse refuses the whole file).
        let text = b"# a comment\nnameserver 10.0.0.53\nnameserver bogus\nfrobnicate yes\n\
                     options edns0 trust-ad\nnameserver fd00::53\nlookup file bind\n";
        assert!(resolv_conf::Config::parse(&text[..]).is_err());
        let got = servers_in("resolv.conf", text).unwrap();
        let want: Vec<SocketAddr> = vec![
            "10.0.0.53:53".parse().unwrap(),
            "[fd00::53]:53".parse().unwrap(),
        ];
        assert_eq!(got, want);
        let err = servers_in("resolv.conf", b"search lab.test\nlookup file\n").unwrap_err();
        assert!(
            err.to_string().contains("resolv.conf names no nameserver"),
            "{err}"
        );
    }

    #[test]
    fn the_next_server_is_asked_only_while_one_is_no_good() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let closed_addr = closed.local_addr().unwrap();
        // Its port is closed once the socket is gone.
        drop(closed);
        let (silent, extra) = (
            silent.local_addr().unwrap(),
            "127.0.0.9:53".parse().unwrap(),
        );
        // Four servers: the fourth is never asked (glibc asks three).
        let servers = [silent, closed_addr, silent, extra];
        let asked = std::cell::RefCell::new(Vec::new());
        let ask = |o: DnsOptions| {
            asked.borrow_mut().push((o.server, o.timeout));
            async move { browse("lab.test", &o).await }
        };
        let took = Instant::now();
        let err =
            smol::block_on(ask_in_turn(&servers, Duration::from_millis(600), ask)).unwrap_err();
        let took = took.elapsed();
        assert!(matches!(err, DnsError::NoAnswer { .. }), "{err}");
        let asked = asked.into_inner();
        let order: Vec<SocketAddr> = asked.iter().map(|a| a.0).collect();
        assert_eq!(order, [silent, closed_addr, silent]);
        // Shares of the time left: a third, then the closed port's unused
        // share goes to the last.
        assert_eq!(
            asked[0].1,
            Duration::from_millis(200),
            "a third of the time"
        );
        assert!(asked[2].1 > Duration::from_millis(300), "{asked:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        // A refusal or a server failure: the next; no records: an answer.
        for (code, tries) in [
            (ResponseCode::Refused, 2),
            (ResponseCode::ServFail, 2),
            (ResponseCode::NXDomain, 1),
        ] {
            let asked = std::cell::Cell::new(0);
            let answer = |o: DnsOptions| {
                asked.set(asked.get() + 1);
                async move {
                    Err::<(), _>(match code {
                        ResponseCode::NXDomain => {
                            no_records(&o, &name("lab.test").unwrap(), RecordType::PTR)
                        }
                        _ => DnsError::Refused {
                            server: o.server,
                            name: "lab.test".into(),
                            kind: "PTR".into(),
                            code,
                        },
                    })
                }
            };
            let two = [silent, closed_addr];
            let _ = smol::block_on(ask_in_turn(&two, Duration::from_secs(1), answer));
            assert_eq!(asked.get(), tries, "{code}");
        }
    }

    #[test]
    fn a_silent_server_is_named_with_the_time_waited() {
        // A bound UDP socket that never answers, on loopback.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let server = silent.local_addr().unwrap();
        // Asked in turn as a source asks it: one server has all the time.
        let browse_it = |o: DnsOptions| async move { browse("lab.test", &o).await };
        let timeout = Duration::from_millis(300);
        let err = smol::block_on(ask_in_turn(&[server], timeout, browse_it)).unwrap_err();
        assert!(matches!(err, DnsError::NoAnswer { .. }), "{err}");
        assert!(
            err.to_string().contains("did not answer within 300ms ("),
            "{err}"
        );
    }
}
