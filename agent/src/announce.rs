//! DNS-SD announcement of an agent over mDNS, so that a master finds it
//! without configuration.
//!
//! An agent registers one service instance of type [`SERVICE_TYPE`]. The
//! instance name is the agent's name; the TXT record carries the rest of its
//! [`AgentInfo`] (see [`txt_properties`]). The master reads it back with
//! [`parse_txt`].
//!
//! # Implementation
//!
//! Each [`Announcer`] owns its own `mdns_sd::ServiceDaemon` (one thread).
//! Names can be renamed by mDNS conflict resolution (`pi` becomes `pi (2)`),
//! so the identity of an agent is the `id` in its TXT record, never its name.
//! [`Announcer::stop`] unregisters first, which sends the goodbye packets
//! (records with TTL 0) so browsers drop the agent at once instead of waiting
//! for the records to expire.

use std::net::SocketAddr;
use std::time::Duration;

use mdns_sd::{DaemonStatus, IfKind, ServiceDaemon, ServiceInfo, UnregisterStatus};
use skelpi_proto::AgentInfo;

/// Service type for skelpi agents.
pub const SERVICE_TYPE: &str = "_skelpi._tcp.local.";

/// How long [`Announcer::stop`] waits for each answer of the mDNS daemon.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// TXT keys, in the order they are written.
const KEY_ID: &str = "id";
const KEY_PROTO: &str = "proto";
const KEY_ARCH: &str = "arch";
const KEY_CORES: &str = "cores";
const KEY_MEM: &str = "mem";
const KEY_PORT: &str = "port";

/// Errors of announcing an agent or of reading an announcement.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnnounceError {
    /// The mDNS daemon refused or failed an operation.
    #[error("mdns daemon cannot {op}: {source}")]
    Daemon {
        /// What was asked of the daemon, e.g. `register service`.
        op: &'static str,
        /// The error reported by mdns-sd.
        #[source]
        source: mdns_sd::Error,
    },
    /// The mDNS daemon did not answer within the allowed time.
    #[error("mdns daemon did not confirm {op} within {waited:?}")]
    Timeout {
        /// What was waited for, e.g. `goodbye`.
        op: &'static str,
        /// How long it was waited for.
        waited: Duration,
    },
    /// The service to unregister was unknown to the daemon.
    #[error("mdns daemon does not know service {fullname}")]
    NotRegistered {
        /// Full DNS-SD name of the service.
        fullname: String,
    },
    /// A TXT record lacks a key every agent announces.
    #[error("txt record lacks key `{key}`")]
    MissingKey {
        /// The missing key.
        key: &'static str,
    },
    /// A TXT key has a value that does not parse.
    #[error("txt key `{key}` has bad value {value:?}")]
    BadValue {
        /// The key whose value is bad.
        key: &'static str,
        /// The value as found.
        value: String,
    },
}

impl AnnounceError {
    fn daemon(op: &'static str) -> impl FnOnce(mdns_sd::Error) -> Self {
        move |source| Self::Daemon { op, source }
    }
}

/// A registered agent service; dropping it shuts the daemon down too, but
/// without waiting, so prefer [`Announcer::stop`].
pub struct Announcer {
    /// `None` once stopped.
    daemon: Option<ServiceDaemon>,
    fullname: String,
}

impl Announcer {
    /// Registers the agent. `listen` is the socket address the agent listens on:
    /// 0.0.0.0 / :: => announce the addresses of all interfaces (addr auto; only
    /// IPv4 ones for 0.0.0.0);
    /// a loopback address => announce that address and make sure the loopback interface is enabled;
    /// another specific IP => announce that IP only.
    ///
    /// The announced port is `info.port`, in SRV and in TXT.
    pub fn start(info: &AgentInfo, listen: SocketAddr) -> Result<Announcer, AnnounceError> {
        let host = host_name(info);
        let props = txt_properties(info);
        let ip = listen.ip();
        let service = if ip.is_unspecified() {
            let mut service = ServiceInfo::new(
                SERVICE_TYPE,
                &info.name,
                &host,
                "",
                info.port,
                props.as_slice(),
            )
            .map_err(AnnounceError::daemon("build service info"))?
            .enable_addr_auto();
            if ip.is_ipv4() {
                // A socket bound to 0.0.0.0 does not accept IPv6 connections.
                service.set_interfaces(vec![IfKind::IPv4]);
            }
            service
        } else {
            ServiceInfo::new(
                SERVICE_TYPE,
                &info.name,
                &host,
                ip,
                info.port,
                props.as_slice(),
            )
            .map_err(AnnounceError::daemon("build service info"))?
        };
        let fullname = service.get_fullname().to_owned();

        let daemon = ServiceDaemon::new().map_err(AnnounceError::daemon("start"))?;
        // Owned by the Announcer from here on, so that an error below drops
        // it and thereby shuts the daemon's thread down.
        let announcer = Announcer {
            daemon: Some(daemon),
            fullname,
        };
        let daemon = announcer.daemon.as_ref().expect("just set");
        if !ip.is_unspecified() {
            // An agent bound to one address speaks mDNS on that address's
            // interface only: no queries or announcements leak onto other
            // networks (and a loopback agent stays on loopback).
            let kind = match ip {
                std::net::IpAddr::V4(_) if ip.is_loopback() => IfKind::LoopbackV4,
                std::net::IpAddr::V6(_) if ip.is_loopback() => IfKind::LoopbackV6,
                _ => IfKind::Addr(ip),
            };
            daemon
                .disable_interface(IfKind::All)
                .and_then(|()| daemon.enable_interface(kind))
                .map_err(AnnounceError::daemon("select the listening interface"))?;
        }
        daemon
            .register(service)
            .map_err(AnnounceError::daemon("register service"))?;
        log::info!(
            "announcing {} (id {}) as {} on {listen}, host {host}",
            info.name,
            info.id,
            announcer.fullname
        );
        Ok(announcer)
    }

    /// Full DNS-SD name of the registered service,
    /// e.g. `pi1._skelpi._tcp.local.` (before any conflict renaming).
    pub fn fullname(&self) -> &str {
        &self.fullname
    }

    /// Sends the mDNS goodbye (unregister), waits for it at most ~1 s, shuts the daemon down.
    ///
    /// The goodbye is on the wire when the daemon confirms the unregister.
    /// mdns-sd would repeat it 120 ms later; shutting down cancels that
    /// repeat, which only matters on lossy links (browsers then drop the
    /// agent when its records expire).
    pub fn stop(mut self) -> Result<(), AnnounceError> {
        let daemon = self.daemon.take().expect("only stop takes the daemon");
        let goodbye = Self::goodbye(&daemon, &self.fullname);
        // Shut down even when the goodbye failed: the daemon's thread would
        // otherwise live on.
        let shutdown = shutdown(&daemon);
        goodbye?;
        shutdown
    }

    fn goodbye(daemon: &ServiceDaemon, fullname: &str) -> Result<(), AnnounceError> {
        let status = daemon
            .unregister(fullname)
            .map_err(AnnounceError::daemon("unregister service"))?
            .recv_timeout(STOP_WAIT)
            .map_err(|_| AnnounceError::Timeout {
                op: "goodbye",
                waited: STOP_WAIT,
            })?;
        match status {
            UnregisterStatus::OK => {
                log::info!("sent goodbye for {fullname}");
                Ok(())
            }
            UnregisterStatus::NotFound => Err(AnnounceError::NotRegistered {
                fullname: fullname.to_owned(),
            }),
        }
    }
}

impl std::fmt::Debug for Announcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Announcer")
            .field("fullname", &self.fullname)
            .field("running", &self.daemon.is_some())
            .finish()
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            // Shutting down also sends goodbyes for what is still registered.
            if let Err(e) = daemon.shutdown() {
                log::warn!("cannot shut down mdns daemon of {}: {e}", self.fullname);
            }
        }
    }
}

/// Asks `daemon` to exit and waits at most [`STOP_WAIT`] for it to confirm.
fn shutdown(daemon: &ServiceDaemon) -> Result<(), AnnounceError> {
    let status = daemon
        .shutdown()
        .map_err(AnnounceError::daemon("shut down"))?
        .recv_timeout(STOP_WAIT)
        .map_err(|_| AnnounceError::Timeout {
            op: "shutdown",
            waited: STOP_WAIT,
        })?;
    debug_assert_eq!(status, DaemonStatus::Shutdown);
    Ok(())
}

/// The mDNS host name of an agent: its name turned into one valid DNS label
/// (lower-case letters, digits and `-`), then `.local.`.
///
/// A name with no usable character falls back to `skelpi-<id>`.
fn host_name(info: &AgentInfo) -> String {
    let label = dns_label(&info.name);
    let label = if label.is_empty() {
        dns_label(&format!("skelpi-{}", info.id))
    } else {
        label
    };
    format!("{label}.local.")
}

/// `name` as a DNS label: runs of other characters become one `-`, no `-` at
/// either end, at most 63 bytes.
fn dns_label(name: &str) -> String {
    let mut label = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            label.push(c.to_ascii_lowercase());
        } else if !label.is_empty() && !label.ends_with('-') {
            label.push('-');
        }
    }
    label.truncate(63);
    label.trim_end_matches('-').to_owned()
}

/// Builds the TXT properties for an agent (keys: id, proto, arch, cores, mem, port).
pub fn txt_properties(info: &AgentInfo) -> Vec<(String, String)> {
    [
        (KEY_ID, info.id.clone()),
        (KEY_PROTO, info.version.to_string()),
        (KEY_ARCH, info.arch.clone()),
        (KEY_CORES, info.cores.to_string()),
        (KEY_MEM, info.memory_bytes.to_string()),
        (KEY_PORT, info.port.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Parses TXT properties back into an AgentInfo (name comes from the instance name argument);
/// typed error naming the missing/bad key.
///
/// Keys are matched case-insensitively and the first occurrence wins
/// (RFC 6763 §6.4); unknown keys are ignored.
pub fn parse_txt(
    instance_name: &str,
    props: &[(String, String)],
) -> Result<AgentInfo, AnnounceError> {
    let get = |key: &'static str| {
        props
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
            .ok_or(AnnounceError::MissingKey { key })
    };
    let text = |key: &'static str| {
        let value = get(key)?;
        if value.is_empty() {
            Err(AnnounceError::BadValue {
                key,
                value: value.to_owned(),
            })
        } else {
            Ok(value.to_owned())
        }
    };
    Ok(AgentInfo {
        id: text(KEY_ID)?,
        name: instance_name.to_owned(),
        version: number(KEY_PROTO, get(KEY_PROTO)?)?,
        arch: text(KEY_ARCH)?,
        cores: number(KEY_CORES, get(KEY_CORES)?)?,
        memory_bytes: number(KEY_MEM, get(KEY_MEM)?)?,
        port: number(KEY_PORT, get(KEY_PORT)?)?,
        kernels: Vec::new(),
    })
}

fn number<T: std::str::FromStr>(key: &'static str, value: &str) -> Result<T, AnnounceError> {
    value.parse().map_err(|_| AnnounceError::BadValue {
        key,
        value: value.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> AgentInfo {
        AgentInfo {
            id: "0123456789abcdef".into(),
            name: "pi-1".into(),
            version: skelpi_proto::PROTOCOL_VERSION,
            arch: "aarch64".into(),
            cores: 4,
            memory_bytes: 8 << 30,
            port: 7878,
            kernels: Vec::new(),
        }
    }

    fn without(key: &str) -> Vec<(String, String)> {
        txt_properties(&agent())
            .into_iter()
            .filter(|(k, _)| k != key)
            .collect()
    }

    fn with(key: &str, value: &str) -> Vec<(String, String)> {
        txt_properties(&agent())
            .into_iter()
            .map(|(k, v)| {
                if k == key {
                    (k, value.to_owned())
                } else {
                    (k, v)
                }
            })
            .collect()
    }

    #[test]
    fn txt_round_trips() {
        let info = agent();
        let props = txt_properties(&info);
        let keys: Vec<_> = props.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["id", "proto", "arch", "cores", "mem", "port"]);
        assert_eq!(parse_txt("pi-1", &props).unwrap(), info);
    }

    #[test]
    fn name_comes_from_the_instance() {
        let parsed = parse_txt("pi-1 (2)", &txt_properties(&agent())).unwrap();
        assert_eq!(parsed.name, "pi-1 (2)");
        assert_eq!(parsed.id, agent().id);
    }

    #[test]
    fn first_occurrence_wins_and_unknown_keys_are_ignored() {
        let mut props = vec![("ID".to_owned(), "feedface".to_owned())];
        props.extend(txt_properties(&agent()));
        props.push(("future".into(), "whatever".into()));
        assert_eq!(parse_txt("pi-1", &props).unwrap().id, "feedface");
    }

    #[test]
    fn each_missing_key_is_named() {
        for key in [KEY_ID, KEY_PROTO, KEY_ARCH, KEY_CORES, KEY_MEM, KEY_PORT] {
            match parse_txt("pi-1", &without(key)) {
                Err(AnnounceError::MissingKey { key: k }) => assert_eq!(k, key),
                other => panic!("{key}: expected MissingKey, got {other:?}"),
            }
        }
    }

    #[test]
    fn each_bad_value_is_named() {
        let cases = [
            (KEY_ID, ""),
            (KEY_ARCH, ""),
            (KEY_PROTO, "one"),
            (KEY_PROTO, "65536"),
            (KEY_CORES, "-1"),
            (KEY_CORES, ""),
            (KEY_MEM, "8G"),
            (KEY_PORT, "70000"),
        ];
        for (key, value) in cases {
            match parse_txt("pi-1", &with(key, value)) {
                Err(AnnounceError::BadValue { key: k, value: v }) => {
                    assert_eq!((k, v.as_str()), (key, value));
                }
                other => panic!("{key}={value:?}: expected BadValue, got {other:?}"),
            }
        }
    }

    #[test]
    fn errors_read_lower_case_and_name_the_key() {
        let missing = parse_txt("pi-1", &without(KEY_MEM)).unwrap_err();
        assert_eq!(missing.to_string(), "txt record lacks key `mem`");
        let bad = parse_txt("pi-1", &with(KEY_PORT, "x")).unwrap_err();
        assert_eq!(bad.to_string(), "txt key `port` has bad value \"x\"");
    }

    #[test]
    fn host_names_are_dns_labels() {
        let named = |name: &str| AgentInfo {
            name: name.into(),
            ..agent()
        };
        assert_eq!(host_name(&named("pi-1")), "pi-1.local.");
        assert_eq!(host_name(&named("Lab Pi #3")), "lab-pi-3.local.");
        assert_eq!(host_name(&named("--pi.lab--")), "pi-lab.local.");
        assert_eq!(
            host_name(&named("树莓派")),
            "skelpi-0123456789abcdef.local."
        );
        assert_eq!(
            host_name(&named(&"a".repeat(100))).len(),
            63 + ".local.".len()
        );
    }
}
