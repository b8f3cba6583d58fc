//! `skelpi health`: each board's model, load, memory, temperature and
//! firmware throttling, as its agent reports them.

use skelpi::client::AgentConn;
use skelpi_proto::health::{HealthReport, Throttled};

/// One agent's row.
#[derive(Debug)]
pub struct Row {
    name: String,
    address: String,
    report: HealthReport,
}

impl Row {
    /// A row of `report`, from the agent `name` at `address`.
    pub fn new(name: &str, address: &str, report: HealthReport) -> Row {
        Row {
            name: name.to_owned(),
            address: address.to_owned(),
            report,
        }
    }

    /// Asks `agent` for its report.
    pub async fn ask(agent: &mut AgentConn) -> anyhow::Result<Row> {
        let report = agent.health().await?;
        Ok(Row {
            name: agent.info().name.clone(),
            address: agent.addr().to_string(),
            report,
        })
    }
}

/// Prints the rows as a table, or as JSON (absent figures as null).
pub fn print(rows: &[Row], json: bool) -> anyhow::Result<()> {
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|r| {
                let h = &r.report;
                serde_json::json!({
                    "name": r.name, "address": r.address, "model": h.model,
                    "version": h.version, "uptime_s": h.uptime_s,
                    "agent_uptime_s": h.agent_uptime_s, "workers": h.workers,
                    "busy_workers": h.busy_workers, "queued_calls": h.queued_calls,
                    "masters": h.masters, "load_1m": h.load_1m,
                    "memory_total": h.memory_total, "memory_available": h.memory_available,
                    "cpu_temp_c": h.cpu_temp_c, "throttled": h.throttled,
                    "throttling": h.throttled.map(|t| Throttled(t).describe()),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{:<16} {:<22} {:<28} {:>8} {:>6} {:>6} {:>13} {:>6}  firmware",
        "name", "address", "model", "version", "busy", "load", "memory free", "temp"
    );
    for r in rows {
        let h = &r.report;
        let dash = || "-".to_owned();
        let memory = match (h.memory_available, h.memory_total) {
            (Some(a), Some(t)) => format!(
                "{:.1}/{:.1} G",
                a as f64 / f64::from(1 << 30),
                t as f64 / f64::from(1 << 30)
            ),
            _ => dash(),
        };
        let firmware = match h.throttled.map(Throttled) {
            None => "-".to_owned(),
            Some(t) if t.describe().is_empty() => "ok".to_owned(),
            Some(t) => t.describe().join(", "),
        };
        println!(
            "{:<16} {:<22} {:<28} {:>8} {:>6} {:>6} {:>13} {:>6}  {firmware}",
            r.name,
            r.address,
            skelpi_proto::text::clip(h.model.as_deref().unwrap_or("-"), 28),
            h.version,
            format!("{}/{}", h.busy_workers, h.workers),
            h.load_1m.map_or_else(dash, |l| format!("{l:.2}")),
            memory,
            h.cpu_temp_c.map_or_else(dash, |t| format!("{t:.0}°C")),
        );
    }
    Ok(())
}
