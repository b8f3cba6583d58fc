//! `skelpi health`: each board's model, load, memory, temperature and
//! firmware throttling, as its agent reports them; a board that does not
//! answer within [`ASK_TIMEOUT`] is shown down, with why.

use skelpi::client::AgentConn;
use skelpi_proto::health::{HealthReport, Throttled};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

/// How long a board may take to answer before it is shown down.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// A board that was down is tried again at most this often.
pub const RECONNECT_EVERY: Duration = Duration::from_secs(5);

/// One board: its report, or why it is down.
#[derive(Debug, Clone)]
pub struct Row {
    /// Its name.
    pub name: String,
    /// Its address.
    pub address: String,
    /// Its report, or why it did not give one.
    pub state: Result<HealthReport, String>,
}

/// One board's answer in flight: its row, and its connection when made
/// anew.
type Asking<'a> = Pin<Box<dyn Future<Output = (Row, Option<AgentConn>)> + 'a>>;

/// The board's column width for its model.
const MODEL: usize = 36;

/// Asks every agent for its health at once (each within
/// [`ASK_TIMEOUT`]); an agent whose connection failed is connected again
/// first, at most every [`RECONNECT_EVERY`] (`tried` remembers when).
pub async fn ask_all(
    agents: &mut [AgentConn],
    tried: &mut HashMap<SocketAddr, Instant>,
) -> Vec<Row> {
    let now = Instant::now();
    let asks: Vec<Asking<'_>> = agents
        .iter_mut()
        .map(|conn| {
            let retry = conn.is_broken()
                && tried
                    .get(&conn.addr())
                    .is_none_or(|t| now.duration_since(*t) >= RECONNECT_EVERY);
            if retry {
                tried.insert(conn.addr(), now);
            }
            Box::pin(ask(conn, retry)) as Asking<'_>
        })
        .collect();
    let answers = join_all(asks).await;
    let mut rows = Vec::with_capacity(answers.len());
    let mut fresh = Vec::new();
    for (i, (row, again)) in answers.into_iter().enumerate() {
        rows.push(row);
        if let Some(conn) = again {
            fresh.push((i, conn));
        }
    }
    for (i, conn) in fresh {
        tried.remove(&conn.addr());
        agents[i] = conn;
    }
    rows
}

/// The pool options of `health` and `top`: an explicit agent that cannot
/// be reached is shown down, not a reason to show nothing.
pub fn pool_options(
    pool: &super::pool_args::PoolArgs,
) -> Result<skelpi::pool::PoolOptions, crate::pools::PoolsError> {
    let mut opts = pool.options(false)?;
    opts.skip_unreachable = true;
    Ok(opts)
}

/// The rows of boards not reached: down, with why.
pub fn unreachable_rows(unreachable: &[(SocketAddr, String)]) -> Vec<Row> {
    unreachable
        .iter()
        .map(|(addr, why)| Row {
            name: addr.to_string(),
            address: addr.to_string(),
            state: Err(why.clone()),
        })
        .collect()
}

/// One agent's row (and its new connection, when it was made again).
async fn ask(conn: &mut AgentConn, retry: bool) -> (Row, Option<AgentConn>) {
    let (name, address) = (conn.info().name.clone(), conn.addr().to_string());
    let row = |state| Row {
        name: name.clone(),
        address: address.clone(),
        state,
    };
    if conn.is_broken() {
        let why = conn.broken().map(|(w, _)| w.to_owned()).unwrap_or_default();
        if !retry {
            return (row(Err(why)), None);
        }
        return match conn.redial().connect(ASK_TIMEOUT).await {
            Ok(mut again) => {
                again.set_request_timeout(ASK_TIMEOUT);
                let state = again.health().await.map_err(|e| e.to_string());
                (row(state), Some(again))
            }
            Err(_) => (row(Err(why)), None),
        };
    }
    conn.set_request_timeout(ASK_TIMEOUT);
    (row(conn.health().await.map_err(|e| e.to_string())), None)
}

/// A future to run with others in [`join_all`].
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Runs every future at once; their outputs, in order.
pub use skelpi::join::join_all;

/// Prints the rows as a table, or as JSON (absent figures as null; a down
/// board as `"up": false` with its `error`).
pub fn print(rows: &[Row], json: bool) -> anyhow::Result<()> {
    if json {
        let v: Vec<_> = rows.iter().map(json_row).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{:<16} {:<22} {:<MODEL$} {:>8} {:>6} {:>6} {:>13} {:>6}  firmware",
        "name", "address", "model", "version", "busy", "load", "memory free", "temp"
    );
    for r in rows {
        match &r.state {
            Ok(h) => {
                let c = Cells::of(h);
                println!(
                    "{:<16} {:<22} {:<MODEL$} {:>8} {:>6} {:>6} {:>13} {:>6}  {}",
                    r.name,
                    r.address,
                    c.model,
                    h.version,
                    c.busy,
                    c.load,
                    c.memory,
                    c.temp,
                    c.firmware
                );
            }
            Err(why) => println!("{:<16} {:<22} down: {why}", r.name, r.address),
        }
    }
    Ok(())
}

/// One row as JSON (see [`print`]).
pub fn json_row(r: &Row) -> serde_json::Value {
    let Ok(h) = &r.state else {
        let why = r.state.as_ref().err();
        return serde_json::json!({
            "name": r.name, "address": r.address, "up": false, "error": why,
        });
    };
    serde_json::json!({
        "name": r.name, "address": r.address, "up": true, "model": h.model,
        "version": h.version, "uptime_s": h.uptime_s,
        "agent_uptime_s": h.agent_uptime_s, "workers": h.workers,
        "busy_workers": h.busy_workers, "queued_calls": h.queued_calls,
        "sessions": h.sessions, "load_1m": h.load_1m,
        "memory_total": h.memory_total, "memory_available": h.memory_available,
        "cpu_temp_c": h.cpu_temp_c, "throttled": h.throttled,
        "throttling": h.throttled.map(|t| Throttled(t).describe()),
    })
}

/// A report's figures as table cells ("-": absent).
#[derive(Debug)]
pub struct Cells {
    /// Its model, cut to the column.
    pub model: String,
    /// Busy workers of all.
    pub busy: String,
    /// The load average.
    pub load: String,
    /// Free of total memory.
    pub memory: String,
    /// The CPU's temperature.
    pub temp: String,
    /// The firmware's flags in words ("ok": none).
    pub firmware: String,
}

impl Cells {
    /// The cells of `h`.
    pub fn of(h: &HealthReport) -> Cells {
        let dash = || "-".to_owned();
        Cells {
            model: h
                .model
                .as_deref()
                .map_or_else(dash, |m| m.chars().take(MODEL).collect()),
            busy: format!("{}/{}", h.busy_workers, h.workers),
            load: h.load_1m.map_or_else(dash, |l| format!("{l:.2}")),
            memory: match (h.memory_available, h.memory_total) {
                (Some(a), Some(t)) => format!(
                    "{:.1}/{:.1} G",
                    a as f64 / f64::from(1 << 30),
                    t as f64 / f64::from(1 << 30)
                ),
                _ => dash(),
            },
            temp: h.cpu_temp_c.map_or_else(dash, |t| format!("{t:.0}°C")),
            firmware: match h.throttled.map(Throttled) {
                None => dash(),
                Some(t) if t.describe().is_empty() => "ok".to_owned(),
                Some(t) => t.describe().join(", "),
            },
        }
    }
}
