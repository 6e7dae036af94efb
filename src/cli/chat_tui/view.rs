//! What `secchan chat`'s terminal UI shows, drawn from a [`View`] alone (no terminal, no
//! session): the conversation, the input line, and the cryptography of the selected peer.

use crate::service::chat_log::{ChatLog, Entry};
use crate::service::peer::PeerStats;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Wrap};
use ratatui::Frame;

/// Everything one frame shows.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    /// The conversation and the sessions' counters.
    pub log: &'a ChatLog,
    /// The line being typed.
    pub input: &'a str,
    /// The peer whose cryptography is shown.
    pub selected: Option<&'a str>,
    /// Rows the conversation is scrolled back from its newest line.
    pub scroll: usize,
}

/// Width of the cryptography pane: a fingerprint (50 characters) and its indent fit.
const CRYPTO_WIDTH: u16 = 56;

/// Draws `view` over the whole frame.
pub fn render(frame: &mut Frame<'_>, view: &View<'_>) {
    let [left, right] = Layout::horizontal([Constraint::Min(30), Constraint::Length(CRYPTO_WIDTH)])
        .areas(frame.area());
    let [history, input] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(3)]).areas(left);
    // The newest lines at the bottom, folded to the width (borders take two rows and columns).
    let rows = usize::from(history.height.saturating_sub(2));
    let width = usize::from(history.width.saturating_sub(2));
    let mut shown = Vec::new();
    for line in history_lines(view.log).into_iter().rev() {
        if shown.len() >= rows.saturating_add(view.scroll) {
            break;
        }
        shown.extend(fold(line, width).into_iter().rev());
    }
    // Scrolled back no further than the oldest row at the top.
    let back = view.scroll.min(shown.len().saturating_sub(rows));
    shown.drain(..back);
    shown.truncate(rows);
    shown.reverse();
    let title = if back > 0 {
        format!(" secchan chat: {back} rows back, PageDown returns ")
    } else {
        " secchan chat ".to_string()
    };
    frame.render_widget(
        Paragraph::new(shown).block(Block::bordered().title(title)),
        history,
    );
    frame.render_widget(
        Paragraph::new(view.input).block(
            Block::bordered().title(" @NAME message, Tab completes, Up/Down picks, Esc quits "),
        ),
        input,
    );
    let cursor = u16::try_from(view.input.chars().count()).unwrap_or(u16::MAX);
    frame.set_cursor_position((
        input.x.saturating_add(1).saturating_add(cursor),
        input.y.saturating_add(1),
    ));
    let stats = view
        .selected
        .and_then(|p| view.log.stats.iter().find(|s| s.peer == p));
    let title = format!(" cryptography: {} ", view.selected.unwrap_or("no peer yet"));
    frame.render_widget(
        Paragraph::new(crypto_lines(&view.log.me, stats))
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(title)),
        right,
    );
}

/// The conversation, one line per entry.
pub fn history_lines(log: &ChatLog) -> Vec<Line<'static>> {
    let dim = Style::default().fg(Color::DarkGray);
    log.entries
        .iter()
        .map(|e| match e {
            Entry::From {
                peer,
                e2e: true,
                text,
                ..
            } => Line::from(vec![
                Span::styled(format!("<{peer}> "), Style::default().fg(Color::Cyan)),
                Span::raw(text.clone()),
            ]),
            Entry::From { peer, text, .. } => Line::from(vec![
                Span::styled(format!("<{peer}> "), Style::default().fg(Color::Yellow)),
                Span::raw(text.clone()),
                Span::styled("  [via the server]", dim),
            ]),
            Entry::To { peer, text } => Line::from(vec![
                Span::styled(format!("-> {peer}: "), Style::default().fg(Color::Green)),
                Span::raw(text.clone()),
            ]),
            Entry::System(text) => Line::styled(text.clone(), dim),
        })
        .collect()
}

/// `line` cut into rows of at most `width` columns, each part keeping its style.
fn fold(line: Line<'static>, width: usize) -> Vec<Line<'static>> {
    if width == 0 || line.width() <= width {
        return vec![line];
    }
    let mut rows = vec![Line::default()];
    let mut used = 0;
    for span in line.spans {
        let mut part = String::new();
        for c in span.content.chars() {
            let w = Span::raw(&*c.encode_utf8(&mut [0; 4])).width();
            if used + w > width && used > 0 {
                let done = std::mem::take(&mut part);
                if let Some(row) = rows.last_mut() {
                    row.spans.push(Span::styled(done, span.style));
                }
                rows.push(Line::default());
                used = 0;
            }
            part.push(c);
            used += w;
        }
        if let Some(row) = rows.last_mut() {
            row.spans.push(Span::styled(part, span.style));
        }
    }
    rows
}

/// The cryptography pane's lines for a peer's session, or why there is none.
pub fn crypto_lines(me: &str, stats: Option<&PeerStats>) -> Vec<Line<'static>> {
    let Some(s) = stats else {
        return vec![
            Line::raw("No end-to-end session yet."),
            Line::raw("Type @NAME message to start one."),
            Line::raw(""),
            Line::raw("Our key"),
            Line::raw(format!("  {me}")),
        ];
    };
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let row = |label: &str, value: String| {
        Line::from(vec![
            Span::styled(format!("{label:<18}"), bold),
            Span::raw(value),
        ])
    };
    let phase = s.phase.name();
    let role = if s.initiator {
        "we started it"
    } else {
        "it started"
    };
    let mut lines = vec![
        row("Phase", format!("{phase} ({role})")),
        row("Path", "end to end, via the server's relay".to_string()),
        row("Suite", s.suite.unwrap_or("-").to_string()),
        row("AEAD", s.aead.unwrap_or("-").to_string()),
        Line::styled("Peer key", bold),
        Line::raw(format!(
            "  {}",
            s.fingerprint.as_deref().unwrap_or("not yet proven")
        )),
        row(
            "Vouched by",
            s.vouched
                .as_ref()
                .map_or("not yet".to_string(), ToString::to_string),
        ),
        Line::styled("Our key", bold),
        Line::raw(format!("  {me}")),
        row(
            "Records",
            format!("{} sent, {} received", s.records_sent, s.records_received),
        ),
        row(
            "Key updates",
            format!("{} received", s.key_updates_received),
        ),
        row(
            "Rejected",
            format!("{} (replay window, tamper)", s.rejected),
        ),
        row(
            "Handshake",
            match s.handshake_time {
                Some(t) => format!("{} B in {} ms", s.handshake_bytes, t.as_millis()),
                None => format!("{} B", s.handshake_bytes),
            },
        ),
        row("Sessions", s.sessions.to_string()),
        row("Undelivered", s.undelivered.to_string()),
    ];
    if let Some(e) = &s.last_error {
        lines.push(row("Last error", e.clone()));
    }
    lines
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
