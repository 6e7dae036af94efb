//! A secchan server instance on MQTT: answers hellos from the shared subscription, keeps the
//! sessions it accepted, hands out each device message, and sends the acknowledgements the
//! delivery intake decides (`service::mqtt_server` wires the two together).
//!
//! Two broker connections: one for the hellos (and the ServerHellos answering them), one for
//! the sessions (DeviceFinish and records in, records out). The sessions' connection is
//! always served first, and hellos are admitted fairly per broker client ([`admission`]), so
//! a flood of hellos delays neither established sessions nor other clients' handshakes by
//! more than a round (docs/mqtt.md §4).

mod admission;
mod handshake;
mod types;

pub use types::{Counters, Delivery, Incoming, ServerOptions, ServerStats};

use super::link::{Link, LinkEvent, PayloadBytes};
use super::topics::{self, Route, Topics};
use super::{may_be_record, random_hex, Broker, MqttError};

use crate::delivery::{Envelope, StreamId, StreamKey, MAX_IN_FLIGHT};
use crate::handshake::server::{ExpectDeviceFinish, PeerDevice, ServerConfig};
use crate::handshake::HandshakeError;
use crate::msgs::{AlertCode, FrameType};
use crate::record::replay::ReplayWindow;
use crate::record::RecordError;
use crate::service::status::{Entry, Sessions};
use crate::session::{Event, Session, SessionError};
use crate::throttle::{later, warn_dropped, Throttle};
use crate::transport::TransportError;
use admission::{HelloQueue, PendingOrder};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Incoming frames handled in one go before deliveries are handed out.
const BATCH: usize = 64;
/// Hellos answered in one go, between two looks at the sessions' connection: each costs an
/// ML-KEM encapsulation, an X25519 exchange and a signature (a few hundred µs).
const HELLO_BATCH: usize = 4;
/// How often expired handshakes, idle sessions and old streams are swept.
const SWEEP: Duration = Duration::from_secs(1);
/// Default for [`ServerOptions::max_pending`]. A handshake is pending for one round trip
/// through the broker, so this is far more than honest devices need at once, and far below
/// the sessions an instance serves.
pub const DEFAULT_MAX_PENDING: usize = 1024;

/// Sessions and pending handshakes are keyed by `{client}/{session}`: two clients may draw
/// or claim the same session id, and neither may touch the other's.
fn key(client: &str, sid: &str) -> String {
    format!("{client}/{sid}")
}

/// The client level and session id of a key.
fn split(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or((key, ""))
}

struct Open {
    session: Session,
    peer: PeerDevice,
    last_input: Instant,
    /// Its line in `secchan status`, removed with it.
    listed: Entry,
}

struct Pending {
    expect: Box<ExpectDeviceFinish>,
    deadline: Instant,
    /// Position in [`MqttServer::pending_order`].
    order: u64,
}

/// A server instance.
pub struct MqttServer {
    /// The sessions' connection.
    link: Link,
    /// The hellos' connection.
    hello_link: Link,
    topics: Topics,
    instance: String,
    config: Arc<ServerConfig>,
    options: ServerOptions,
    hellos: HelloQueue,
    pending: HashMap<String, Pending>,
    pending_order: PendingOrder,
    open: HashMap<String, Box<Open>>,
    /// Which session last carried each stream: where its acknowledgements go.
    carriers: HashMap<StreamKey, String>,
    ready: VecDeque<Incoming>,
    stats: ServerStats,
    /// What other tasks read of `stats` and the tables.
    counters: Counters,
    /// The established sessions, for `secchan status`.
    listed: Sessions,
    next_sweep: Instant,
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
        link.subscribe(broker.topics.up_filter(&instance));
        // The hellos' connection needs a client id of its own: a broker disconnects a client
        // when another connects with the same id.
        let mut hello_broker = broker.clone();
        hello_broker.client_id = broker.client_id.as_ref().map(|id| format!("{id}-hello"));
        let mut hello_link = Link::connect(&hello_broker).await?;
        hello_link.subscribe(broker.topics.hello_filter(&options.share_group));
        let wait = options.timeouts.handshake;
        let mut server = Self {
            link,
            hello_link,
            topics: broker.topics.clone(),
            instance,
            config: Arc::new(config),
            options,
            hellos: HelloQueue::default(),
            pending: HashMap::new(),
            pending_order: PendingOrder::default(),
            open: HashMap::new(),
            carriers: HashMap::new(),
            ready: VecDeque::new(),
            stats: ServerStats::default(),
            counters: Counters::default(),
            listed: Sessions::default(),
            next_sweep: later(Instant::now(), SWEEP),
            throttle: Throttle::default(),
        };
        // Once the broker confirmed both subscriptions no device is missed; messages that
        // arrive meanwhile are handled.
        for hellos in [false, true] {
            tokio::time::timeout(wait, server.await_subscription(hellos))
                .await
                .map_err(|_| MqttError::SubscribeRefused {
                    reason: format!("no answer within {wait:?}"),
                })??;
        }
        Ok(server)
    }

    /// Waits until the broker confirmed the subscription of one connection.
    async fn await_subscription(&mut self, hellos: bool) -> Result<(), MqttError> {
        loop {
            let link = if hellos {
                &mut self.hello_link
            } else {
                &mut self.link
            };
            match link.next_event().await.ok_or(MqttError::Stopped)? {
                LinkEvent::Subscribed(Ok(())) => return Ok(()),
                LinkEvent::Subscribed(Err(reason)) => {
                    return Err(MqttError::SubscribeRefused { reason })
                }
                other if hellos => self.admit(other),
                other => self.handle(other),
            }
        }
    }

    /// This instance's random id (as on its topics).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Counters so far.
    pub fn stats(&self) -> ServerStats {
        let (a, b) = (self.link.bytes(), self.hello_link.bytes());
        ServerStats {
            bytes: PayloadBytes {
                sent: a.sent + b.sent,
                received: a.received + b.received,
            },
            dropped_publishes: self.link.dropped() + self.hello_link.dropped(),
            ..self.stats
        }
    }

    /// Sessions held (pending and established).
    pub fn sessions(&self) -> usize {
        self.pending.len() + self.open.len()
    }

    /// Its established sessions as they change (`secchan status`), each named by
    /// [`peer`](super::peer).
    pub fn listed(&self) -> Sessions {
        self.listed.clone()
    }

    /// Its counters as they change, readable from other tasks.
    pub fn counters(&self) -> Counters {
        self.counters.clone()
    }

    /// The next message a device sent, duplicates included; cancel-safe. Nothing is
    /// acknowledged until [`acknowledge`](Self::acknowledge) says so. Sessions opening and
    /// ending and the devices' other envelopes are passed over: a server that sends its
    /// devices anything uses [`next_incoming`](Self::next_incoming).
    pub async fn next(&mut self) -> Result<Delivery, TransportError> {
        loop {
            if let Incoming::Delivery(d) = self.next_incoming().await? {
                return Ok(d);
            }
        }
    }

    /// The next device message, session opened or ended, or other envelope from a device;
    /// cancel-safe.
    pub async fn next_incoming(&mut self) -> Result<Incoming, TransportError> {
        loop {
            self.counters
                .set(self.pending.len(), self.open.len(), self.stats());
            if let Some(d) = self.ready.pop_front() {
                return Ok(d);
            }
            // While hellos keep the loop busy, `next_event` is not called: move what the send
            // queues hold along here.
            self.link.flush();
            self.hello_link.flush();
            let now = Instant::now();
            if now >= self.next_sweep {
                self.next_sweep = later(now, SWEEP);
                self.sweep(now);
            }
            // The sessions first: whatever their connection has waiting.
            let mut busy = false;
            for _ in 0..BATCH {
                match self.link.try_next_event() {
                    Some(ev) => {
                        self.handle(ev);
                        busy = true;
                    }
                    None => break,
                }
            }
            if !self.ready.is_empty() {
                continue;
            }
            // Then take in every hello waiting (cheap: queued per client), and answer a few.
            while let Some(ev) = self.hello_link.try_next_event() {
                self.admit(ev);
            }
            if !self.hellos.is_empty() {
                self.serve_hellos(HELLO_BATCH);
                // Let the connections' tasks run before the next look.
                tokio::task::yield_now().await;
                continue;
            }
            if busy {
                continue;
            }
            let sweep = tokio::time::Instant::from_std(self.next_sweep);
            tokio::select! {
                biased;
                ev = self.link.next_event() => self.handle(ev.ok_or(MqttError::Stopped)?),
                ev = self.hello_link.next_event() => self.admit(ev.ok_or(MqttError::Stopped)?),
                _ = tokio::time::sleep_until(sweep) => {}
            }
        }
    }

    /// Acknowledges to the device that every message of `stream` below `next` is written,
    /// in the session that last carried the stream (if it is still open).
    pub fn acknowledge(&mut self, stream: &StreamKey, next: u64) {
        let Some(sid) = self.carriers.get(stream).cloned() else {
            return;
        };
        let Some(mut open) = self.open.remove(&sid) else {
            self.carriers.remove(stream);
            return;
        };
        let ack = Envelope::Ack {
            stream: stream.1,
            next,
        };
        tracing::debug!(session = %sid, ?ack, "acknowledging");
        match open.session.send(&ack.encode(), Instant::now()) {
            Ok(()) => self.transmit(&sid, &mut open.session),
            Err(e) => {
                tracing::warn!(session = %sid, error = %e, "cannot acknowledge: session closed")
            }
        }
        self.open.insert(sid, open);
    }

    /// Sends `envelope` to the device in `session` (as [`Incoming::Opened`] named it), if
    /// the session is still open.
    pub fn send(&mut self, session: &str, envelope: &[u8]) {
        let Some(mut open) = self.open.remove(session) else {
            return;
        };
        match open.session.send(envelope, Instant::now()) {
            Ok(()) => self.transmit(session, &mut open.session),
            Err(e) => {
                tracing::debug!(session = %session, error = %e, "cannot send: session closed")
            }
        }
        self.open.insert(session.to_string(), open);
    }

    /// Closes every session with an authenticated `going_away` close (so devices move to
    /// another instance at once, sending again what is not acknowledged) and disconnects
    /// from the broker.
    pub async fn shutdown(mut self) -> ServerStats {
        for (sid, mut open) in std::mem::take(&mut self.open) {
            open.session.close(AlertCode::GoingAway);
            self.transmit(&sid, &mut open.session);
        }
        let stats = self.stats();
        self.hello_link.close().await;
        self.link.close().await;
        stats
    }

    /// The down topic of the session `key`.
    fn down(&self, key: &str) -> String {
        let (client, sid) = split(key);
        self.topics.down(client, sid, &self.instance)
    }

    fn transmit(&mut self, sid: &str, session: &mut Session) {
        let topic = self.down(sid);
        while let Some(frame) = session.poll_transmit() {
            self.link.publish(topic.clone(), frame);
        }
    }

    /// A message on the sessions' connection.
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
            Some(Route::Up {
                client,
                instance,
                session,
            }) if instance == self.instance => {
                let mut frame = payload.to_vec();
                self.on_up(key(client, session), &mut frame);
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

    fn on_up(&mut self, key: String, frame: &mut [u8]) {
        let now = Instant::now();
        if let Some(mut open) = self.open.remove(&key) {
            if self.on_record(&key, &mut open, frame, now) {
                self.open.insert(key, open);
            } else {
                self.ready.push_back(Incoming::Closed { session: key });
            }
            return;
        }
        self.on_pending(key, frame, now);
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
                open.listed.seen(plaintext.len());
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
                        let delivery = self.accept(sid, open, (stream, seq, base), data);
                        self.ready.push_back(Incoming::Delivery(delivery));
                    }
                    Ok(_) => self.ready.push_back(Incoming::Envelope {
                        session: sid.to_string(),
                        envelope: plaintext.to_vec(),
                    }),
                    Err(_) => {
                        self.stats.malformed += 1;
                        tracing::warn!(session = %sid, device = %open.peer.name, "device sent something that is not a delivery envelope: dropped");
                    }
                }
                true
            }
            Ok(Event::KeyUpdated | Event::Ticket) => {
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

    /// A message from the device: handed out as it is, and its stream noted as carried by
    /// this session.
    fn accept(
        &mut self,
        sid: &str,
        open: &Open,
        (stream, seq, base): (StreamId, u64, u64),
        data: &[u8],
    ) -> Delivery {
        let key: StreamKey = (open.peer.identity.map(|i| i.fingerprint()), stream);
        if self.carriers.get(&key).is_none_or(|c| c != sid) {
            self.carriers.insert(key, sid.to_string());
        }
        self.stats.delivered += 1;
        let (client, session) = split(sid);
        Delivery {
            client: client.to_string(),
            session: session.to_string(),
            device: open.peer.clone(),
            suite: open.session.suite().name,
            aead: open.session.aead(),
            stream,
            seq,
            base,
            data: data.to_vec(),
        }
    }

    fn sweep(&mut self, now: Instant) {
        let idle = self.options.timeouts.idle;
        let order = &mut self.pending_order;
        let throttle = &mut self.throttle;
        let stats = &mut self.stats;
        self.pending.retain(|key, p| {
            let live = p.deadline > now;
            if !live {
                stats.handshake_timeouts += 1;
                order.remove(split(key).0, p.order);
                warn_dropped!(throttle, session = %key, "handshake timed out");
            }
            live
        });
        let ready = &mut self.ready;
        self.open.retain(|sid, open| {
            let live = now.saturating_duration_since(open.last_input) < idle;
            if !live {
                tracing::info!(session = %sid, device = %open.peer.name, "session idle: forgotten");
                ready.push_back(Incoming::Closed {
                    session: sid.clone(),
                });
            }
            live
        });
        self.close_unauthorized();
        let open = &self.open;
        self.carriers.retain(|_, sid| open.contains_key(sid));
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
                self.ready.push_back(Incoming::Closed { session: sid });
            }
        }
    }

    fn close_refused(&mut self, sid: &str, open: &mut Open, code: AlertCode) {
        tracing::warn!(session = %sid, device = %open.peer.name, reason = %code, "closing the session: the device is no longer authorized");
        open.session.close(code);
        self.transmit(sid, &mut open.session);
    }
}
