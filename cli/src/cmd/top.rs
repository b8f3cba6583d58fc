//! `skelpi top`: the pool's boards, live in the terminal (ratatui): one
//! row per board with its health (see `skelpi health`), a board that
//! stops answering shown down within the poll bound, and back up once it
//! answers again. `--once` prints one snapshot (`--json` for scripts).

use super::health::{self, Row};
use super::pool_args::PoolArgs;
use anyhow::Context;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row as TableRow, Table, TableState};
use skelpi::cluster::Cluster;
use skelpi::pool;
use skelpi_proto::health::Throttled;
use std::io::IsTerminal;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a board may take to answer one poll before it is shown down.
pub const POLL_TIMEOUT: Duration = Duration::from_secs(2);

/// `skelpi top`'s flags.
#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// The boards.
    #[command(flatten)]
    pub pool: PoolArgs,
    /// How often to ask every board.
    #[arg(long, default_value = "1s", value_name = "DURATION",
          value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Print one snapshot and exit (for scripts; no terminal needed).
    #[arg(long)]
    pub once: bool,
    /// With --once: print JSON.
    #[arg(long, requires = "once")]
    pub json: bool,
}

/// `skelpi top` was run without a terminal to draw on.
#[derive(Debug, thiserror::Error)]
#[error("skelpi top draws on a terminal; in scripts use `skelpi top --once [--json]`")]
pub struct NoTerminal;

/// One board in a snapshot.
#[derive(Debug, Clone)]
pub struct Board {
    /// Its name and address.
    pub name: String,
    /// Its address.
    pub address: String,
    /// Its report, or why it is down.
    pub state: Result<skelpi_proto::health::HealthReport, String>,
}

/// Runs `skelpi top`.
pub fn run(args: &TopArgs) -> anyhow::Result<()> {
    if !args.once && !std::io::stdout().is_terminal() {
        return Err(NoTerminal.into());
    }
    let interval = args.interval.max(Duration::from_millis(100));
    let (tx, rx) = mpsc::sync_channel::<Vec<Board>>(1);
    let opts = args.pool.options(false);
    let once = args.once;
    let poller = std::thread::spawn(move || -> anyhow::Result<()> {
        smol::block_on(async {
            let mut pool = pool::connect(&opts).await?;
            for conn in pool.cluster.agents_mut() {
                conn.set_request_timeout(POLL_TIMEOUT);
            }
            loop {
                let started = Instant::now();
                let snapshot = poll(&mut pool.cluster).await;
                if tx.send(snapshot).is_err() || once {
                    pool.cluster.close().await;
                    return Ok(());
                }
                async_io::Timer::after(interval.saturating_sub(started.elapsed())).await;
            }
        })
    });
    let first = match rx.recv() {
        Ok(snapshot) => snapshot,
        Err(_) => {
            return match poller.join() {
                Ok(result) => result.context("cannot watch the pool"),
                Err(_) => anyhow::bail!("the poller panicked"),
            };
        }
    };
    if once {
        let _ = poller.join();
        return print_once(&first, args.json);
    }
    let drawn = draw_live(first, &rx);
    drop(rx);
    drawn
}

/// Asks every board for its health (connecting again, every few
/// seconds, to those that were down).
async fn poll(cluster: &mut Cluster) -> Vec<Board> {
    cluster.rejoin().await;
    let mut boards = Vec::new();
    for conn in cluster.agents_mut() {
        conn.set_request_timeout(POLL_TIMEOUT);
        let state = match conn.broken() {
            Some((why, _)) => Err(why.to_owned()),
            None => conn.health().await.map_err(|e| e.to_string()),
        };
        boards.push(Board {
            name: conn.info().name.clone(),
            address: conn.addr().to_string(),
            state,
        });
    }
    boards
}

fn print_once(boards: &[Board], json: bool) -> anyhow::Result<()> {
    let up: Vec<Row> = boards
        .iter()
        .filter_map(|b| {
            b.state
                .clone()
                .ok()
                .map(|r| Row::new(&b.name, &b.address, r))
        })
        .collect();
    for b in boards {
        if let Err(why) = &b.state {
            eprintln!("{} ({}) is down: {why}", b.name, b.address);
        }
    }
    health::print(&up, json)
}

/// Which column the rows are sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SortBy {
    Name,
    Busy,
    Load,
    Temp,
}

/// The live view until q, Esc or Ctrl-C.
fn draw_live(first: Vec<Board>, rx: &mpsc::Receiver<Vec<Board>>) -> anyhow::Result<()> {
    let mut terminal = ratatui::init();
    let mut boards = first;
    let mut state = TableState::default().with_selected(Some(0));
    let mut sort = SortBy::Name;
    let mut updated = Instant::now();
    let result = loop {
        sort_boards(&mut boards, sort);
        if let Err(e) = terminal.draw(|f| render(f, &boards, &mut state, sort, updated)) {
            break Err(e.into());
        }
        match event::poll(Duration::from_millis(100)) {
            Ok(true) => match event::read() {
                Ok(Event::Key(key)) if key.kind == KeyEventKind::Press => match key.code {
                    KeyCode::Char('q') | KeyCode::Esc => break Ok(()),
                    KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                        break Ok(());
                    }
                    KeyCode::Down | KeyCode::Char('j') => state.select_next(),
                    KeyCode::Up | KeyCode::Char('k') => state.select_previous(),
                    KeyCode::Char('n') => sort = SortBy::Name,
                    KeyCode::Char('b') => sort = SortBy::Busy,
                    KeyCode::Char('l') => sort = SortBy::Load,
                    KeyCode::Char('t') => sort = SortBy::Temp,
                    _ => {}
                },
                Ok(_) => {}
                Err(e) => break Err(e.into()),
            },
            Ok(false) => {}
            Err(e) => break Err(e.into()),
        }
        match rx.try_recv() {
            Ok(snapshot) => {
                boards = snapshot;
                updated = Instant::now();
            }
            Err(mpsc::TryRecvError::Empty) => {}
            Err(mpsc::TryRecvError::Disconnected) => {
                break Err(anyhow::anyhow!("lost the pool (its poller stopped)"));
            }
        }
    };
    ratatui::restore();
    result
}

fn sort_boards(boards: &mut [Board], sort: SortBy) {
    let key = |b: &Board| -> f64 {
        let Ok(h) = &b.state else {
            return f64::INFINITY;
        };
        match sort {
            SortBy::Name => 0.0,
            SortBy::Busy => -f64::from(h.busy_workers) / f64::from(h.workers.max(1)),
            SortBy::Load => -h.load_1m.unwrap_or(0.0),
            SortBy::Temp => -h.cpu_temp_c.unwrap_or(f64::NEG_INFINITY),
        }
    };
    boards.sort_by(|a, b| key(a).total_cmp(&key(b)).then_with(|| a.name.cmp(&b.name)));
}

fn render(
    f: &mut ratatui::Frame<'_>,
    boards: &[Board],
    state: &mut TableState,
    sort: SortBy,
    updated: Instant,
) {
    let up = boards.iter().filter(|b| b.state.is_ok()).count();
    let [head, table, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(3),
    ])
    .areas(f.area());
    f.render_widget(
        Paragraph::new(format!(
            "skelpi top: {} boards, {up} up, {} down   updated {:.1} s ago   sorted by {sort:?}   \
             q quit  ↑↓ select  n b l t sort",
            boards.len(),
            boards.len() - up,
            updated.elapsed().as_secs_f64()
        )),
        head,
    );
    let dash = || "-".to_owned();
    let rows: Vec<TableRow<'_>> = boards
        .iter()
        .map(|b| match &b.state {
            Ok(h) => TableRow::new(vec![
                b.name.clone(),
                b.address.clone(),
                "up".to_owned(),
                h.model.clone().unwrap_or_else(dash),
                h.version.clone(),
                format!("{}/{}", h.busy_workers, h.workers),
                h.queued_calls.to_string(),
                h.load_1m.map_or_else(dash, |l| format!("{l:.2}")),
                match (h.memory_available, h.memory_total) {
                    (Some(a), Some(t)) => format!(
                        "{:.1}/{:.1} G",
                        a as f64 / f64::from(1 << 30),
                        t as f64 / f64::from(1 << 30)
                    ),
                    _ => dash(),
                },
                h.cpu_temp_c.map_or_else(dash, |t| format!("{t:.0}°C")),
                match h.throttled.map(Throttled) {
                    None => dash(),
                    Some(t) if t.describe().is_empty() => "ok".to_owned(),
                    Some(t) => t.describe().join(", "),
                },
            ]),
            Err(_) => TableRow::new(vec![b.name.clone(), b.address.clone(), "down".to_owned()])
                .style(Style::default().fg(Color::Red)),
        })
        .collect();
    let widths = [
        Constraint::Length(16),
        Constraint::Length(21),
        Constraint::Length(5),
        Constraint::Length(24),
        Constraint::Length(8),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(12),
        Constraint::Length(6),
        Constraint::Min(10),
    ];
    let header = TableRow::new(vec![
        "name",
        "address",
        "state",
        "model",
        "version",
        "busy",
        "queue",
        "load",
        "memory free",
        "temp",
        "firmware",
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    f.render_stateful_widget(
        Table::new(rows, widths)
            .header(header)
            .block(Block::bordered().title("boards"))
            .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED)),
        table,
        state,
    );
    let detail = state
        .selected()
        .and_then(|i| boards.get(i))
        .map(|b| match &b.state {
            Ok(h) => format!(
                "{}: agent up {}s, board up {}, {} masters, {}",
                b.name,
                h.agent_uptime_s,
                h.uptime_s.map_or_else(dash, |u| format!("{u}s")),
                h.masters,
                h.throttled
                    .map(|t| Throttled(t).describe().join(", "))
                    .filter(|t| !t.is_empty())
                    .unwrap_or_else(|| "no throttling reported".to_owned())
            ),
            Err(why) => format!("{} is down: {why}", b.name),
        })
        .unwrap_or_default();
    f.render_widget(
        Paragraph::new(Line::from(detail)).block(Block::bordered().title("selected")),
        foot,
    );
}
