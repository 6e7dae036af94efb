//! `secchan server` over TCP: the accept loop, one task per session feeding the
//! [`intake`](super::intake), and the graceful drain on shutdown (protocol.md §11.4).

use super::admission::{AdmissionStats, Limits};
use super::hub::{Attached, FromDevice, Hub};
use super::intake::{Intake, IntakeSession};
use super::live::Live;
use super::sink::{Origin, SinkRecord};
pub use super::tcp_accept::DEFAULT_HELLO_TIMEOUT;
use super::tcp_accept::{self, Shared};
use crate::delivery::Envelope;
use crate::handshake::server::PeerDevice;
use crate::msgs::AlertCode;
use crate::throttle::WARN_EVERY;
use crate::transport::tcp::{Connection, Listener};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

/// Default for [`ServerOptions::drain_timeout`].
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(10);
/// After the drain deadline, how long a session still waits for the sink to write (and
/// acknowledge) what it read before it closes anyway: the device keeps what is not
/// acknowledged.
const WRITE_GRACE: Duration = Duration::from_secs(5);

/// Pause after an accept error that is about the process or the system rather than one
/// connection (no file descriptor left, no buffer memory): it repeats until one frees up, so
/// retrying at once would spin and flood the log.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How a TCP server runs.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Pending handshakes, sessions, per source and per device, and when cookies are asked
    /// for (protocol.md §2.3).
    pub limits: Limits,
    /// How long a connection may take to deliver its whole first frame.
    pub hello_timeout: Duration,
    /// On shutdown, how long sessions go on reading what their devices still send.
    pub drain_timeout: Duration,
    /// The device list, when it can change while sessions run (a registry, a reloaded
    /// authorized-devices file): a session ends as soon as the list stops accepting its device.
    pub live: Option<Arc<dyn Live>>,
    /// What the server sends its devices: downlink messages and relayed frames.
    pub hub: Arc<Hub>,
    /// Told how long each handshake took, from the connection's first frame to the session.
    pub latency: Option<Arc<dyn super::latency::Latency>>,
}

/// How long to wait before the next accept after `e`.
pub fn accept_backoff(e: &std::io::Error) -> Option<Duration> {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset, Interrupted};
    match e.kind() {
        // The connection being accepted went away: the next one is unaffected.
        ConnectionAborted | ConnectionRefused | ConnectionReset | Interrupted => None,
        // EMFILE, ENFILE, ENOBUFS, ENOMEM and anything unknown.
        _ => Some(ACCEPT_BACKOFF),
    }
}

/// [`TcpServer::run`] with a server made from `options`.
pub async fn run(
    listener: Listener,
    intake: Intake,
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
) -> AdmissionStats {
    match TcpServer::new(options) {
        Ok(server) => server.run(listener, intake, shutdown).await,
        Err(e) => {
            tracing::error!(error = %e, "no randomness for the cookie key: not accepting");
            AdmissionStats::default()
        }
    }
}

/// What a server's admission has counted, readable while it runs (tests, metrics).
#[derive(Clone)]
pub struct Counters(Arc<Shared>);

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Counters").field(&self.stats()).finish()
    }
}

impl Counters {
    /// The counters so far.
    pub fn stats(&self) -> AdmissionStats {
        self.0.stats()
    }

    /// Handshakes pending and sessions established now.
    pub fn now(&self) -> (usize, usize) {
        let a = self.0.admission();
        (a.pending(), a.sessions())
    }
}

/// A TCP server whose admission state exists before it accepts anything.
pub struct TcpServer {
    shared: Arc<Shared>,
    options: ServerOptions,
    sessions: super::status::Sessions,
}

impl TcpServer {
    /// A server with `options` and a fresh cookie key.
    pub fn new(options: ServerOptions) -> Result<Self, crate::crypto::CryptoError> {
        let shared = Shared::new(
            options.limits.clone(),
            options.hello_timeout,
            options.latency.clone(),
        )?;
        Ok(Self {
            shared: Arc::new(shared),
            options,
            sessions: Default::default(),
        })
    }

    /// Its live sessions (`secchan status`).
    pub fn sessions(&self) -> super::status::Sessions {
        self.sessions.clone()
    }

    /// Its counters.
    pub fn counters(&self) -> Counters {
        Counters(self.shared.clone())
    }

    /// Accepts devices until `shutdown` resolves, then stops accepting and drains every
    /// session: each reads on until its device closes or the drain deadline passes, has
    /// everything it read written and acknowledged, and then closes (`close_notify` to a
    /// device that closed, `going_away` to one that did not). Returns, once every session has
    /// ended, what admission counted.
    ///
    /// The accept loop runs as a task of its own on the runtime (stopped if this future is
    /// dropped): each accept and each connection's end then wakes a worker that is already
    /// running, not the thread that awaits this future (under `block_on`, a thread of its own
    /// parked and woken for every connection). Must be called within a Tokio runtime.
    pub async fn run(
        self,
        listener: Listener,
        intake: Intake,
        shutdown: impl Future<Output = ()>,
    ) -> AdmissionStats {
        let Self {
            shared,
            options,
            sessions,
        } = self;
        let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
        let stopped = async {
            let _ = stopped.await;
        };
        let mut running = AbortOnDropHandle::new(tokio::spawn(accept_loop(
            listener,
            intake,
            (options, sessions),
            shared,
            stopped,
        )));
        tokio::pin!(shutdown);
        let ran = tokio::select! {
            ran = &mut running => ran,
            () = &mut shutdown => {
                let _ = stopping.send(());
                running.await
            }
        };
        match ran {
            Ok(stats) => stats,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => AdmissionStats::default(),
        }
    }
}

/// Stops, when dropped, every connection's task that still holds a place in admission.
struct StopAll(Arc<Shared>);

impl Drop for StopAll {
    fn drop(&mut self) {
        let handles = self.0.admission().take_handles();
        handles.iter().for_each(AbortHandle::abort);
    }
}

async fn accept_loop(
    listener: Listener,
    intake: Intake,
    (options, sessions): (ServerOptions, super::status::Sessions),
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) -> AdmissionStats {
    let (stop, stopped) = watch::channel(false);
    let handshake_timeout = listener.timeouts().handshake;
    let tasks = TaskTracker::new();
    // However this loop ends (its drain done, its grace run out, or the loop dropped), the
    // connections' tasks end with it.
    let _stop_all = StopAll(shared.clone());
    let mut summary = tokio::time::interval(WARN_EVERY);
    let mut last = shared.stats();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            incoming = listener.accept() => {
                let incoming = match incoming {
                    Ok(i) => i,
                    Err(e) => {
                        let pause = accept_backoff(&e);
                        tracing::warn!(error = %e, pause = ?pause, "accept failed");
                        if let Some(pause) = pause {
                            tokio::time::sleep(pause).await;
                        }
                        continue;
                    }
                };
                let id = shared.connect(&incoming);
                let (intake, shared_for_task) = (intake.clone(), shared.clone());
                let live = options.live.clone();
                let hub = options.hub.clone();
                let sessions = sessions.clone();
                let stopped = stopped.clone();
                let drain = options.drain_timeout;
                // Each stage's state (the handshake's, then the session's 10 KB) is boxed when
                // the stage begins, on the task's worker: a pending connection holds only the
                // handshake's, and the task itself a few pointers, so this loop copies little
                // per connection. Tracked, not joined, so that a task's end frees its memory at
                // once and wakes nothing.
                let fut = async move {
                    let handshake = tcp_accept::handshake(incoming, id, shared_for_task, handshake_timeout);
                    let Some((conn, peer, _release)) = Box::pin(handshake).await else {
                        return;
                    };
                    let attached = hub.attach_peer(&peer, live.as_ref());
                    let name = peer.name.clone();
                    let s = Served { intake, live, hub: hub.clone(), attached: attached.clone(), sessions };
                    Box::pin(serve(conn, peer, s, stopped, drain)).await;
                    hub.detach(&name, attached.id);
                };
                let task = tasks.spawn(fut);
                shared.set_handle(id, task.abort_handle());
            }
            _ = summary.tick() => {
                let now = shared.stats();
                if let Some(grew) = now.summary_since(&last) {
                    let (pending, sessions) = {
                        let mut a = shared.admission();
                        a.sweep(std::time::Instant::now());
                        (a.pending(), a.sessions())
                    };
                    tracing::warn!(pending, sessions, "in the last {} s: {grew}", WARN_EVERY.as_secs());
                }
                last = now;
            }
            () = &mut shutdown => {
                tracing::info!(drain = ?options.drain_timeout, "shutting down: no new connections; draining every session");
                break;
            }
        }
    }
    drop(listener);
    drop(intake);
    let _ = stop.send(true);
    // Handshakes in progress finish or time out, then drain at once.
    let grace = options.drain_timeout + WRITE_GRACE + Duration::from_secs(10);
    tasks.close();
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        tracing::warn!("some sessions did not end in time: stopped");
    }
    let stats = shared.stats();
    tracing::info!(
        accepted = stats.accepted,
        sessions = stats.sessions,
        full_handshakes = stats.full_handshakes,
        cookies_sent = stats.cookies_sent,
        busy = stats.busy,
        evicted = stats.evicted + stats.evicted_source,
        hello_timeouts = stats.hello_timeouts,
        handshake_timeouts = stats.handshake_timeouts,
        handshake_failures = stats.handshake_failures,
        devices_refused = stats.devices_refused,
        sessions_refused = stats.sessions_refused,
        sessions_replaced = stats.sessions_replaced,
        peak_pending = stats.peak_pending,
        peak_sessions = stats.peak_sessions,
        "connections served"
    );
    stats
}

/// A session's reading half: where it is in its life.
struct Reading {
    /// Whether the device may still send (it has not closed, the drain has not ended).
    open: bool,
    /// Whether the device closed the session with `close_notify`.
    device_closed: bool,
    /// Submissions not yet handled by the intake.
    outstanding: usize,
    /// When the drain stops reading, once shutdown began.
    drain_until: Option<Instant>,
}

/// What a session serves its device with.
struct Served {
    intake: Intake,
    live: Option<Arc<dyn Live>>,
    hub: Arc<Hub>,
    attached: Attached,
    sessions: super::status::Sessions,
}

/// Serves one device until it closes, the device list stops accepting it, or the drain ends.
async fn serve(
    mut conn: Connection,
    peer: PeerDevice,
    served: Served,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) {
    let Served {
        intake,
        live,
        hub,
        attached,
        sessions,
    } = served;
    let addr = conn.peer_addr();
    tracing::info!(
        device = %peer.name,
        peer = %addr,
        suite = conn.session().suite().name,
        aead = conn.session().aead().name(),
        resumed = conn.is_resumed(),
        "session established"
    );
    let listed = sessions.start(
        peer.name.clone(),
        peer.identity.map(|i| i.fingerprint()),
        addr.to_string(),
        (conn.session().suite().name, conn.session().aead().name()),
        conn.is_resumed(),
    );
    // The device's close is answered only once everything it sent is acknowledged.
    conn.defer_close_answer();
    let origin = Arc::new(Origin {
        device: peer.clone(),
        peer: addr.to_string(),
        suite: conn.session().suite().name,
        aead: conn.session().aead().name(),
    });
    let (submit, mut acks) = intake.session();
    drop(intake);
    let revoked = async {
        match (&live, &peer.identity) {
            (Some(r), Some(id)) => r.until_refused(id).await,
            _ => std::future::pending().await,
        }
    };
    tokio::pin!(revoked);
    let mut r = Reading {
        open: true,
        device_closed: false,
        outstanding: 0,
        drain_until: None,
    };
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    while r.open || r.outstanding > 0 {
        // This side's key updates (acknowledgements may rotate its key), for `secchan status`.
        listed.update(conn.session());
        let drain_at = r.drain_until.unwrap_or(far);
        let write_deadline = r.drain_until.map_or(far, |d| d + WRITE_GRACE);
        tokio::select! {
            biased;
            update = acks.recv() => {
                let Some(update) = update else { break };
                r.outstanding = r.outstanding.saturating_sub(update.handled);
                for ((_, stream), next) in update.acks {
                    if let Err(e) = conn.queue(&Envelope::Ack { stream, next }.encode()) {
                        tracing::debug!(device = %peer.name, error = %e, "cannot acknowledge: session closed");
                    }
                }
                if let Err(e) = conn.flush().await {
                    tracing::warn!(device = %peer.name, peer = %addr, error = %e, "session ended with an error");
                    return;
                }
            }
            () = attached.wake.notified() => {
                for envelope in hub.due(&peer.name, std::time::Instant::now()) {
                    if let Err(e) = conn.queue(&envelope) {
                        tracing::debug!(device = %peer.name, error = %e, "cannot send: session closed");
                    }
                }
                if let Err(e) = conn.flush().await {
                    tracing::warn!(device = %peer.name, peer = %addr, error = %e, "session ended with an error");
                    return;
                }
            }
            () = submit.closed() => {
                tracing::error!(device = %peer.name, peer = %addr, "the output failed: closing the session, the device keeps what is not acknowledged");
                let _ = conn.send_close_with(AlertCode::InternalError).await;
                return conn.linger().await;
            }
            code = &mut revoked => {
                tracing::warn!(device = %peer.name, peer = %addr, reason = %code, "closing the session: the device list no longer accepts the device");
                let _ = conn.send_close_with(code).await;
                return conn.linger().await;
            }
            received = conn.recv(), if r.open => match received {
                Ok(Some(message)) => {
                    listed.update(conn.session());
                    listed.seen(message.len());
                    if let Err(e) = on_message((&submit, &hub, &mut conn), &origin, message, &mut r).await {
                        tracing::warn!(device = %peer.name, peer = %addr, error = %e, "closing the session");
                        let _ = conn.send_close_with(e.alert()).await;
                        return conn.linger().await;
                    }
                }
                Ok(None) => {
                    r.open = false;
                    r.device_closed = true;
                }
                Err(e) => {
                    listed.update(conn.session());
                    tracing::warn!(device = %peer.name, peer = %addr, error = %e, "session ended with an error");
                    return conn.linger().await;
                }
            },
            _ = async { let _ = stop.wait_for(|s| *s).await; }, if r.drain_until.is_none() => {
                r.drain_until = Some(Instant::now() + drain);
            }
            () = tokio::time::sleep_until(drain_at), if r.open => r.open = false,
            () = tokio::time::sleep_until(write_deadline) => {
                tracing::warn!(device = %peer.name, unacknowledged = r.outstanding, "the output did not take the device's last messages in time: closing, the device keeps them");
                break;
            }
        }
    }
    if r.device_closed && r.outstanding == 0 {
        tracing::info!(device = %peer.name, peer = %addr, "session closed");
        let _ = conn.send_close().await;
    } else {
        tracing::info!(device = %peer.name, peer = %addr, "server shutting down: closing the session (going away)");
        let _ = conn.send_close_with(AlertCode::GoingAway).await;
        conn.linger().await;
    }
}

/// Why a session is closed because of what the device sent.
#[derive(Debug, thiserror::Error)]
enum MessageError {
    #[error("the device sent a malformed delivery message: {0}")]
    Malformed(crate::codec::DecodeError),
    #[error("the device sent an envelope only a server sends")]
    Unexpected,
    #[error(transparent)]
    Intake(#[from] super::intake::IntakeClosed),
}

impl MessageError {
    fn alert(&self) -> AlertCode {
        match self {
            Self::Malformed(_) => AlertCode::DecodeError,
            Self::Unexpected => AlertCode::UnexpectedMessage,
            Self::Intake(_) => AlertCode::InternalError,
        }
    }
}

/// Handles one envelope from the device: a Message goes to the intake, an Ack and a Relay to
/// the hub.
async fn on_message(
    (submit, hub, conn): (&IntakeSession, &Hub, &mut Connection),
    origin: &Arc<Origin>,
    message: bytes::Bytes,
    r: &mut Reading,
) -> Result<(), MessageError> {
    let name = &origin.device.name;
    let (stream, seq, base, range) = match Envelope::decode(&message) {
        Ok(Envelope::Message {
            stream,
            seq,
            base,
            data,
        }) => {
            let start = message.len() - data.len();
            (stream, seq, base, start..message.len())
        }
        Ok(other) => {
            return match hub.from_device(name, other) {
                FromDevice::Done => Ok(()),
                FromDevice::Reply(ack) => {
                    if conn.queue(&ack).is_ok() {
                        let _ = conn.flush().await;
                    }
                    Ok(())
                }
                FromDevice::Unexpected => Err(MessageError::Unexpected),
            };
        }
        Err(e) => return Err(MessageError::Malformed(e)),
    };
    let record = SinkRecord {
        origin: origin.clone(),
        stream,
        seq,
        data: message.slice(range),
        received: std::time::SystemTime::now(),
    };
    submit.submit(record, base).await?;
    r.outstanding += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backs_off_when_descriptors_run_out() {
        // EMFILE and ENFILE on Linux: every accept fails until a descriptor frees up.
        for errno in [24, 23] {
            let e = std::io::Error::from_raw_os_error(errno);
            assert_eq!(accept_backoff(&e), Some(ACCEPT_BACKOFF), "{e}");
        }
        let aborted = std::io::Error::from(std::io::ErrorKind::ConnectionAborted);
        assert_eq!(accept_backoff(&aborted), None);
    }
}
