//! DNS-SD announcement of an agent over mDNS, so that a master finds it
//! without configuration.
//!
//! An agent registers one service instance of type [`SERVICE_TYPE`]. The
//! instance name is the agent's name; the TXT record carries the rest of its
//! [`AgentInfo`] (see [`txt_properties`]). The master reads it back with
//! [`skelpi_proto::dnssd::parse_txt`].
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

/// How long [`Announcer::stop`] waits for each answer of the mDNS daemon.
const STOP_WAIT: Duration = Duration::from_secs(1);

pub use skelpi_proto::dnssd::{SERVICE_TYPE, txt_properties};

/// Errors of announcing an agent.
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
    /// `--interface` names an interface this machine lacks, or comes with
    /// an agent bound to one address.
    #[error("{0}")]
    Interface(String),
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
    ///
    /// `interfaces` (names, e.g. `eth0`), if any, limit an agent listening
    /// on 0.0.0.0 / :: to announcing, and answering queries, on those
    /// interfaces with their addresses; each must exist here.
    pub fn start(
        info: &AgentInfo,
        listen: SocketAddr,
        interfaces: &[String],
    ) -> Result<Announcer, AnnounceError> {
        let host = host_name(info);
        let ip = listen.ip();
        check_interfaces(interfaces, ip)?;
        let props = txt_properties(info);
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
            if !interfaces.is_empty() {
                let named = interfaces.iter().map(|n| IfKind::Name(n.clone()));
                service.set_interfaces(named.collect());
            } else if ip.is_ipv4() {
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
        if !interfaces.is_empty() {
            // Queries are answered, and announcements made, on the named
            // interfaces only (IPv4 only for 0.0.0.0, as above).
            let mut select = daemon.disable_interface(IfKind::All);
            for name in interfaces {
                select = select.and_then(|()| daemon.enable_interface(IfKind::Name(name.clone())));
            }
            if ip.is_ipv4() {
                select = select.and_then(|()| daemon.disable_interface(IfKind::IPv6));
            }
            select.map_err(AnnounceError::daemon("select the announcing interfaces"))?;
        } else if !ip.is_unspecified() {
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

/// Checks that `interfaces` exist here (in `/sys/class/net`) and that the
/// agent listens on every address (`ip` unspecified) if any are named.
fn check_interfaces(interfaces: &[String], ip: std::net::IpAddr) -> Result<(), AnnounceError> {
    if interfaces.is_empty() {
        return Ok(());
    }
    if !ip.is_unspecified() {
        return Err(AnnounceError::Interface(format!(
            "--interface needs --listen on 0.0.0.0 or :: (an agent bound to {ip} announces on \
             that address's interface only)"
        )));
    }
    let dir = std::path::Path::new("/sys/class/net");
    let Ok(entries) = std::fs::read_dir(dir) else {
        // Not Linux's sysfs: the daemon says whether the names are known.
        return Ok(());
    };
    let mut here: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    here.sort();
    for name in interfaces {
        if !here.contains(name) {
            return Err(AnnounceError::Interface(format!(
                "--interface {name}: no such network interface here (there are: {})",
                here.join(", ")
            )));
        }
    }
    Ok(())
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
            build: None,
            queued_per_worker: 0,
        }
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
