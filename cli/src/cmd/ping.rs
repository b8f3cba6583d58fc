//! `skelpi ping`: each agent's small-message round-trip time, as a table or
//! JSON.

use serde::Serialize;
use skelpi::client::AgentConn;
use std::time::Duration;

/// One agent's round trips.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Its name.
    pub agent: String,
    /// Its address.
    pub address: String,
    /// Pings sent.
    pub pings: usize,
    /// Shortest round trip, microseconds.
    pub min_us: f64,
    /// Median round trip, microseconds.
    pub median_us: f64,
    /// Longest round trip, microseconds.
    pub max_us: f64,
}

impl Row {
    /// The row of `agent`, whose round trips took `rtts` (at least one).
    pub fn new(agent: &AgentConn, rtts: &[Duration]) -> Row {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        Row {
            agent: agent.info().name.clone(),
            address: agent.addr().to_string(),
            pings: rtts.len(),
            min_us: us(skelpi::stats::quantile(rtts, 0.0)),
            median_us: us(skelpi::stats::median(rtts)),
            max_us: us(skelpi::stats::quantile(rtts, 1.0)),
        }
    }
}

/// Prints `rows` as a table, or as a JSON array if `json`.
pub fn print(rows: &[Row], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rows)?);
        return Ok(());
    }
    println!(
        "{:<16} {:<22} {:>10} {:>10} {:>10}",
        "agent", "address", "min", "median", "max"
    );
    let time = |us: f64| format!("{:.1?}", Duration::from_secs_f64(us / 1e6));
    for r in rows {
        println!(
            "{:<16} {:<22} {:>10} {:>10} {:>10}",
            r.agent,
            r.address,
            time(r.min_us),
            time(r.median_us),
            time(r.max_us)
        );
    }
    Ok(())
}
