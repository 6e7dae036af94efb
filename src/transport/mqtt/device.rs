//! A secchan device on MQTT. A background task keeps a session with one server instance,
//! resumes it after a broker reconnect, starts a new one when the server stops
//! acknowledging, and keeps every message in a bounded buffer until it is acknowledged.
//!
//! Anyone who may publish on the broker can publish on the device's down topic, so nothing
//! unauthenticated that arrives there decides anything on its own: the device tries every
//! ServerHello until one verifies and is trusted, and believes a plaintext alert only if no
//! server answers properly in time (docs/mqtt.md §4, §5).

use super::link::{Link, LinkEvent, PayloadBytes};
use super::topics::{Route, Topics};
use super::{may_be_record, random_hex, Broker, MqttError};
use crate::crypto::random::{OsRandom, Random};
use crate::delivery::{Envelope, Outbox, StreamId, DEFAULT_BUFFER};
use crate::handshake::device::{self, DeviceConfig, ExpectServerHello};
use crate::handshake::HandshakeError;
use crate::msgs::{decode_alert, encode_alert, AlertCode, FrameType};
use crate::record::RecordError;
use crate::session::{Event, Session, SessionError};
use crate::throttle::{later, warn_dropped, Throttle};
use crate::transport::{Timeouts, TransportError};
use crate::trust::{ServerVerifier, TrustError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// First delay before another handshake after a failed one; doubled up to
/// [`MAX_RETRY`].
const MIN_RETRY: Duration = Duration::from_millis(500);
/// Longest delay between handshake attempts.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// A time far enough ahead to mean "no deadline".
const FAR: Duration = Duration::from_secs(86_400);
/// How often the hello is published again (same session id) until a server answers: a hello
/// that reached the broker before any server subscribed is lost, since nothing is retained.
/// A server drops a hello for a session it already holds (docs/mqtt.md §4).
const HELLO_REPEAT: Duration = Duration::from_secs(1);

/// How a device runs.
#[derive(Debug, Clone)]
pub struct DeviceOptions {
    /// Messages buffered until acknowledged (at most
    /// [`MAX_BUFFER`](crate::delivery::MAX_BUFFER)); when full, [`MqttDevice::send`] waits.
    pub buffer: usize,
    /// A sent message not acknowledged within this time makes the device start a new
    /// session (with any server instance) and send it again.
    pub ack_timeout: Duration,
    /// Handshake timeout (the idle timeout is the server's business).
    pub timeouts: Timeouts,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        Self {
            buffer: DEFAULT_BUFFER,
            ack_timeout: Duration::from_secs(5),
            timeouts: Timeouts::default(),
        }
    }
}

/// Counters of a device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Sessions established.
    pub sessions: u64,
    /// Messages accepted from the application.
    pub queued: u64,
    /// Records sent with a message (first sends and resends).
    pub sent: u64,
    /// Messages acknowledged by the server.
    pub acknowledged: u64,
    /// Messages buffered and not yet acknowledged.
    pub buffered: usize,
    /// Times the buffer filled up.
    pub buffer_full: u64,
    /// Repeated records dropped by the replay window.
    pub duplicate_records: u64,
    /// Records that failed authentication or were too old.
    pub rejected_records: u64,
    /// MQTT messages on this device's topics that were not secchan frames.
    pub malformed: u64,
    /// ServerHellos and plaintext alerts on the down topic that were not accepted: not
    /// verifying, from an untrusted server key, or unauthenticated alerts.
    pub rejected_handshake_messages: u64,
    /// Publishes dropped because the broker took them more slowly than they came.
    pub dropped_publishes: u64,
    /// Payload bytes moved through the broker.
    pub bytes: PayloadBytes,
}

/// A device connected through a broker. Messages given to [`send`](Self::send) are
/// delivered to the server's output exactly once, in spite of redeliveries, reconnects and
/// re-handshakes, unless the device stops before they are acknowledged.
pub struct MqttDevice {
    input: Option<mpsc::Sender<Vec<u8>>>,
    task: tokio::task::JoinHandle<Result<DeviceStats, TransportError>>,
    stats: watch::Receiver<DeviceStats>,
}

impl std::fmt::Debug for MqttDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttDevice")
            .field("stats", &*self.stats.borrow())
            .finish_non_exhaustive()
    }
}

impl MqttDevice {
    /// Connects to the broker and completes a first handshake, checking the server's key
    /// with `verifier`. Fails if the broker does not answer, or if no trusted server accepts
    /// the device within the handshake timeout: then with the untrusted key or the refusal
    /// that arrived instead, if any.
    pub async fn start(
        broker: &Broker,
        mut config: DeviceConfig,
        verifier: Arc<dyn ServerVerifier>,
        options: DeviceOptions,
    ) -> Result<Self, TransportError> {
        config.session.ordered = false;
        let mut stream: StreamId = [0; 8];
        OsRandom.fill(&mut stream).map_err(HandshakeError::from)?;
        let link = Link::connect(broker).await?;
        let (input_tx, input_rx) = mpsc::channel(1);
        let (stats_tx, stats_rx) = watch::channel(DeviceStats::default());
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = Task {
            outbox: Outbox::new(stream, options.buffer),
            link,
            topics: broker.topics.clone(),
            config,
            verifier,
            options,
            state: State::Waiting {
                until: Instant::now(),
            },
            input: input_rx,
            input_open: true,
            stats: DeviceStats::default(),
            stats_tx,
            ready: Some(ready_tx),
            retry: MIN_RETRY,
            subscribed: None,
            full_logged: false,
            throttle: Throttle::default(),
        };
        let mut task = tokio::spawn(task.run());
        tokio::select! {
            ready = ready_rx => {
                if ready.is_err() {
                    return Err(join(task).await.err().unwrap_or(MqttError::Stopped.into()));
                }
            }
            result = &mut task => {
                return Err(flatten(result).err().unwrap_or(MqttError::Stopped.into()));
            }
        }
        Ok(Self {
            input: Some(input_tx),
            task,
            stats: stats_rx,
        })
    }

    /// Queues a message (at most [`MAX_PAYLOAD`](crate::record::MAX_PAYLOAD) less the
    /// [`ENVELOPE_LEN`](crate::delivery::ENVELOPE_LEN)-byte envelope); waits while the
    /// buffer is full. Fails if the device stopped, with the reason.
    pub async fn send(&mut self, message: Vec<u8>) -> Result<(), TransportError> {
        let limit = crate::record::MAX_PAYLOAD - crate::delivery::ENVELOPE_LEN;
        if message.len() > limit {
            return Err(SessionError::Record(RecordError::PayloadTooLarge(message.len())).into());
        }
        let input = self.input.as_ref().ok_or(MqttError::Stopped)?;
        if input.send(message).await.is_err() {
            self.input = None;
            return Err(join(&mut self.task)
                .await
                .err()
                .unwrap_or(MqttError::Stopped.into()));
        }
        Ok(())
    }

    /// Counters so far.
    pub fn stats(&self) -> DeviceStats {
        *self.stats.borrow()
    }

    /// Waits up to `wait` until every message is acknowledged, then closes the session.
    pub async fn finish(mut self, wait: Duration) -> Result<DeviceStats, TransportError> {
        self.input = None;
        match tokio::time::timeout(wait, &mut self.task).await {
            Ok(result) => flatten(result),
            Err(_) => {
                self.task.abort();
                Err(MqttError::Unacknowledged(self.stats().buffered).into())
            }
        }
    }
}

impl Drop for MqttDevice {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type TaskResult = Result<Result<DeviceStats, TransportError>, tokio::task::JoinError>;

fn flatten(result: TaskResult) -> Result<DeviceStats, TransportError> {
    result.map_err(|_| TransportError::from(MqttError::Stopped))?
}

async fn join(
    task: impl std::future::Future<Output = TaskResult>,
) -> Result<DeviceStats, TransportError> {
    flatten(task.await)
}

enum State {
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

/// A handshake waiting for a ServerHello that verifies and is trusted.
struct Handshake {
    sid: String,
    expect: ExpectServerHello,
    /// The DeviceHello, published again every [`HELLO_REPEAT`].
    hello: Vec<u8>,
    deadline: Instant,
    repeat_at: Instant,
    /// A ServerHello that verified but whose key is not trusted: the error if no trusted
    /// server answers by the deadline.
    untrusted: Option<TrustError>,
    /// A refusal alert: the error if no server answers by the deadline (and no untrusted
    /// one did).
    refused: Option<AlertCode>,
}

struct Task {
    link: Link,
    topics: Topics,
    config: DeviceConfig,
    verifier: Arc<dyn ServerVerifier>,
    options: DeviceOptions,
    outbox: Outbox,
    state: State,
    input: mpsc::Receiver<Vec<u8>>,
    input_open: bool,
    stats: DeviceStats,
    stats_tx: watch::Sender<DeviceStats>,
    /// Told when the first session is up.
    ready: Option<oneshot::Sender<()>>,
    retry: Duration,
    /// The down-topic filter currently subscribed.
    subscribed: Option<String>,
    full_logged: bool,
    throttle: Throttle,
}

/// Alerts by which a server refuses this device or its configuration: retrying cannot help.
fn is_refusal(code: AlertCode) -> bool {
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
    async fn run(mut self) -> Result<DeviceStats, TransportError> {
        loop {
            self.pump(Instant::now());
            self.note_buffer();
            if !self.input_open && self.outbox.is_empty() {
                self.close_session();
                self.publish_stats();
                self.link.close().await;
                return Ok(self.stats);
            }
            self.publish_stats();
            let deadline = tokio::time::Instant::from_std(self.deadline());
            let accepting = self.input_open && !self.outbox.is_full();
            tokio::select! {
                ev = self.link.next_event() => match ev {
                    Some(ev) => self.on_link(ev)?,
                    None => return Err(MqttError::Stopped.into()),
                },
                m = self.input.recv(), if accepting => match m {
                    Some(m) => {
                        // Cannot fail: the buffer is not full.
                        let _ = self.outbox.push(m);
                        self.stats.queued += 1;
                    }
                    None => self.input_open = false,
                },
                _ = tokio::time::sleep_until(deadline) => self.on_timer()?,
            }
        }
    }

    fn publish_stats(&mut self) {
        self.stats.buffered = self.outbox.len();
        self.stats.bytes = self.link.bytes();
        self.stats.dropped_publishes = self.link.dropped();
        self.stats_tx.send_replace(self.stats);
    }

    fn note_buffer(&mut self) {
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
    fn deadline(&self) -> Instant {
        let now = Instant::now();
        if !self.link.is_connected() {
            return now + FAR;
        }
        match &self.state {
            State::Waiting { until } => *until,
            State::Handshaking(hs) => hs.repeat_at.min(hs.deadline),
            State::Open { .. } => self
                .outbox
                .oldest_sent()
                .map_or(now + FAR, |t| later(t, self.options.ack_timeout)),
        }
    }

    fn on_timer(&mut self) -> Result<(), TransportError> {
        let now = Instant::now();
        match &mut self.state {
            State::Waiting { .. } => self.begin_handshake(),
            State::Handshaking(hs) if now < hs.deadline => {
                hs.repeat_at = later(now, HELLO_REPEAT);
                let (topic, hello) = (self.topics.hello(&hs.sid), hs.hello.clone());
                tracing::debug!(topic, "no server answered yet: hello published again");
                self.link.publish(topic, hello);
                Ok(())
            }
            State::Handshaking(hs) => {
                // No trusted server answered: what was seen instead is the reason.
                if let Some(e) = hs.untrusted.take() {
                    return Err(e.into());
                }
                if let Some(code) = hs.refused {
                    return Err(HandshakeError::PeerAlert(code).into());
                }
                let topic = self.topics.hello(&hs.sid);
                let after = self.options.timeouts.handshake;
                if self.ready.is_some() {
                    return Err(MqttError::NoServer { topic, after }.into());
                }
                tracing::warn!(after = ?after, "no server answered the handshake: retrying");
                self.retry_later();
                Ok(())
            }
            // The server stayed silent after a plaintext refusal: it was the server's.
            State::Open {
                authenticated: false,
                alert: Some(code),
                ..
            } if is_refusal(*code) => Err(TransportError::Refused(*code)),
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

    fn retry_later(&mut self) {
        self.state = State::Waiting {
            until: later(Instant::now(), self.retry),
        };
        self.retry = (self.retry * 2).min(MAX_RETRY);
    }

    /// Closes the open session, if any, and publishes what it has queued (its Close, or the
    /// answer to the server's).
    fn close_session(&mut self) {
        if let State::Open {
            sid,
            instance,
            session,
            ..
        } = &mut self.state
        {
            session.close(AlertCode::CloseNotify);
            let topic = self.topics.up(instance, sid);
            while let Some(frame) = session.poll_transmit() {
                self.link.publish(topic.clone(), frame);
            }
        }
    }

    fn begin_handshake(&mut self) -> Result<(), TransportError> {
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
        let filter = self.topics.down_filter(&sid);
        self.link.subscribe(filter.clone());
        self.subscribed = Some(filter);
        let (expect, hello) = device::start(&self.config, &mut OsRandom)?;
        self.link.publish(self.topics.hello(&sid), hello.clone());
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

    fn on_link(&mut self, event: LinkEvent) -> Result<(), TransportError> {
        match event {
            LinkEvent::Connected => match &self.state {
                State::Open { .. } => {
                    // Resume the session: whatever the broker lost is sent again.
                    self.outbox.resend_all();
                    Ok(())
                }
                State::Handshaking(_) => self.begin_handshake(),
                State::Waiting { .. } => Ok(()),
            },
            LinkEvent::Disconnected | LinkEvent::Subscribed(_) => Ok(()),
            LinkEvent::Message { topic, payload } => {
                tracing::debug!(topic, len = payload.len(), "received");
                let (session, instance) = match self.topics.parse(&topic) {
                    Some(Route::Down { session, instance }) => (session, instance),
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
                if payload.len() > super::MAX_FRAME_LEN {
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

    fn malformed(&mut self, topic: &str, why: &str) {
        self.stats.malformed += 1;
        warn_dropped!(
            self.throttle,
            topic,
            why,
            "dropped a foreign or malformed MQTT message"
        );
    }

    /// A frame on the down topic during the handshake. Anyone may publish there, so one that
    /// fails is dropped and the handshake goes on: the first ServerHello that verifies and
    /// is trusted wins, whichever instance sent it.
    fn on_server_hello(
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
        let up = self.topics.up(&instance, &sid);
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
    fn on_handshake_alert(&mut self, sid: &str, frame: &[u8]) {
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

    fn on_record(&mut self, from: &str, frame: &mut [u8]) -> Result<(), TransportError> {
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
            if let Some(code) = alert.take() {
                tracing::warn!(reason = %code, "the server's records authenticate: the plaintext alert received before was forged, and ignored");
            }
        }
        match result {
            Ok(Event::Message(plaintext)) => match Envelope::decode(plaintext) {
                Ok(Envelope::Ack { stream, next }) => match self.outbox.ack(stream, next) {
                    Ok(n) => self.stats.acknowledged += n as u64,
                    Err(e) => tracing::warn!(error = %e, "acknowledgement ignored"),
                },
                _ => tracing::warn!("server sent something other than an acknowledgement: dropped"),
            },
            Ok(Event::KeyUpdated) => {}
            Ok(Event::Closed) => {
                tracing::info!("the server closed the session");
                if self.input_open || !self.outbox.is_empty() {
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
    fn on_session_alert(&mut self, from: &str, frame: &[u8]) {
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

    /// Sends what the buffer has due, if a session is open and the broker reachable.
    fn pump(&mut self, now: Instant) {
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
        let topic = self.topics.up(instance, sid);
        for envelope in self.outbox.due(now) {
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
