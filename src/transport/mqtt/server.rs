//! A secchan server instance on MQTT: answers hellos from the shared subscription, keeps the
//! sessions it accepted, outputs each device message once and acknowledges it.

use super::link::{Link, LinkEvent, PayloadBytes};
use super::topics::{self, Route, Topics};
use super::{may_be_record, random_hex, Broker, MqttError};
use crate::crypto::aead::AeadId;
use crate::crypto::random::OsRandom;
use crate::delivery::{
    Envelope, StreamId, StreamKey, Streams, Verdict, DEFAULT_MAX_OUT_OF_ORDER, MAX_IN_FLIGHT,
};
use crate::handshake::server::{self, ExpectDeviceFinish, PeerDevice, ServerConfig};
use crate::handshake::HandshakeError;
use crate::msgs::{decode_alert, encode_alert, AlertCode, FrameType};
use crate::record::replay::ReplayWindow;
use crate::record::RecordError;
use crate::session::{Event, Session, SessionError};
use crate::throttle::{later, warn_dropped, Throttle};
use crate::transport::{Timeouts, TransportError};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Incoming messages handled in one go before deliveries are handed out, so that one
/// acknowledgement covers a burst.
const BATCH: usize = 64;
/// How often expired handshakes, idle sessions and old streams are swept.
const SWEEP: Duration = Duration::from_secs(1);
/// Default for [`ServerOptions::max_pending`]. A handshake is pending for one round trip
/// through the broker, so this is far more than honest devices need at once, and far below
/// the sessions an instance serves.
pub const DEFAULT_MAX_PENDING: usize = 1024;

/// How a server instance runs.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Shared-subscription group: instances in the same group share the hellos.
    pub share_group: String,
    /// Most sessions (pending and established) at once. When the established ones reach it,
    /// further hellos are dropped; until then a hello evicts the oldest pending handshake
    /// if it must.
    pub max_sessions: usize,
    /// Most handshakes pending at once; a further hello evicts the oldest one, so a flood of
    /// (replayed) hellos cannot lock honest devices out.
    pub max_pending: usize,
    /// Most device streams remembered for dropping duplicates.
    pub max_streams: usize,
    /// Most sequence numbers the duplicate filter remembers ahead of a gap, over all streams.
    pub max_out_of_order: usize,
    /// Handshake and idle timeouts; a stream is remembered for the idle timeout.
    pub timeouts: Timeouts,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            share_group: topics::DEFAULT_SHARE_GROUP.to_string(),
            max_sessions: 10_000,
            max_pending: DEFAULT_MAX_PENDING,
            max_streams: 10_000,
            max_out_of_order: DEFAULT_MAX_OUT_OF_ORDER,
            timeouts: Timeouts::default(),
        }
    }
}

/// One device message, output once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The session it arrived in (random, as on the topics).
    pub session: String,
    /// The device, as authenticated and authorized in that session.
    pub device: PeerDevice,
    /// Key-exchange suite of the session.
    pub suite: &'static str,
    /// AEAD of the session.
    pub aead: AeadId,
    /// The device's stream (hex).
    pub stream: String,
    /// Position in the stream.
    pub seq: u64,
    /// The message.
    pub data: Vec<u8>,
}

/// Counters of a server instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Sessions established.
    pub sessions_established: u64,
    /// Handshakes that failed: hellos refused with an alert, devices refused after their
    /// DeviceFinish.
    pub handshake_failures: u64,
    /// DeviceFinish frames that did not verify and plaintext alerts for a pending handshake:
    /// dropped, the handshake goes on (anyone may publish them).
    pub rejected_handshake_messages: u64,
    /// Pending handshakes evicted by newer hellos ([`ServerOptions::max_pending`]).
    pub evicted_handshakes: u64,
    /// Hellos dropped because the established sessions reached
    /// [`ServerOptions::max_sessions`].
    pub refused_hellos: u64,
    /// Messages output.
    pub delivered: u64,
    /// Repeated MQTT deliveries dropped by the replay window (or a repeated handshake
    /// message).
    pub duplicate_records: u64,
    /// Messages sent again by a device and already output: dropped.
    pub duplicate_messages: u64,
    /// Records that failed authentication or were older than the replay window.
    pub rejected_records: u64,
    /// Messages on secchan's topics that were not well-formed secchan frames or topics.
    pub malformed: u64,
    /// Messages for sessions this instance does not hold.
    pub unknown_session: u64,
    /// Publishes dropped because the broker took them more slowly than they came.
    pub dropped_publishes: u64,
    /// Payload bytes moved through the broker.
    pub bytes: PayloadBytes,
}

struct Open {
    session: Session,
    peer: PeerDevice,
    last_input: Instant,
    /// The streams to acknowledge at the next flush (one, for a secchan device).
    ack_due: Vec<StreamId>,
}

struct Pending {
    expect: Box<ExpectDeviceFinish>,
    deadline: Instant,
    /// Position in [`MqttServer::pending_order`].
    order: u64,
}

/// A server instance.
pub struct MqttServer {
    link: Link,
    topics: Topics,
    instance: String,
    config: Arc<ServerConfig>,
    options: ServerOptions,
    pending: HashMap<String, Pending>,
    /// Pending handshakes, oldest first, as (order, session); entries of handshakes that
    /// ended are skipped and swept out.
    pending_order: VecDeque<(u64, String)>,
    next_order: u64,
    open: HashMap<String, Box<Open>>,
    streams: Streams,
    ready: VecDeque<Delivery>,
    acks_due: HashSet<String>,
    stats: ServerStats,
    sweeper: tokio::time::Interval,
    throttle: Throttle,
}

impl std::fmt::Debug for MqttServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttServer")
            .field("instance", &self.instance)
            .field("sessions", &self.sessions())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl MqttServer {
    /// Connects to the broker and subscribes to the hellos (shared) and to this instance's
    /// sessions. The session configuration is switched to unordered delivery. Fails if the
    /// replay window is smaller than the messages a device keeps in flight.
    pub async fn start(
        broker: &Broker,
        config: Arc<ServerConfig>,
        options: ServerOptions,
    ) -> Result<Self, TransportError> {
        topics::check_share_group(&options.share_group)?;
        let window = ReplayWindow::new(config.session.replay_window).size();
        if window < MAX_IN_FLIGHT as u64 {
            return Err(MqttError::ReplayWindow {
                window,
                min: MAX_IN_FLIGHT,
            }
            .into());
        }
        let mut config = (*config).clone();
        config.session.ordered = false;
        let instance = random_hex::<8>().map_err(HandshakeError::from)?;
        let mut link = Link::connect(broker).await?;
        link.subscribe(broker.topics.hello_filter(&options.share_group));
        link.subscribe(broker.topics.up_filter(&instance));
        let mut server = Self {
            link,
            topics: broker.topics.clone(),
            instance,
            config: Arc::new(config),
            streams: Streams::new(
                options.max_streams,
                options.max_out_of_order,
                options.timeouts.idle,
            ),
            options,
            pending: HashMap::new(),
            pending_order: VecDeque::new(),
            next_order: 0,
            open: HashMap::new(),
            ready: VecDeque::new(),
            acks_due: HashSet::new(),
            stats: ServerStats::default(),
            sweeper: tokio::time::interval(SWEEP),
            throttle: Throttle::default(),
        };
        server.await_subscriptions(2).await?;
        Ok(server)
    }

    /// Waits until the broker confirmed `n` subscriptions, so no device is missed once
    /// `start` returns; messages arriving meanwhile are handled.
    async fn await_subscriptions(&mut self, mut n: usize) -> Result<(), TransportError> {
        let wait = self.options.timeouts.handshake;
        let confirmed = async {
            while n > 0 {
                match self.link.next_event().await.ok_or(MqttError::Stopped)? {
                    LinkEvent::Subscribed(Ok(())) => n -= 1,
                    LinkEvent::Subscribed(Err(reason)) => {
                        return Err(MqttError::SubscribeRefused { reason })
                    }
                    other => self.handle(other),
                }
            }
            Ok(())
        };
        tokio::time::timeout(wait, confirmed).await.map_err(|_| {
            MqttError::SubscribeRefused {
                reason: format!("no answer within {wait:?}"),
            }
        })??;
        Ok(())
    }

    /// This instance's random id (as on its topics).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Counters so far.
    pub fn stats(&self) -> ServerStats {
        ServerStats {
            bytes: self.link.bytes(),
            dropped_publishes: self.link.dropped(),
            ..self.stats
        }
    }

    /// Sessions held (pending and established).
    pub fn sessions(&self) -> usize {
        self.pending.len() + self.open.len()
    }

    /// The next message to output. A message is acknowledged to its device only when `next`
    /// is called again, so a caller that writes each delivery before asking for the next one
    /// never has a message acknowledged that it did not write.
    pub async fn next(&mut self) -> Result<Delivery, TransportError> {
        loop {
            if let Some(d) = self.ready.pop_front() {
                return Ok(d);
            }
            self.flush_acks();
            tokio::select! {
                ev = self.link.next_event() => {
                    let ev = ev.ok_or(MqttError::Stopped)?;
                    self.handle(ev);
                    for _ in 1..BATCH {
                        match self.link.try_next_event() {
                            Some(ev) => self.handle(ev),
                            None => break,
                        }
                    }
                }
                _ = self.sweeper.tick() => self.sweep(Instant::now()),
            }
        }
    }

    /// Closes every session with an authenticated close (so devices move to another
    /// instance at once) and disconnects from the broker.
    pub async fn shutdown(mut self) -> ServerStats {
        self.flush_acks();
        for (sid, mut open) in std::mem::take(&mut self.open) {
            open.session.close(AlertCode::CloseNotify);
            self.transmit(&sid, &mut open.session);
        }
        let stats = self.stats();
        self.link.close().await;
        stats
    }

    fn down(&self, sid: &str) -> String {
        self.topics.down(sid, &self.instance)
    }

    fn transmit(&mut self, sid: &str, session: &mut Session) {
        let topic = self.down(sid);
        while let Some(frame) = session.poll_transmit() {
            self.link.publish(topic.clone(), frame);
        }
    }

    fn handle(&mut self, event: LinkEvent) {
        let (topic, payload) = match event {
            LinkEvent::Connected => {
                tracing::info!(instance = %self.instance, "subscribed to the broker");
                return;
            }
            LinkEvent::Disconnected | LinkEvent::Subscribed(_) => return,
            LinkEvent::Message { topic, payload } => (topic, payload),
        };
        if payload.len() > super::MAX_FRAME_LEN {
            self.malformed(&topic, "message larger than a record");
            return;
        }
        match self.topics.parse(&topic) {
            Some(Route::Hello { session }) => self.on_hello(session.to_string(), &payload),
            Some(Route::Up { instance, session }) if instance == self.instance => {
                let mut frame = payload.to_vec();
                self.on_up(session.to_string(), &mut frame);
            }
            _ => self.malformed(&topic, "not a secchan topic for this server"),
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

    fn on_hello(&mut self, sid: String, frame: &[u8]) {
        if self.pending.contains_key(&sid) || self.open.contains_key(&sid) {
            self.stats.duplicate_records += 1;
            tracing::debug!(session = %sid, "repeated hello dropped");
            return;
        }
        if self.open.len() >= self.options.max_sessions {
            self.stats.refused_hellos += 1;
            warn_dropped!(self.throttle, session = %sid, max = self.options.max_sessions, "too many sessions: hello dropped");
            return;
        }
        match server::accept_hello(&self.config, frame, &mut OsRandom) {
            Ok((expect, reply)) => {
                while self.pending.len() >= self.options.max_pending
                    || self.sessions() >= self.options.max_sessions
                {
                    if !self.evict_oldest_pending() {
                        break;
                    }
                }
                self.link.publish(self.down(&sid), reply);
                let now = Instant::now();
                let order = self.next_order;
                self.next_order += 1;
                self.pending_order.push_back((order, sid.clone()));
                let pending = Pending {
                    expect: Box::new(expect),
                    deadline: later(now, self.options.timeouts.handshake),
                    order,
                };
                self.pending.insert(sid, pending);
            }
            // Only a refusal a genuine device can act on is answered; a hello that does not
            // decode (anyone may publish one) is dropped without costing a publish.
            Err(
                e @ (HandshakeError::SuiteRefused { .. }
                | HandshakeError::NoCommonAead
                | HandshakeError::Decode(crate::codec::DecodeError::UnsupportedVersion(_))),
            ) => self.handshake_failed(&sid, &e),
            Err(e) => self.malformed(&sid, &e.to_string()),
        }
    }

    /// Forgets the oldest pending handshake to make room for a new one; false if none is
    /// pending.
    fn evict_oldest_pending(&mut self) -> bool {
        while let Some((order, sid)) = self.pending_order.pop_front() {
            if self.pending.get(&sid).is_some_and(|p| p.order == order) {
                self.pending.remove(&sid);
                self.stats.evicted_handshakes += 1;
                warn_dropped!(self.throttle, session = %sid, max = self.options.max_pending, "too many handshakes in progress: forgot the oldest");
                return true;
            }
        }
        false
    }

    fn handshake_failed(&mut self, sid: &str, e: &HandshakeError) {
        self.stats.handshake_failures += 1;
        if let Some(code) = e.alert() {
            self.link.publish(self.down(sid), encode_alert(code));
        }
        match e {
            // Only a device that completed the handshake's cryptography is refused: always
            // logged, with its fingerprint.
            HandshakeError::DeviceRefused { device, code } => {
                tracing::warn!(session = %sid, device = %device, reason = %code, "device refused")
            }
            _ => warn_dropped!(self.throttle, session = %sid, error = %e, "handshake failed"),
        }
    }

    fn on_up(&mut self, sid: String, frame: &mut [u8]) {
        let now = Instant::now();
        if let Some(mut open) = self.open.remove(&sid) {
            if self.on_record(&sid, &mut open, frame, now) {
                self.open.insert(sid, open);
            }
            return;
        }
        let Some(pending) = self.pending.get(&sid) else {
            self.stats.unknown_session += 1;
            tracing::debug!(session = %sid, "message for a session this instance does not hold");
            return;
        };
        // Anyone who saw the ServerHello on the broker may publish here, so a frame that
        // fails is dropped and the handshake goes on until its deadline: only a DeviceFinish
        // that verifies decides it.
        match FrameType::of(frame) {
            Ok(FrameType::DeviceFinish) => match pending.expect.read_device_finish(frame, now) {
                Ok((session, peer)) => {
                    self.pending.remove(&sid);
                    self.stats.sessions_established += 1;
                    tracing::info!(
                        session = %sid,
                        device = %peer.name,
                        suite = session.suite().name,
                        aead = session.aead().name(),
                        "session established"
                    );
                    let open = Open {
                        session,
                        peer,
                        last_input: now,
                        ack_due: Vec::new(),
                    };
                    self.open.insert(sid, Box::new(open));
                }
                // The device's authentication verified: this is the device, and it is refused.
                Err(
                    e @ (HandshakeError::DeviceRefused { .. }
                    | HandshakeError::EnrollmentProofFailed { .. }),
                ) => {
                    self.pending.remove(&sid);
                    self.handshake_failed(&sid, &e);
                }
                Err(e) => {
                    self.stats.rejected_handshake_messages += 1;
                    warn_dropped!(self.throttle, session = %sid, error = %e, "DeviceFinish did not verify: dropped, the handshake goes on");
                }
            },
            Ok(FrameType::Alert) => match decode_alert(frame) {
                Ok(code) => {
                    self.stats.rejected_handshake_messages += 1;
                    warn_dropped!(self.throttle, session = %sid, reason = %code, "plaintext alert for a pending handshake (unauthenticated): the handshake goes on until it times out");
                }
                Err(e) => self.malformed(&sid, &e.to_string()),
            },
            _ => {
                // A record ahead of DeviceFinish, or garbage: the handshake goes on; a
                // record is sent again by the device once it gets no acknowledgement.
                self.stats.malformed += 1;
                tracing::debug!(session = %sid, "frame before DeviceFinish dropped");
            }
        }
    }

    /// Handles one frame of an established session; returns whether the session goes on.
    fn on_record(&mut self, sid: &str, open: &mut Open, frame: &mut [u8], now: Instant) -> bool {
        if !may_be_record(frame) {
            if FrameType::of(frame) == Ok(FrameType::DeviceFinish) {
                self.stats.duplicate_records += 1;
            } else {
                self.malformed(sid, "not a record");
            }
            return true;
        }
        match open.session.handle_frame(frame, now) {
            Ok(Event::Message(plaintext)) => {
                open.last_input = now;
                if let Some(code) = open
                    .peer
                    .identity
                    .and_then(|id| self.config.authorizer.still_authorized(&id).err())
                {
                    self.close_refused(sid, open, code);
                    return false;
                }
                match Envelope::decode(plaintext) {
                    Ok(Envelope::Message {
                        stream,
                        seq,
                        base,
                        data,
                    }) => {
                        let delivery = self.accept(sid, open, (stream, seq, base), data, now);
                        self.ready.extend(delivery);
                    }
                    Ok(Envelope::Ack { .. }) | Err(_) => {
                        self.stats.malformed += 1;
                        tracing::warn!(session = %sid, device = %open.peer.name, "device sent something other than a message: dropped");
                    }
                }
                true
            }
            Ok(Event::KeyUpdated) => {
                open.last_input = now;
                true
            }
            Ok(Event::Closed) => {
                open.session.close(AlertCode::CloseNotify);
                self.transmit(sid, &mut open.session);
                tracing::info!(session = %sid, device = %open.peer.name, "session closed");
                false
            }
            Err(SessionError::Record(RecordError::Replay(e))) => {
                self.stats.duplicate_records += 1;
                tracing::debug!(session = %sid, error = %e, "duplicate record dropped");
                true
            }
            Err(e) if !open.session.is_closed() => {
                self.stats.rejected_records += 1;
                tracing::warn!(session = %sid, error = %e, "record rejected and dropped");
                true
            }
            Err(e) => {
                self.transmit(sid, &mut open.session);
                tracing::warn!(session = %sid, device = %open.peer.name, error = %e, "session ended with an error");
                false
            }
        }
    }

    fn accept(
        &mut self,
        sid: &str,
        open: &mut Open,
        (stream, seq, base): (StreamId, u64, u64),
        data: &[u8],
        now: Instant,
    ) -> Option<Delivery> {
        let key: StreamKey = (open.peer.identity.map(|i| i.fingerprint()), stream);
        if !open.ack_due.contains(&stream) {
            open.ack_due.push(stream);
        }
        self.acks_due.insert(sid.to_string());
        match self.streams.accept(&key, seq, base, now) {
            Verdict::New => {
                self.stats.delivered += 1;
                Some(Delivery {
                    session: sid.to_string(),
                    device: open.peer.clone(),
                    suite: open.session.suite().name,
                    aead: open.session.aead(),
                    stream: hex::encode(stream),
                    seq,
                    data: data.to_vec(),
                })
            }
            Verdict::Duplicate => {
                self.stats.duplicate_messages += 1;
                tracing::debug!(session = %sid, seq, "message already output: dropped");
                None
            }
            Verdict::TooFarAhead => {
                warn_dropped!(self.throttle, session = %sid, seq, "message too far ahead of the acknowledged ones: dropped");
                None
            }
        }
    }

    fn flush_acks(&mut self) {
        let now = Instant::now();
        for sid in std::mem::take(&mut self.acks_due) {
            let Some(mut open) = self.open.remove(&sid) else {
                continue;
            };
            for stream in std::mem::take(&mut open.ack_due) {
                let key = (open.peer.identity.map(|i| i.fingerprint()), stream);
                let ack = Envelope::Ack {
                    stream,
                    next: self.streams.ack(&key),
                };
                tracing::debug!(session = %sid, ?ack, "acknowledging");
                if let Err(e) = open.session.send(&ack.encode(), now) {
                    tracing::warn!(session = %sid, error = %e, "cannot acknowledge: session closed");
                }
            }
            self.transmit(&sid, &mut open.session);
            self.open.insert(sid, open);
        }
    }

    fn sweep(&mut self, now: Instant) {
        let idle = self.options.timeouts.idle;
        self.pending.retain(|sid, p| {
            let live = p.deadline > now;
            if !live {
                tracing::warn!(session = %sid, "handshake timed out");
            }
            live
        });
        let pending = &self.pending;
        self.pending_order
            .retain(|(order, sid)| pending.get(sid).is_some_and(|p| p.order == *order));
        self.open.retain(|sid, open| {
            let live = now.saturating_duration_since(open.last_input) < idle;
            if !live {
                tracing::info!(session = %sid, device = %open.peer.name, "session idle: forgotten");
            }
            live
        });
        self.close_unauthorized();
        self.streams.expire(now);
    }

    /// Closes, with the authorizer's alert, every open session whose device the authorizer
    /// no longer accepts (a revocation in the fleet registry).
    fn close_unauthorized(&mut self) {
        let authorizer = self.config.authorizer.clone();
        let refused: Vec<(String, AlertCode)> = self
            .open
            .iter()
            .filter_map(|(sid, open)| {
                open.peer
                    .identity
                    .and_then(|id| authorizer.still_authorized(&id).err())
                    .map(|code| (sid.clone(), code))
            })
            .collect();
        for (sid, code) in refused {
            if let Some(mut open) = self.open.remove(&sid) {
                self.close_refused(&sid, &mut open, code);
            }
        }
    }

    fn close_refused(&mut self, sid: &str, open: &mut Open, code: AlertCode) {
        tracing::warn!(session = %sid, device = %open.peer.name, reason = %code, "closing the session: the device is no longer authorized");
        open.session.close(code);
        self.transmit(sid, &mut open.session);
    }
}
