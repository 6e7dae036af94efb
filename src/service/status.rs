//! What `secchan status` shows: the server's live sessions, kept as they start, carry messages
//! and end. Sans IO: the TCP server updates it, the control socket (src/cli) reads it.

use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// One live session.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionStatus {
    /// The device's name.
    pub device: String,
    /// Its key's fingerprint; `None` for an anonymous device.
    pub fingerprint: Option<String>,
    /// Its address.
    pub peer: String,
    /// Suite and AEAD.
    pub suite: &'static str,
    /// AEAD.
    pub aead: &'static str,
    /// Resumed with a ticket rather than a full handshake.
    pub resumed: bool,
    /// When it was established (Unix seconds).
    pub established: u64,
    /// When the device last sent a message (Unix seconds).
    pub last_seen: u64,
    /// Delivery envelopes received (messages, and acknowledgements of downlink).
    pub messages: u64,
    /// Their bytes, envelope headers included (protocol.md §11.1).
    pub bytes: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The live sessions, shared by every session task.
#[derive(Debug, Clone, Default)]
pub struct Sessions {
    table: Arc<Mutex<HashMap<u64, SessionStatus>>>,
    next: Arc<AtomicU64>,
}

/// A session's entry: updated by [`seen`](Entry::seen), removed when dropped.
#[derive(Debug)]
pub struct Entry {
    sessions: Sessions,
    id: u64,
}

impl Sessions {
    /// Adds a session that starts now; it stays listed as long as the returned entry lives.
    pub fn start(
        &self,
        device: String,
        fingerprint: Option<String>,
        peer: String,
        (suite, aead): (&'static str, &'static str),
        resumed: bool,
    ) -> Entry {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let now = unix_now();
        self.lock().insert(
            id,
            SessionStatus {
                device,
                fingerprint,
                peer,
                suite,
                aead,
                resumed,
                established: now,
                last_seen: now,
                messages: 0,
                bytes: 0,
            },
        );
        Entry {
            sessions: self.clone(),
            id,
        }
    }

    /// The live sessions, oldest first.
    pub fn list(&self) -> Vec<SessionStatus> {
        let mut v: Vec<(u64, SessionStatus)> =
            self.lock().iter().map(|(k, s)| (*k, s.clone())).collect();
        v.sort_by_key(|(k, _)| *k);
        v.into_iter().map(|(_, s)| s).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, SessionStatus>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Entry {
    /// The device sent a message of `len` bytes.
    pub fn seen(&self, len: usize) {
        if let Some(s) = self.sessions.lock().get_mut(&self.id) {
            s.messages += 1;
            s.bytes += len as u64;
            s.last_seen = unix_now();
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.sessions.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_listed_while_its_entry_lives_and_counts_what_it_carried() {
        let s = Sessions::default();
        let a = s.start(
            "a".into(),
            None,
            "192.0.2.1:1".into(),
            ("X25519", "AES-256-GCM"),
            false,
        );
        let b = s.start(
            "b".into(),
            Some("SHA256:b".into()),
            "192.0.2.2:2".into(),
            ("X25519", "AES-256-GCM"),
            true,
        );
        a.seen(10);
        a.seen(5);
        let list = s.list();
        assert_eq!(list.len(), 2);
        assert_eq!(
            (list[0].device.as_str(), list[0].messages, list[0].bytes),
            ("a", 2, 15)
        );
        assert!(list[1].resumed);
        drop(a);
        assert_eq!(s.list().len(), 1);
        drop(b);
        assert!(s.list().is_empty());
    }
}
