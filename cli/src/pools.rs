//! Named pools: a file (`~/.config/skelpi/pools.toml`) where a user writes
//! their cluster down once — each pool a mix of sources (mDNS on an
//! interface, unicast DNS-SD, SRV records) and agents by address, the
//! `.hosts.erlang` successor — and `--pool NAME` uses it.
//!
//! ```toml
//! [home]
//! discover = ["mdns:eth0", "dns-sd:cluster.example"]
//! agents = ["pi-old:7871", "10.0.0.9"]
//! dns-server = "192.168.1.1"
//! key-file = "/home/me/.config/skelpi/home.key"
//! ```

use serde::Deserialize;
use skelpi::sources::Source;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use toml::Spanned;

/// One pool of the file (each value with where it is in the file).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PoolSpec {
    /// Where to find agents: `mdns`, `mdns:IF`, `dns-sd:DOMAIN`, `srv:NAME`.
    #[serde(default)]
    pub discover: Vec<Spanned<String>>,
    /// Agents by address, `host[:port]`.
    #[serde(default)]
    pub agents: Vec<Spanned<String>>,
    /// The DNS server of `dns-sd:` and `srv:` sources, `IP[:PORT]`.
    pub dns_server: Option<Spanned<String>>,
    /// The cluster key of this pool's agents.
    pub key_file: Option<PathBuf>,
}

/// A pool of the file, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// Its sources, the addresses among them.
    pub sources: Vec<Source>,
    /// The DNS server, if named.
    pub dns_server: Option<SocketAddr>,
    /// The key file, if named.
    pub key_file: Option<PathBuf>,
}

/// Why a pool could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolsError {
    /// The file cannot be read.
    #[error(
        "cannot read the pool file {path}: {source} (write pools there, or name another with --pools-file)"
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a pool file (the message names the line).
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// toml's message, with the line and column.
        message: String,
    },
    /// No pool of that name.
    #[error("{path} has no pool named {name:?} (it has: {known})")]
    Unknown {
        /// The file.
        path: PathBuf,
        /// The name asked.
        name: String,
        /// The names it has.
        known: String,
    },
    /// A value of the pool is wrong.
    #[error("{path}: pool {name:?}: {message}")]
    Bad {
        /// The file.
        path: PathBuf,
        /// The pool.
        name: String,
        /// What is wrong.
        message: String,
    },
}

/// The pool file: `$SKELPI_POOLS_FILE`, else
/// `$XDG_CONFIG_HOME/skelpi/pools.toml`, else `~/.config/skelpi/pools.toml`.
pub fn default_path() -> PathBuf {
    path_from(|name| std::env::var_os(name))
}

fn path_from(var: impl Fn(&str) -> Option<OsString>) -> PathBuf {
    let var = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(file) = var("SKELPI_POOLS_FILE") {
        return file;
    }
    if let Some(dir) = var("XDG_CONFIG_HOME").filter(|d| d.is_absolute()) {
        return dir.join("skelpi").join("pools.toml");
    }
    if let Some(home) = var("HOME") {
        return home.join(".config").join("skelpi").join("pools.toml");
    }
    PathBuf::from("pools.toml")
}

/// Pool `name` of the file at `path`.
pub fn load(path: &Path, name: &str) -> Result<Pool, PoolsError> {
    let text = std::fs::read_to_string(path).map_err(|source| PoolsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let pool = parse(&text, name).map_err(|e| match e {
        Parse::Syntax(message) => PoolsError::Syntax {
            path: path.to_owned(),
            message,
        },
        Parse::Unknown(known) => PoolsError::Unknown {
            path: path.to_owned(),
            name: name.to_owned(),
            known,
        },
        Parse::Bad(message) => PoolsError::Bad {
            path: path.to_owned(),
            name: name.to_owned(),
            message,
        },
    })?;
    Ok(Pool {
        key_file: pool.key_file.map(|k| beside(path, &k)),
        ..pool
    })
}

/// `file` as the pool file at `pools` names it: `~/` is the home folder,
/// a relative path is the pool file's folder's.
fn beside(pools: &Path, file: &Path) -> PathBuf {
    if let (Ok(rest), Some(home)) = (file.strip_prefix("~"), std::env::var_os("HOME")) {
        return PathBuf::from(home).join(rest);
    }
    if file.is_relative() {
        return pools.parent().unwrap_or(Path::new(".")).join(file);
    }
    file.to_owned()
}

/// What [`parse`] found wrong.
#[derive(Debug, PartialEq, Eq)]
enum Parse {
    Syntax(String),
    Unknown(String),
    Bad(String),
}

fn parse(text: &str, name: &str) -> Result<Pool, Parse> {
    let pools: BTreeMap<String, PoolSpec> =
        toml::from_str(text).map_err(|e| Parse::Syntax(located(text, &e)))?;
    let Some(spec) = pools.get(name) else {
        let known: Vec<&str> = pools.keys().map(String::as_str).collect();
        return Err(Parse::Unknown(if known.is_empty() {
            "none".into()
        } else {
            known.join(", ")
        }));
    };
    if spec.discover.is_empty() && spec.agents.is_empty() {
        return Err(Parse::Bad(
            "names no agents and no source: give `discover = [...]` or `agents = [...]`".into(),
        ));
    }
    // A value's error, led by its line.
    let at = |value: &Spanned<String>, message: String| {
        let line = line_of(text, value.span().start);
        Parse::Bad(format!("line {line}: {message}"))
    };
    let mut sources = Vec::new();
    for s in &spec.discover {
        sources.push(
            s.get_ref()
                .parse::<Source>()
                .map_err(|e| at(s, e.to_string()))?,
        );
    }
    for a in &spec.agents {
        check_agent(a.get_ref()).map_err(|e| at(a, e))?;
    }
    if !spec.agents.is_empty() {
        let agents = spec.agents.iter().map(|a| a.get_ref().trim().to_owned());
        sources.push(Source::Agents(agents.collect()));
    }
    let dns_server = match &spec.dns_server {
        Some(s) => Some(skelpi::dnssd::parse_server(s.get_ref()).map_err(|e| at(s, e))?),
        None => None,
    };
    Ok(Pool {
        sources,
        dns_server,
        key_file: spec.key_file.clone(),
    })
}

/// Whether `agent` is written as an agent's address, `host[:port]` (a
/// name or an IP address; `[v6]:port` for IPv6 with a port). Whether the
/// name resolves is known only when the pool is formed.
fn check_agent(agent: &str) -> Result<(), String> {
    let a = agent.trim();
    let bad = |why: String| Err(format!("agent {agent:?} is not host[:port]: {why}"));
    if a.contains('%') {
        return bad(
            "a scoped IPv6 address (fe80::...%IF) cannot be used here: give a global \
             address or a host name"
                .into(),
        );
    }
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        // [IPv6]:port
        let Some((inside, after)) = rest.split_once(']') else {
            return bad("a [ without its ]".into());
        };
        if !is_ipv6(inside) {
            return bad(format!("{inside:?} is not an IPv6 address"));
        }
        match (after, after.strip_prefix(':')) {
            ("", _) => return Ok(()),
            (_, Some(port)) => (None, Some(port)),
            _ => return bad("write [address]:port".into()),
        }
    } else if a.matches(':').count() > 1 {
        // A bare IPv6 address: a port needs the brackets.
        return match is_ipv6(a) {
            true => Ok(()),
            false => bad("an IPv6 address with a port is written [address]:port".into()),
        };
    } else {
        match a.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(a), None),
        }
    };
    if let Some(port) = port.filter(|p| p.parse::<u16>().is_err()) {
        return bad(format!("its port {port:?} is not a number up to 65535"));
    }
    match host {
        Some(h) if h.parse::<IpAddr>().is_err() && !is_host_name(h) => bad(format!(
            "{h:?} is neither an IP address nor a host name (letters, digits, -, _ and dots)"
        )),
        _ => Ok(()),
    }
}

/// An IPv6 address.
fn is_ipv6(s: &str) -> bool {
    s.parse::<std::net::Ipv6Addr>().is_ok()
}

/// A host name the system's resolver takes: dot-separated labels of
/// letters, digits, `-` and `_` (a trailing dot allowed).
fn is_host_name(s: &str) -> bool {
    let bare = s.strip_suffix('.').unwrap_or(s);
    !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// The line (from 1) of byte `at` of `text`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// toml's message, led by the line and column it points at.
fn located(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end().to_owned();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = line_of(text, span.start);
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[home]
discover = ["mdns:eth0", "dns-sd:cluster.example"]
agents = ["pi-old:7871"]
dns-server = "192.168.1.1"

[k3s]
discover = ["srv:_skelpi._tcp.skelpi.pis.svc.cluster.local"]
"#;

    #[test]
    fn a_pool_mixes_sources_and_agents() {
        let home = parse(FILE, "home").unwrap();
        assert_eq!(
            home.sources,
            vec![
                Source::Mdns(Some("eth0".into())),
                Source::DnsSd("cluster.example".into()),
                Source::Agents(vec!["pi-old:7871".into()]),
            ]
        );
        assert_eq!(home.dns_server, Some("192.168.1.1:53".parse().unwrap()));
    }

    #[test]
    fn errors_name_the_line_or_the_pools_there_are() {
        let bad = "[home]\ndiscover = [\"mdns\"]\nagent = [\"pi1\"]\n";
        let Err(Parse::Syntax(m)) = parse(bad, "home") else {
            panic!("a typo is an error")
        };
        assert!(
            m.starts_with("line 3, column 1: unknown field `agent`"),
            "{m}"
        );
        assert_eq!(
            parse(FILE, "office"),
            Err(Parse::Unknown("home, k3s".into()))
        );
        let Err(Parse::Bad(m)) = parse("[x]\ndiscover = [\"consul:a\"]\n", "x") else {
            panic!("a bad source is an error")
        };
        assert!(m.starts_with("line 2: "), "{m}");
        assert!(m.contains("not a source of agents"), "{m}");
        let file = "[x]\nagents = [\n  \"pi1\",\n  \"pi2:http\",\n]\n";
        let Err(Parse::Bad(m)) = parse(file, "x") else {
            panic!("a bad agent address is an error")
        };
        assert!(m.starts_with("line 4: agent \"pi2:http\""), "{m}");
        assert!(m.contains("its port \"http\" is not a number"), "{m}");
        let Err(Parse::Bad(m)) = parse("[x]\nagents = [\"pi 1\"]\n", "x") else {
            panic!("a name with a space is an error")
        };
        assert!(m.starts_with("line 2: agent \"pi 1\""), "{m}");
        let Err(Parse::Bad(m)) = parse("[x]\nagents = [\"a\"]\ndns-server = \"dns\"\n", "x") else {
            panic!("a server by name is an error")
        };
        assert!(m.starts_with("line 3: "), "{m}");
        for good in [
            "pi1",
            "pi1:7871",
            "proj_agent_1.lab.",
            "10.0.0.9",
            "10.0.0.9:7871",
            "[fd00::9]:7871",
            "[fd00::9]",
            "fd00::9",
        ] {
            assert_eq!(check_agent(good), Ok(()), "{good}");
        }
        for (bad, says) in [
            ("fd00::9:7871x", "written [address]:port"),
            ("[fd00::9]:http", "its port \"http\""),
            ("[10.0.0.9]", "not an IPv6 address"),
            ("[fd00::9", "without its ]"),
            ("pi..lab", "neither an IP address nor a host name"),
            ("pi 1", "neither an IP address nor a host name"),
            ("[fe80::1%eth0]:7871", "scoped IPv6 address"),
            ("fe80::1%eth0", "scoped IPv6 address"),
        ] {
            let e = check_agent(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let Err(Parse::Bad(m)) = parse("[x]\n", "x") else {
            panic!("an empty pool is an error")
        };
        assert!(m.contains("names no agents and no source"), "{m}");
    }

    #[test]
    fn a_key_file_is_the_pool_files_neighbour_or_under_home() {
        let pools = Path::new("/etc/skelpi/pools.toml");
        assert_eq!(
            beside(pools, Path::new("home.key")),
            PathBuf::from("/etc/skelpi/home.key")
        );
        assert_eq!(
            beside(pools, Path::new("/k/home.key")),
            PathBuf::from("/k/home.key")
        );
        if let Some(home) = std::env::var_os("HOME") {
            let want = PathBuf::from(home).join(".config/skelpi/home.key");
            assert_eq!(beside(pools, Path::new("~/.config/skelpi/home.key")), want);
        }
    }

    #[test]
    fn the_file_is_found_as_the_key_is() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        assert_eq!(
            path_from(env(&[("SKELPI_POOLS_FILE", "/p.toml"), ("HOME", "/h")])),
            PathBuf::from("/p.toml")
        );
        assert_eq!(
            path_from(env(&[("HOME", "/h")])),
            PathBuf::from("/h/.config/skelpi/pools.toml")
        );
    }
}
