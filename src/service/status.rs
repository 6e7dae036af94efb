//! What `secchan status` shows: the server's live sessions, kept as they start, carry messages
//! and end. Sans IO: the TCP server updates it, the control socket (src/cli) reads it.

use crate::record::Rejected;
use crate::session::Session;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

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
    /// Records refused because they were replayed, too old, out of order, forged or of an
    /// unknown key epoch. Over TCP the first one ends the session.
    pub rejected: Rejected,
    /// Key updates so far, both directions.
    pub key_updates: u64,
    /// When the current keys were installed (Unix seconds): at establishment, or at the last
    /// key update either side made.
    pub keys_installed: u64,
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
    /// What the sessions that ended had rejected; locked inside `table`'s lock.
    ended: Arc<Mutex<Rejected>>,
}

/// A session's entry: updated by [`seen`](Entry::seen), removed when dropped.
#[derive(Debug)]
pub struct Entry {
    sessions: Sessions,
    id: u64,
    /// What [`update`](Entry::update) last took: key updates and records rejected, so that an
    /// unchanged session costs no lock of the shared table.
    taken: (AtomicU64, AtomicU64),
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
                rejected: Rejected::default(),
                key_updates: 0,
                keys_installed: now,
            },
        );
        Entry {
            sessions: self.clone(),
            id,
            taken: Default::default(),
        }
    }

    /// The live sessions, oldest first.
    pub fn list(&self) -> Vec<SessionStatus> {
        let mut v: Vec<(u64, SessionStatus)> =
            self.lock().iter().map(|(k, s)| (*k, s.clone())).collect();
        v.sort_by_key(|(k, _)| *k);
        v.into_iter().map(|(_, s)| s).collect()
    }

    /// The records every session so far rejected, live or ended, by reason.
    pub fn rejected(&self) -> Rejected {
        let table = self.lock();
        let mut sum = *lock(&self.ended);
        for s in table.values() {
            sum += s.rejected;
        }
        sum
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, SessionStatus>> {
        lock(&self.table)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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

    /// Takes the session's rejected records and key updates.
    pub fn update(&self, session: &Session) {
        let (updates, rejected) = (session.key_updates(), session.rejected().total());
        let same_keys = self.taken.0.swap(updates, Ordering::Relaxed) == updates;
        let same_rejected = self.taken.1.swap(rejected, Ordering::Relaxed) == rejected;
        if same_keys && same_rejected {
            return;
        }
        if let Some(s) = self.sessions.lock().get_mut(&self.id) {
            s.rejected = session.rejected();
            if s.key_updates != session.key_updates() {
                s.key_updates = session.key_updates();
                let age = Instant::now().saturating_duration_since(session.keys_installed());
                s.keys_installed = unix_now().saturating_sub(age.as_secs()).max(s.established);
            }
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let mut table = self.sessions.lock();
        if let Some(s) = table.remove(&self.id) {
            *lock(&self.sessions.ended) += s.rejected;
        }
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

    #[test]
    fn an_entry_takes_its_sessions_rejections_and_key_updates_and_the_total_keeps_them() {
        use crate::msgs::FrameType;
        use crate::session::tests::{data, session_over};
        let s = Sessions::default();
        let entry = s.start(
            "a".into(),
            None,
            "mqtt".into(),
            ("X25519", "AES-256-GCM"),
            false,
        );
        let (mut session, mut peer) = session_over(false, Instant::now());
        let first = data(&mut peer, b"one");
        session
            .handle_frame(&mut first.clone(), Instant::now())
            .unwrap();
        assert!(session
            .handle_frame(&mut first.clone(), Instant::now())
            .is_err());
        let mut update = Vec::new();
        peer.seal(FrameType::KeyUpdate, &[], &mut update).unwrap();
        session.handle_frame(&mut update, Instant::now()).unwrap();
        entry.update(&session);
        let listed = &s.list()[0];
        assert_eq!((listed.rejected.replayed, listed.rejected.total()), (1, 1));
        assert_eq!(listed.key_updates, 1);
        assert!(listed.keys_installed >= listed.established);
        assert_eq!(s.rejected().replayed, 1);
        drop(entry);
        assert!(s.list().is_empty());
        assert_eq!(s.rejected().replayed, 1, "an ended session's count stays");
    }
}
