//! The ratatui views (top, stat, dashboard) as pure functions of their models, so the same
//! drawing serves the live terminal and `TestBackend` snapshots; and the plain-text tables
//! printed when stdout is not a terminal (also `routes` and `authz`, which have no live view).

use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row as TableRow, Sparkline, Table};
use ratatui::Frame;

use crate::authz::{Authz, Counted, Decisions, Protocol, ServerStats};
use crate::edges::Edge;
use crate::routes::{BackendStats, RouteStats, Routes};
use crate::stat::StatRow;
use crate::tap::ms;
use crate::top::{Column, Row};

/// The `mesh viz top` table.
pub fn render_top(
    frame: &mut Frame,
    area: Rect,
    title: &str,
    rows: &[Row],
    sort: Column,
    reversed: bool,
) {
    let header = TableRow::new(Column::ALL.iter().map(|c| {
        let arrow = match (*c == sort, reversed) {
            (true, false) => " ▼",
            (true, true) => " ▲",
            _ => "",
        };
        Cell::from(format!("{}{arrow}", c.title()))
    }))
    .style(Style::default().add_modifier(Modifier::BOLD));
    let body = rows.iter().map(|r| TableRow::new(top_cells(r)));
    let widths = [
        Constraint::Fill(2),
        Constraint::Fill(2),
        Constraint::Length(7),
        Constraint::Fill(3),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(14),
    ];
    let table = Table::new(body, widths).header(header).block(
        Block::default()
            .borders(Borders::ALL)
            .title(title.to_string())
            .title_bottom(Line::from(" ←/→ sort column · r reverse · q quit ")),
    );
    frame.render_widget(table, area);
}

/// The `mesh viz stat` table.
pub fn render_stat(frame: &mut Frame, area: Rect, title: &str, rows: &[StatRow]) {
    let header = TableRow::new(STAT_COLUMNS.iter().map(|c| Cell::from(*c)))
        .style(Style::default().add_modifier(Modifier::BOLD));
    let body = rows.iter().map(|r| TableRow::new(stat_cells(r)));
    let widths = [
        Constraint::Fill(3),
        Constraint::Length(6),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(11),
        Constraint::Length(11),
        Constraint::Length(11),
        Constraint::Length(8),
    ];
    let table = Table::new(body, widths).header(header).block(
        Block::default()
            .borders(Borders::ALL)
            .title(title.to_string()),
    );
    frame.render_widget(table, area);
}

/// One workload of the dashboard: its current stat and recent history.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadView {
    pub stat: StatRow,
    /// Requests per second, one point per refresh, oldest first.
    pub rps: Vec<u64>,
    /// p95 latency in ms, one point per refresh, oldest first.
    pub p95: Vec<u64>,
}

/// What the dashboard shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dashboard {
    pub title: String,
    pub workloads: Vec<WorkloadView>,
    pub selected: usize,
    /// The edges of the selected workload.
    pub edges: Vec<Edge>,
    /// The live top of the selected workload.
    pub top: Vec<Row>,
    /// A line of status (errors, refresh time).
    pub status: String,
}

/// The `mesh viz dashboard` screen: workloads (left) with success rate and RPS, sparklines of
/// the selected one's RPS and p95, its edges, and its live top.
pub fn render_dashboard(frame: &mut Frame, model: &Dashboard) {
    let outer = Layout::default()
        .direction(Direction::Vertical)
        .constraints([Constraint::Min(5), Constraint::Length(1)])
        .split(frame.area());
    let columns = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Percentage(45), Constraint::Percentage(55)])
        .split(outer[0]);
    let left = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Fill(1),
            Constraint::Length(4),
            Constraint::Length(4),
        ])
        .split(columns[0]);
    let right = Layout::default()
        .direction(Direction::Vertical)
        .constraints([Constraint::Percentage(35), Constraint::Percentage(65)])
        .split(columns[1]);

    // Workloads.
    let header = TableRow::new(["Workload", "Pods", "Success", "RPS", "p95"])
        .style(Style::default().add_modifier(Modifier::BOLD));
    let body = model.workloads.iter().enumerate().map(|(i, w)| {
        let s = &w.stat;
        let marker = if i == model.selected { "▶ " } else { "  " };
        let row = TableRow::new([
            format!("{marker}{}", s.workload),
            format!("{}/{}", s.meshed_pods, s.pods),
            percent(s.success_rate),
            rate(s.rps),
            latency(s.latency_ms_p95),
        ]);
        if i == model.selected {
            row.style(Style::default().add_modifier(Modifier::REVERSED))
        } else {
            row
        }
    });
    let widths = [
        Constraint::Fill(1),
        Constraint::Length(5),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(8),
    ];
    frame.render_widget(
        Table::new(body, widths).header(header).block(
            Block::default()
                .borders(Borders::ALL)
                .title(format!(" {} ", model.title))
                .title_bottom(Line::from(" ↑/↓ select · q quit ")),
        ),
        left[0],
    );
    let selected = model.workloads.get(model.selected);
    let name = selected.map_or(String::new(), |w| w.stat.workload.to_string());
    let empty = Vec::new();
    let rps = selected.map_or(&empty, |w| &w.rps);
    let p95 = selected.map_or(&empty, |w| &w.p95);
    frame.render_widget(
        Sparkline::default()
            .block(Block::default().borders(Borders::ALL).title(format!(
                " {name} RPS {} ",
                rps.last().map_or("-".to_string(), |v| v.to_string())
            )))
            .data(tail(rps, left[1].width.saturating_sub(2))),
        left[1],
    );
    frame.render_widget(
        Sparkline::default()
            .block(Block::default().borders(Borders::ALL).title(format!(
                " {name} p95 {} ",
                p95.last().map_or("-".to_string(), |v| format!("{v}ms"))
            )))
            .data(tail(p95, left[2].width.saturating_sub(2))),
        left[2],
    );

    // Edges of the selected workload.
    let edge_rows = model.edges.iter().map(|e| {
        TableRow::new([
            e.src.to_string(),
            e.dst.to_string(),
            if e.mtls { "√ mTLS" } else { "× plain" }.to_string(),
            e.client_id.as_deref().map_or("-", short_id).to_string(),
            e.server_id.as_deref().map_or("-", short_id).to_string(),
        ])
    });
    frame.render_widget(
        Table::new(
            edge_rows,
            [
                Constraint::Fill(1),
                Constraint::Fill(1),
                Constraint::Length(8),
                Constraint::Fill(1),
                Constraint::Fill(1),
            ],
        )
        .header(
            TableRow::new(["Src", "Dst", "Secured", "Client", "Server"])
                .style(Style::default().add_modifier(Modifier::BOLD)),
        )
        .block(
            Block::default()
                .borders(Borders::ALL)
                .title(format!(" edges of {name} ")),
        ),
        right[0],
    );

    // Live top of the selected workload.
    let top_rows = model.top.iter().map(|r| {
        TableRow::new([
            r.key.source.clone(),
            r.key.destination.clone(),
            format!("{} {}", r.key.method, r.key.path),
            r.count.to_string(),
            ms(r.last_ms),
            format!("{:.0}%", r.success_rate() * 100.0),
        ])
    });
    frame.render_widget(
        Table::new(
            top_rows,
            [
                Constraint::Fill(1),
                Constraint::Fill(1),
                Constraint::Fill(2),
                Constraint::Length(6),
                Constraint::Length(8),
                Constraint::Length(5),
            ],
        )
        .header(
            TableRow::new(["Source", "Destination", "Route", "Count", "Last", "SR"])
                .style(Style::default().add_modifier(Modifier::BOLD)),
        )
        .block(
            Block::default()
                .borders(Borders::ALL)
                .title(format!(" top of {name} ")),
        ),
        right[1],
    );
    frame.render_widget(Paragraph::new(model.status.clone()), outer[1]);
}

/// The plain `mesh viz top` table (stdout not a terminal).
pub fn top_text(rows: &[Row]) -> String {
    let header: Vec<String> = Column::ALL.iter().map(|c| c.title().to_string()).collect();
    let body: Vec<Vec<String>> = rows.iter().map(top_cells).collect();
    text_table(&header, &body)
}

/// The plain `mesh viz stat` table.
pub fn stat_text(rows: &[StatRow]) -> String {
    let header: Vec<String> = STAT_COLUMNS.iter().map(|c| c.to_string()).collect();
    let body: Vec<Vec<String>> = rows.iter().map(stat_cells).collect();
    text_table(&header, &body)
}

/// The plain `mesh viz edges` table.
pub fn edges_text(edges: &[Edge]) -> String {
    let header: Vec<String> = [
        "SRC",
        "DST",
        "SRC_NS",
        "DST_NS",
        "SECURED",
        "CLIENT_ID",
        "SERVER_ID",
    ]
    .iter()
    .map(|c| c.to_string())
    .collect();
    let body: Vec<Vec<String>> = edges
        .iter()
        .map(|e| {
            vec![
                e.src.name.clone(),
                e.dst.name.clone(),
                e.src.namespace.clone(),
                e.dst.namespace.clone(),
                if e.mtls {
                    "√".to_string()
                } else {
                    format!("× ({})", e.no_tls_reason.as_deref().unwrap_or("no mTLS"))
                },
                e.client_id.clone().unwrap_or_else(|| "-".into()),
                e.server_id.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    text_table(&header, &body)
}

/// The plain `mesh viz routes` table: a row per route, and under it a row per backend
/// (`├─`/`└─`). RETRIES is retry attempts per second (a count without a window) and their share
/// of the route's requests; NOTES, what is not zero of: retryable failures that were not
/// replayable, retries refused by the parent's budget, injected faults, mirrored requests.
///
/// ```text
/// PARENT           ROUTE                     SUCCESS  RPS      LATENCY_P50  …  RETRIES         NOTES
/// demo/web-svc:80  HTTPRoute demo/web-split  90.00%   10.0rps  10.0ms       …  2.0rps (20.0%)  budget exhausted: 3
///                  ├─ Service demo/web-v1:80 100.00%  7.5rps   5.00ms       …  -
/// ```
pub fn routes_text(routes: &Routes) -> String {
    let header: Vec<String> = ROUTES_COLUMNS.iter().map(|c| c.to_string()).collect();
    let mut body: Vec<Vec<String>> = Vec::new();
    for r in &routes.routes {
        body.push(route_cells(r));
        for (i, b) in r.backends.iter().enumerate() {
            let branch = if i + 1 == r.backends.len() {
                "└─"
            } else {
                "├─"
            };
            body.push(backend_cells(branch, b));
        }
    }
    text_table(&header, &body)
}

/// The `mesh viz authz` table: per Server (or default policy), a row per route and
/// authorization of its HTTP requests (`rps`), then a row per authorization of its TCP
/// connections (route `TCP`, `cps`); `-` where no authorization allowed (what was denied or
/// audited). The Server's rate limit refusals are the notes of its first row.
pub fn authz_text(authz: &Authz) -> String {
    let header: Vec<String> = AUTHZ_COLUMNS.iter().map(|c| c.to_string()).collect();
    let mut body: Vec<Vec<String>> = Vec::new();
    for server in &authz.servers {
        let notes = rate_limit_notes(server);
        if server.decisions.is_empty() {
            body.push(vec![
                server.server.to_string(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                notes,
            ]);
            continue;
        }
        for (i, d) in server.decisions.iter().enumerate() {
            let mut cells = decision_cells(d);
            if i == 0 {
                cells.insert(0, server.server.to_string());
                cells.push(notes.clone());
            } else {
                cells.insert(0, String::new());
                cells.push(String::new());
            }
            body.push(cells);
        }
    }
    text_table(&header, &body)
}

/// The lines of a rendered buffer (trailing spaces trimmed), for snapshots and the dashboard's
/// one-shot output.
pub fn buffer_text(buffer: &ratatui::buffer::Buffer) -> String {
    let area = buffer.area;
    let mut out = String::new();
    for y in area.y..area.y + area.height {
        let mut line = String::new();
        for x in area.x..area.x + area.width {
            line.push_str(buffer[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

const STAT_COLUMNS: [&str; 8] = [
    "NAME",
    "MESHED",
    "SUCCESS",
    "RPS",
    "LATENCY_P50",
    "LATENCY_P95",
    "LATENCY_P99",
    "TCP_CONN",
];

const ROUTES_COLUMNS: [&str; 9] = [
    "PARENT",
    "ROUTE",
    "SUCCESS",
    "RPS",
    "LATENCY_P50",
    "LATENCY_P95",
    "LATENCY_P99",
    "RETRIES",
    "NOTES",
];

fn route_cells(r: &RouteStats) -> Vec<String> {
    let retries = &r.retries;
    let attempts = retries.success + retries.failure;
    let retried = match (attempts, retries.rps) {
        (0, _) => "-".to_string(),
        (_, Some(rps)) => rate(Some(rps)),
        (n, None) => n.to_string(),
    };
    let retried = match retries.share {
        Some(share) if attempts > 0 => format!("{retried} ({:.1}%)", share * 100.0),
        _ => retried,
    };
    let mut notes = Vec::new();
    if retries.not_replayable > 0 {
        notes.push(format!("not replayable: {}", retries.not_replayable));
    }
    if retries.budget_exhausted > 0 {
        notes.push(format!("budget exhausted: {}", retries.budget_exhausted));
    }
    for f in &r.faults {
        notes.push(format!("{} {}: {}", f.kind, f.fault, f.count));
    }
    vec![
        r.parent.to_string(),
        r.route.to_string(),
        percent(r.success_rate),
        rate(r.rps),
        latency(r.latency_ms.p50),
        latency(r.latency_ms.p95),
        latency(r.latency_ms.p99),
        retried,
        notes.join(", "),
    ]
}

fn backend_cells(branch: &str, b: &BackendStats) -> Vec<String> {
    let notes = match (b.mirrored, b.mirror_dropped) {
        (0, 0) => String::new(),
        (n, 0) => format!("mirrored: {n}"),
        (n, dropped) => format!("mirrored: {n} ({dropped} dropped)"),
    };
    vec![
        String::new(),
        format!("{branch} {}", b.backend),
        percent(b.success_rate),
        rate(b.rps),
        latency(b.latency_ms.p50),
        latency(b.latency_ms.p95),
        latency(b.latency_ms.p99),
        "-".to_string(),
        notes,
    ]
}

const AUTHZ_COLUMNS: [&str; 7] = [
    "SERVER",
    "ROUTE",
    "AUTHORIZATION",
    "ALLOWED",
    "DENIED",
    "AUDITED",
    "NOTES",
];

/// ROUTE, AUTHORIZATION, ALLOWED, DENIED, AUDITED.
fn decision_cells(d: &Decisions) -> Vec<String> {
    let unit = match d.protocol {
        Protocol::Http => "rps",
        Protocol::Tcp => "cps",
    };
    let figure = |c: &Counted| match (c.count, c.rate) {
        (0, _) => "-".to_string(),
        (_, Some(rate)) => format!("{rate:.1}{unit}"),
        (n, None) => n.to_string(),
    };
    vec![
        match d.protocol {
            Protocol::Http => d.route.clone().unwrap_or_default(),
            Protocol::Tcp => "TCP".to_string(),
        },
        d.authorization
            .as_ref()
            .map_or_else(|| "-".to_string(), ToString::to_string),
        figure(&d.allowed),
        figure(&d.denied),
        figure(&d.audited),
    ]
}

/// `rate limited by voting-rl: identity 4.0rps, total 1.0rps` (counts without a window).
fn rate_limit_notes(server: &ServerStats) -> String {
    let mut by_policy: Vec<(&str, Vec<String>)> = Vec::new();
    for r in &server.rate_limited {
        let figure = match r.rate {
            Some(rate) => format!("{} {rate:.1}rps", r.scope),
            None => format!("{} {}", r.scope, r.count),
        };
        match by_policy.iter_mut().find(|(name, _)| *name == r.name) {
            Some((_, scopes)) => scopes.push(figure),
            None => by_policy.push((&r.name, vec![figure])),
        }
    }
    by_policy
        .into_iter()
        .map(|(name, scopes)| format!("rate limited by {name}: {}", scopes.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

fn top_cells(r: &Row) -> Vec<String> {
    vec![
        r.key.source.clone(),
        r.key.destination.clone(),
        r.key.method.clone(),
        r.key.path.clone(),
        r.count.to_string(),
        ms(r.best_ms),
        ms(r.worst_ms),
        ms(r.last_ms),
        format!("{:.2}%", r.success_rate() * 100.0),
    ]
}

fn stat_cells(r: &StatRow) -> Vec<String> {
    vec![
        r.workload.to_string(),
        format!("{}/{}", r.meshed_pods, r.pods),
        percent(r.success_rate),
        rate(r.rps),
        latency(r.latency_ms_p50),
        latency(r.latency_ms_p95),
        latency(r.latency_ms_p99),
        r.tcp_connections.to_string(),
    ]
}

fn percent(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.2}%", v * 100.0))
}

fn rate(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}rps"))
}

fn latency(v: Option<f64>) -> String {
    v.map_or("-".into(), ms)
}

/// `web.demo.serviceaccount.identity.mesh.cluster.local` → `web.demo`.
fn short_id(id: &str) -> &str {
    id.split_once(".serviceaccount.")
        .map_or(id, |(short, _)| short)
}

fn tail(v: &[u64], width: u16) -> &[u64] {
    &v[v.len().saturating_sub(width as usize)..]
}

/// Columns padded to their widest cell, two spaces apart.
fn text_table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(header).chain(rows.iter().map(Vec::as_slice)) {
        let mut line = String::new();
        for (cell, w) in row.iter().zip(&widths) {
            line.push_str(cell);
            line.push_str(&" ".repeat(w - cell.chars().count() + 2));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
