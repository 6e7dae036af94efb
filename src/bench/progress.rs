//! A progress bar on stderr while the benchmark runs (one line per phase when stderr is not
//! a terminal).

use std::io::{IsTerminal, Write};

/// Progress over a known number of steps.
pub struct Progress {
    enabled: bool,
    terminal: bool,
    total: u64,
    done: u64,
    phase: String,
}

const WIDTH: u64 = 30;

impl Progress {
    /// A bar over `total` steps; draws nothing unless `enabled`.
    pub fn new(enabled: bool, total: u64) -> Self {
        Self {
            enabled,
            terminal: std::io::stderr().is_terminal(),
            total: total.max(1),
            done: 0,
            phase: String::new(),
        }
    }

    /// Names what is being measured now.
    pub fn phase(&mut self, name: &str) {
        self.phase = name.to_string();
        if self.enabled && !self.terminal {
            eprintln!("secchan bench: {name}");
        }
        self.draw();
    }

    /// One step done.
    pub fn tick(&mut self) {
        self.done = (self.done + 1).min(self.total);
        self.draw();
    }

    fn draw(&self) {
        if !(self.enabled && self.terminal) {
            return;
        }
        let filled = (self.done * WIDTH / self.total) as usize;
        let bar = format!(
            "{}{}",
            "#".repeat(filled),
            ".".repeat(WIDTH as usize - filled)
        );
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2K[{bar}] {:>3}% {}",
            self.done * 100 / self.total,
            self.phase
        );
        let _ = err.flush();
    }

    /// Clears the bar.
    pub fn finish(&self) {
        if self.enabled && self.terminal {
            eprint!("\r\x1b[2K");
        }
    }
}
