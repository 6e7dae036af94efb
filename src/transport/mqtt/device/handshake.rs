//! The device's handshakes: a new session id and hello, the ServerHellos and alerts on the
//! down topic, and what a failed handshake costs (a retry with backoff, or giving up).

use super::task::{State, Task, MAX_RETRY, MIN_RETRY};
use crate::crypto::random::OsRandom;
use crate::handshake::device::{self, ExpectServerHello};
use crate::handshake::HandshakeError;
use crate::msgs::{decode_alert, encode_alert, AlertCode, FrameType};
use crate::throttle::{later, warn_dropped};
use crate::transport::mqtt::random_hex;
use crate::transport::TransportError;
use crate::trust::TrustError;
use std::time::{Duration, Instant};

/// How often the hello is published again (same session id) until a server answers: a hello
/// that reached the broker before any server subscribed is lost, since nothing is retained.
/// A server drops a hello for a session it already holds (docs/mqtt.md §4).
pub(super) const HELLO_REPEAT: Duration = Duration::from_secs(1);

/// A handshake waiting for a ServerHello that verifies and is trusted.
pub(super) struct Handshake {
    pub(super) sid: String,
    pub(super) expect: ExpectServerHello,
    /// The DeviceHello, published again every [`HELLO_REPEAT`].
    pub(super) hello: Vec<u8>,
    pub(super) deadline: Instant,
    pub(super) repeat_at: Instant,
    /// A ServerHello that verified but whose key is not trusted: the error if no trusted
    /// server answers by the deadline.
    pub(super) untrusted: Option<TrustError>,
    /// A refusal alert: the error if no server answers by the deadline (and no untrusted
    /// one did).
    pub(super) refused: Option<AlertCode>,
}

/// Alerts by which a server refuses this device or its configuration: retrying cannot help.
pub(super) fn is_refusal(code: AlertCode) -> bool {
    matches!(
        code,
        AlertCode::UnknownDevice
            | AlertCode::DeviceAuthRequired
            | AlertCode::SuiteRefused
            | AlertCode::NoCommonAead
            | AlertCode::UnsupportedVersion
            | AlertCode::Revoked
            | AlertCode::WrongGroup
            | AlertCode::EnrollmentRefused
            | AlertCode::TokenUsed
            | AlertCode::TokenExpired
    )
}

impl Task {
    /// A handshake failed without anything authenticated to show for it: tried again after
    /// the backoff, or, after [`DeviceOptions::handshake_attempts`](super::DeviceOptions)
    /// such failures in a row, the device gives up with `reason`.
    pub(super) fn handshake_failed(
        &mut self,
        reason: TransportError,
    ) -> Result<(), TransportError> {
        self.failed_attempts += 1;
        let limit = self.options.handshake_attempts;
        if limit != 0 && self.failed_attempts >= limit {
            tracing::error!(attempts = self.failed_attempts, error = %reason, "giving up: no handshake succeeded");
            return Err(reason);
        }
        self.stats.handshake_retries += 1;
        tracing::warn!(
            attempt = self.failed_attempts,
            retry_in = ?self.retry,
            error = %reason,
            "handshake failed (nothing authenticated says why, so it may be a stranger's doing): trying again"
        );
        self.retry_later();
        Ok(())
    }

    pub(super) fn retry_later(&mut self) {
        self.state = State::Waiting {
            until: later(Instant::now(), self.retry),
        };
        self.retry = (self.retry * 2).min(MAX_RETRY);
    }

    pub(super) fn begin_handshake(&mut self) -> Result<(), TransportError> {
        self.close_session();
        if !self.link.is_connected() {
            self.state = State::Waiting {
                until: Instant::now(),
            };
            return Ok(());
        }
        let sid = random_hex::<16>().map_err(HandshakeError::from)?;
        if let Some(old) = self.subscribed.take() {
            self.link.unsubscribe(&old);
        }
        let filter = self.topics.down_filter(&self.client, &sid);
        self.link.subscribe(filter.clone());
        self.subscribed = Some(filter);
        let (expect, hello) = device::start(&self.config, &mut OsRandom)?;
        self.link
            .publish(self.topics.hello(&self.client, &sid), hello.clone());
        let now = Instant::now();
        self.state = State::Handshaking(Box::new(Handshake {
            sid,
            expect,
            hello,
            deadline: later(now, self.options.timeouts.handshake),
            repeat_at: later(now, HELLO_REPEAT),
            untrusted: None,
            refused: None,
        }));
        Ok(())
    }

    /// A frame on the down topic during the handshake. Anyone may publish there, so one that
    /// fails is dropped and the handshake goes on: the first ServerHello that verifies and
    /// is trusted wins, whichever instance sent it.
    pub(super) fn on_server_hello(
        &mut self,
        sid: String,
        instance: String,
        frame: &[u8],
    ) -> Result<(), TransportError> {
        let State::Handshaking(hs) = &self.state else {
            return Ok(());
        };
        match FrameType::of(frame) {
            Ok(FrameType::ServerHello) => {}
            Ok(FrameType::Alert) => {
                self.on_handshake_alert(&sid, frame);
                return Ok(());
            }
            _ => {
                self.malformed(&sid, "expected ServerHello");
                return Ok(());
            }
        }
        let up = self.topics.up(&self.client, &instance, &sid);
        let authed = match hs.expect.read_server_hello(frame) {
            Ok(a) => a,
            Err(e) => {
                self.stats.rejected_handshake_messages += 1;
                warn_dropped!(self.throttle, session = %sid, instance, error = %e, "ServerHello did not verify: dropped, waiting for another");
                return Ok(());
            }
        };
        if let Err(e) = self.verifier.verify(authed.server_identity()) {
            self.stats.rejected_handshake_messages += 1;
            warn_dropped!(self.throttle, session = %sid, instance, error = %e, "ServerHello from an untrusted server key: dropped, waiting for another");
            self.link
                .publish(up, encode_alert(AlertCode::ServerRejected));
            if let State::Handshaking(hs) = &mut self.state {
                hs.untrusted = Some(e);
            }
            return Ok(());
        }
        let server = authed.server_identity().fingerprint();
        let (session, finish) = authed.finish(Instant::now())?;
        self.link.publish(up, finish);
        tracing::info!(
            session = %sid,
            server = %server,
            suite = session.suite().name,
            aead = session.aead().name(),
            "session established"
        );
        self.stats.sessions += 1;
        self.retry = MIN_RETRY;
        self.outbox.resend_all();
        self.sent_at = Instant::now();
        if let Some(end) = &mut self.end {
            end.on_session(server);
        }
        self.state = State::Open {
            sid,
            instance,
            session: Box::new(session),
            authenticated: false,
            alert: None,
        };
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(());
        }
        Ok(())
    }

    /// A plaintext alert during the handshake: unauthenticated, so only noted.
    pub(super) fn on_handshake_alert(&mut self, sid: &str, frame: &[u8]) {
        let code = match decode_alert(frame) {
            Ok(code) => code,
            Err(_) => return self.malformed(sid, "malformed alert"),
        };
        self.stats.rejected_handshake_messages += 1;
        if !is_refusal(code) {
            warn_dropped!(self.throttle, session = %sid, reason = %code, "plaintext alert during the handshake ignored");
            return;
        }
        warn_dropped!(self.throttle, session = %sid, reason = %code, "a server refused this device (plaintext, unauthenticated): believed if no server answers by the deadline");
        if let State::Handshaking(hs) = &mut self.state {
            hs.refused.get_or_insert(code);
        }
    }
}
