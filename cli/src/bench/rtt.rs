//! The seed's first table: round-trip times of lists and matrices of
//! floats sent to every agent's echo role and back, plus small-message
//! (ping) latency.
//!
//! Inputs are random (seeded), so no encoding can shrink them; every echo is
//! checked bit for bit outside the timed region. Wire bytes are counted on
//! the socket, framing and encryption included.

use indicatif::ProgressBar;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use skelpi::client::ClientError;
use skelpi::cluster::Cluster;
use skelpi::stats::{median, quantile};
use skelpi_proto::Shape;
use std::time::Duration;

/// What to measure.
#[derive(Debug, Clone)]
pub struct RttOptions {
    /// List lengths (floats).
    pub lists: Vec<usize>,
    /// Matrix sizes D (D×D floats).
    pub matrices: Vec<usize>,
    /// Timed repeats per size (after one untimed warm-up); at least 1.
    pub repeats: usize,
    /// Pings per agent for the small-message row (0: none).
    pub pings: usize,
    /// Link speed for the utilisation column, Mb/s.
    pub link_mbps: Option<f64>,
    /// Also measure raw TCP to each agent's raw echo socket, for the ratio
    /// column.
    pub baseline: bool,
    /// Seed of the random inputs.
    pub seed: u64,
    /// Floats per echo chunk (`None`: the protocol's largest).
    pub chunk: Option<usize>,
}

impl Default for RttOptions {
    fn default() -> Self {
        RttOptions {
            lists: vec![1_000, 100_000, 1_000_000, 1_500_000],
            matrices: vec![50, 100, 150, 200, 300, 1000, 2000],
            repeats: 5,
            pings: 1000,
            link_mbps: None,
            baseline: true,
            seed: 2010,
            chunk: None,
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct RttRow {
    /// Agent name.
    pub agent: String,
    /// `ping`, `list` or `matrix`.
    pub data: &'static str,
    /// N for a list, D for a D×D matrix, 0 for ping.
    pub size: u64,
    /// Payload bytes each way (8 per float; 0 for ping).
    pub payload_bytes: u64,
    /// Bytes written to the socket per round trip, framing and crypto included.
    pub wire_sent: u64,
    /// Bytes read from the socket per round trip.
    pub wire_received: u64,
    /// Median round-trip time, seconds (ping: p50 over all pings).
    pub rtt_s: f64,
    /// Fastest round trip, seconds.
    pub rtt_min_s: f64,
    /// 99th percentile of the round trips, seconds (of a few repeats:
    /// the slowest).
    pub rtt_p99_s: f64,
    /// Payload both ways over the median RTT, MB/s (10^6 bytes).
    pub mb_per_s: f64,
    /// Busier direction's wire bits over the RTT against `--link-mbps`.
    pub link_util: Option<f64>,
    /// Median RTT of raw TCP moving the same payload, seconds.
    pub raw_rtt_s: Option<f64>,
    /// raw RTT / skelpi RTT: the fraction of raw TCP's speed achieved
    /// (for arrays, the median of per-repeat ratios).
    pub vs_raw: Option<f64>,
}

/// The whole table.
#[derive(Debug, Clone, Serialize)]
pub struct RttReport {
    /// Where the agents came from.
    pub origin: String,
    /// Transport of the connections.
    pub transport: String,
    /// Timed repeats per size.
    pub repeats: usize,
    /// The rows, agent by agent.
    pub rows: Vec<RttRow>,
}

/// Number of progress steps [`run`] will report for `agents` agents.
pub fn steps(opts: &RttOptions, agents: usize) -> u64 {
    let sizes = opts.lists.len() + opts.matrices.len();
    (agents * (sizes * (opts.repeats + 1) + usize::from(opts.pings > 0))) as u64
}

/// Runs the round-trip table on every agent of `cluster`, one agent at a
/// time (so agents do not compete for the master's link).
pub async fn run(
    cluster: &mut Cluster,
    origin: &str,
    opts: &RttOptions,
    progress: &ProgressBar,
) -> Result<RttReport, ClientError> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    let mut rows = Vec::new();
    let mut out = Vec::new();
    let transport = cluster
        .agents()
        .first()
        .map_or("none", |a| a.transport())
        .to_owned();
    let mut shapes: Vec<(Shape, &'static str, u64)> = Vec::new();
    shapes.extend(
        opts.lists
            .iter()
            .map(|&n| (Shape::List(n as u64), "list", n as u64)),
    );
    shapes.extend(opts.matrices.iter().map(|&d| {
        (
            Shape::Matrix {
                rows: d as u64,
                cols: d as u64,
            },
            "matrix",
            d as u64,
        )
    }));
    for agent in cluster.agents_mut() {
        if let Some(chunk) = opts.chunk {
            agent.set_echo_chunk(chunk);
        }
        let name = agent.info().name.clone();
        let mut raw = if opts.baseline {
            Some(super::baseline::RawClient::open(agent).await?)
        } else {
            None
        };
        progress.set_message(format!("{name}: ping"));
        if opts.pings > 0 {
            // Each skelpi ping is followed by a raw ping of the same wire
            // size, so drift in CPU frequency or load hits both alike.
            let (s0, r0) = agent.wire_bytes();
            agent.ping().await?;
            let (s1, r1) = agent.wire_bytes();
            let wire = (s1 - s0, r1 - r0);
            let msg = vec![0x5a; wire.0 as usize];
            let mut back = vec![0; msg.len()];
            let mut rtts = Vec::with_capacity(opts.pings);
            let mut raw_rtts = Vec::with_capacity(opts.pings);
            for _ in 0..opts.pings {
                rtts.push(agent.ping().await?);
                if let Some(client) = raw.as_mut() {
                    let t = client
                        .echo(&msg, &mut back)
                        .await
                        .map_err(|e| raw_err(agent, e))?;
                    raw_rtts.push(t);
                }
            }
            rows.push(row(
                &name,
                "ping",
                0,
                0,
                wire,
                spread(&rtts),
                raw.as_ref().map(|_| median(&raw_rtts)),
                opts.link_mbps,
            ));
            progress.inc(1);
        }
        for &(shape, data_kind, size) in &shapes {
            progress.set_message(format!("{name}: {data_kind} {size}"));
            let n = shape.elements().unwrap_or(0) as usize;
            let data: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0e6..1.0e6)).collect();
            let bytes = skelpi_proto::bulk::f64_bytes(&data);
            let mut back = vec![0u8; bytes.len()];
            let mut rtts = Vec::with_capacity(opts.repeats);
            let mut raw_rtts = Vec::with_capacity(opts.repeats);
            let mut ratios = Vec::with_capacity(opts.repeats);
            let (mut s0, mut r0) = (0, 0);
            // Repeat 0 warms both paths up and is not timed. Each skelpi
            // round trip is followed by a raw one of the same bytes, and
            // both echoes are checked outside the timed region.
            for rep in 0..=opts.repeats {
                if rep == 1 {
                    (s0, r0) = agent.wire_bytes();
                }
                let start = std::time::Instant::now();
                agent.echo(shape, &data, &mut out).await?;
                let rtt = start.elapsed();
                std::hint::black_box(&out);
                check_echo(agent.addr(), &data, &out)?;
                let raw_rtt = match raw.as_mut() {
                    Some(client) => {
                        let t = client
                            .echo(bytes, &mut back)
                            .await
                            .map_err(|e| raw_err(agent, e))?;
                        std::hint::black_box(&back);
                        if back != bytes {
                            return Err(raw_err(
                                agent,
                                std::io::Error::other("raw echo came back different"),
                            ));
                        }
                        Some(t)
                    }
                    None => None,
                };
                if rep > 0 {
                    rtts.push(rtt);
                    if let Some(t) = raw_rtt {
                        raw_rtts.push(t);
                        ratios.push(t.as_secs_f64() / rtt.as_secs_f64().max(1e-9));
                    }
                }
                progress.inc(1);
            }
            let (s1, r1) = agent.wire_bytes();
            let reps = opts.repeats as u64;
            let mut r = row(
                &name,
                data_kind,
                size,
                8 * n as u64,
                ((s1 - s0) / reps, (r1 - r0) / reps),
                spread(&rtts),
                raw.as_ref().map(|_| median(&raw_rtts)),
                opts.link_mbps,
            );
            r.vs_raw = raw.as_ref().map(|_| median_f64(&mut ratios));
            rows.push(r);
        }
    }
    Ok(RttReport {
        origin: origin.to_owned(),
        transport,
        repeats: opts.repeats,
        rows,
    })
}

/// The median, fastest and 99th percentile of `rtts`.
fn spread(rtts: &[Duration]) -> (Duration, Duration, Duration) {
    let min = rtts.iter().min().copied().unwrap_or_default();
    (median(rtts), min, quantile(rtts, 0.99))
}

#[allow(clippy::too_many_arguments)]
fn row(
    agent: &str,
    data: &'static str,
    size: u64,
    payload: u64,
    (wire_sent, wire_received): (u64, u64),
    (rtt, min, p99): (Duration, Duration, Duration),
    raw: Option<Duration>,
    link_mbps: Option<f64>,
) -> RttRow {
    let secs = rtt.as_secs_f64().max(1e-9);
    RttRow {
        agent: agent.to_owned(),
        data,
        size,
        payload_bytes: payload,
        wire_sent,
        wire_received,
        rtt_s: rtt.as_secs_f64(),
        rtt_min_s: min.as_secs_f64(),
        rtt_p99_s: p99.as_secs_f64(),
        mb_per_s: 2.0 * payload as f64 / secs / 1e6,
        link_util: link_mbps
            .map(|mbps| wire_sent.max(wire_received) as f64 * 8.0 / secs / (mbps * 1e6)),
        raw_rtt_s: raw.map(|r| r.as_secs_f64()),
        vs_raw: raw.map(|r| r.as_secs_f64() / secs),
    }
}

fn check_echo(addr: std::net::SocketAddr, sent: &[f64], got: &[f64]) -> Result<(), ClientError> {
    let same = sent.len() == got.len()
        && sent
            .iter()
            .zip(got)
            .all(|(a, b)| a.to_bits() == b.to_bits());
    if same {
        Ok(())
    } else {
        Err(ClientError::Protocol {
            addr,
            what: "echo came back different from what was sent".into(),
        })
    }
}

fn raw_err(agent: &skelpi::client::AgentConn, source: std::io::Error) -> ClientError {
    ClientError::Baseline {
        addr: agent.addr(),
        source,
    }
}

/// The median of per-repeat ratios (0 when there are none).
fn median_f64(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
