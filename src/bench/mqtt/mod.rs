//! `secchan bench --mqtt URL`: secchan sessions through an MQTT broker beside plaintext MQTT
//! through the same broker (docs/mqtt.md, "Measuring").
//!
//! Everything runs in this process, in two halves on two threads, as a device and a server
//! on two machines would: the receiving half (a secchan [`MqttServer`], then a bare MQTT 5
//! subscriber) on a runtime of its own, the sending half (a secchan [`MqttDevice`], then a
//! bare MQTT 5 publisher) on the benchmark's runtime. Both publish at QoS 1 on topics of the
//! same length, under a prefix of their own (`P/bench-<random>`), so no running secchan
//! server on the same broker answers the benchmark's device. For each payload size, secchan
//! and then plaintext:
//!
//! - *latency*: one message in flight at a time, from the sender's call (`MqttDevice::send`,
//!   `AsyncClient::publish`) until the receiver has the message (the server's delivery
//!   intake writes it to its sink, the subscriber's event loop yields it); both instants from
//!   this process's monotonic clock;
//! - *messages/s*: messages sent back to back, divided by the time from the first send until
//!   the receiver has the last one;
//! - *bytes*: MQTT payload bytes per message each way, not bytes on the wire (topics, MQTT
//!   headers and PUBACKs, the same for both, are not counted; docs/mqtt.md §12). Down is
//!   secchan's Ack records: one per message when messages are sent alone (the latency
//!   phase), one per burst when sent back to back (the rate phase).

use super::measure::micros;
use super::system::Percentiles;
use super::{BenchError, Options, Target};
use crate::crypto::aead::AeadId;
use crate::crypto::identity::IdentityKey;
use crate::crypto::kem::X25519_MLKEM768;
use crate::crypto::random::OsRandom;
use crate::delivery::{Streams, DEFAULT_MAX_OUT_OF_ORDER};
use crate::handshake::device::DeviceConfig;
use crate::handshake::server::ServerConfig;
use crate::handshake::{AllowAnyDevice, Mode};
use crate::service::intake::{self, IntakeStats};
use crate::service::mqtt_server;
use crate::service::sink::{Sink, SinkFuture, SinkRecord};
use crate::transport::mqtt::{
    random_hex, Broker, DeviceOptions, MqttDevice, MqttError, MqttServer, ServerOptions,
    ServerStats, Topics,
};
use crate::trust::Pinned;
use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop};
use rumqttc::Outgoing;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

mod report;
pub use report::{MqttFigures, MqttRatios, MqttReport, MqttResult};

/// Untimed messages per transport and payload size before the latency figure.
const WARMUP: u64 = 10;
/// Longest wait for anything the broker should deliver (never reached when things work).
const PATIENCE: Duration = Duration::from_secs(30);
/// A secchan median latency from which the table explains the broker's Nagle delay (Linux
/// delays a TCP ACK by up to 40 ms; the stalls measured here are 40-48 ms).
const NAGLE_HINT_US: f64 = 20_000.0;
/// rumqttc's request queue for the plaintext clients, in MQTT packets (as secchan's links).
const REQUEST_QUEUE: usize = 256;

/// What `--mqtt` measures.
#[derive(Debug, Clone)]
pub struct MqttBench {
    /// The broker, with the credentials, client id and topic prefix given.
    pub broker: Broker,
    /// Messages sent back to back per transport and payload size for the rate figure; a
    /// tenth of that (at least one) are timed one by one for the latency figure.
    pub messages: u64,
}

impl MqttBench {
    /// Default of `--mqtt-messages`: a run of a few seconds.
    pub const DEFAULT_MESSAGES: u64 = 2_000;

    fn latency_messages(&self) -> u64 {
        (self.messages / 10).max(1)
    }
}

/// Runs both transports through `bench.broker`, secchan with the first suite and AEAD of
/// `opts` and the device identity of `target`; `tick` after each payload size.
pub async fn run(
    bench: &MqttBench,
    target: &Target,
    opts: &Options,
    mut tick: impl FnMut(),
) -> Result<MqttReport, BenchError> {
    let suite = opts.suites.first().copied().unwrap_or(&X25519_MLKEM768);
    let aead = opts.aeads.first().copied().unwrap_or(AeadId::Aes256Gcm);
    let mut broker = bench.broker.clone();
    let prefix = format!("{}/bench-{}", broker.topics.prefix(), random_hex::<4>()?);
    broker.topics = Topics::new(&prefix).map_err(mqtt)?;
    let plain_topic = plain_topic(&broker.topics, device_level_len(&broker))?;
    let receiver = Receiver::new()?;

    let server_identity = Arc::new(IdentityKey::generate(&mut OsRandom)?);
    let pin = Arc::new(Pinned(server_identity.public().fingerprint()));
    let mut config = ServerConfig::new(server_identity, Arc::new(AllowAnyDevice));
    config.mode = Mode::Any;
    let (server, outputs) = receiver
        .start_server(&client(&broker, "server"), config)
        .await?;
    let device_config = DeviceConfig::default()
        .with_suite(suite)
        .with_aeads(vec![aead])
        .with_identity(target.identity.clone());
    let device = MqttDevice::start(
        &client(&broker, "device"),
        device_config,
        pin,
        DeviceOptions::default(),
    )
    .await?;
    let mut secchan = SecchanPipe { device, outputs };

    let sub_broker = client(&broker, "sub");
    let topic = plain_topic.clone();
    let (subscriber, arrivals) =
        flatten(receiver.spawn(async move { subscribe(&sub_broker, topic).await })).await?;
    let (publisher, _) = connect(&client(&broker, "pub"), None).await?;
    let mut plain = PlainPipe {
        client: publisher,
        topic: plain_topic.clone(),
        arrivals,
        sent: 0,
    };

    let mut results = Vec::new();
    for payload in Options::SMALL_PAYLOADS {
        let s = measure(&mut secchan, payload, bench).await?;
        let p = measure(&mut plain, payload, bench).await?;
        results.push(MqttResult {
            payload,
            ratios: MqttRatios {
                latency: s.latency_us.median / p.latency_us.median,
                messages_per_s: s.messages_per_s / p.messages_per_s,
                up_bytes: s.up_bytes / p.up_bytes,
            },
            secchan: s,
            plaintext: p,
        });
        tick();
    }

    secchan.device.finish(PATIENCE).await?;
    let (stats, intake) = server.stop().await?;
    let _ = plain.client.disconnect().await;
    let _ = subscriber.disconnect().await;
    Ok(MqttReport {
        broker: broker.display_name(),
        suite: suite.name,
        aead: aead.name(),
        warmup: WARMUP,
        latency_messages: bench.latency_messages(),
        rate_messages: bench.messages,
        topic_len: plain_topic.len(),
        server_delivered: intake.written,
        server_duplicates: stats.duplicate_records + intake.duplicates,
        results,
    })
}

/// An MQTT failure as the benchmark's error.
fn mqtt(e: MqttError) -> BenchError {
    BenchError::Transport(e.into())
}

/// The plaintext topic: `P/{level}/pt/{16 hex}/{32 hex}`, as long as the device's up topic
/// `P/{client}/up/{instance}/{session}` when `level` is as long as its client level, so
/// MQTT's framing costs both the same.
fn plain_topic(topics: &Topics, level_len: usize) -> Result<String, BenchError> {
    Ok(format!(
        "{}/{}/pt/{}/{}",
        topics.prefix(),
        "p".repeat(level_len),
        random_hex::<8>()?,
        random_hex::<16>()?
    ))
}

/// The length of the device's client level: its client id, given or random.
fn device_level_len(broker: &Broker) -> usize {
    client(broker, "device")
        .client_id
        .map_or("secchan-".len() + 16, |id| id.len())
}

/// `broker` for one of the benchmark's clients: a given client id gets `-role` appended,
/// since the broker allows one connection per id.
fn client(broker: &Broker, role: &str) -> Broker {
    let mut b = broker.clone();
    b.client_id = broker.client_id.as_ref().map(|id| format!("{id}-{role}"));
    b
}

/// What the two transports have in common for [`measure`].
trait Pipe {
    /// Hands one message to the sender.
    async fn send(&mut self, data: &[u8]) -> Result<(), BenchError>;
    /// When the receiver handed out the next message.
    async fn output(&mut self) -> Result<Instant, BenchError>;
    /// Waits until every message sent is acknowledged end to end (where the transport has
    /// such acknowledgements); returns the MQTT payload bytes sent and received so far.
    async fn settle(&mut self) -> Result<(u64, u64), BenchError>;
}

/// Waits for the next output of `outputs`.
async fn next_output(
    outputs: &mut mpsc::UnboundedReceiver<Instant>,
) -> Result<Instant, BenchError> {
    match tokio::time::timeout(PATIENCE, outputs.recv()).await {
        Ok(Some(at)) => Ok(at),
        Ok(None) => Err(BenchError::Protocol("the MQTT receiver stopped")),
        Err(_) => Err(BenchError::Protocol(
            "a message published through the MQTT broker did not arrive within 30 s",
        )),
    }
}

/// Warm-up, latency, rate and bytes for `payload`-byte messages through `pipe`.
async fn measure(
    pipe: &mut impl Pipe,
    payload: usize,
    bench: &MqttBench,
) -> Result<MqttFigures, BenchError> {
    let data = vec![b'x'; payload];
    for _ in 0..WARMUP {
        pipe.send(&data).await?;
        pipe.output().await?;
    }
    let (sent0, received0) = pipe.settle().await?;

    let alone = bench.latency_messages();
    let mut samples = Vec::with_capacity(alone as usize);
    for _ in 0..alone {
        let start = Instant::now();
        pipe.send(&data).await?;
        samples.push(micros(
            pipe.output().await?.saturating_duration_since(start),
        ));
    }
    let (sent1, received1) = pipe.settle().await?;

    let burst = bench.messages;
    let start = Instant::now();
    for _ in 0..burst {
        pipe.send(&data).await?;
    }
    let mut last = start;
    for _ in 0..burst {
        last = pipe.output().await?;
    }
    let elapsed = last.saturating_duration_since(start).as_secs_f64();
    let (_, received2) = pipe.settle().await?;
    Ok(MqttFigures {
        delivered: WARMUP + alone + burst,
        latency_us: Percentiles::of(&mut samples),
        messages_per_s: burst as f64 / elapsed.max(f64::MIN_POSITIVE),
        up_bytes: (sent1 - sent0) as f64 / alone as f64,
        down_bytes: (received1 - received0) as f64 / alone as f64,
        down_bytes_burst: (received2 - received1) as f64 / burst as f64,
    })
}

/// A secchan device, and the instants at which the server output its messages.
struct SecchanPipe {
    device: MqttDevice,
    outputs: mpsc::UnboundedReceiver<Instant>,
}

impl Pipe for SecchanPipe {
    async fn send(&mut self, data: &[u8]) -> Result<(), BenchError> {
        Ok(self.device.send(data.to_vec()).await?)
    }

    async fn output(&mut self) -> Result<Instant, BenchError> {
        next_output(&mut self.outputs).await
    }

    async fn settle(&mut self) -> Result<(u64, u64), BenchError> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let s = self.device.stats();
            if s.buffered == 0 && s.acknowledged == s.queued {
                return Ok((s.bytes.sent, s.bytes.received));
            }
            if Instant::now() > deadline {
                return Err(mqtt(MqttError::Unacknowledged(s.buffered)));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// A bare MQTT 5 publisher, and the instants at which the subscriber received its messages.
struct PlainPipe {
    client: AsyncClient,
    topic: String,
    arrivals: mpsc::UnboundedReceiver<Instant>,
    sent: u64,
}

impl Pipe for PlainPipe {
    async fn send(&mut self, data: &[u8]) -> Result<(), BenchError> {
        self.sent += data.len() as u64;
        self.client
            .publish(self.topic.clone(), QoS::AtLeastOnce, false, data.to_vec())
            .await
            .map_err(|_| mqtt(MqttError::Stopped))
    }

    async fn output(&mut self) -> Result<Instant, BenchError> {
        next_output(&mut self.arrivals).await
    }

    async fn settle(&mut self) -> Result<(u64, u64), BenchError> {
        // Every message was received (`output`); nothing comes back but MQTT's PUBACKs.
        Ok((self.sent, 0))
    }
}

/// The receiving half's runtime. It is stopped without blocking when dropped, since that
/// happens inside the benchmark's runtime.
struct Receiver {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl Receiver {
    fn new() -> Result<Self, BenchError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bench-mqtt-receiver")
            .enable_all()
            .build()?;
        Ok(Self {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    fn spawn<F>(&self, f: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(f)
    }

    /// Starts a secchan server instance on this runtime, reporting when it outputs each
    /// message.
    async fn start_server(
        &self,
        broker: &Broker,
        config: ServerConfig,
    ) -> Result<(RunningServer, mpsc::UnboundedReceiver<Instant>), BenchError> {
        let broker = broker.clone();
        let server = flatten(self.spawn(async move {
            Ok(MqttServer::start(&broker, Arc::new(config), ServerOptions::default()).await?)
        }))
        .await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel();
        let task = self.spawn(serve(server, tx, stopped));
        Ok((RunningServer { stop, task }, rx))
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn flatten<T>(task: tokio::task::JoinHandle<Result<T, BenchError>>) -> Result<T, BenchError> {
    task.await
        .map_err(|_| BenchError::Protocol("the MQTT receiver's task failed"))?
}

/// A secchan server instance running on the receiver's runtime.
struct RunningServer {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(ServerStats, IntakeStats), BenchError>>,
}

impl RunningServer {
    /// Closes its sessions and disconnects; its counters.
    async fn stop(self) -> Result<(ServerStats, IntakeStats), BenchError> {
        let _ = self.stop.send(());
        flatten(self.task).await
    }
}

/// A sink that reports the instant each message is written.
struct Timestamps(mpsc::UnboundedSender<Instant>);

impl Sink for Timestamps {
    fn write<'a>(&'a mut self, batch: &'a [SinkRecord]) -> SinkFuture<'a> {
        let now = Instant::now();
        for _ in batch {
            let _ = self.0.send(now);
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Serves the instance through the delivery intake (as `secchan server --mqtt` does) until
/// told to stop; the server's counters and the intake's.
async fn serve(
    server: MqttServer,
    outputs: mpsc::UnboundedSender<Instant>,
    stop: oneshot::Receiver<()>,
) -> Result<(ServerStats, IntakeStats), BenchError> {
    let streams = Streams::new(1024, DEFAULT_MAX_OUT_OF_ORDER, Duration::from_secs(3600));
    let (intake, written) = intake::start(Box::new(Timestamps(outputs)), streams, None);
    let stats = mqtt_server::serve(server, intake, async {
        let _ = stop.await;
    })
    .await?;
    let intake = written
        .await
        .map_err(|_| BenchError::Protocol("the delivery intake failed"))?
        .map_err(|e| BenchError::Io(e.source))?;
    Ok((stats, intake))
}

/// A bare MQTT 5 client with secchan's connection options, its event loop driven by a task
/// on the current runtime; `arrivals` is told the instant each incoming PUBLISH arrives.
/// Returns once the broker accepted the connection, with a receiver for the first SUBACK.
async fn connect(
    broker: &Broker,
    arrivals: Option<mpsc::UnboundedSender<Instant>>,
) -> Result<(AsyncClient, oneshot::Receiver<Result<(), String>>), BenchError> {
    let (client, eventloop) =
        AsyncClient::new(broker.client_options().map_err(mqtt)?, REQUEST_QUEUE);
    let (first, connected) = oneshot::channel();
    let (subscribed_tx, subscribed) = oneshot::channel();
    let name = format!("{}:{}", broker.host, broker.port);
    tokio::spawn(drive(eventloop, first, subscribed_tx, arrivals, name));
    connected.await.map_err(|_| mqtt(MqttError::Stopped))??;
    Ok((client, subscribed))
}

/// Drives a plaintext client's event loop until it disconnects or fails.
async fn drive(
    mut eventloop: EventLoop,
    first: oneshot::Sender<Result<(), BenchError>>,
    subscribed: oneshot::Sender<Result<(), String>>,
    arrivals: Option<mpsc::UnboundedSender<Instant>>,
    broker: String,
) {
    let mut first = Some(first);
    let mut subscribed = Some(subscribed);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if let Some(f) = first.take() {
                    let _ = f.send(Ok(()));
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .find(|c| !matches!(c, SubscribeReasonCode::Success(_)));
                if let Some(s) = subscribed.take() {
                    let _ = s.send(refused.map_or(Ok(()), |c| Err(format!("{c:?}"))));
                }
            }
            Ok(Event::Incoming(Packet::Publish(_))) => {
                if let Some(tx) = &arrivals {
                    if tx.send(Instant::now()).is_err() {
                        return;
                    }
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(ConnectionError::RequestsDone) => {
                return
            }
            Ok(_) => {}
            Err(e) => {
                let error = MqttError::connecting(broker, e);
                match first.take() {
                    Some(f) => {
                        let _ = f.send(Err(mqtt(error)));
                    }
                    None => tracing::warn!(%error, "the plaintext MQTT client lost the broker"),
                }
                return;
            }
        }
    }
}

/// A plaintext subscriber on `topic` (QoS 1), once the broker confirmed the subscription.
async fn subscribe(
    broker: &Broker,
    topic: String,
) -> Result<(AsyncClient, mpsc::UnboundedReceiver<Instant>), BenchError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (client, subscribed) = connect(broker, Some(tx)).await?;
    client
        .subscribe(topic, QoS::AtLeastOnce)
        .await
        .map_err(|_| mqtt(MqttError::Stopped))?;
    let refused = |reason| mqtt(MqttError::SubscribeRefused { reason });
    match tokio::time::timeout(PATIENCE, subscribed).await {
        Ok(Ok(Ok(()))) => Ok((client, rx)),
        Ok(Ok(Err(reason))) => Err(refused(reason)),
        Ok(Err(_)) => Err(mqtt(MqttError::Stopped)),
        Err(_) => Err(refused(format!("no answer within {PATIENCE:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_topic_is_as_long_as_a_device_up_topic() {
        let topics = Topics::new("site/bench-0123abcd").unwrap();
        let mut b = Broker::parse_url("mqtt://127.0.0.1:1883").unwrap();
        let random_id = b.client_id().unwrap();
        let up = topics.up(&random_id, &"a".repeat(16), &"b".repeat(32));
        let plain = plain_topic(&topics, device_level_len(&b)).unwrap();
        assert_eq!(plain.len(), up.len());
        assert!(topics.parse(&plain).is_none());
        b.client_id = Some("lab".into());
        let up = topics.up("lab-device", &"a".repeat(16), &"b".repeat(32));
        assert_eq!(
            plain_topic(&topics, device_level_len(&b)).unwrap().len(),
            up.len()
        );
    }

    #[test]
    fn a_given_client_id_is_suffixed_per_client() {
        let mut b = Broker::parse_url("mqtt://127.0.0.1:1883").unwrap();
        assert_eq!(client(&b, "server").client_id, None);
        b.client_id = Some("lab".into());
        assert_eq!(
            client(&b, "server").client_id.as_deref(),
            Some("lab-server")
        );
        assert_eq!(client(&b, "pub").client_id.as_deref(), Some("lab-pub"));
    }
}
