//! The device's background task: the run loop, its timers, records and acknowledgements.

use super::handshake::{is_refusal, Handshake, HELLO_REPEAT};
use super::{DeviceOptions, DeviceStats};
use crate::delivery::{Envelope, Outbox};
use crate::handshake::device::DeviceConfig;
use crate::handshake::HandshakeError;
use crate::msgs::{decode_alert, AlertCode, FrameType};
use crate::record::RecordError;
use crate::service::device_end::DeviceEnd;
use crate::session::{Event, Session, SessionError};
use crate::throttle::{later, warn_dropped, Throttle};
use crate::transport::mqtt::link::{Link, LinkEvent};
use crate::transport::mqtt::topics::{Route, Topics};
use crate::transport::mqtt::{may_be_record, MqttError};
use crate::transport::TransportError;
use crate::trust::ServerVerifier;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// First delay before another handshake after a failed one; doubled up to
/// [`MAX_RETRY`].
pub(super) const MIN_RETRY: Duration = Duration::from_millis(500);
/// Longest delay between handshake attempts.
pub(super) const MAX_RETRY: Duration = Duration::from_secs(30);
/// How often the end-to-end sessions' timers are looked at while something sent to a peer
/// is unacknowledged.
const TICK: Duration = Duration::from_secs(1);
/// A time far enough ahead to mean "no deadline".
const FAR: Duration = Duration::from_secs(86_400);

pub(super) enum State {
    /// Waiting to (re)start a handshake: after a failure, or for the broker.
    Waiting {
        until: Instant,
    },
    Handshaking(Box<Handshake>),
    Open {
        sid: String,
        instance: String,
        session: Box<Session>,
        /// Whether an authenticated record arrived from the server.
        authenticated: bool,
        /// A plaintext alert received before that: the server refusing this device after
        /// DeviceFinish, or a stranger's forgery. Believed only if the server then stops
        /// acknowledging.
        alert: Option<AlertCode>,
    },
}

pub(super) struct Task {
    pub(super) link: Link,
    pub(super) topics: Topics,
    /// This device's `{client}` topic level.
    pub(super) client: String,
    pub(super) config: DeviceConfig,
    pub(super) verifier: Arc<dyn ServerVerifier>,
    pub(super) options: DeviceOptions,
    pub(super) outbox: Outbox,
    pub(super) state: State,
    pub(super) input: mpsc::Receiver<Vec<u8>>,
    pub(super) input_open: bool,
    pub(super) stats: DeviceStats,
    pub(super) stats_tx: watch::Sender<DeviceStats>,
    /// Told when the first session is up.
    pub(super) ready: Option<oneshot::Sender<()>>,
    pub(super) retry: Duration,
    /// Failed handshakes since the last session whose server authenticated.
    pub(super) failed_attempts: u32,
    /// The down-topic filter currently subscribed.
    pub(super) subscribed: Option<String>,
    pub(super) full_logged: bool,
    pub(super) throttle: Throttle,
    /// Downlink, relay and end-to-end sessions, if the device takes part in them.
    pub(super) end: Option<DeviceEnd>,
    /// When the open session last sent a record (or opened): the keep-alive counts from here.
    pub(super) sent_at: Instant,
}

impl Task {
    pub(super) async fn run(mut self) -> Result<DeviceStats, TransportError> {
        loop {
            self.pump(Instant::now());
            self.note_buffer();
            if !self.has_work() {
                self.close_session();
                self.publish_stats();
                self.link.close().await;
                return Ok(self.stats);
            }
            self.publish_stats();
            let deadline = tokio::time::Instant::from_std(self.deadline());
            let accepting = self.input_open
                && match self.end.as_ref().filter(|e| e.takes_input()) {
                    Some(end) => end.has_room(),
                    None => {
                        !self.outbox.is_full()
                            || self.outbox.when_full() == crate::delivery::WhenFull::DropOldest
                    }
                };
            let keepalive_at = match (self.options.keepalive, &self.state) {
                (Some(k), State::Open { .. }) if self.link.is_connected() => later(self.sent_at, k),
                _ => Instant::now() + FAR,
            };
            let tick_at = match &self.end {
                Some(end) if end.busy() => later(Instant::now(), TICK),
                _ => Instant::now() + FAR,
            };
            tokio::select! {
                ev = self.link.next_event() => match ev {
                    Some(ev) => self.on_link(ev)?,
                    None => return Err(MqttError::Stopped.into()),
                },
                m = self.input.recv(), if accepting => match m {
                    Some(m) if self.end.as_ref().is_some_and(DeviceEnd::takes_input) => {
                        self.stats.queued += 1;
                        if let Some(end) = &mut self.end {
                            end.on_input(m, Instant::now()).map_err(MqttError::End)?;
                        }
                    }
                    Some(m) => {
                        // Cannot fail: the buffer is not full.
                        // Only a spool can fail: the buffer has room.
                        if let Err(crate::delivery::OutboxError::Spool(e)) = self.outbox.push(m) {
                            return Err(MqttError::Spool(e).into());
                        }
                        self.stats.queued += 1;
                    }
                    None => self.input_open = false,
                },
                _ = tokio::time::sleep_until(deadline) => self.on_timer()?,
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(keepalive_at)) => self.keepalive(),
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(tick_at)) => {
                    if let Some(end) = &mut self.end {
                        end.tick(Instant::now()).map_err(MqttError::End)?;
                    }
                }
            }
        }
    }

    /// Whether the device has more to do: input to read, messages the server has not
    /// acknowledged, or messages a peer has not acknowledged end to end.
    fn has_work(&self) -> bool {
        self.input_open || !self.outbox.is_empty() || self.end.as_ref().is_some_and(DeviceEnd::busy)
    }

    pub(super) fn publish_stats(&mut self) {
        self.stats.buffered = self.outbox.len();
        self.stats.acknowledged_end_to_end = self.end.as_ref().map_or(0, DeviceEnd::delivered);
        self.stats.bytes = self.link.bytes();
        self.stats.dropped_publishes = self.link.dropped();
        self.stats_tx.send_replace(self.stats);
    }

    pub(super) fn note_buffer(&mut self) {
        if self.outbox.is_full() && !self.full_logged {
            self.full_logged = true;
            self.stats.buffer_full += 1;
            tracing::warn!(
                buffered = self.outbox.len(),
                "telemetry buffer full: every message is kept until the server acknowledges it, so reading the source is paused until then"
            );
        } else if self.full_logged && self.outbox.len() < self.outbox.capacity() / 2 {
            self.full_logged = false;
            tracing::info!(
                buffered = self.outbox.len(),
                "telemetry buffer drained: source resumed"
            );
        }
    }

    /// When the next timer fires.
    pub(super) fn deadline(&self) -> Instant {
        let now = Instant::now();
        if !self.link.is_connected() {
            return now + FAR;
        }
        match &self.state {
            State::Waiting { until } => *until,
            State::Handshaking(hs) => hs.repeat_at.min(hs.deadline),
            State::Open { .. } => {
                let end = self.end.as_ref().and_then(DeviceEnd::oldest_sent);
                let oldest = match (self.outbox.oldest_sent(), end) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                oldest.map_or(now + FAR, |t| later(t, self.options.ack_timeout))
            }
        }
    }

    pub(super) fn on_timer(&mut self) -> Result<(), TransportError> {
        let now = Instant::now();
        match &mut self.state {
            State::Waiting { .. } => self.begin_handshake(),
            State::Handshaking(hs) if now < hs.deadline => {
                hs.repeat_at = later(now, HELLO_REPEAT);
                let topic = self.topics.hello(&self.client, &hs.sid);
                tracing::debug!(topic, "no server answered yet: hello published again");
                self.link.publish(topic, hs.hello.clone());
                Ok(())
            }
            State::Handshaking(hs) => {
                // No trusted server answered: what was seen instead is the reason.
                let reason = match (hs.untrusted.take(), hs.refused) {
                    (Some(e), _) => e.into(),
                    (None, Some(code)) => HandshakeError::PeerAlert(code).into(),
                    (None, None) => MqttError::NoServer {
                        topic: self.topics.hello(&self.client, &hs.sid),
                        after: self.options.timeouts.handshake,
                    }
                    .into(),
                };
                self.handshake_failed(reason)
            }
            // The server stayed silent after a plaintext refusal: the server's, or a
            // stranger's forgery while the server is away. Either way no better than a failed
            // handshake.
            State::Open {
                authenticated: false,
                alert: Some(code),
                ..
            } if is_refusal(*code) => {
                let code = *code;
                self.close_session();
                self.handshake_failed(TransportError::Refused(code))
            }
            State::Open { .. } => {
                tracing::warn!(
                    after = ?self.options.ack_timeout,
                    unacknowledged = self.outbox.len(),
                    "the server stopped acknowledging: starting a new session"
                );
                self.begin_handshake()
            }
        }
    }

    /// Closes the open session, if any, and publishes what it has queued (its Close, or the
    /// answer to the server's).
    pub(super) fn close_session(&mut self) {
        if let State::Open {
            sid,
            instance,
            session,
            ..
        } = &mut self.state
        {
            session.close(AlertCode::CloseNotify);
            let topic = self.topics.up(&self.client, instance, sid);
            while let Some(frame) = session.poll_transmit() {
                self.link.publish(topic.clone(), frame);
            }
        }
    }

    pub(super) fn on_link(&mut self, event: LinkEvent) -> Result<(), TransportError> {
        match event {
            LinkEvent::Connected => match &self.state {
                State::Open { .. } => {
                    // Resume the session: whatever the broker lost is sent again.
                    self.outbox.resend_all();
                    if let Some(end) = &mut self.end {
                        end.resend_all();
                    }
                    Ok(())
                }
                State::Handshaking(_) => self.begin_handshake(),
                State::Waiting { .. } => Ok(()),
            },
            LinkEvent::Disconnected | LinkEvent::Subscribed(_) => Ok(()),
            LinkEvent::Message { topic, payload } => {
                tracing::debug!(topic, len = payload.len(), "received");
                let (session, instance) = match self.topics.parse(&topic) {
                    Some(Route::Down {
                        client,
                        session,
                        instance,
                    }) if client == self.client => (session, instance),
                    _ => {
                        self.malformed(&topic, "not a secchan topic for this device");
                        return Ok(());
                    }
                };
                let current = match &self.state {
                    State::Handshaking(hs) => hs.sid == session,
                    State::Open { sid, .. } => sid == session,
                    State::Waiting { .. } => false,
                };
                if !current {
                    tracing::debug!(topic, "message for an earlier session dropped");
                    return Ok(());
                }
                if payload.len() > crate::transport::mqtt::MAX_FRAME_LEN {
                    self.malformed(&topic, "message larger than a record");
                    return Ok(());
                }
                let (session, instance) = (session.to_string(), instance.to_string());
                let mut frame = payload.to_vec();
                match &self.state {
                    State::Handshaking(_) => self.on_server_hello(session, instance, &frame),
                    _ => self.on_record(&instance, &mut frame),
                }
            }
        }
    }

    pub(super) fn malformed(&mut self, topic: &str, why: &str) {
        self.stats.malformed += 1;
        warn_dropped!(
            self.throttle,
            topic,
            why,
            "dropped a foreign or malformed MQTT message"
        );
    }

    pub(super) fn on_record(&mut self, from: &str, frame: &mut [u8]) -> Result<(), TransportError> {
        let State::Open {
            instance,
            authenticated,
            ..
        } = &self.state
        else {
            return Ok(());
        };
        if from != instance {
            tracing::debug!(
                instance = from,
                "message from another server instance dropped"
            );
            return Ok(());
        }
        if !*authenticated && FrameType::of(frame) == Ok(FrameType::Alert) {
            self.on_session_alert(from, frame);
            return Ok(());
        }
        if !may_be_record(frame) {
            self.malformed(from, "not a record");
            return Ok(());
        }
        let State::Open {
            session,
            authenticated,
            alert,
            ..
        } = &mut self.state
        else {
            return Ok(());
        };
        let result = session.handle_frame(frame, Instant::now());
        if result.is_ok() {
            *authenticated = true;
            self.failed_attempts = 0;
            if let Some(code) = alert.take() {
                tracing::warn!(reason = %code, "the server's records authenticate: the plaintext alert received before was forged, and ignored");
            }
        }
        match result {
            Ok(Event::Message(plaintext)) => {
                let envelope = match (Envelope::decode(plaintext), &mut self.end) {
                    (Ok(e), Some(end)) => {
                        end.on_envelope(e, Instant::now()).map_err(MqttError::End)?
                    }
                    (Ok(e), None) => Some(e),
                    (Err(e), _) => {
                        tracing::warn!(error = %e, "malformed message from the server: dropped");
                        None
                    }
                };
                match envelope {
                    Some(Envelope::Ack { stream, next }) => match self.outbox.ack(stream, next) {
                        Ok(n) => self.stats.acknowledged += n as u64,
                        Err(e) => tracing::warn!(error = %e, "acknowledgement ignored"),
                    },
                    Some(_) => tracing::warn!("the server sent what only a device taking part in the relay handles: dropped"),
                    None => {}
                }
            }
            Ok(Event::KeyUpdated | Event::Ticket) => {}
            Ok(Event::Closed) => {
                tracing::info!("the server closed the session");
                if self.has_work() {
                    return self.begin_handshake();
                }
                // Answer the close; the run loop ends.
                self.close_session();
            }
            Err(SessionError::Record(RecordError::Replay(_))) => self.stats.duplicate_records += 1,
            Err(e) if !session.is_closed() => {
                self.stats.rejected_records += 1;
                warn_dropped!(self.throttle, error = %e, "record rejected and dropped");
            }
            Err(SessionError::PeerAlert(code)) if is_refusal(code) => {
                return Err(SessionError::PeerAlert(code).into());
            }
            Err(e) => {
                tracing::warn!(error = %e, "session ended: starting a new one");
                return self.begin_handshake();
            }
        }
        Ok(())
    }

    /// A plaintext alert before the server's first authenticated record: the server refusing
    /// this device after its DeviceFinish (protocol.md §8.1), or a forgery. Noted, and acted
    /// on only if the server then stops acknowledging.
    pub(super) fn on_session_alert(&mut self, from: &str, frame: &[u8]) {
        let code = match decode_alert(frame) {
            Ok(code) => code,
            Err(_) => return self.malformed(from, "malformed alert"),
        };
        self.stats.rejected_handshake_messages += 1;
        warn_dropped!(self.throttle, reason = %code, "plaintext alert from the server (unauthenticated): believed if the server stops acknowledging");
        if let State::Open { alert, .. } = &mut self.state {
            // A refusal is kept over any other alert: it is the one that ends the device.
            if alert.is_none_or(|seen| !is_refusal(seen)) {
                *alert = Some(code);
            }
        }
    }

    /// A KeyUpdate record in the open session, which the server counts as input; the run
    /// loop's [`pump`](Self::pump) publishes it.
    fn keepalive(&mut self) {
        let now = Instant::now();
        self.sent_at = now;
        if let State::Open { session, .. } = &mut self.state {
            if let Err(e) = session.update_keys(now) {
                tracing::debug!(error = %e, "no keep-alive in this session");
            }
        }
    }

    /// Sends what the buffer has due, if a session is open and the broker reachable.
    pub(super) fn pump(&mut self, now: Instant) {
        let State::Open {
            sid,
            instance,
            session,
            ..
        } = &mut self.state
        else {
            return;
        };
        if !self.link.is_connected() || !session.can_send() {
            return;
        }
        let topic = self.topics.up(&self.client, instance, sid);
        let mut due = self.end.as_mut().map(|e| e.due(now)).unwrap_or_default();
        match self.outbox.due(now) {
            Ok(more) => due.extend(more),
            Err(e) => {
                tracing::error!(error = %e, "spool failed: messages are not sent until it works");
            }
        }
        if !due.is_empty() {
            self.sent_at = now;
        }
        for envelope in due {
            if let Err(e) = session.send(&envelope, now) {
                tracing::warn!(error = %e, "cannot send in this session");
                break;
            }
            self.stats.sent += 1;
        }
        while let Some(frame) = session.poll_transmit() {
            self.link.publish(topic.clone(), frame);
        }
    }
}
