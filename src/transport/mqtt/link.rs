//! One MQTT 5 connection to the broker (rumqttc), kept up with backoff, moving whole
//! messages. It re-subscribes after every reconnect and never blocks its owner: requests go
//! to rumqttc's request queue, or to a bounded local queue, in order, while that one is full.

use super::{Broker, MqttError, MAX_PACKET_SIZE};
use crate::backoff::Backoff;
use crate::msgs::FrameType;
use crate::throttle::{warn_dropped, Throttle};
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::Outgoing;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// First reconnect delay; doubled after each failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// rumqttc's request queue, in MQTT packets. rumqttc stops taking requests from it while its
/// QoS 1 window (the broker's Receive Maximum, 20 on Mosquitto) is full, so it fills up
/// whenever more publishes are outstanding than that; [`Queue`] takes the rest.
const REQUEST_QUEUE: usize = 256;
/// Most bytes [`Queue`] holds: room for a device's whole in-flight window of full records
/// (512 × 16,403 bytes, docs/mqtt.md §6.2) twice over. Beyond it the oldest frames are
/// dropped (docs/mqtt.md §3), so a flood of hellos cannot grow a server's memory without end.
const MAX_QUEUED_BYTES: usize = 16 * 1024 * 1024;
/// What a queued request costs beyond its topic and payload (the request itself, the
/// queue's slot), so that many tiny frames also reach the bound.
const REQUEST_COST: usize = 64;
/// Incoming messages queued between the connection task and the owner.
const EVENT_QUEUE: usize = 1024;
/// How long the owner waits before retrying the local queue.
const OVERFLOW_RETRY: Duration = Duration::from_millis(2);
/// How long a clean disconnect may take.
const DISCONNECT_WAIT: Duration = Duration::from_secs(2);

/// What the connection reports.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    /// (Re)connected; subscriptions were renewed.
    Connected,
    /// The connection dropped; it is being re-established.
    Disconnected,
    /// The broker answered a subscription: granted, or refused with this reason.
    Subscribed(Result<(), String>),
    /// A message on a subscribed topic.
    Message {
        /// Its topic (invalid UTF-8 is replaced, so such a topic never parses).
        topic: String,
        /// Its payload.
        payload: Bytes,
    },
}

/// Bytes of MQTT payload moved (topics and MQTT headers not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PayloadBytes {
    /// Published.
    pub sent: u64,
    /// Received.
    pub received: u64,
}

/// A connection to the broker.
pub(crate) struct Link {
    client: AsyncClient,
    client_id: String,
    events: mpsc::Receiver<LinkEvent>,
    subscriptions: Vec<String>,
    queue: Queue,
    connected: bool,
    task: tokio::task::JoinHandle<()>,
    bytes: PayloadBytes,
    throttle: Throttle,
}

/// A request for rumqttc, in the order the owner made it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Request {
    Publish { topic: String, payload: Bytes },
    Subscribe(String),
    Unsubscribe(String),
}

impl Request {
    fn cost(&self) -> usize {
        REQUEST_COST
            + match self {
                Self::Publish { topic, payload } => topic.len() + payload.len(),
                Self::Subscribe(filter) | Self::Unsubscribe(filter) => filter.len(),
            }
    }

    /// Which requests go first when the queue is over its bound: handshake frames (the peer
    /// sends its hello again, or the device re-publishes it), then session records (the
    /// delivery layer sends unacknowledged messages again). Subscriptions are never dropped.
    fn drop_rank(&self) -> Option<u8> {
        match self {
            Self::Publish { payload, .. } => match FrameType::of(payload) {
                Ok(FrameType::DeviceHello | FrameType::ServerHello | FrameType::Alert) => Some(0),
                _ => Some(1),
            },
            Self::Subscribe(_) | Self::Unsubscribe(_) => None,
        }
    }
}

/// Requests waiting for room in rumqttc's queue, at most [`MAX_QUEUED_BYTES`] (see
/// [`Request::drop_rank`] for what is dropped beyond).
#[derive(Debug)]
struct Queue {
    requests: VecDeque<Request>,
    bytes: usize,
    max_bytes: usize,
    dropped: u64,
}

impl Queue {
    fn new(max_bytes: usize) -> Self {
        Self {
            requests: VecDeque::new(),
            bytes: 0,
            max_bytes,
            dropped: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    fn clear(&mut self) {
        self.requests.clear();
        self.bytes = 0;
    }

    /// Appends a request; drops older frames while over the bound. Returns how many.
    fn push(&mut self, request: Request) -> u64 {
        self.bytes += request.cost();
        self.requests.push_back(request);
        let mut dropped = 0;
        while self.bytes > self.max_bytes {
            let victim = [0, 1].into_iter().find_map(|rank| {
                self.requests
                    .iter()
                    .position(|r| r.drop_rank() == Some(rank))
            });
            let Some(r) = victim.and_then(|i| self.requests.remove(i)) else {
                break;
            };
            self.bytes -= r.cost();
            dropped += 1;
        }
        self.dropped += dropped;
        dropped
    }

    fn front(&self) -> Option<&Request> {
        self.requests.front()
    }

    fn pop_front(&mut self) {
        if let Some(r) = self.requests.pop_front() {
            self.bytes -= r.cost();
        }
    }
}

pub(super) fn options(broker: &Broker, client_id: &str) -> Result<MqttOptions, MqttError> {
    let mut o = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    if let Some(tls) = &broker.tls {
        let config = super::tls::client_config(tls)?;
        o.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(config),
        ));
    }
    o.set_keep_alive(broker.keep_alive)
        .set_clean_start(true)
        .set_max_packet_size(Some(MAX_PACKET_SIZE))
        .set_connection_timeout(5);
    // Without TCP_NODELAY a record published right after the PUBACK of an Ack waits for the
    // broker's delayed TCP ACK (Nagle): about 40 ms per message on Linux, measured with
    // `secchan bench --mqtt`.
    let mut network = o.network_options();
    network.set_tcp_nodelay(true);
    o.set_network_options(network);
    if let Some(user) = &broker.username {
        let password = broker.password.as_deref().map_or("", String::as_str);
        o.set_credentials(user.clone(), password);
    }
    Ok(o)
}

/// Drives rumqttc's event loop: reports the first connection's outcome on `first`, then
/// reconnects with backoff for as long as the owner lives.
async fn run(
    mut eventloop: EventLoop,
    events: mpsc::Sender<LinkEvent>,
    first: oneshot::Sender<Result<(), MqttError>>,
    broker: String,
) {
    let mut first = Some(first);
    // Each pause plus up to a quarter more, so many clients do not reconnect in lockstep.
    let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF, (1.0, 1.25));
    let mut connected = false;
    loop {
        let event = match eventloop.poll().await {
            Ok(e) => e,
            Err(ConnectionError::RequestsDone) => return,
            Err(e) => {
                if let Some(first) = first.take() {
                    let _ = first.send(Err(MqttError::connecting(broker, e)));
                    return;
                }
                if connected {
                    connected = false;
                    tracing::warn!(broker = %broker, error = %e, "lost the MQTT broker: reconnecting");
                    if events.send(LinkEvent::Disconnected).await.is_err() {
                        return;
                    }
                } else {
                    tracing::debug!(broker = %broker, error = %e, "MQTT reconnect failed");
                }
                tokio::time::sleep(backoff.next_pause()).await;
                continue;
            }
        };
        let forward = match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                backoff.reset();
                if let Some(first) = first.take() {
                    let _ = first.send(Ok(()));
                } else {
                    tracing::info!(broker = %broker, "reconnected to the MQTT broker");
                }
                connected = true;
                Some(LinkEvent::Connected)
            }
            Event::Incoming(Packet::SubAck(ack)) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .find(|c| !matches!(c, SubscribeReasonCode::Success(_)));
                Some(LinkEvent::Subscribed(match refused {
                    Some(code) => Err(format!("{code:?}")),
                    None => Ok(()),
                }))
            }
            Event::Incoming(Packet::Publish(p)) => Some(LinkEvent::Message {
                topic: String::from_utf8_lossy(&p.topic).into_owned(),
                payload: p.payload,
            }),
            Event::Outgoing(Outgoing::Disconnect) => return,
            _ => None,
        };
        if let Some(ev) = forward {
            if events.send(ev).await.is_err() {
                return;
            }
        }
    }
}

impl Link {
    /// Connects to the broker; fails if the first attempt fails.
    pub(crate) async fn connect(broker: &Broker) -> Result<Self, MqttError> {
        let client_id = broker.client_id()?;
        let (client, eventloop) = AsyncClient::new(options(broker, &client_id)?, REQUEST_QUEUE);
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let (first_tx, first_rx) = oneshot::channel();
        let task = tokio::spawn(run(eventloop, tx, first_tx, broker.address()));
        first_rx.await.map_err(|_| MqttError::Stopped)??;
        let mut link = Self {
            client,
            client_id,
            events: rx,
            subscriptions: Vec::new(),
            queue: Queue::new(MAX_QUEUED_BYTES),
            connected: false,
            task,
            bytes: PayloadBytes::default(),
            throttle: Throttle::default(),
        };
        // The task queued `Connected` for the first connection: consume it so the owner
        // starts connected.
        if let Some(LinkEvent::Connected) = link.events.recv().await {
            link.connected = true;
        }
        Ok(link)
    }

    /// The MQTT client id this connection uses.
    pub(crate) fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Whether the broker connection is up (as last reported).
    pub(crate) fn is_connected(&self) -> bool {
        self.connected
    }

    /// Payload bytes moved.
    pub(crate) fn bytes(&self) -> PayloadBytes {
        self.bytes
    }

    /// Publishes dropped because the local queue was over its bound.
    pub(crate) fn dropped(&self) -> u64 {
        self.queue.dropped
    }

    /// Subscribes now (behind every request made before) and after every reconnect.
    pub(crate) fn subscribe(&mut self, filter: String) {
        if self.connected {
            self.request(Request::Subscribe(filter.clone()));
        }
        self.subscriptions.push(filter);
    }

    /// Stops a subscription (behind every request made before).
    pub(crate) fn unsubscribe(&mut self, filter: &str) {
        self.subscriptions.retain(|s| s != filter);
        if self.connected {
            self.request(Request::Unsubscribe(filter.to_string()));
        }
    }

    /// Publishes at QoS 1. While disconnected the message is dropped (returns false): the
    /// delivery layer sends it again after the reconnect.
    pub(crate) fn publish(&mut self, topic: String, payload: Vec<u8>) -> bool {
        if !self.connected {
            return false;
        }
        self.bytes.sent += payload.len() as u64;
        self.request(Request::Publish {
            topic,
            payload: payload.into(),
        });
        true
    }

    fn request(&mut self, request: Request) {
        let dropped = self.queue.push(request);
        if dropped > 0 {
            warn_dropped!(
                self.throttle,
                dropped,
                total = self.queue.dropped,
                "MQTT send queue full (the broker takes publishes more slowly than they come): dropped the oldest frames"
            );
        }
        self.drain_queue();
    }

    /// Hands queued requests to rumqttc, in order, until its queue is full.
    fn drain_queue(&mut self) {
        while let Some(request) = self.queue.front() {
            let sent = match request {
                Request::Publish { topic, payload } => {
                    self.client
                        .try_publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone())
                }
                Request::Subscribe(filter) => {
                    self.client.try_subscribe(filter.clone(), QoS::AtLeastOnce)
                }
                Request::Unsubscribe(filter) => self.client.try_unsubscribe(filter.clone()),
            };
            if sent.is_err() {
                return;
            }
            self.queue.pop_front();
        }
    }

    /// The next event. Renews subscriptions on `Connected`. `None` once the connection task
    /// has ended.
    pub(crate) async fn next_event(&mut self) -> Option<LinkEvent> {
        loop {
            self.drain_queue();
            let event = if self.queue.is_empty() {
                self.events.recv().await?
            } else {
                tokio::select! {
                    e = self.events.recv() => e?,
                    _ = tokio::time::sleep(OVERFLOW_RETRY) => continue,
                }
            };
            return Some(self.note(event));
        }
    }

    /// Hands what the local queue holds to rumqttc, as far as it takes it: for an owner busy
    /// with events it takes with [`try_next_event`](Self::try_next_event) only.
    pub(crate) fn flush(&mut self) {
        self.drain_queue();
    }

    /// An event that is already waiting, without blocking.
    pub(crate) fn try_next_event(&mut self) -> Option<LinkEvent> {
        let event = self.events.try_recv().ok()?;
        Some(self.note(event))
    }

    fn note(&mut self, event: LinkEvent) -> LinkEvent {
        match &event {
            LinkEvent::Connected => {
                self.connected = true;
                for filter in self.subscriptions.clone() {
                    self.request(Request::Subscribe(filter));
                }
            }
            LinkEvent::Disconnected => {
                // A reconnect starts clean: subscriptions are renewed, and the delivery
                // layer sends again what the broker did not confirm.
                self.connected = false;
                self.queue.clear();
            }
            LinkEvent::Message { payload, .. } => self.bytes.received += payload.len() as u64,
            LinkEvent::Subscribed(Ok(())) => {}
            LinkEvent::Subscribed(Err(reason)) => {
                tracing::error!(reason, "the broker refused a subscription: check its ACL")
            }
        }
        event
    }

    /// Sends what is queued, disconnects cleanly, and waits (briefly) for the task to end.
    pub(crate) async fn close(mut self) {
        let deadline = tokio::time::Instant::now() + DISCONNECT_WAIT;
        while !self.queue.is_empty() && tokio::time::Instant::now() < deadline {
            self.drain_queue();
            tokio::time::sleep(OVERFLOW_RETRY).await;
        }
        let _ = self.client.try_disconnect();
        let task = &mut self.task;
        let events = &mut self.events;
        // Keep draining events so the task is never blocked on a full queue.
        let _ = tokio::time::timeout_at(deadline, async {
            loop {
                tokio::select! {
                    _ = &mut *task => return,
                    e = events.recv() => if e.is_none() { return },
                }
            }
        })
        .await;
        self.task.abort();
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(first: FrameType, len: usize) -> Request {
        let mut payload = vec![0; len];
        payload[0] = first as u8;
        Request::Publish {
            topic: "t".into(),
            payload: payload.into(),
        }
    }

    #[test]
    fn the_queue_keeps_its_order_and_its_bound() {
        let record = publish(FrameType::Data, 100);
        let hello = publish(FrameType::ServerHello, 100);
        let alert = publish(FrameType::Alert, 3);
        let subscribe = Request::Subscribe("f".into());
        let bound = 3 * record.cost() + subscribe.cost();
        let mut q = Queue::new(bound);
        for r in [&subscribe, &record, &hello, &record] {
            assert_eq!(q.push(r.clone()), 0);
        }
        // Over the bound: the oldest handshake frames go first...
        assert_eq!(q.push(alert), 1, "the ServerHello");
        assert_eq!(q.push(record.clone()), 1, "the alert");
        // ... then the oldest records.
        assert_eq!(q.push(publish(FrameType::Close, 100)), 1, "a record");
        let left: Vec<_> = q.requests.iter().cloned().collect();
        assert_eq!(
            left,
            [
                subscribe.clone(),
                record.clone(),
                record,
                publish(FrameType::Close, 100)
            ]
        );
        assert_eq!(q.dropped, 3);
        assert!(q.bytes <= bound);
        // A subscription is never dropped, even when nothing else is left to drop.
        let mut q = Queue::new(1);
        assert_eq!(q.push(subscribe.clone()), 0);
        assert_eq!(q.push(Request::Unsubscribe("f".into())), 0);
        assert_eq!(q.requests.len(), 2);
        q.pop_front();
        q.pop_front();
        assert_eq!((q.bytes, q.is_empty()), (0, true));
    }
}
