//! The DNS-SD records of agents, for an operator's DNS server: zone-file
//! lines and dnsmasq options (`skelpi dns-records`), the same records
//! [`super::browse`] reads.

use super::{DnsError, RECORD_TTL, name, service_name};
use crate::discover::DiscoveredAgent;
use hickory_proto::rr::rdata::{A, AAAA, PTR, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record};
use skelpi_proto::dnssd::txt_properties;
use std::net::IpAddr;

/// The host name an agent's SRV record points at under `domain`: its
/// instance name as a label.
fn host_name(agent: &DiscoveredAgent, domain: &Name) -> Result<Name, DnsError> {
    let label = dns_label(&agent.instance);
    Name::from_utf8(&label)
        .and_then(|n| n.append_domain(domain))
        .map_err(|e| DnsError::BadName {
            name: label,
            why: e.to_string(),
        })
}

/// `name` as one DNS host label: letters, digits and `-`, others as `-`.
fn dns_label(name: &str) -> String {
    let label: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63)
        .collect();
    if label.is_empty() {
        "agent".into()
    } else {
        label
    }
}

/// The DNS-SD records of `agents` under `domain` (what [`browse`] reads),
/// as records.
fn records(agents: &[DiscoveredAgent], domain: &str) -> Result<Vec<Record>, DnsError> {
    let service = service_name(domain)?;
    let zone = name(domain.trim_end_matches('.'))?;
    let mut out = Vec::new();
    let mut labels: Vec<(String, &str)> = Vec::new();
    for agent in agents.iter().filter(|a| has_routable_address(a)) {
        // Two instance names that make one label would make one agent of
        // two: refused, naming both.
        let label = dns_label(&agent.instance);
        if let Some((_, other)) = labels.iter().find(|(l, _)| *l == label) {
            return Err(DnsError::BadName {
                name: agent.instance.clone(),
                why: format!(
                    "it and {other:?} both make the DNS label {label:?}: rename one agent (--name)"
                ),
            });
        }
        labels.push((label.clone(), &agent.instance));
        let instance = Name::from_labels([label.as_bytes()])
            .and_then(|n| n.append_domain(&service))
            .map_err(|e| DnsError::BadName {
                name: agent.instance.clone(),
                why: e.to_string(),
            })?;
        let host = host_name(agent, &zone)?;
        let ptr = RData::PTR(PTR(instance.clone()));
        out.push(Record::from_rdata(service.clone(), RECORD_TTL, ptr));
        let srv = RData::SRV(SRV::new(0, 0, agent.info.port, host.clone()));
        out.push(Record::from_rdata(instance.clone(), RECORD_TTL, srv));
        let txt: Vec<String> = txt_properties(&agent.info)
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        out.push(Record::from_rdata(
            instance,
            RECORD_TTL,
            RData::TXT(TXT::new(txt)),
        ));
        // Loopback and link-local addresses mean nothing to a master
        // elsewhere (and one on loopback would be its own).
        let routable = agent.addrs.iter().filter(|ip| !is_local_only(ip));
        for ip in routable {
            let data = match ip {
                IpAddr::V4(v4) => RData::A(A(*v4)),
                IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
            };
            out.push(Record::from_rdata(host.clone(), RECORD_TTL, data));
        }
    }
    Ok(out)
}

/// Whether `agent` has an address a master elsewhere can use (its records
/// are written only then: an SRV record whose target has no address
/// resolves nowhere).
pub fn has_routable_address(agent: &DiscoveredAgent) -> bool {
    agent.addrs.iter().any(|ip| !is_local_only(ip))
}

/// Whether `ip` is reachable only on this machine or link: loopback, or
/// link-local (its scope is not written in a record).
fn is_local_only(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.is_unicast_link_local(),
    }
}

/// `text` as one quoted character-string of a zone file or a dnsmasq
/// option: `"` and `\` escaped.
fn quoted(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(text);
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Zone-file lines (RFC 1035 master file) for `agents` under `domain`:
/// the PTR, SRV, TXT and address records that [`browse`](super::browse) reads. Agents'
/// loopback and link-local addresses are left out.
pub fn zone_lines(agents: &[DiscoveredAgent], domain: &str) -> Result<Vec<String>, DnsError> {
    let line = |r: &Record| match &r.data {
        // Each string quoted (hickory's form runs them together).
        RData::TXT(t) => {
            let strings: Vec<String> = t.txt_data.iter().map(|p| quoted(p)).collect();
            format!(
                "{} {} {} TXT {}",
                r.name,
                r.ttl,
                r.dns_class,
                strings.join(" ")
            )
        }
        _ => r.to_string(),
    };
    Ok(records(agents, domain)?.iter().map(line).collect())
}

/// The same records as dnsmasq options (`ptr-record=`, `srv-host=`,
/// `txt-record=`, `host-record=`), for a `dnsmasq.conf` or `--conf-file`.
pub fn dnsmasq_lines(agents: &[DiscoveredAgent], domain: &str) -> Result<Vec<String>, DnsError> {
    let mut lines = Vec::new();
    for record in records(agents, domain)? {
        let owner = record.name.to_utf8();
        let owner = owner.trim_end_matches('.');
        let line = match &record.data {
            RData::PTR(PTR(target)) => {
                format!(
                    "ptr-record={owner},{}",
                    target.to_utf8().trim_end_matches('.')
                )
            }
            RData::SRV(s) => format!(
                "srv-host={owner},{},{},{},{}",
                s.target.to_utf8().trim_end_matches('.'),
                s.port,
                s.priority,
                s.weight
            ),
            RData::TXT(t) => {
                let parts: Vec<String> = t.txt_data.iter().map(|p| quoted(p)).collect();
                format!("txt-record={owner},{}", parts.join(","))
            }
            RData::A(A(ip)) => format!("host-record={owner},{ip}"),
            RData::AAAA(AAAA(ip)) => format!("host-record={owner},{ip}"),
            _ => continue,
        };
        lines.push(line);
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use skelpi_proto::AgentInfo;

    fn agent(instance: &str, id: &str, ip: [u8; 4]) -> DiscoveredAgent {
        let info = AgentInfo {
            id: id.into(),
            name: instance.into(),
            version: skelpi_proto::PROTOCOL_VERSION,
            arch: "aarch64".into(),
            cores: 4,
            memory_bytes: 1 << 30,
            port: 7871,
            kernels: Vec::new(),
            build: None,
            queued_per_worker: 0,
        };
        DiscoveredAgent {
            info,
            addrs: vec![IpAddr::from(ip)],
            instance: instance.into(),
        }
    }

    #[test]
    fn zone_lines_name_the_service_the_instance_and_its_host() {
        let lines = zone_lines(&[agent("pi1", "a1", [10, 0, 0, 5])], "lab.test").unwrap();
        let all = lines.join("\n");
        assert!(
            all.contains("_skelpi._tcp.lab.test. 120 IN PTR pi1._skelpi._tcp.lab.test."),
            "{all}"
        );
        assert!(
            all.contains("pi1._skelpi._tcp.lab.test. 120 IN SRV 0 0 7871 pi1.lab.test."),
            "{all}"
        );
        assert!(all.contains("pi1.lab.test. 120 IN A 10.0.0.5"), "{all}");
        // One quoted string per TXT entry, as zone files read them.
        assert!(
            all.contains("pi1._skelpi._tcp.lab.test. 120 IN TXT \"id=a1\" \"proto=2\""),
            "{all}"
        );
    }

    #[test]
    fn records_leave_out_local_addresses_and_refuse_names_that_collide() {
        let mut a = agent("pi1", "a1", [10, 0, 0, 5]);
        a.addrs.push("127.0.0.1".parse().unwrap());
        a.addrs.push("169.254.1.1".parse().unwrap());
        a.addrs.push("fe80::1".parse().unwrap());
        let lines = zone_lines(&[a], "lab.test").unwrap();
        assert_eq!(
            lines.iter().filter(|l| l.contains(" A ")).count(),
            1,
            "{lines:?}"
        );
        assert!(!lines.iter().any(|l| l.contains("AAAA")), "{lines:?}");
        let twins = [
            agent("pi 1", "a1", [10, 0, 0, 5]),
            agent("pi.1", "a2", [10, 0, 0, 6]),
        ];
        let e = zone_lines(&twins, "lab.test").unwrap_err().to_string();
        assert!(e.contains("both make the DNS label \"pi-1\""), "{e}");
    }

    #[test]
    fn quoted_strings_escape_quotes_and_backslashes() {
        assert_eq!(quoted(br#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn dnsmasq_lines_carry_the_same_records() {
        let lines = dnsmasq_lines(&[agent("pi 2", "a2", [10, 0, 1, 6])], "lab.test.").unwrap();
        assert_eq!(
            lines[0],
            "ptr-record=_skelpi._tcp.lab.test,pi-2._skelpi._tcp.lab.test"
        );
        assert_eq!(
            lines[1],
            "srv-host=pi-2._skelpi._tcp.lab.test,pi-2.lab.test,7871,0,0"
        );
        assert!(
            lines[2].starts_with("txt-record=pi-2._skelpi._tcp.lab.test,\""),
            "{lines:?}"
        );
        assert_eq!(lines[3], "host-record=pi-2.lab.test,10.0.1.6");
    }
}
