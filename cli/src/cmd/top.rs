//! `skelpi top`: the pool's boards, live in the terminal (ratatui): one
//! row per board with its health (see `skelpi health`), a board that
//! stops answering shown down within the poll bound, and back up once it
//! answers again; below them the jobs running on this machine (see
//! [`super::jobs_view`]). `--once` prints one snapshot (`--json` for
//! scripts).

use super::health::{self, Cells, Row};
use super::jobs_view::{self, JobView};
use super::pool_args::PoolArgs;
use anyhow::Context;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row as TableRow, Sparkline, Table, TableState};
use skelpi::pool;
use skelpi::watch::{self, JobStatus};
use skelpi_proto::health::Throttled;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a board may take to answer one poll before it is shown down.
pub const POLL_TIMEOUT: Duration = health::ASK_TIMEOUT;

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
pub type Board = Row;

/// What one poll saw: the boards, and the jobs running on this machine.
type Snapshot = (Vec<Board>, Vec<JobStatus>);

/// Runs `skelpi top`.
pub fn run(args: &TopArgs) -> anyhow::Result<()> {
    if !args.once && !std::io::stdout().is_terminal() {
        return Err(NoTerminal.into());
    }
    let interval = args.interval.max(Duration::from_millis(100));
    let (tx, rx) = mpsc::sync_channel::<Snapshot>(1);
    let jobs_dir = watch::jobs_dir();
    let opts = health::pool_options(&args.pool)?;
    let once = args.once;
    let poller = std::thread::spawn(move || -> anyhow::Result<()> {
        smol::block_on(async {
            let mut pool = pool::connect(&opts).await?;
            let mut tried = HashMap::new();
            // Boards not reached at the start: tried again now and then,
            // shown down meanwhile.
            let mut late = Late::new(std::mem::take(&mut pool.unreachable));
            loop {
                let started = Instant::now();
                late.try_again(&pool.cluster).await;
                // Every board at once: one that is down costs the others
                // nothing.
                let (mut boards, more) = futures_lite::future::zip(
                    health::ask_all(pool.cluster.agents_mut(), &mut tried),
                    health::ask_all(&mut late.conns, &mut late.tried_conns),
                )
                .await;
                boards.extend(more);
                boards.extend(health::unreachable_rows(&late.waiting));
                let jobs = watch::running(&jobs_dir);
                if tx.send((boards, jobs)).is_err() || once {
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
        return print_once(first, args.json);
    }
    let drawn = draw_live(first, &rx);
    drop(rx);
    drawn
}

/// Boards not reached when top started: connected again at most every
/// [`health::RECONNECT_EVERY`].
struct Late {
    conns: Vec<skelpi::client::AgentConn>,
    /// When each of `conns` that failed since was last tried again.
    tried_conns: HashMap<std::net::SocketAddr, Instant>,
    waiting: Vec<(std::net::SocketAddr, String)>,
    tried: Option<Instant>,
}

impl Late {
    fn new(waiting: Vec<(std::net::SocketAddr, String)>) -> Late {
        Late {
            conns: Vec::new(),
            tried_conns: HashMap::new(),
            waiting,
            tried: Some(Instant::now()),
        }
    }

    /// Tries the boards still waiting, all at once, if it is time.
    async fn try_again(&mut self, cluster: &skelpi::cluster::Cluster) {
        if self.waiting.is_empty()
            || self
                .tried
                .is_some_and(|t| t.elapsed() < health::RECONNECT_EVERY)
        {
            return;
        }
        self.tried = Some(Instant::now());
        let opts = skelpi_wire::handshake::ConnectOptions {
            timeout: health::ASK_TIMEOUT,
            ..cluster.connect_options().clone()
        };
        let key = cluster.key();
        let tries: Vec<
            health::Pending<'_, Result<skelpi::client::AgentConn, skelpi::client::ClientError>>,
        > = self
            .waiting
            .iter()
            .map(|(addr, _)| {
                Box::pin(skelpi::client::AgentConn::connect(*addr, key, &opts))
                    as health::Pending<
                        '_,
                        Result<skelpi::client::AgentConn, skelpi::client::ClientError>,
                    >
            })
            .collect();
        let answers = health::join_all(tries).await;
        let waiting = std::mem::take(&mut self.waiting);
        for ((addr, _), answer) in waiting.into_iter().zip(answers) {
            match answer {
                Ok(conn) => self.conns.push(conn),
                Err(e) => self.waiting.push((addr, e.to_string())),
            }
        }
    }
}

/// One snapshot, printed (JSON: `{"boards": [...], "jobs": [...]}`,
/// each job's figures since it started); an error when no board is up.
fn print_once((boards, jobs): Snapshot, json: bool) -> anyhow::Result<()> {
    let mut views = Vec::new();
    jobs_view::update(&mut views, jobs);
    if json {
        let v = serde_json::json!({
            "boards": boards.iter().map(health::json_row).collect::<Vec<_>>(),
            "jobs": views.iter().map(JobView::json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        health::print(&boards, false)?;
        for v in &views {
            println!("\njob {}", v.summary());
            for s in v.stages() {
                let [served, ts, ta, rho, queue] = s.cells();
                println!(
                    "  {:<40} {served:>9} served  Ts {ts:>10}  Ta {ta:>10}  rho {rho:>5}  queue {queue}",
                    s.name,
                );
            }
        }
    }
    if !boards.is_empty() && boards.iter().all(|b| b.state.is_err()) {
        anyhow::bail!("none of the {} boards answered", boards.len());
    }
    Ok(())
}

/// Which column the rows are sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SortBy {
    Name,
    Busy,
    Load,
    Temp,
}

/// The live view until q, Esc or Ctrl-C (log lines held back meanwhile:
/// they would write across it).
fn draw_live((first, jobs): Snapshot, rx: &mpsc::Receiver<Snapshot>) -> anyhow::Result<()> {
    let mut terminal = ratatui::try_init().context("cannot draw on this terminal")?;
    let logging = log::max_level();
    log::set_max_level(log::LevelFilter::Off);
    let mut boards = first;
    let mut views = Vec::new();
    jobs_view::update(&mut views, jobs);
    let mut state = TableState::default().with_selected(Some(0));
    let mut sort = SortBy::Name;
    let mut updated = Instant::now();
    let result = loop {
        // The selection follows its board, not its row.
        let selected = state
            .selected()
            .and_then(|i| boards.get(i))
            .map(|b| b.address.clone());
        sort_boards(&mut boards, sort);
        if let Some(address) = selected {
            state.select(boards.iter().position(|b| b.address == address).or(Some(0)));
        }
        let drawn = terminal.draw(|f| render(f, (&boards, &views), &mut state, sort, updated));
        if let Err(e) = drawn {
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
            Ok((now, jobs)) => {
                boards = now;
                jobs_view::update(&mut views, jobs);
                updated = Instant::now();
            }
            Err(mpsc::TryRecvError::Empty) => {}
            Err(mpsc::TryRecvError::Disconnected) => {
                break Err(anyhow::anyhow!("lost the pool (its poller stopped)"));
            }
        }
    };
    ratatui::restore();
    log::set_max_level(logging);
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
    (boards, jobs): (&[Board], &[JobView]),
    state: &mut TableState,
    sort: SortBy,
    updated: Instant,
) {
    let up = boards.iter().filter(|b| b.state.is_ok()).count();
    // Each job: a title line, a sparkline, a header and one row per stage;
    // at most half the screen (the rest is cut off).
    let jobs_height = jobs
        .iter()
        .map(job_height)
        .fold(2u16, u16::saturating_add)
        .min(f.area().height / 2)
        .max(3);
    let [head, table, jobs_area, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(jobs_height),
        Constraint::Length(3),
    ])
    .areas(f.area());
    render_jobs(f, jobs, jobs_area);
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
            Ok(h) => {
                let c = Cells::of(h);
                TableRow::new(vec![
                    b.name.clone(),
                    b.address.clone(),
                    "up".to_owned(),
                    c.model,
                    h.version.clone(),
                    c.busy,
                    h.queued_calls.to_string(),
                    c.load,
                    c.memory,
                    c.temp,
                    c.firmware,
                ])
            }
            Err(_) => TableRow::new(vec![b.name.clone(), b.address.clone(), "down".to_owned()])
                .style(Style::default().fg(Color::Red)),
        })
        .collect();
    let widths = [
        Constraint::Length(16),
        Constraint::Length(21),
        Constraint::Length(5),
        Constraint::Length(30),
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
                "{}: agent up {}s, board up {}, {} session{}, {}",
                b.name,
                h.agent_uptime_s,
                h.uptime_s.map_or_else(dash, |u| format!("{u}s")),
                h.sessions,
                if h.sessions == 1 { "" } else { "s" },
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

/// Lines a job takes in the panel: its title, its sparkline, the stages'
/// header and one line per stage.
fn job_height(job: &JobView) -> u16 {
    u16::try_from(job.now.stages.len())
        .unwrap_or(u16::MAX)
        .saturating_add(3)
}

/// The jobs panel: per job its summary, its throughput poll after poll,
/// and each stage's figures over the last poll.
fn render_jobs(f: &mut ratatui::Frame<'_>, jobs: &[JobView], area: ratatui::layout::Rect) {
    let block =
        Block::bordered().title("jobs on this machine (results/s; per stage over the last poll)");
    let inner = block.inner(area);
    f.render_widget(block, area);
    if jobs.is_empty() {
        f.render_widget(
            Paragraph::new("no job running (skelpi run shows its jobs here)"),
            inner,
        );
        return;
    }
    let heights: Vec<Constraint> = jobs
        .iter()
        .map(|j| Constraint::Length(job_height(j)))
        .collect();
    let areas = Layout::vertical(heights).split(inner);
    for (job, area) in jobs.iter().zip(areas.iter()) {
        let [title, spark, table] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(1),
            Constraint::Min(1),
        ])
        .areas(*area);
        f.render_widget(Paragraph::new(job.summary()), title);
        let rates: Vec<u64> = job.rates.iter().copied().collect();
        let shown = &rates[rates.len().saturating_sub(usize::from(spark.width))..];
        f.render_widget(
            Sparkline::default()
                .data(shown)
                .style(Style::default().fg(Color::Green)),
            spark,
        );
        let rows: Vec<TableRow<'_>> = job
            .stages()
            .into_iter()
            .map(|s| {
                let mut cells = vec![s.name.clone()];
                cells.extend(s.cells());
                TableRow::new(cells)
            })
            .collect();
        let widths = [
            Constraint::Length(44),
            Constraint::Length(10),
            Constraint::Length(12),
            Constraint::Length(12),
            Constraint::Length(6),
            Constraint::Length(8),
        ];
        let header = TableRow::new(vec!["stage", "served", "Ts", "Ta", "rho", "queue"])
            .style(Style::default().add_modifier(Modifier::BOLD));
        f.render_widget(Table::new(rows, widths).header(header), table);
    }
}
