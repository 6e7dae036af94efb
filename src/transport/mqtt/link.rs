//! One MQTT 5 connection to the broker (rumqttc), kept up with backoff, moving whole
//! messages. It re-subscribes after every reconnect and never blocks its owner: publishes go
//! to rumqttc's request queue, or to a local overflow queue while that one is full.

use super::{random_hex, Broker, MqttError, MAX_PACKET_SIZE};
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ClientError, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::Outgoing;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// First reconnect delay; doubled after each failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// rumqttc's request queue, in MQTT packets.
const REQUEST_QUEUE: usize = 256;
/// Incoming messages queued between the connection task and the owner.
const EVENT_QUEUE: usize = 1024;
/// How long the owner waits before retrying the overflow queue.
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PayloadBytes {
    /// Published.
    pub sent: u64,
    /// Received.
    pub received: u64,
}

/// A connection to the broker.
pub(crate) struct Link {
    client: AsyncClient,
    events: mpsc::Receiver<LinkEvent>,
    subscriptions: Vec<String>,
    overflow: VecDeque<(String, Vec<u8>)>,
    connected: bool,
    task: tokio::task::JoinHandle<()>,
    bytes: PayloadBytes,
}

pub(super) fn options(broker: &Broker) -> Result<MqttOptions, MqttError> {
    let id = match &broker.client_id {
        Some(id) => id.clone(),
        None => format!(
            "secchan-{}",
            random_hex::<8>().map_err(|e| MqttError::Unreachable {
                broker: format!("{}:{}", broker.host, broker.port),
                reason: e.to_string(),
            })?
        ),
    };
    let mut o = MqttOptions::new(id, broker.host.clone(), broker.port);
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
    let mut backoff = MIN_BACKOFF;
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
                    tracing::debug!(broker = %broker, error = %e, retry_in = ?backoff, "MQTT reconnect failed");
                }
                tokio::time::sleep(jitter(backoff)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let forward = match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                backoff = MIN_BACKOFF;
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

/// `d` plus up to a quarter more, so many clients do not reconnect in lockstep.
fn jitter(d: Duration) -> Duration {
    use crate::crypto::random::{OsRandom, Random};
    let mut b = [0u8; 1];
    let extra = if OsRandom.fill(&mut b).is_ok() {
        b[0]
    } else {
        0
    };
    d + d / 4 * u32::from(extra) / 255
}

impl Link {
    /// Connects to the broker; fails if the first attempt fails.
    pub(crate) async fn connect(broker: &Broker) -> Result<Self, MqttError> {
        let (client, eventloop) = AsyncClient::new(options(broker)?, REQUEST_QUEUE);
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let (first_tx, first_rx) = oneshot::channel();
        let name = format!("{}:{}", broker.host, broker.port);
        let task = tokio::spawn(run(eventloop, tx, first_tx, name));
        first_rx.await.map_err(|_| MqttError::Stopped)??;
        let mut link = Self {
            client,
            events: rx,
            subscriptions: Vec::new(),
            overflow: VecDeque::new(),
            connected: false,
            task,
            bytes: PayloadBytes::default(),
        };
        // The task queued `Connected` for the first connection: consume it so the owner
        // starts connected.
        if let Some(LinkEvent::Connected) = link.events.recv().await {
            link.connected = true;
        }
        Ok(link)
    }

    /// Whether the broker connection is up (as last reported).
    pub(crate) fn is_connected(&self) -> bool {
        self.connected
    }

    /// Payload bytes moved.
    pub(crate) fn bytes(&self) -> PayloadBytes {
        self.bytes
    }

    /// Subscribes now and after every reconnect.
    pub(crate) fn subscribe(&mut self, filter: String) {
        if self.connected {
            self.request_subscribe(&filter);
        }
        self.subscriptions.push(filter);
    }

    /// Stops a subscription.
    pub(crate) fn unsubscribe(&mut self, filter: &str) {
        self.subscriptions.retain(|s| s != filter);
        if self.connected && self.client.try_unsubscribe(filter).is_err() {
            tracing::debug!(filter, "MQTT unsubscribe not queued");
        }
    }

    fn request_subscribe(&self, filter: &str) {
        if let Err(e) = self.client.try_subscribe(filter, QoS::AtLeastOnce) {
            // The queue is full only while the connection is down; the next Connected
            // subscribes again.
            tracing::debug!(filter, error = %e, "MQTT subscribe not queued");
        }
    }

    /// Publishes at QoS 1. While disconnected the message is dropped (returns false): the
    /// delivery layer sends it again after the reconnect.
    pub(crate) fn publish(&mut self, topic: String, payload: Vec<u8>) -> bool {
        if !self.connected {
            return false;
        }
        self.bytes.sent += payload.len() as u64;
        self.overflow.push_back((topic, payload));
        self.drain_overflow();
        true
    }

    fn drain_overflow(&mut self) {
        while let Some((topic, payload)) = self.overflow.pop_front() {
            match self
                .client
                .try_publish(topic.clone(), QoS::AtLeastOnce, false, payload)
            {
                Ok(()) => {}
                Err(ClientError::TryRequest(req) | ClientError::Request(req)) => {
                    if let rumqttc::v5::Request::Publish(p) = req {
                        self.overflow.push_front((topic, p.payload.to_vec()));
                    }
                    return;
                }
            }
        }
    }

    /// The next event. Renews subscriptions on `Connected`. `None` once the connection task
    /// has ended.
    pub(crate) async fn next_event(&mut self) -> Option<LinkEvent> {
        loop {
            self.drain_overflow();
            let event = if self.overflow.is_empty() {
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

    /// An event that is already waiting, without blocking.
    pub(crate) fn try_next_event(&mut self) -> Option<LinkEvent> {
        let event = self.events.try_recv().ok()?;
        Some(self.note(event))
    }

    fn note(&mut self, event: LinkEvent) -> LinkEvent {
        match &event {
            LinkEvent::Connected => {
                self.connected = true;
                for filter in &self.subscriptions {
                    self.request_subscribe(filter);
                }
            }
            LinkEvent::Disconnected => {
                self.connected = false;
                self.overflow.clear();
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
        while !self.overflow.is_empty() && tokio::time::Instant::now() < deadline {
            self.drain_overflow();
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
