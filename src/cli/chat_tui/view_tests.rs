use super::*;
use crate::service::peer::{Phase, Vouched};
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use std::time::Duration;

const ME: &str = "SHA256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const BOB: &str = "SHA256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn stats() -> PeerStats {
    PeerStats {
        peer: "bob".into(),
        initiator: true,
        phase: Phase::Open,
        fingerprint: Some(BOB.into()),
        vouched: Some(Vouched::Pinned),
        suite: Some("X25519MLKEM768"),
        aead: Some("AES-256-GCM"),
        records_sent: 17,
        records_received: 23,
        key_updates_received: 4,
        rejected: 2,
        last_error: None,
        handshake_bytes: 3456,
        handshake_time: Some(Duration::from_millis(12)),
        sessions: 1,
        undelivered: 5,
    }
}

fn log() -> ChatLog {
    let mut log = ChatLog {
        me: ME.into(),
        stats: vec![stats()],
        ..ChatLog::default()
    };
    log.push(Entry::System(
        "* connected to the server (SHA256:srv)".into(),
    ));
    log.push(Entry::To {
        peer: "bob".into(),
        text: "hello bob".into(),
    });
    log.push(Entry::From {
        peer: "bob".into(),
        fingerprint: BOB.into(),
        e2e: true,
        text: "hi there".into(),
    });
    log.push(Entry::From {
        peer: "server".into(),
        fingerprint: "SHA256:srv".into(),
        e2e: false,
        text: "reboot at noon".into(),
    });
    log.push(Entry::System(
        "* the server does not relay to carol: not allowed (forbidden)".into(),
    ));
    log
}

/// The screen, row by row, for a view of `log` with `selected`.
fn screen(log: &ChatLog, input: &str, selected: Option<&str>) -> Vec<String> {
    scrolled(log, input, selected, 0)
}

fn scrolled(log: &ChatLog, input: &str, selected: Option<&str>, scroll: usize) -> Vec<String> {
    let mut terminal = Terminal::new(TestBackend::new(120, 30)).unwrap();
    let view = View {
        log,
        input,
        selected,
        scroll,
    };
    terminal.draw(|f| render(f, &view)).unwrap();
    let buffer = terminal.backend().buffer();
    (0..buffer.area.height)
        .map(|y| {
            (0..buffer.area.width)
                .map(|x| buffer[(x, y)].symbol())
                .collect()
        })
        .collect()
}

fn has(rows: &[String], text: &str) -> bool {
    rows.iter().any(|r| r.contains(text))
}

#[test]
fn the_crypto_pane_shows_the_selected_sessions_suite_keys_and_counters() {
    let rows = screen(&log(), "", Some("bob"));
    for text in [
        "cryptography: bob",
        "open (we started it)",
        "end to end, via the server's relay",
        "X25519MLKEM768",
        "AES-256-GCM",
        BOB,
        ME,
        "pinned fingerprint",
        "17 sent, 23 received",
        "4 received",
        "2 (replay window, tamper)",
        "3456 B in 12 ms",
        "Undelivered       5",
    ] {
        assert!(
            has(&rows, text),
            "{text:?} not on screen:\n{}",
            rows.join("\n")
        );
    }
}

#[test]
fn the_crypto_pane_says_when_there_is_no_session_and_shows_the_last_error() {
    let rows = screen(&log(), "", None);
    assert!(has(&rows, "cryptography: no peer yet"));
    assert!(has(&rows, "No end-to-end session yet."));
    assert!(has(&rows, ME));
    let mut failed = log();
    failed.stats[0].phase = Phase::Failed;
    failed.stats[0].last_error = Some("handshake timed out".into());
    let rows = screen(&failed, "", Some("bob"));
    assert!(has(&rows, "failed (we started it)"));
    assert!(has(&rows, "handshake timed out"));
}

#[test]
fn the_history_shows_messages_both_ways_downlink_as_via_the_server_and_system_lines() {
    let rows = screen(&log(), "@bob how are you", Some("bob"));
    assert!(has(&rows, "* connected to the server (SHA256:srv)"));
    assert!(has(&rows, "-> bob: hello bob"));
    assert!(has(&rows, "<bob> hi there"));
    assert!(!rows
        .iter()
        .any(|r| r.contains("hi there") && r.contains("via the server")));
    assert!(has(&rows, "<server> reboot at noon  [via the server]"));
    assert!(has(&rows, "does not relay to carol"));
    assert!(has(&rows, "@bob how are you"));
}

#[test]
fn the_history_keeps_the_newest_lines_on_screen() {
    let mut long = log();
    for i in 0..100 {
        long.push(Entry::System(format!("* line {i}")));
    }
    let rows = screen(&long, "", Some("bob"));
    assert!(has(&rows, "* line 99"));
    assert!(!has(&rows, "* line 0 "));
    assert!(!has(&rows, "hello bob"));
}

#[test]
fn long_history_lines_fold_onto_the_next_rows_whole() {
    let mut long = log();
    let text = format!("{}END", "x".repeat(150));
    long.push(Entry::From {
        peer: "bob".into(),
        fingerprint: BOB.into(),
        e2e: true,
        text,
    });
    let rows = screen(&long, "", Some("bob"));
    let joined: String = rows
        .iter()
        .filter(|r| r.contains('x'))
        .map(|r| {
            r.split('│')
                .nth(1)
                .unwrap_or_default()
                .trim_end()
                .to_string()
        })
        .collect();
    assert!(joined.starts_with("<bob> xxx"), "{joined}");
    assert!(joined.ends_with("xEND"), "{joined}");
    assert_eq!(joined.matches('x').count(), 150, "{joined}");
}

#[test]
fn scrolling_back_shows_older_lines_and_stops_at_the_oldest() {
    let mut long = log();
    for i in 0..100 {
        long.push(Entry::System(format!("* line {i}")));
    }
    // 25 rows of conversation on a 30-row screen: 10 rows back, line 89 is at the bottom.
    let rows = scrolled(&long, "", Some("bob"), 10);
    assert!(has(&rows, "* line 89 "));
    assert!(!has(&rows, "* line 90 "));
    assert!(has(&rows, "10 rows back, PageDown returns"));
    let rows = scrolled(&long, "", Some("bob"), 10_000);
    assert!(has(&rows, "* connected to the server"));
    assert!(has(&rows, "rows back"));
}
