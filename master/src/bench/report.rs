//! Rendering benchmark reports: an aligned table for people, CSV and JSON
//! for tools.

use super::rtt::RttReport;
use std::fmt::Write as _;
use std::path::Path;

/// Renders the RTT report as a table like the seed's.
pub fn rtt_table(r: &RttReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "RTT: {} — transport {}, median of {} repeats (ping: p50 / p99 of all pings)",
        r.origin, r.transport, r.repeats
    );
    let _ = writeln!(
        s,
        "{:<12} {:<6} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9} {:>6} {:>10} {:>6}",
        "agent",
        "data",
        "size",
        "payload",
        "wire out",
        "wire in",
        "RTT",
        "min/p99",
        "MB/s",
        "util",
        "raw RTT",
        "vs raw"
    );
    for row in &r.rows {
        let size = if row.data == "ping" {
            "-".to_owned()
        } else {
            row.size.to_string()
        };
        let _ = writeln!(
            s,
            "{:<12} {:<6} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9.1} {:>6} {:>10} {:>6}",
            row.agent,
            row.data,
            size,
            bytes(row.payload_bytes),
            bytes(row.wire_sent),
            bytes(row.wire_received),
            secs(row.rtt_s),
            secs(row.rtt_spread_s),
            row.mb_per_s,
            row.link_util
                .map_or("-".into(), |u| format!("{:.0}%", u * 100.0)),
            row.raw_rtt_s.map_or("-".into(), secs),
            row.vs_raw.map_or("-".into(), |v| format!("{v:.2}")),
        );
    }
    s.push_str(
        "MB/s counts the payload both ways; util is the busier direction's wire bits over the RTT\n\
         against --link-mbps; vs raw is raw-TCP RTT / skelpi RTT for the same bytes, sent in the\n\
         same run to the same agent's raw echo socket (1.00 = as fast as raw TCP).\n",
    );
    s
}

/// Writes the rows as CSV.
pub fn write_csv(r: &RttReport, path: &Path) -> Result<(), csv::Error> {
    let mut w = csv::Writer::from_path(path)?;
    for row in &r.rows {
        w.serialize(row)?;
    }
    w.flush()?;
    Ok(())
}

fn bytes(n: u64) -> String {
    match n {
        0 => "-".into(),
        n if n >= 1_000_000 => format!("{:.2} MB", n as f64 / 1e6),
        n if n >= 10_000 => format!("{:.1} KB", n as f64 / 1e3),
        n => format!("{n} B"),
    }
}

fn secs(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.3} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}
