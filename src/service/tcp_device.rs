//! `secchan device` over TCP: keeps a session up, reconnecting with back-off (and resuming
//! with a ticket where it can), and delivers every message of its [`Outbox`] until the
//! server acknowledges it (protocol.md §11).

use super::device_end::{DeviceEnd, EndError};
use crate::backoff::Backoff;
use crate::delivery::{Envelope, Outbox, OutboxError, WhenFull, ENVELOPE_LEN};
use crate::handshake::device::DeviceConfig;
use crate::handshake::resume::Ticket;
use crate::handshake::HandshakeError;
use crate::msgs::AlertCode;
use crate::telemetry::{Source, TelemetryError};
use crate::transport::tcp::{self, Connection};
use crate::transport::{Timeouts, TransportError};
use crate::trust::ServerVerifier;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// Largest message a device sends: a record's payload less the delivery envelope.
pub const MAX_MESSAGE: usize = crate::record::MAX_PAYLOAD - ENVELOPE_LEN;
/// First pause before a reconnect; it doubles up to [`BACKOFF_MAX`], each drawn between half
/// and all of it (jitter), so devices cut off together do not come back together.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// How a device runs.
#[derive(Debug, Clone)]
pub struct DeviceOptions {
    /// Handshake and idle timeouts.
    pub timeouts: Timeouts,
    /// After this long without sending, a KeyUpdate record keeps the session alive.
    pub keepalive: Duration,
    /// At the end (input finished and everything acknowledged, or a stop signal), how long
    /// to wait for the server's close, or for the last acknowledgements after a signal.
    pub close_timeout: Duration,
    /// A sent message unacknowledged for this long makes the device take the session for
    /// lost (the server is gone or stuck) and start a new one.
    pub ack_timeout: Duration,
    /// Whether a lost session is replaced by a new one (with back-off).
    pub reconnect: bool,
    /// Give up after this long without progress (no session with nothing outstanding, no
    /// acknowledgement); `None`: never.
    pub give_up_after: Option<Duration>,
    /// Where the newest resumption ticket is kept (mode 0600), so that the next run resumes;
    /// `None`: in memory only.
    pub ticket_file: Option<PathBuf>,
}

/// What a device did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceReport {
    /// Messages read from the source.
    pub queued: u64,
    /// Messages the server acknowledged.
    pub acknowledged: u64,
    /// Messages peers acknowledged end to end (`--to`, chat).
    pub peer_acknowledged: u64,
    /// Messages still unacknowledged when the device stopped.
    pub unacknowledged: usize,
    /// Messages dropped by a full outbox ([`WhenFull::DropOldest`]).
    pub dropped: u64,
    /// Sessions established (full handshakes and resumptions).
    pub sessions: u64,
    /// Of those, sessions resumed with a ticket.
    pub resumed: u64,
}

/// Why a device stopped without every message acknowledged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The server refused this device, or the device could not trust the server.
    #[error(transparent)]
    Session(TransportError),
    /// No session delivered anything for the give-up time.
    #[error("no progress with the server for {secs} s ({last}); {unacknowledged} messages remain unacknowledged")]
    GaveUp {
        /// The give-up time.
        secs: u64,
        /// The last failure.
        last: TransportError,
        /// Messages not acknowledged.
        unacknowledged: usize,
    },
    /// A stop signal came before every message was acknowledged.
    #[error("stopped with {unacknowledged} messages unacknowledged")]
    Undelivered {
        /// Messages not acknowledged.
        unacknowledged: usize,
    },
    /// The outbox's spool failed.
    #[error(transparent)]
    Spool(#[from] crate::delivery::spool::SpoolError),
    /// The telemetry source failed.
    #[error(transparent)]
    Source(#[from] TelemetryError),
    /// The receiving side or an end-to-end session failed.
    #[error(transparent)]
    End(#[from] EndError),
    /// A message is too long to be sent.
    #[error("message {number} is {len} bytes; a message is at most {max} bytes: split it", max = MAX_MESSAGE)]
    MessageTooLarge {
        /// 1-based position in the input.
        number: u64,
        /// Its length.
        len: usize,
    },
}

/// A stop signal (Ctrl-C, SIGTERM) as a future.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Where the run stands, across sessions.
struct Run {
    shutdown: Shutdown,
    /// Whether the source may still produce messages.
    input_open: bool,
    /// Whether the device stays up after its input ends, receiving (until a stop signal).
    listening: bool,
    /// After a stop signal: when the device stops whatever is unacknowledged.
    stop_by: Option<Instant>,
}

/// How a session ended.
enum End {
    /// Input finished and every message acknowledged.
    Done,
    /// The session was lost; a new one may do better.
    Lost(TransportError),
}

/// A device delivering its outbox over TCP.
pub struct TcpDevice {
    addr: String,
    config: DeviceConfig,
    verifier: Box<dyn ServerVerifier>,
    options: DeviceOptions,
    outbox: Outbox,
    /// Downlink, relay and end-to-end sessions.
    end: DeviceEnd,
    listen: bool,
    ticket: Option<Ticket>,
    report: DeviceReport,
    /// The last time the device made progress: a session with nothing outstanding, or an
    /// acknowledgement. The give-up time counts from here.
    progress: Instant,
}

impl std::fmt::Debug for TcpDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpDevice")
            .field("addr", &self.addr)
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}

/// Whether a connection attempt or a session that failed this way is worth repeating.
fn retryable(e: &TransportError) -> bool {
    match e {
        TransportError::Io(_)
        | TransportError::HandshakeTimeout(_)
        | TransportError::IdleTimeout(_)
        | TransportError::Truncated
        | TransportError::Unacknowledged(_)
        | TransportError::TicketRefused(_) => true,
        TransportError::Handshake(HandshakeError::PeerAlert(code))
        | TransportError::Session(crate::session::SessionError::PeerAlert(code)) => matches!(
            code,
            AlertCode::Timeout | AlertCode::InternalError | AlertCode::GoingAway | AlertCode::Busy
        ),
        TransportError::Session(_) => true,
        _ => false,
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

impl TcpDevice {
    /// A device for the server at `addr`, trusting it through `verifier`, delivering
    /// `outbox` (in memory, or spooled).
    pub fn new(
        addr: String,
        config: DeviceConfig,
        verifier: Box<dyn ServerVerifier>,
        options: DeviceOptions,
        outbox: Outbox,
    ) -> Self {
        let ticket = options
            .ticket_file
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| Ticket::from_bytes(&b).ok())
            .filter(|t| t.is_valid_at(SystemTime::now()));
        Self {
            addr,
            config,
            verifier,
            options,
            outbox,
            end: DeviceEnd::new(None, None, Box::new(std::io::stdout())),
            listen: false,
            ticket,
            report: DeviceReport::default(),
            progress: Instant::now(),
        }
    }

    /// Receives through `end` (downlink and end-to-end sessions; its `--to` peer takes the
    /// input instead of the server), and with `listen` stays up after the input ends.
    pub fn receiving(mut self, end: DeviceEnd, listen: bool) -> Self {
        self.end = end;
        self.listen = listen;
        self
    }

    /// Reads `source` into the outbox and delivers it, until the source ends and everything
    /// is acknowledged (then `Ok`), or `shutdown` resolves, or the server refuses the
    /// device, or no session could be had for the give-up time.
    pub async fn run(
        mut self,
        source: &mut Source,
        shutdown: Shutdown,
    ) -> Result<DeviceReport, (DeviceError, DeviceReport)> {
        let mut run = Run {
            shutdown,
            input_open: true,
            listening: self.listen,
            stop_by: None,
        };
        match self.deliver(source, &mut run).await {
            Ok(()) => Ok(self.finish_report()),
            Err(e) => Err((e, self.finish_report())),
        }
    }

    fn finish_report(&mut self) -> DeviceReport {
        self.report.unacknowledged = self.outbox.len();
        self.report.dropped = self.outbox.dropped();
        self.report.peer_acknowledged = self.end.delivered();
        self.report
    }

    fn is_done(&self, run: &Run) -> bool {
        !run.input_open && !run.listening && self.outbox.is_empty() && !self.end.busy()
    }

    async fn deliver(&mut self, source: &mut Source, run: &mut Run) -> Result<(), DeviceError> {
        let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX, (0.5, 1.0));
        loop {
            if self.is_done(run) {
                return Ok(());
            }
            let failure = match self.connect().await {
                Ok(conn) => {
                    backoff.reset();
                    self.report.sessions += 1;
                    self.report.resumed += u64::from(conn.is_resumed());
                    tracing::info!(server = %self.addr, resumed = conn.is_resumed(), unacknowledged = self.outbox.len(), "session established");
                    if self.outbox.is_empty() {
                        self.progress = Instant::now();
                    }
                    match self.session(conn, source, run).await? {
                        End::Done => return Ok(()),
                        End::Lost(e) => e,
                    }
                }
                Err(e) => e,
            };
            if !retryable(&failure) {
                return Err(DeviceError::Session(failure));
            }
            if !self.options.reconnect {
                return Err(DeviceError::Session(failure));
            }
            if let Some(limit) = self.options.give_up_after {
                if self.progress.elapsed() >= limit {
                    return Err(self.gave_up(failure, limit));
                }
            }
            let pause = backoff.next_pause();
            tracing::warn!(server = %self.addr, error = %failure, retry_in = ?pause, unacknowledged = self.outbox.len(), "no session: reconnecting");
            self.offline(pause, source, run).await?;
        }
    }

    fn gave_up(&self, last: TransportError, after: Duration) -> DeviceError {
        DeviceError::GaveUp {
            secs: after.as_secs(),
            last,
            unacknowledged: self.outbox.len(),
        }
    }

    /// A new session: resumed with the ticket if there is one the server takes, else a
    /// full handshake.
    async fn connect(&mut self) -> Result<Connection, TransportError> {
        let timeouts = self.options.timeouts;
        if let Some(ticket) = self.ticket.take() {
            match tcp::resume(
                &self.addr,
                &self.config,
                &ticket,
                self.verifier.as_ref(),
                timeouts,
            )
            .await
            {
                Ok(conn) => return Ok(conn),
                Err(TransportError::TicketRefused(code)) => {
                    tracing::info!(reason = %code, "resumption refused: full handshake");
                }
                Err(TransportError::Handshake(HandshakeError::TicketUnusable(why))) => {
                    tracing::debug!(%why, "ticket unusable: full handshake");
                }
                Err(e) => {
                    // The server may never have seen it: try it again next time.
                    self.ticket = Some(ticket);
                    return Err(e);
                }
            }
        }
        tcp::connect(&self.addr, &self.config, self.verifier.as_ref(), timeouts).await
    }

    /// Keeps the newest ticket the server sent, in memory and in the ticket file.
    fn keep_ticket(&mut self, conn: &mut Connection) {
        let Some(ticket) = conn.take_ticket() else {
            return;
        };
        if let Some(path) = &self.options.ticket_file {
            if let Err(e) = write_private(path, &ticket.to_bytes()) {
                tracing::warn!(file = %path.display(), error = %e, "cannot keep the resumption ticket: the next run does a full handshake");
            }
        }
        self.ticket = Some(ticket);
    }

    /// Runs one session until it ends.
    async fn session(
        &mut self,
        mut conn: Connection,
        source: &mut Source,
        run: &mut Run,
    ) -> Result<End, DeviceError> {
        self.outbox.resend_all();
        let server = conn.session().peer_identity().map(|k| k.fingerprint());
        self.end.on_session(server.unwrap_or_default());
        let keepalive = self.options.keepalive;
        let mut keepalive_at = Instant::now() + keepalive;
        let mut close_by: Option<Instant> = None;
        loop {
            let now = std::time::Instant::now();
            let mut due = self.end.due(now);
            due.extend(self.outbox.due(now)?);
            if !due.is_empty() {
                let sent = due.iter().try_for_each(|m| conn.queue(m));
                if let Err(e) = sent {
                    return Ok(End::Lost(e));
                }
                if let Err(e) = conn.flush().await {
                    return Ok(End::Lost(e));
                }
                keepalive_at = Instant::now() + keepalive;
            }
            if self.is_done(run) && close_by.is_none() {
                // Everything is acknowledged: the close is a courtesy, not a confirmation.
                let _ = conn.send_close().await;
                close_by = Some(Instant::now() + self.options.close_timeout);
            }
            let accepting = self.accepting(run);
            let stop_at = run.stop_by.unwrap_or_else(far_future);
            let oldest = match (self.outbox.oldest_sent(), self.end.oldest_sent()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let ack_due = oldest.map_or_else(far_future, |t| {
                Instant::from_std(t) + self.options.ack_timeout
            });
            let tick_at = if self.end.busy() {
                Instant::now() + Duration::from_secs(1)
            } else {
                far_future()
            };
            tokio::select! {
                biased;
                received = conn.recv() => {
                    self.keep_ticket(&mut conn);
                    match received {
                        Ok(Some(message)) => self.on_message(&message)?,
                        Ok(None) if self.is_done(run) => return Ok(End::Done),
                        Ok(None) => return Ok(End::Lost(TransportError::Truncated)),
                        Err(e) => return self.on_session_error(e, run),
                    }
                }
                line = source.next(), if accepting => self.take(line?, run)?,
                () = tokio::time::sleep_until(tick_at) => self.end.tick(std::time::Instant::now())?,
                () = tokio::time::sleep_until(keepalive_at), if close_by.is_none() => {
                    if let Err(e) = conn.update_keys().await {
                        return Ok(End::Lost(e));
                    }
                    keepalive_at = Instant::now() + keepalive;
                }
                () = tokio::time::sleep_until(close_by.unwrap_or_else(far_future)), if close_by.is_some() => {
                    tracing::debug!("the server did not answer the close; every message was acknowledged");
                    return Ok(End::Done);
                }
                () = tokio::time::sleep_until(ack_due) => {
                    return Ok(End::Lost(TransportError::Unacknowledged(self.options.ack_timeout)));
                }
                () = &mut run.shutdown, if run.stop_by.is_none() => self.interrupted(run),
                () = tokio::time::sleep_until(stop_at), if run.stop_by.is_some() => {
                    let _ = conn.send_close().await;
                    return Err(DeviceError::Undelivered { unacknowledged: self.outbox.len() });
                }
            }
        }
    }

    /// Waits `pause` without a session, still reading the source into the outbox.
    async fn offline(
        &mut self,
        pause: Duration,
        source: &mut Source,
        run: &mut Run,
    ) -> Result<(), DeviceError> {
        let until = Instant::now() + pause;
        loop {
            if self.is_done(run) {
                return Ok(());
            }
            let accepting = self.accepting(run);
            let stop_at = run.stop_by.unwrap_or_else(far_future);
            tokio::select! {
                () = tokio::time::sleep_until(until) => return Ok(()),
                line = source.next(), if accepting => self.take(line?, run)?,
                () = &mut run.shutdown, if run.stop_by.is_none() => self.interrupted(run),
                () = tokio::time::sleep_until(stop_at), if run.stop_by.is_some() => {
                    return Err(DeviceError::Undelivered { unacknowledged: self.outbox.len() });
                }
            }
        }
    }

    /// Whether the source may be read: it is open and there is room for its next line.
    fn accepting(&self, run: &Run) -> bool {
        run.input_open
            && if self.end.takes_input() {
                self.end.has_room()
            } else {
                !self.outbox.is_full() || self.outbox.when_full() == WhenFull::DropOldest
            }
    }

    fn interrupted(&mut self, run: &mut Run) {
        tracing::info!(wait = ?self.options.close_timeout, unacknowledged = self.outbox.len(), "interrupted: no more input; waiting for the last acknowledgements");
        run.input_open = false;
        run.listening = false;
        run.stop_by = Some(Instant::now() + self.options.close_timeout);
    }

    /// Queues one message from the source, or notes its end.
    fn take(&mut self, line: Option<Vec<u8>>, run: &mut Run) -> Result<(), DeviceError> {
        let Some(line) = line else {
            run.input_open = false;
            return Ok(());
        };
        self.report.queued += 1;
        if line.len() > MAX_MESSAGE {
            return Err(DeviceError::MessageTooLarge {
                number: self.report.queued,
                len: line.len(),
            });
        }
        if self.end.takes_input() {
            return Ok(self.end.on_input(line, std::time::Instant::now())?);
        }
        match self.outbox.push(line) {
            Ok(_) => Ok(()),
            Err(OutboxError::Spool(e)) => Err(e.into()),
            // The source is read only while there is room.
            Err(OutboxError::Full(_) | OutboxError::Ack(_) | OutboxError::Unspoolable) => Ok(()),
        }
    }

    /// A message from the server: an acknowledgement of the outbox, or for the device end.
    fn on_message(&mut self, message: &[u8]) -> Result<(), DeviceError> {
        let envelope = match Envelope::decode(message) {
            Ok(e) => self.end.on_envelope(e, std::time::Instant::now())?,
            Err(e) => {
                tracing::warn!(error = %e, "malformed message from the server: dropped");
                return Ok(());
            }
        };
        let Some(Envelope::Ack { stream, next }) = envelope else {
            return Ok(());
        };
        match self.outbox.ack(stream, next) {
            Ok(n) => {
                self.report.acknowledged += n as u64;
                if n > 0 {
                    self.progress = Instant::now();
                }
            }
            Err(OutboxError::Spool(e)) => return Err(e.into()),
            Err(e) => tracing::warn!(error = %e, "acknowledgement ignored"),
        }
        Ok(())
    }

    /// What a failed session means: lost (reconnect), done, or the end of the device.
    fn on_session_error(&self, e: TransportError, run: &Run) -> Result<End, DeviceError> {
        if self.is_done(run) {
            return Ok(End::Done);
        }
        if retryable(&e) {
            Ok(End::Lost(e))
        } else {
            Err(DeviceError::Session(e))
        }
    }
}

/// Writes `bytes` to `path` atomically, readable by the owner only.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_failures_are_retried_and_refusals_are_not() {
        let io = TransportError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(retryable(&io));
        assert!(retryable(&TransportError::Truncated));
        assert!(retryable(&TransportError::Session(
            crate::session::SessionError::PeerAlert(AlertCode::GoingAway)
        )));
        assert!(!retryable(&TransportError::Refused(
            AlertCode::UnknownDevice
        )));
        assert!(!retryable(&TransportError::Session(
            crate::session::SessionError::PeerAlert(AlertCode::Revoked)
        )));
        assert!(!retryable(&TransportError::Handshake(
            HandshakeError::ServerAuthFailed
        )));
    }
}
