//! `skelpi discover` and `skelpi dns-records`: the agents the sources find,
//! as a table (with where each came from), and as DNS records for an
//! operator's server.

use clap::{Args, ValueEnum};
use skelpi::dnssd;
use skelpi::sources::{FindOptions, Finding, Found, Source, find};
use std::net::SocketAddr;
use std::time::Duration;

/// Where to look, for both commands.
#[derive(Debug, Clone, Args)]
pub struct FindArgs {
    /// How long to look (each source).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Stop browsing mDNS as soon as N agents answered (the time it took
    /// is then how long discovery of N agents takes).
    #[arg(long, value_name = "N")]
    pub expect: Option<usize>,
    /// Browse mDNS on this network interface only (e.g. eth0, lo); with
    /// --discover, write `mdns:NAME` among the sources instead.
    #[arg(long, value_name = "NAME", conflicts_with = "discover")]
    pub interface: Option<String>,
    /// Where to look (repeatable, or comma-separated): `mdns` (the
    /// default), `mdns:INTERFACE`, `dns-sd:DOMAIN` (unicast DNS-SD on a DNS
    /// server) or `srv:NAME` (SRV records, e.g. a Kubernetes headless
    /// Service's `_skelpi._tcp.skelpi.NAMESPACE.svc.cluster.local`).
    #[arg(long, value_name = "SOURCE", value_delimiter = ',')]
    pub discover: Vec<Source>,
    /// The DNS server of `dns-sd:` and `srv:` sources, `IP[:PORT]`
    /// [default: the nameservers of /etc/resolv.conf, in turn].
    #[arg(long, value_name = "ADDR", value_parser = dnssd::parse_server)]
    pub dns_server: Option<SocketAddr>,
    /// Look where the pool NAME of the pool file says (its sources and
    /// agents; see --pools-file).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["discover", "interface"])]
    pub pool: Option<String>,
    /// The pool file [default: $SKELPI_POOLS_FILE or
    /// ~/.config/skelpi/pools.toml].
    #[arg(long, value_name = "PATH", requires = "pool")]
    pub pools_file: Option<std::path::PathBuf>,
}

impl FindArgs {
    /// Asks the sources (mDNS by default, or a named pool's), saying each
    /// problem on stderr.
    pub fn find(&self) -> Result<Finding, crate::pools::PoolsError> {
        let mut dns_server = self.dns_server;
        let sources = match (&self.pool, self.discover.as_slice()) {
            (Some(name), _) => {
                let path = self
                    .pools_file
                    .clone()
                    .unwrap_or_else(crate::pools::default_path);
                let pool = crate::pools::load(&path, name)?;
                dns_server = dns_server.or(pool.dns_server);
                pool.sources
            }
            (None, []) => vec![Source::Mdns(self.interface.clone())],
            (None, given) => given.to_vec(),
        };
        let opts = FindOptions {
            timeout: self.timeout,
            dns_server,
            expect: self.expect,
        };
        let finding = smol::block_on(find(&sources, &opts));
        for problem in &finding.problems {
            eprintln!("skelpi: {problem}");
        }
        Ok(finding)
    }
}

/// `skelpi discover`: a table, or JSON, of the agents found. Nothing
/// found where a source failed (not merely found nobody) is an error.
pub fn discover(args: &FindArgs, json: bool) -> anyhow::Result<()> {
    let finding = args.find()?;
    let found = finding.found;
    let failed = finding.failed;
    if found.is_empty() && failed > 0 {
        if json {
            println!("[]");
        }
        anyhow::bail!(
            "no agents found: {} (see above)",
            match failed {
                1 => "a source failed".to_owned(),
                n => format!("{n} sources failed"),
            }
        );
    }
    print_found(args, &found, json)
}

/// The agents found, as a table or JSON.
fn print_found(args: &FindArgs, found: &[Found], json: bool) -> anyhow::Result<()> {
    if json {
        let v: Vec<_> = found.iter().map(json_row).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if found.is_empty() {
        println!("no agents found within {:?}", args.timeout);
        return Ok(());
    }
    println!(
        "{:<16} {:<16} {:<22} {:<8} {:>5} {:>9} {:>8} {:>5}  source",
        "id", "name", "address", "arch", "cores", "memory", "version", "proto"
    );
    for f in found {
        let sources = f.sources.join(",");
        match &f.agent {
            Some(a) => {
                let version = a.info.build.as_ref().map_or("?", |b| b.version.as_str());
                println!(
                    "{:<16} {:<16} {:<22} {:<8} {:>5} {:>7.1} G {:>8} {:>5}  {sources}",
                    a.info.id,
                    a.info.name,
                    f.addr.to_string(),
                    a.info.arch,
                    a.info.cores,
                    a.info.memory_bytes as f64 / (1u64 << 30) as f64,
                    version,
                    a.info.version
                );
            }
            // An SRV record says where, not who: the hello will.
            None => println!(
                "{:<16} {:<16} {:<22} {:<8} {:>5} {:>9} {:>8} {:>5}  {sources}",
                "?",
                f.target.as_deref().unwrap_or("?").trim_end_matches('.'),
                f.addr.to_string(),
                "?",
                "?",
                "?",
                "?",
                "?"
            ),
        }
    }
    Ok(())
}

fn json_row(f: &Found) -> serde_json::Value {
    match &f.agent {
        Some(a) => serde_json::json!({
            "id": a.info.id, "name": a.info.name, "address": f.addr.to_string(),
            "addresses": a.addrs, "arch": a.info.arch, "cores": a.info.cores,
            "memory_bytes": a.info.memory_bytes, "protocol": a.info.version,
            "version": a.info.build.as_ref().map(|b| b.version.as_str()),
            "sources": f.sources,
        }),
        None => serde_json::json!({
            "address": f.addr.to_string(), "target": f.target, "sources": f.sources,
        }),
    }
}

/// The form of `skelpi dns-records`' lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RecordFormat {
    /// Master-file lines for a zone (BIND, Knot, NSD, PowerDNS...).
    Zone,
    /// dnsmasq options (`ptr-record=`, `srv-host=`, `txt-record=`,
    /// `host-record=`), for dnsmasq.conf.
    Dnsmasq,
}

/// `skelpi dns-records`: the DNS-SD records of the agents found, under
/// `domain`.
pub fn records(args: &FindArgs, domain: &str, format: RecordFormat) -> anyhow::Result<()> {
    let finding = args.find()?;
    let mut agents = Vec::new();
    for f in finding.found {
        match f.agent {
            Some(a) if dnssd::has_routable_address(&a) => agents.push(a),
            Some(a) => eprintln!(
                "skelpi: {} ({}) left out: it announced only loopback or link-local addresses, \
                 which a master elsewhere cannot use",
                a.info.name, f.addr
            ),
            None => eprintln!(
                "skelpi: {} ({}) left out: found by address ({}), it announced nothing to write",
                f.target.as_deref().unwrap_or("?"),
                f.addr,
                f.sources.join(", ")
            ),
        }
    }
    if agents.is_empty() {
        anyhow::bail!("no agents found to write records for (see the lines above)");
    }
    let lines = match format {
        RecordFormat::Zone => dnssd::zone_lines(&agents, domain)?,
        RecordFormat::Dnsmasq => dnssd::dnsmasq_lines(&agents, domain)?,
    };
    let comment = if format == RecordFormat::Zone {
        ";"
    } else {
        "#"
    };
    println!(
        "{comment} skelpi agents under {domain}: {} (browse with --discover dns-sd:{domain})",
        skelpi::pool::agents(agents.len())
    );
    for line in lines {
        println!("{line}");
    }
    Ok(())
}
