//! `secchan chat`'s conversation as data, for its full-screen terminal UI: what was said to
//! and by each peer, the system lines (connected, established, refused, failed), and every
//! end-to-end session's counters, kept by the [`DeviceEnd`](super::device_end::DeviceEnd) and
//! read by whoever draws them.

use super::peer::PeerStats;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

/// Entries kept: older ones are dropped.
pub const HISTORY: usize = 1000;

/// One line of the conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A message received: from a peer end to end, or from the server (downlink).
    From {
        /// The peer, or `server`.
        peer: String,
        /// The sender's fingerprint.
        fingerprint: String,
        /// End to end (a peer), or via the server (downlink).
        e2e: bool,
        /// The message, as text (invalid UTF-8 replaced).
        text: String,
    },
    /// A message this device queued for a peer.
    To {
        /// The peer.
        peer: String,
        /// The message.
        text: String,
    },
    /// What happened: `* end-to-end session with b ...`, `* not sent: ...`.
    System(String),
}

/// See the module documentation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChatLog {
    /// Oldest first, at most [`HISTORY`].
    pub entries: VecDeque<Entry>,
    /// Every end-to-end session's counters, as last published.
    pub stats: Vec<PeerStats>,
    /// This device's fingerprint.
    pub me: String,
}

impl ChatLog {
    /// Appends `entry`, dropping the oldest beyond [`HISTORY`].
    pub fn push(&mut self, entry: Entry) {
        if self.entries.len() == HISTORY {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
    }

    /// The peers this conversation names: sessions and senders (not the server).
    pub fn peers(&self) -> impl Iterator<Item = &str> {
        let senders = self.entries.iter().filter_map(|e| match e {
            Entry::From {
                peer, e2e: true, ..
            }
            | Entry::To { peer, .. } => Some(peer.as_str()),
            _ => None,
        });
        self.stats.iter().map(|s| s.peer.as_str()).chain(senders)
    }
}

/// A [`ChatLog`] shared between the device and its display.
#[derive(Debug, Clone, Default)]
pub struct SharedLog(Arc<Mutex<ChatLog>>);

impl SharedLog {
    /// The log, locked (a holder that panicked leaves it readable).
    pub fn lock(&self) -> MutexGuard<'_, ChatLog> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_keeps_the_newest_entries_and_names_the_peers() {
        let mut log = ChatLog::default();
        for i in 0..HISTORY + 5 {
            log.push(Entry::System(format!("{i}")));
        }
        assert_eq!(log.entries.len(), HISTORY);
        assert_eq!(log.entries.front(), Some(&Entry::System("5".into())));
        log.push(Entry::From {
            peer: "server".into(),
            fingerprint: String::new(),
            e2e: false,
            text: "x".into(),
        });
        log.push(Entry::To {
            peer: "b".into(),
            text: "hi".into(),
        });
        assert_eq!(log.peers().collect::<Vec<_>>(), ["b"]);
    }
}
