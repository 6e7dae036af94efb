//! `secchan server --sink mqtt://HOST[:PORT]/TOPIC-TEMPLATE`: every decrypted message
//! republished to a local broker, for what the plant already runs on MQTT (Node-RED, Telegraf,
//! Home Assistant); docs/deployment.md.
//!
//! Each message is published with QoS 1 on the template's topic (`{device}`, `{fingerprint}`
//! and `{stream}` filled in), its payload the message's bytes, with MQTT 5 user properties
//! `device`, `fingerprint`, `stream` and `seq`. `write` returns once the broker sent a PUBACK
//! for every message of the batch, so the devices' acknowledgements follow the broker's.
//! Delivery to subscribers is QoS 1's: at least once. A batch that fails part-way is published
//! again whole; subscribers that must not see a message twice drop repeats by (fingerprint,
//! stream, seq), from the user properties.
//!
//! The connection is its own: a task polls rumqttc's event loop (keep-alives while idle) and
//! reports connections, acknowledgements and failures. After a failure the connection is
//! dropped whole and the next batch starts a new one with a clean session, so that no
//! acknowledgement from an earlier attempt is ever counted for a later batch.

use super::sink::{Sink, SinkError, SinkFuture, SinkRecord};
use crate::transport::mqtt::Broker;
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet, PubAckReason, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event};
use std::time::Duration;
use tokio::sync::mpsc;
use zeroize::Zeroizing;

/// How long connecting, or a batch's acknowledgements, may take before the attempt counts as
/// failed (and the batch is published again).
const TIMEOUT: Duration = Duration::from_secs(10);
/// rumqttc's request queue.
const REQUEST_QUEUE: usize = 1024;

/// One piece of a topic template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Device,
    Fingerprint,
    Stream,
}

/// A parsed `mqtt://` sink URL.
#[derive(Debug, Clone)]
pub struct Target {
    broker: Broker,
    template: Vec<Part>,
    name: String,
}

impl Target {
    /// `mqtt://host:port/template`, without credentials, for logs.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The topic a record is published on.
    fn topic(&self, record: &SinkRecord) -> String {
        let mut topic = String::new();
        for part in &self.template {
            match part {
                Part::Text(t) => topic.push_str(t),
                Part::Device => push_level(&mut topic, &record.origin.device.name),
                Part::Fingerprint => push_level(&mut topic, &fingerprint(record)),
                Part::Stream => topic.push_str(&hex::encode(record.stream)),
            }
        }
        topic
    }
}

/// The device's fingerprint, or "anonymous".
fn fingerprint(record: &SinkRecord) -> String {
    record
        .origin
        .device
        .identity
        .map_or_else(|| "anonymous".into(), |i| i.fingerprint())
}

/// Appends `value` as (part of) one topic level: the characters MQTT gives a meaning in topic
/// names (`/`, `+`, `#`) and NUL become `_`, so a name can neither add levels nor be refused.
fn push_level(topic: &mut String, value: &str) {
    if value.is_empty() {
        topic.push('_');
    }
    topic.extend(value.chars().map(|c| match c {
        '/' | '+' | '#' | '\0' => '_',
        c => c,
    }));
}

fn parse_template(template: &str) -> Result<Vec<Part>, String> {
    if template.is_empty() {
        return Err("the URL has no topic: mqtt://HOST:PORT/TOPIC, e.g. mqtt://127.0.0.1/plant/{device}/telemetry".into());
    }
    if template.starts_with('$') {
        return Err("topics starting with $ are the broker's".into());
    }
    let mut parts = Vec::new();
    let mut rest = template;
    while !rest.is_empty() {
        let (text, after) = match rest.find(['{', '}']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if text.contains(['+', '#', '\0']) {
            return Err("the topic contains + or #: a published topic has no wildcards".into());
        }
        if !text.is_empty() {
            parts.push(Part::Text(text.to_string()));
        }
        if after.is_empty() {
            break;
        }
        let Some(end) = after.find('}').filter(|_| after.starts_with('{')) else {
            return Err("unmatched { or } in the topic".into());
        };
        parts.push(match &after[1..end] {
            "device" => Part::Device,
            "fingerprint" => Part::Fingerprint,
            "stream" => Part::Stream,
            other => {
                return Err(format!(
                    "unknown placeholder {{{other}}} in the topic: use {{device}}, {{fingerprint}} or {{stream}}"
                ))
            }
        });
        rest = &after[end + 1..];
    }
    Ok(parts)
}

/// Parses `mqtt://[USER@]HOST[:PORT]/TEMPLATE` (or `mqtts://` for TLS with the system's
/// roots). A password in the URL is refused: pass `password` (from a file or the
/// environment) instead.
pub fn parse(url: &str, password: Option<Zeroizing<String>>) -> Result<Target, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or("expected mqtt://HOST:PORT/TOPIC")?;
    let (authority, template) = rest.split_once('/').unwrap_or((rest, ""));
    let (user, host) = match authority.rsplit_once('@') {
        Some((user, _)) if user.contains(':') => {
            return Err(
                "the URL carries a password, which would show in the process list: \
                        remove it, and put it in a file (--sink-password-file FILE) or in \
                        $SECCHAN_SINK_PASSWORD"
                    .into(),
            )
        }
        Some((user, host)) => (Some(user.to_string()), host),
        None => (None, authority),
    };
    let mut broker = Broker::parse_url(&format!("{scheme}://{host}")).map_err(|e| e.to_string())?;
    let template_parts = parse_template(template)?;
    let name = format!(
        "{}://{}:{}/{template}",
        if broker.tls.is_some() {
            "mqtts"
        } else {
            "mqtt"
        },
        broker.host,
        broker.port
    );
    broker.username = user;
    broker.password = password;
    Ok(Target {
        broker,
        template: template_parts,
        name,
    })
}

/// What the connection task reports.
#[derive(Debug)]
enum LinkEvent {
    Connected,
    Acked(PubAckReason),
    /// The connection ended (and the task with it): why, and whether it may pass.
    Lost(String, bool),
}

/// A live connection to the broker.
struct Connection {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<LinkEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether a refused connection may be accepted later (the broker is busy or restarting),
/// or is refused for good (credentials, authorization).
fn refusal_may_pass(code: ConnectReturnCode) -> bool {
    matches!(
        code,
        ConnectReturnCode::ServiceUnavailable
            | ConnectReturnCode::ServerUnavailable
            | ConnectReturnCode::ServerBusy
            | ConnectReturnCode::UnspecifiedError
            | ConnectReturnCode::ImplementationSpecificError
            | ConnectReturnCode::QuotaExceeded
            | ConnectReturnCode::ConnectionRateExceeded
            | ConnectReturnCode::UseAnotherServer
            | ConnectReturnCode::ServerMoved
    )
}

/// The MQTT republishing sink.
#[derive(Debug)]
pub struct MqttRepublish {
    target: Target,
    connection: Option<Connection>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connection")
    }
}

impl MqttRepublish {
    /// Connects to the broker; a server should not start on a broker it cannot reach.
    pub async fn open(target: Target) -> Result<Self, SinkError> {
        let mut sink = Self {
            target,
            connection: None,
        };
        sink.connection = Some(sink.connect().await?);
        tracing::info!(broker = %sink.target.name, "MQTT republishing sink ready");
        Ok(sink)
    }

    fn failure(&self, reason: String, retryable: bool) -> SinkError {
        SinkError {
            target: self.target.name.clone(),
            source: std::io::Error::other(reason),
            retryable,
        }
    }

    async fn connect(&self) -> Result<Connection, SinkError> {
        let options = self
            .target
            .broker
            .client_options()
            .map_err(|e| self.failure(e.to_string(), false))?;
        let (client, mut eventloop) = AsyncClient::new(options, REQUEST_QUEUE);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let event = match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => LinkEvent::Connected,
                    Ok(Event::Incoming(Packet::PubAck(ack))) => LinkEvent::Acked(ack.reason),
                    Ok(_) => continue,
                    Err(ConnectionError::ConnectionRefused(code)) => LinkEvent::Lost(
                        format!("the broker refused the connection: {code:?}"),
                        refusal_may_pass(code),
                    ),
                    Err(e) => LinkEvent::Lost(e.to_string(), true),
                };
                let lost = matches!(event, LinkEvent::Lost(..));
                if tx.send(event).is_err() || lost {
                    return;
                }
            }
        });
        let mut connection = Connection {
            client,
            events,
            task,
        };
        match tokio::time::timeout(TIMEOUT, connection.events.recv()).await {
            Ok(Some(LinkEvent::Connected)) => Ok(connection),
            Ok(Some(LinkEvent::Lost(reason, may_pass))) => Err(self.failure(reason, may_pass)),
            Ok(_) => Err(self.failure("the connection ended".into(), true)),
            Err(_) => Err(self.failure(
                format!("no answer from the broker in {} s", TIMEOUT.as_secs()),
                true,
            )),
        }
    }

    /// Publishes the batch on `connection` and waits for every PUBACK.
    async fn publish(
        &self,
        connection: &mut Connection,
        batch: &[SinkRecord],
    ) -> Result<(), SinkError> {
        for record in batch {
            let properties = PublishProperties {
                user_properties: vec![
                    ("device".into(), record.origin.device.name.clone()),
                    ("fingerprint".into(), fingerprint(record)),
                    ("stream".into(), hex::encode(record.stream)),
                    ("seq".into(), record.seq.to_string()),
                ],
                ..Default::default()
            };
            let payload: Bytes = record.data.clone();
            let queued = connection.client.publish_with_properties(
                self.target.topic(record),
                QoS::AtLeastOnce,
                false,
                payload,
                properties,
            );
            // rumqttc's queue is full while the broker's window of unacknowledged messages
            // is: a broker that stops acknowledging stops this too.
            tokio::time::timeout(TIMEOUT, queued)
                .await
                .map_err(|_| {
                    self.failure(
                        format!("the broker took no message for {} s", TIMEOUT.as_secs()),
                        true,
                    )
                })?
                .map_err(|e| self.failure(e.to_string(), true))?;
        }
        let mut acked = 0;
        while acked < batch.len() {
            let event = tokio::time::timeout(TIMEOUT, connection.events.recv())
                .await
                .map_err(|_| {
                    self.failure(
                        format!(
                            "the broker acknowledged {acked} of {} messages in {} s",
                            batch.len(),
                            TIMEOUT.as_secs()
                        ),
                        true,
                    )
                })?;
            match event {
                Some(LinkEvent::Acked(PubAckReason::Success | PubAckReason::NoMatchingSubscribers)) => acked += 1,
                Some(LinkEvent::Acked(reason)) => {
                    return Err(self.failure(
                        format!("the broker refused a message ({reason:?}): check its ACL for the sink's topics"),
                        false,
                    ))
                }
                Some(LinkEvent::Connected) => {}
                Some(LinkEvent::Lost(reason, may_pass)) => return Err(self.failure(reason, may_pass)),
                None => return Err(self.failure("the connection ended".into(), true)),
            }
        }
        Ok(())
    }

    async fn write_batch(&mut self, batch: &[SinkRecord]) -> Result<(), SinkError> {
        let mut connection = match self.connection.take() {
            Some(c) => c,
            None => self.connect().await?,
        };
        self.publish(&mut connection, batch).await?;
        self.connection = Some(connection);
        Ok(())
    }
}

impl Sink for MqttRepublish {
    fn write<'a>(&'a mut self, batch: &'a [SinkRecord]) -> SinkFuture<'a> {
        Box::pin(self.write_batch(batch))
    }
}

#[cfg(test)]
mod tests {
    use super::super::sink::Origin;
    use super::*;
    use crate::crypto::identity::IdentityKey;
    use crate::handshake::server::PeerDevice;
    use std::sync::Arc;

    fn record(name: &str, identity: bool) -> SinkRecord {
        SinkRecord {
            origin: Arc::new(Origin {
                device: PeerDevice {
                    identity: identity.then(|| IdentityKey::from_seed(&[7; 32]).public()),
                    name: name.into(),
                },
                peer: "p".into(),
                suite: "X25519",
                aead: "AES-256-GCM",
            }),
            stream: [0xab; 8],
            seq: 3,
            data: Bytes::from_static(b"{}"),
            received: std::time::SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn the_template_fills_in_the_device_and_keeps_one_topic_level_per_value() {
        let t = parse("mqtt://127.0.0.1:1884/plant/{device}/telemetry", None).unwrap();
        assert_eq!(t.name(), "mqtt://127.0.0.1:1884/plant/{device}/telemetry");
        assert_eq!(
            t.topic(&record("greenhouse-pi", true)),
            "plant/greenhouse-pi/telemetry"
        );
        assert_eq!(t.topic(&record("a/b+c#", true)), "plant/a_b_c_/telemetry");
        assert_eq!(t.topic(&record("", true)), "plant/_/telemetry");
        let t = parse("mqtts://broker.example/x/{fingerprint}/{stream}", None).unwrap();
        assert_eq!(t.broker.port, 8883);
        let topic = t.topic(&record("d", true));
        assert!(topic.starts_with("x/SHA256:"), "{topic}");
        assert!(topic.ends_with("/abababababababab"), "{topic}");
        assert_eq!(topic.matches('/').count(), 2, "{topic}");
        assert_eq!(t.topic(&record("d", false)), "x/anonymous/abababababababab");
    }

    #[test]
    fn a_busy_broker_is_tried_again_and_a_refusal_of_the_account_is_final() {
        for code in [
            ConnectReturnCode::ServerUnavailable,
            ConnectReturnCode::ServerBusy,
            ConnectReturnCode::QuotaExceeded,
        ] {
            assert!(refusal_may_pass(code), "{code:?}");
        }
        for code in [
            ConnectReturnCode::BadUserNamePassword,
            ConnectReturnCode::NotAuthorized,
            ConnectReturnCode::Banned,
            ConnectReturnCode::ClientIdentifierNotValid,
        ] {
            assert!(!refusal_may_pass(code), "{code:?}");
        }
    }

    #[test]
    fn bad_templates_and_passwords_are_refused() {
        for (url, needle) in [
            ("mqtt://127.0.0.1", "no topic"),
            ("mqtt://127.0.0.1/", "no topic"),
            ("mqtt://127.0.0.1/a/+/b", "wildcards"),
            ("mqtt://127.0.0.1/a/#", "wildcards"),
            ("mqtt://127.0.0.1/$SYS/x", "broker's"),
            ("mqtt://127.0.0.1/a/{name}", "unknown placeholder"),
            ("mqtt://127.0.0.1/a/{device", "unmatched"),
            ("mqtt://127.0.0.1/a/device}", "unmatched"),
            ("mqtt://user:hunter2@127.0.0.1/a", "--sink-password-file"),
            ("http://127.0.0.1/a", "mqtt://"),
        ] {
            let e = parse(url, None).unwrap_err();
            assert!(e.contains(needle), "{url}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        let t = parse(
            "mqtt://plant@127.0.0.1/a",
            Some(Zeroizing::new("pw".into())),
        )
        .unwrap();
        assert_eq!(t.broker.username.as_deref(), Some("plant"));
        assert_eq!(t.name(), "mqtt://127.0.0.1:1883/a");
    }
}
