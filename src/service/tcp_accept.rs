//! What the TCP server does with a connection before it is a session: the device's first
//! frame by the hello deadline, the [`admission`](super::admission) verdict on it (a full
//! handshake, a cookie, or `busy`), the handshake, and room for the session. Everything a
//! stranger can trigger here is counted in [`AdmissionStats`] and logged at a limited rate.

use super::admission::{Admission, AdmissionStats, FirstKind, Limits, Outcome, Verdict};
use super::latency::Latency;
use crate::crypto::random::OsRandom;
use crate::handshake::cookie::{self, CookieJar, First};
use crate::handshake::server::PeerDevice;
use crate::handshake::HandshakeError;
use crate::msgs::AlertCode;
use crate::throttle::{warn_dropped, Throttle};
use crate::transport::tcp::{Connection, Incoming};
use crate::transport::TransportError;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::task::AbortHandle;

/// Default for `Shared::new`'s hello deadline: how long a connection may take to deliver its
/// whole first frame. An honest device sends it right behind the TCP handshake, so it takes a
/// one-way trip, or two TCP retransmissions (1 s and 2 s) when segments are lost; a slow one
/// holds a pending slot for at most this long.
pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Rate limits for the warnings a stranger can cause, one per kind.
#[derive(Default)]
struct Throttles {
    refused: Throttle,
    replaced: Throttle,
    no_room: Throttle,
    duplicate: Throttle,
}

/// What every connection's task shares: the admission state, the cookie keys, the deadline.
pub struct Shared {
    admission: Mutex<Admission<AbortHandle>>,
    jar: CookieJar,
    hello_timeout: Duration,
    throttles: Mutex<Throttles>,
    latency: Option<Arc<dyn Latency>>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    /// Admission under `limits`, a fresh random cookie key, and `hello_timeout`; each
    /// handshake's time to `latency`.
    pub fn new(
        limits: Limits,
        hello_timeout: Duration,
        latency: Option<Arc<dyn Latency>>,
    ) -> Result<Self, crate::crypto::CryptoError> {
        let now = Instant::now();
        Ok(Self {
            admission: Mutex::new(Admission::new(limits, now)),
            jar: CookieJar::random(&mut OsRandom, now)?,
            hello_timeout,
            throttles: Mutex::default(),
            latency,
        })
    }

    /// The admission state.
    pub fn admission(&self) -> MutexGuard<'_, Admission<AbortHandle>> {
        locked(&self.admission)
    }

    /// The counters so far.
    pub fn stats(&self) -> AdmissionStats {
        self.admission().stats()
    }

    /// Takes a new connection as a pending handshake and stops the one it displaces, if any.
    /// Returns its id, for [`Shared::set_handle`] and [`handshake`].
    pub fn connect(&self, incoming: &Incoming) -> u64 {
        let (id, evicted) = self
            .admission()
            .connect(incoming.peer_addr().ip(), Instant::now());
        if let Some(task) = evicted {
            task.abort();
        }
        id
    }

    /// Records the task serving `id`, so that admission can stop it.
    pub fn set_handle(&self, id: u64, task: AbortHandle) {
        self.admission().set_handle(id, task);
    }
}

/// Frees a connection's place in the admission state when its task ends, however it ends
/// (returned, or stopped to make room).
pub struct Release {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Release {
    fn drop(&mut self) {
        self.shared.admission().release(self.id, Instant::now());
    }
}

/// Runs pending handshake `id` until its device has a session: reads the first frame by the
/// hello deadline, asks admission what it deserves, answers with a cookie or `busy`, or runs
/// the handshake, and finds the session room (replacing the same identity's oldest beyond its
/// cap). Returns the session and the [`Release`] to hold while serving it; `None` when the
/// connection ended here.
pub async fn handshake(
    mut incoming: Incoming,
    id: u64,
    shared: Arc<Shared>,
    handshake_timeout: Duration,
) -> Option<(Connection, PeerDevice, Release)> {
    let release = Release {
        shared: shared.clone(),
        id,
    };
    let source = incoming.peer_addr().ip();
    let deadline = incoming.accepted_at() + shared.hello_timeout.min(handshake_timeout);
    let first = match incoming.first_frame(deadline).await {
        Ok(f) => f,
        Err(TransportError::HandshakeTimeout(_)) => {
            shared.admission().record(Outcome::HelloTimeout);
            incoming.refuse(AlertCode::Timeout).await;
            return None;
        }
        Err(e) => {
            tracing::debug!(peer = %source, error = %e, "connection dropped before its first frame");
            shared.admission().record(Outcome::Failed);
            return None;
        }
    };
    let now = Instant::now();
    let (kind, frame) = match cookie::open_first(&shared.jar, source, &first, now) {
        Ok(First::Full { hello, cookie }) => (FirstKind::Full(cookie), hello),
        Ok(First::Other(frame)) => (FirstKind::Other, frame),
        Err(e) => {
            tracing::debug!(peer = %source, error = %e, "malformed first frame");
            shared.admission().record(Outcome::Failed);
            incoming
                .refuse(e.alert().unwrap_or(AlertCode::DecodeError))
                .await;
            return None;
        }
    };
    let verdict = shared.admission().first(id, kind, now);
    match verdict {
        Verdict::Proceed => {}
        Verdict::Cookie => {
            let reply = shared.jar.reply(source, frame, now);
            incoming.reply_and_close(&reply).await;
            return None;
        }
        Verdict::Busy => {
            incoming.refuse(AlertCode::Busy).await;
            return None;
        }
    }
    // Boxed, like the refusal below: the handshake's and the session's state is allocated
    // when it is needed, so a connection waiting for its first frame holds a few hundred
    // bytes, not a session's worth.
    let (conn, peer) = match Box::pin(incoming.handshake_from(frame)).await {
        Ok(v) => v,
        Err(e) => {
            failed(&shared, source, &e);
            return None;
        }
    };
    let (established, duplicate) = {
        let mut admission = shared.admission();
        let before = admission.stats().duplicate_keys;
        let established = admission.establish(id, peer.identity.map(|i| i.0));
        (established, admission.stats().duplicate_keys > before)
    };
    if duplicate {
        warn_dropped!(locked(&shared.throttles).duplicate, device = %peer.name, peer = %source, "this device identity already has a session from another address: one key in two places (a copied or stolen key, or a device that moved); revoke the key if it is not the device's");
    }
    match established {
        Ok(replaced) => {
            if !replaced.is_empty() {
                warn_dropped!(locked(&shared.throttles).replaced, device = %peer.name, peer = %source, replaced = replaced.len(), "a newer session of this device identity replaces its oldest (a device that reconnected, or its key in two places)");
            }
            for task in replaced {
                task.abort();
            }
            if let Some(latency) = &shared.latency {
                latency.handshake(conn.is_resumed(), now.elapsed());
            }
            Some((conn, peer, release))
        }
        Err(why) => {
            warn_dropped!(locked(&shared.throttles).no_room, device = %peer.name, peer = %source, reason = %why, "no room for the session: refused with busy");
            Box::pin(refuse_session(conn)).await;
            None
        }
    }
}

/// Closes an authenticated session the server has no room for, with `busy`.
async fn refuse_session(mut conn: Connection) {
    let _ = conn.send_close_with(AlertCode::Busy).await;
    conn.linger().await;
}

/// Counts and logs (at a limited rate, or at debug level) a handshake that failed.
fn failed(shared: &Shared, source: std::net::IpAddr, e: &TransportError) {
    let outcome = match e {
        TransportError::HandshakeTimeout(_) => Outcome::HandshakeTimeout,
        TransportError::Handshake(HandshakeError::DeviceRefused { .. }) => Outcome::Refused,
        _ => Outcome::Failed,
    };
    shared.admission().record(outcome);
    match e {
        TransportError::Handshake(HandshakeError::DeviceRefused { device, code }) => {
            warn_dropped!(locked(&shared.throttles).refused, peer = %source, device = %device, reason = %code, "device refused");
        }
        TransportError::Handshake(HandshakeError::TicketRejected(reason)) => {
            tracing::debug!(peer = %source, %reason, "resumption refused: the device falls back to a full handshake");
        }
        _ => tracing::debug!(peer = %source, error = %e, "handshake failed"),
    }
}
