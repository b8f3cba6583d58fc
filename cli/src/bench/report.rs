//! Rendering benchmark reports: an aligned table for people, CSV and JSON
//! for tools.

use super::farm::FarmReport;
use super::pipeline::PipelineReport;
use super::pmap::PmapReport;
use super::roll::RollReport;
use super::rtt::RttReport;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// Renders the RTT report as a table like the seed's.
pub fn rtt_table(r: &RttReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "RTT: {} — transport {}, median, fastest and p99 of {} repeats (ping: of all pings)",
        r.origin, r.transport, r.repeats
    );
    let _ = writeln!(
        s,
        "{:<12} {:<6} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9} {:>6} {:>10} {:>6}",
        "agent",
        "data",
        "size",
        "payload",
        "wire out",
        "wire in",
        "RTT",
        "min",
        "p99",
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
            "{:<12} {:<6} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9.1} {:>6} {:>10} {:>6}",
            row.agent,
            row.data,
            size,
            bytes(row.payload_bytes),
            bytes(row.wire_sent),
            bytes(row.wire_received),
            secs(row.rtt_s),
            secs(row.rtt_min_s),
            secs(row.rtt_p99_s),
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
    if r.rows
        .iter()
        .any(|row| row.link_util.is_some_and(|u| u > 1.0))
    {
        // An RTT carries both directions one after the other: on a link of
        // --link-mbps, util cannot pass 100%.
        s.push_str(
            "util above 100%: those bytes crossed faster than --link-mbps allows, so the link is \
             faster than stated, or a shaper let a burst through (tc tbf passes a bucket's worth \
             at once: small messages ride it).\n",
        );
    }
    s
}

/// Writes rows (of any report) as CSV with a header line; measured
/// figures with 6 significant digits, without float noise (0.3, not
/// 0.30000000000000004).
pub fn write_csv<T: Serialize>(rows: &[T], path: &Path) -> Result<(), csv::Error> {
    let mut raw = csv::Writer::from_writer(Vec::new());
    for row in rows {
        raw.serialize(row)?;
    }
    let raw = raw.into_inner().map_err(|e| e.into_error())?;
    let mut out = csv::Writer::from_path(path)?;
    for record in csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(&raw[..])
        .records()
    {
        out.write_record(record?.iter().map(|f| tidy(f).into_owned()))?;
    }
    out.flush()?;
    Ok(())
}

/// A CSV field: a float with a fraction to 6 significant digits
/// (trailing zeros dropped); anything else as it is.
fn tidy(field: &str) -> std::borrow::Cow<'_, str> {
    let is_float = field.contains(['.', 'e', 'E']);
    match field.parse::<f64>() {
        Ok(x) if is_float && x.is_finite() && x != 0.0 => {
            let magnitude = x.abs().log10().floor() as i32;
            let decimals = (5 - magnitude).clamp(0, 15) as usize;
            let text = format!("{x:.decimals$}");
            let text = if text.contains('.') {
                text.trim_end_matches('0').trim_end_matches('.').to_owned()
            } else {
                text
            };
            text.into()
        }
        _ => field.into(),
    }
}

/// Renders the pmap report like the seed's speedup table.
pub fn pmap_table(r: &PmapReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "pmap: {} — D = {} floats, erf applied C = {} times, median of {} repeats",
        r.origin, r.d, r.c, r.repeats
    );
    let _ = writeln!(
        s,
        "sequential (one call over all D, this process): {}",
        secs(r.sequential_s)
    );
    let _ = writeln!(
        s,
        "{:>7} {:>8} {:>7} {:>10} {:>8} {:>10} {:>8} {:>10}",
        "agents", "workers", "chunks", "time", "speedup", "efficiency", "threads", "vs threads"
    );
    for row in &r.rows {
        let _ = writeln!(
            s,
            "{:>7} {:>8} {:>7} {:>10} {:>8.2} {:>9.0}% {:>8.2} {:>10.2}",
            row.agents,
            row.workers,
            row.chunks,
            secs(row.time_s),
            row.speedup,
            row.efficiency * 100.0,
            row.threads_speedup,
            row.vs_threads
        );
    }
    s.push_str("speedup: median over repeats of sequential time / pmap time, the sequential run timed just before\neach pmap; efficiency: speedup per worker thread; threads: the same chunks on as many threads in\nthis process (the machine's own parallel speedup); vs threads: speedup / threads.\n");
    if let Some(row) = r.rows.iter().find(|row| row.efficiency > 1.0) {
        let _ = writeln!(
            s,
            "efficiency above 100% ({} workers): the workers ran their chunks faster than this \
             process ran one call over all D. Chunks stay in cache, and the two runs are timed \
             apart, so a few percent either way is noise.",
            row.workers
        );
    }
    s
}

/// Renders the farm report.
pub fn farm_table(r: &FarmReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "farm: {} — {}, {} workers, {} tasks of {}, median of {} repeats",
        r.origin,
        skelpi::pool::agents(r.agents),
        r.workers,
        r.tasks,
        r.kernel,
        r.repeats
    );
    let _ = writeln!(
        s,
        "{:>14} {:>12} {:>20} {:>14}",
        "farm tasks/s", "µs per task", "one-at-a-time tasks/s", "vs one-at-a-time"
    );
    let _ = writeln!(
        s,
        "{:>14.0} {:>12.1} {:>20.0} {:>13.1}x",
        r.farm_tasks_per_s, r.farm_us_per_task, r.sequential_tasks_per_s, r.vs_sequential
    );
    if let (Some(traced), Some(cost)) = (r.traced_tasks_per_s, r.trace_cost) {
        let _ = writeln!(
            s,
            "traced farm: {traced:.0} tasks/s, tracing costs {:+.1}% of the time per task",
            100.0 * cost
        );
    }
    if let (Some(watched), Some(cost)) = (r.watched_tasks_per_s, r.watch_cost) {
        let _ = writeln!(
            s,
            "watched farm (as skelpi top watches, 10x its rate): {watched:.0} tasks/s, \
             watching costs {:+.1}% of the time per task",
            100.0 * cost
        );
    }
    s
}

/// Renders the roll report: per pool size, the roll against raw TCP and
/// the farm's throughput during it against before it.
pub fn roll_table(r: &RollReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "roll: {} — {}, a farm of {} ms tasks on all of them during each roll",
        r.origin,
        skelpi::pool::agents(r.pool),
        r.task_ms
    );
    let _ = writeln!(
        s,
        "{:>6} {:>7} {:>7} {:>9} {:>7} {:>9} {:>14} {:>15} {:>12}",
        "rolled",
        "MB each",
        "roll s",
        "raw TCP s",
        "vs raw",
        "restart s",
        "farm tasks/s",
        "during raw TCP",
        "during roll"
    );
    for row in &r.rows {
        let _ = writeln!(
            s,
            "{:>6} {:>7.1} {:>7.2} {:>9.2} {:>6.1}x {:>9.2} {:>14.0} {:>14.0}% {:>11.0}%",
            row.agents,
            row.binary_bytes as f64 / 1e6,
            row.roll_s,
            row.raw_copy_s,
            row.ratio,
            row.restart_s,
            row.before_tasks_per_s,
            100.0 * row.during_raw_fraction,
            100.0 * row.during_fraction
        );
    }
    let _ = writeln!(
        s,
        "farm tasks/s: before; during: the farm's throughput then, as a share of before"
    );
    s
}

/// Renders the pipeline report like the seed's Ts / Ta / rho table.
pub fn pipeline_table(r: &PipelineReport) -> String {
    let mut s = String::new();
    let feed = r.interval_s.map_or("as fast as possible".to_owned(), |t| {
        format!("one every {}", secs(t))
    });
    let _ = writeln!(
        s,
        "pipeline: {} — {} matrices of {}x{}, fed {feed}",
        r.origin, r.items, r.size, r.size
    );
    let _ = writeln!(
        s,
        "{:>5} {:<26} {:<12} {:>10} {:>10} {:>6}",
        "stage", "kernel", "agent", "Ts", "Ta", "rho"
    );
    for st in &r.stages {
        let _ = writeln!(
            s,
            "{:>5} {:<26} {:<12} {:>10} {:>10} {:>6.2}",
            st.stage,
            st.kernel,
            st.agent,
            secs(st.ts_s),
            secs(st.ta_s),
            st.rho
        );
    }
    let _ = writeln!(
        s,
        "throughput {:.1} items/s; model 1/max(Ts) {:.1} items/s; measured/model {:.2}; wall {}",
        r.throughput,
        r.model_throughput,
        r.vs_model,
        secs(r.wall_s)
    );
    if let Some(st) = r.stages.iter().find(|st| st.rho > 1.0) {
        let _ = writeln!(
            s,
            "rho above 1 (stage {}): items reached it faster than it served them. Its inbox \
             filled up at the start, before it set the pace, so their mean spacing Ta is a \
             little under Ts: it is the bottleneck, busy throughout.",
            st.stage
        );
    }
    s
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

#[cfg(test)]
mod tidy_tests {
    use super::tidy;

    #[test]
    fn csv_figures_carry_no_float_noise() {
        assert_eq!(tidy(&(0.1f64 + 0.2).to_string()), "0.3");
        assert_eq!(tidy("1234.56789012"), "1234.57");
        assert_eq!(tidy("0.000123456789"), "0.000123457");
        assert_eq!(tidy("42"), "42");
        assert_eq!(tidy("name"), "name");
        assert_eq!(tidy("2.5"), "2.5");
    }
}
