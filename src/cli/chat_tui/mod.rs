//! `secchan chat`'s full-screen terminal UI: a thin loop of crossterm key events over the
//! [`SharedLog`] the device end keeps, drawing [`view::render`] each turn. Typed lines go to
//! the device as its input, as in line mode; `/quit`, Esc and Ctrl-C stop it like Ctrl-C
//! stops line mode.

mod complete;
mod view;

use crate::service::chat_log::SharedLog;
use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Typed lines waiting for the device.
pub const INPUT_BUFFER: usize = 64;

/// How often the screen is redrawn without a key: the sessions' counters move on their own.
const REDRAW: Duration = Duration::from_millis(100);

/// The UI's side of the device: where typed lines go, and how it asks the device to stop.
#[derive(Debug)]
struct Ui {
    /// The conversation, kept by the device end.
    log: SharedLog,
    /// The device's input.
    lines: mpsc::Sender<Vec<u8>>,
    /// Sent (or dropped, by a panic) to stop the device.
    quit: oneshot::Sender<()>,
    /// Peers the device was told about (`--peer-key`, `--registry`), for Tab completion.
    known: Vec<String>,
    /// Set once the device stopped: the UI then restores the terminal and ends.
    done: Arc<AtomicBool>,
}

/// What a key does.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    None,
    Submit(String),
    Quit,
}

/// Rows PageUp and PageDown scroll the conversation by.
const PAGE: usize = 10;

/// The line being typed, the peer picked with Up/Down and how far the conversation is
/// scrolled back.
#[derive(Debug, Default)]
struct Input {
    text: String,
    picked: Option<String>,
    scroll: usize,
}

impl Input {
    fn on_key(&mut self, key: KeyEvent, names: &[String], peers: &[String]) -> Action {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Esc => return Action::Quit,
            KeyCode::Char('c' | 'd') if ctrl => return Action::Quit,
            KeyCode::Char('u') if ctrl => self.text.clear(),
            KeyCode::Char(c) if !ctrl => self.text.push(c),
            KeyCode::Backspace => {
                self.text.pop();
            }
            KeyCode::Tab => {
                if let Some(done) = complete::complete(&self.text, names) {
                    self.text = done;
                }
            }
            KeyCode::Up | KeyCode::Down => self.pick(key.code == KeyCode::Down, peers),
            // At most the whole history back (the view stops at its oldest row).
            KeyCode::PageUp => {
                self.scroll = (self.scroll + PAGE).min(crate::service::chat_log::HISTORY * 4)
            }
            KeyCode::PageDown => self.scroll = self.scroll.saturating_sub(PAGE),
            KeyCode::Enter => {
                self.scroll = 0;
                let line = std::mem::take(&mut self.text);
                if line.trim() == "/quit" {
                    return Action::Quit;
                }
                // Keep addressing the same peer.
                if let Some((to, _)) = line.split_once(' ').filter(|_| line.starts_with('@')) {
                    self.text = format!("{to} ");
                }
                if !line.trim().is_empty() {
                    return Action::Submit(line);
                }
            }
            _ => {}
        }
        Action::None
    }

    fn pick(&mut self, next: bool, peers: &[String]) {
        if peers.is_empty() {
            return;
        }
        let at = self
            .picked
            .as_ref()
            .and_then(|p| peers.iter().position(|q| q == p));
        let i = match (at, next) {
            (None, _) => 0,
            (Some(i), true) => (i + 1) % peers.len(),
            (Some(i), false) => (i + peers.len() - 1) % peers.len(),
        };
        self.picked = Some(peers[i].clone());
    }

    /// The peer the cryptography pane shows: the one addressed in the line being typed, else
    /// the one picked, else the last one spoken with, else the first session.
    fn selected<'a>(&'a self, peers: &'a [String], last: Option<&'a str>) -> Option<&'a str> {
        let addressed = self
            .text
            .strip_prefix('@')
            .map(|rest| rest.split(' ').next().unwrap_or_default());
        addressed
            .and_then(|a| peers.iter().find(|p| *p == a))
            .or(self.picked.as_ref())
            .map(String::as_str)
            .or(last)
            .or(peers.first().map(String::as_str))
    }
}

/// A UI running on its own thread: what the device takes from it.
#[derive(Debug)]
pub struct Started {
    /// The device's input: the lines typed.
    pub source: crate::telemetry::Source,
    /// Where the device end keeps the conversation.
    pub log: SharedLog,
    /// Resolves when the user quits (or the UI ended some other way).
    pub stop: oneshot::Receiver<()>,
    /// Ends the UI once the device stopped.
    pub finish: Finish,
}

/// Starts the UI on a thread of its own; `known` are the names it completes besides the peers
/// seen (the `--peer-key` pins and the `--registry` names).
pub fn start(known: Vec<String>) -> Started {
    let log = SharedLog::default();
    let (lines, rx) = mpsc::channel(INPUT_BUFFER);
    let (quit, stop) = oneshot::channel();
    let done = Arc::new(AtomicBool::new(false));
    let ui = Ui {
        log: log.clone(),
        lines,
        quit,
        known,
        done: done.clone(),
    };
    Started {
        source: crate::telemetry::Source::channel(rx),
        log,
        stop,
        finish: Finish {
            done,
            thread: std::thread::spawn(move || run(ui)),
        },
    }
}

/// Ends a started UI: [`Finish::wait`].
#[derive(Debug)]
pub struct Finish {
    done: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<std::io::Result<()>>,
}

impl Finish {
    /// Once the device stopped: ends the UI, which restores the terminal, and says whether it
    /// could draw.
    pub async fn wait(self) -> std::io::Result<()> {
        self.done.store(true, Ordering::SeqCst);
        match tokio::task::spawn_blocking(move || self.thread.join()).await {
            Ok(Ok(result)) => result,
            // The UI panicked: ratatui's hook restored the terminal and printed the panic.
            _ => Err(std::io::Error::other(
                "the terminal UI stopped unexpectedly",
            )),
        }
    }
}

/// Runs the UI on this thread until the user quits or the device stops; the terminal is
/// restored on every way out (ratatui's panic hook restores it on a panic).
fn run(ui: Ui) -> std::io::Result<()> {
    let result = ratatui::try_init().and_then(|mut terminal| event_loop(&mut terminal, &ui));
    ratatui::restore();
    // However the loop ended, the device stops.
    let _ = ui.quit.send(());
    result
}

fn event_loop(terminal: &mut ratatui::DefaultTerminal, ui: &Ui) -> std::io::Result<()> {
    let mut input = Input::default();
    while !ui.done.load(Ordering::SeqCst) {
        let log = ui.log.lock().clone();
        let peers: Vec<String> = log.stats.iter().map(|s| s.peer.clone()).collect();
        let last = log.entries.iter().rev().find_map(|e| match e {
            crate::service::chat_log::Entry::From {
                peer, e2e: true, ..
            }
            | crate::service::chat_log::Entry::To { peer, .. } => Some(peer.as_str()),
            _ => None,
        });
        let view = view::View {
            log: &log,
            input: &input.text,
            selected: input.selected(&peers, last),
            scroll: input.scroll,
        };
        terminal.draw(|f| view::render(f, &view))?;
        if !event::poll(REDRAW)? {
            continue;
        }
        let Event::Key(key) = event::read()? else {
            continue;
        };
        if key.kind != KeyEventKind::Press {
            continue;
        }
        let names = complete::names(ui.known.iter().map(String::as_str), log.peers());
        match input.on_key(key, &names, &peers) {
            Action::None => {}
            Action::Quit => return Ok(()),
            Action::Submit(line) => match ui.lines.try_send(line.into_bytes()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    ui.log.lock().push(crate::service::chat_log::Entry::System(
                        "* not sent: the device is busy, type it again".into(),
                    ))
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
            },
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn typed(input: &mut Input, text: &str, names: &[String]) {
        for c in text.chars() {
            assert_eq!(
                input.on_key(key(KeyCode::Char(c)), names, &[]),
                Action::None
            );
        }
    }

    #[test]
    fn tab_completes_the_name_and_enter_sends_keeping_the_address() {
        let names = vec!["bob".to_string(), "carol".to_string()];
        let mut input = Input::default();
        typed(&mut input, "@c", &names);
        assert_eq!(input.on_key(key(KeyCode::Tab), &names, &[]), Action::None);
        assert_eq!(input.text, "@carol ");
        typed(&mut input, "hi", &names);
        assert_eq!(
            input.on_key(key(KeyCode::Enter), &names, &[]),
            Action::Submit("@carol hi".into())
        );
        assert_eq!(input.text, "@carol ");
    }

    #[test]
    fn page_up_scrolls_back_page_down_and_enter_return() {
        let mut input = Input::default();
        input.on_key(key(KeyCode::PageUp), &[], &[]);
        input.on_key(key(KeyCode::PageUp), &[], &[]);
        assert_eq!(input.scroll, 2 * PAGE);
        input.on_key(key(KeyCode::PageDown), &[], &[]);
        assert_eq!(input.scroll, PAGE);
        typed(&mut input, "@b hi", &[]);
        input.on_key(key(KeyCode::Enter), &[], &[]);
        assert_eq!(input.scroll, 0);
    }

    #[test]
    fn quit_esc_and_ctrl_c_stop() {
        let mut input = Input::default();
        typed(&mut input, "/quit", &[]);
        assert_eq!(input.on_key(key(KeyCode::Enter), &[], &[]), Action::Quit);
        assert_eq!(input.on_key(key(KeyCode::Esc), &[], &[]), Action::Quit);
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(input.on_key(ctrl_c, &[], &[]), Action::Quit);
    }

    #[test]
    fn the_pane_follows_the_addressed_peer_then_the_picked_one() {
        let peers = vec!["bob".to_string(), "carol".to_string()];
        let mut input = Input::default();
        assert_eq!(input.selected(&peers, Some("carol")), Some("carol"));
        assert_eq!(input.selected(&peers, None), Some("bob"));
        input.on_key(key(KeyCode::Down), &[], &peers);
        input.on_key(key(KeyCode::Down), &[], &peers);
        assert_eq!(input.selected(&peers, Some("bob")), Some("carol"));
        typed(&mut input, "@bob hi", &[]);
        assert_eq!(input.selected(&peers, None), Some("bob"));
    }
}
