//! A secchan device on MQTT. A background task keeps a session with one server instance,
//! resumes it after a broker reconnect, starts a new one when the server stops
//! acknowledging, and keeps every message in a bounded buffer until it is acknowledged.

use super::delivery::{Envelope, Outbox, StreamId, DEFAULT_BUFFER};
use super::link::{Link, LinkEvent, PayloadBytes};
use super::topics::{Route, Topics};
use super::{may_be_record, random_hex, Broker, MqttError};
use crate::crypto::random::{OsRandom, Random};
use crate::handshake::device::{self, DeviceConfig, ExpectServerHello};
use crate::handshake::HandshakeError;
use crate::msgs::{decode_alert, encode_alert, AlertCode, FrameType};
use crate::record::RecordError;
use crate::session::{Event, Session, SessionError};
use crate::transport::{Timeouts, TransportError, MAX_FRAME_LEN};
use crate::trust::ServerVerifier;
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

/// How a device runs.
#[derive(Debug, Clone)]
pub struct DeviceOptions {
    /// Messages buffered until acknowledged (at most
    /// [`MAX_BUFFER`](super::delivery::MAX_BUFFER)); when full, [`MqttDevice::send`] waits.
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
    /// with `verifier`. Fails if the broker or no server answers, or the server is not
    /// trusted, or it refuses this device.
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
    /// [`ENVELOPE_LEN`](super::delivery::ENVELOPE_LEN)-byte envelope); waits while the
    /// buffer is full. Fails if the device stopped, with the reason.
    pub async fn send(&mut self, message: Vec<u8>) -> Result<(), TransportError> {
        let limit = crate::record::MAX_PAYLOAD - super::delivery::ENVELOPE_LEN;
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
    Waiting { until: Instant },
    Handshaking {
        sid: String,
        expect: Box<ExpectServerHello>,
        deadline: Instant,
    },
    Open {
        sid: String,
        instance: String,
        session: Box<Session>,
        /// Whether an authenticated record arrived; until then a plaintext alert is the
        /// server refusing this device.
        authenticated: bool,
    },
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
            State::Handshaking { deadline, .. } => *deadline,
            State::Open { .. } => self
                .outbox
                .oldest_sent()
                .map_or(now + FAR, |t| t + self.options.ack_timeout),
        }
    }

    fn on_timer(&mut self) -> Result<(), TransportError> {
        match &self.state {
            State::Waiting { .. } => self.begin_handshake(),
            State::Handshaking { sid, .. } => {
                let topic = self.topics.hello(sid);
                let after = self.options.timeouts.handshake;
                if self.ready.is_some() {
                    return Err(MqttError::NoServer { topic, after }.into());
                }
                tracing::warn!(after = ?after, "no server answered the handshake: retrying");
                self.retry_later();
                Ok(())
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

    fn retry_later(&mut self) {
        self.state = State::Waiting {
            until: Instant::now() + self.retry,
        };
        self.retry = (self.retry * 2).min(MAX_RETRY);
    }

    fn begin_handshake(&mut self) -> Result<(), TransportError> {
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
        self.link.publish(self.topics.hello(&sid), hello);
        self.state = State::Handshaking {
            sid,
            expect: Box::new(expect),
            deadline: Instant::now() + self.options.timeouts.handshake,
        };
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
                State::Handshaking { .. } => self.begin_handshake(),
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
                    State::Handshaking { sid, .. } | State::Open { sid, .. } => sid == session,
                    State::Waiting { .. } => false,
                };
                if !current {
                    tracing::debug!(topic, "message for an earlier session dropped");
                    return Ok(());
                }
                if payload.len() > MAX_FRAME_LEN {
                    self.malformed(&topic, "message larger than a record");
                    return Ok(());
                }
                let (session, instance) = (session.to_string(), instance.to_string());
                let mut frame = payload.to_vec();
                match &self.state {
                    State::Handshaking { .. } => self.on_server_hello(session, instance, &frame),
                    _ => self.on_record(&instance, &mut frame),
                }
            }
        }
    }

    fn malformed(&mut self, topic: &str, why: &str) {
        self.stats.malformed += 1;
        tracing::warn!(topic, why, "dropped a foreign or malformed MQTT message");
    }

    fn on_server_hello(
        &mut self,
        sid: String,
        instance: String,
        frame: &[u8],
    ) -> Result<(), TransportError> {
        if !matches!(
            FrameType::of(frame),
            Ok(FrameType::ServerHello | FrameType::Alert)
        ) {
            self.malformed(&sid, "expected ServerHello");
            return Ok(());
        }
        let State::Handshaking { expect, .. } = std::mem::replace(
            &mut self.state,
            State::Waiting {
                until: Instant::now(),
            },
        ) else {
            return Ok(());
        };
        let up = self.topics.up(&instance, &sid);
        let authed = match expect.read_server_hello(frame) {
            Ok(a) => a,
            Err(e) => return self.handshake_failed(e, &up),
        };
        if let Err(e) = self.verifier.verify(authed.server_identity()) {
            self.link
                .publish(up, encode_alert(AlertCode::ServerRejected));
            return Err(e.into());
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
        };
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(());
        }
        Ok(())
    }

    /// A failed handshake is fatal if it is the first one or the server refused this device;
    /// otherwise the device tries again later.
    fn handshake_failed(&mut self, e: HandshakeError, up: &str) -> Result<(), TransportError> {
        if let Some(code) = e.alert() {
            self.link.publish(up.to_string(), encode_alert(code));
        }
        let refused = matches!(e, HandshakeError::PeerAlert(code) if is_refusal(code));
        if refused || self.ready.is_some() {
            return Err(e.into());
        }
        tracing::warn!(error = %e, "handshake failed: retrying");
        self.retry_later();
        Ok(())
    }

    fn on_record(&mut self, from: &str, frame: &mut [u8]) -> Result<(), TransportError> {
        let State::Open {
            instance,
            session,
            authenticated,
            ..
        } = &mut self.state
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
            let code = decode_alert(frame).map_err(HandshakeError::from)?;
            if is_refusal(code) {
                return Err(TransportError::Refused(code));
            }
            tracing::warn!(reason = %code, "server aborted the session: starting a new one");
            return self.begin_handshake();
        }
        if !may_be_record(frame) {
            self.malformed(from, "not a record");
            return Ok(());
        }
        let result = session.handle_frame(frame, Instant::now());
        if result.is_ok() {
            *authenticated = true;
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
                session.close(AlertCode::CloseNotify);
                if self.input_open || !self.outbox.is_empty() {
                    return self.begin_handshake();
                }
            }
            Err(SessionError::Record(RecordError::Replay(_))) => self.stats.duplicate_records += 1,
            Err(e) if !session.is_closed() => {
                self.stats.rejected_records += 1;
                tracing::warn!(error = %e, "record rejected and dropped");
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
