//! The secchan side of the MQTT integration tests: keys and configurations, servers and
//! devices running in tasks, a device driven by hand, and raw MQTT clients for spying and
//! injecting.

use super::mosquitto::Mosquitto;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use secchan::crypto::identity::IdentityKey;
use secchan::crypto::kem::{Suite, X25519_MLKEM768};
use secchan::crypto::random::OsRandom;
use secchan::delivery::{Envelope, StreamId, Streams, DEFAULT_MAX_OUT_OF_ORDER};
use secchan::handshake::device::{self, DeviceConfig};
use secchan::handshake::server::ServerConfig;
use secchan::handshake::{AuthorizedDevices, Mode};
use secchan::service::intake::{self, IntakeStats};
use secchan::service::mqtt_server;
use secchan::service::sink::{Sink, SinkFuture, SinkRecord};

use secchan::handshake::server;
use secchan::handshake::AllowAnyDevice;
use secchan::msgs::{encode_alert, AlertCode, FrameType};
use secchan::session::SessionConfig;
use secchan::transport::mqtt::topics::Route;
use secchan::transport::mqtt::{
    Broker, Delivery, DeviceOptions, MqttDevice, MqttServer, ServerOptions, ServerStats, Topics,
};
use secchan::transport::Timeouts;
use secchan::trust::Pinned;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Upper bound for anything a test waits for (never reached when things work).
pub const PATIENCE: Duration = Duration::from_secs(30);

pub struct Keys {
    pub server: Arc<IdentityKey>,
    pub devices: Vec<Arc<IdentityKey>>,
}

impl Keys {
    pub fn new(devices: usize) -> Self {
        Self {
            server: Arc::new(IdentityKey::generate(&mut OsRandom).unwrap()),
            devices: (0..devices)
                .map(|_| Arc::new(IdentityKey::generate(&mut OsRandom).unwrap()))
                .collect(),
        }
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        let mut authorized = AuthorizedDevices::new();
        for (i, d) in self.devices.iter().enumerate() {
            authorized.insert(d.public().fingerprint(), format!("device-{i}"));
        }
        let mut c = ServerConfig::new(self.server.clone(), Arc::new(authorized));
        c.mode = Mode::Any;
        Arc::new(c)
    }

    pub fn device_config(&self, i: usize, suite: &'static Suite) -> DeviceConfig {
        DeviceConfig::default()
            .with_suite(suite)
            .with_identity(self.devices[i].clone())
    }

    pub fn pin(&self) -> Arc<Pinned> {
        Arc::new(Pinned(self.server.public().fingerprint()))
    }
}

/// Every test calls this: RUST_LOG=secchan=debug shows what happened in a failing test.
pub fn broker(m: &Mosquitto) -> Broker {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    Broker::parse_url(&m.url()).unwrap()
}

pub fn timeouts() -> Timeouts {
    Timeouts {
        handshake: Duration::from_secs(5),
        idle: Duration::from_secs(60),
    }
}

pub fn device_options() -> DeviceOptions {
    DeviceOptions {
        ack_timeout: Duration::from_secs(15),
        timeouts: timeouts(),
        ..DeviceOptions::default()
    }
}

pub async fn start_device(
    m: &Mosquitto,
    keys: &Keys,
    i: usize,
    suite: &'static Suite,
) -> MqttDevice {
    let config = keys.device_config(i, suite);
    MqttDevice::start(&broker(m), config, keys.pin(), device_options())
        .await
        .unwrap()
}

pub async fn send_all(dev: &mut MqttDevice, messages: &[String]) {
    for m in messages {
        dev.send(m.clone().into_bytes()).await.unwrap();
    }
}

/// A server instance running in a task, handing its deliveries to a channel.
pub struct Running {
    deliveries: mpsc::UnboundedReceiver<SinkRecord>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Stats>,
    pub instance: String,
}

/// What a server instance and its delivery intake counted.
#[derive(Debug)]
pub struct Stats {
    pub server: ServerStats,
    pub intake: IntakeStats,
}

impl std::ops::Deref for Stats {
    type Target = ServerStats;
    fn deref(&self) -> &ServerStats {
        &self.server
    }
}

/// A sink handing every record written to the test.
struct Channel(mpsc::UnboundedSender<SinkRecord>);

impl Sink for Channel {
    fn write<'a>(&'a mut self, batch: &'a [SinkRecord]) -> SinkFuture<'a> {
        for r in batch {
            let _ = self.0.send(r.clone());
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

pub fn server_options() -> ServerOptions {
    ServerOptions {
        timeouts: timeouts(),
        ..ServerOptions::default()
    }
}

pub async fn spawn_server(m: &Mosquitto, keys: &Keys) -> Running {
    spawn_server_with(m, keys.server_config(), server_options()).await
}

pub async fn spawn_server_with(
    m: &Mosquitto,
    config: Arc<ServerConfig>,
    options: ServerOptions,
) -> Running {
    spawn_server_on(&broker(m), config, options).await
}

/// A server instance with the test options, reaching the broker as `broker` says.
pub async fn spawn_server_with_broker(broker: &Broker, config: Arc<ServerConfig>) -> Running {
    spawn_server_on(broker, config, server_options()).await
}

async fn spawn_server_on(
    broker: &Broker,
    config: Arc<ServerConfig>,
    options: ServerOptions,
) -> Running {
    let server = MqttServer::start(broker, config, options).await.unwrap();
    let instance = server.instance().to_string();
    let (tx, rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let streams = Streams::new(1000, DEFAULT_MAX_OUT_OF_ORDER, Duration::from_secs(3600));
        let (intake, written) = intake::start(Box::new(Channel(tx)), streams, None);
        let server = mqtt_server::serve(server, intake, async {
            let _ = stop_rx.await;
        })
        .await
        .unwrap_or_else(|e| panic!("server failed: {e}"));
        let intake = written.await.unwrap().unwrap();
        Stats { server, intake }
    });
    Running {
        deliveries: rx,
        stop: stop_tx,
        task,
        instance,
    }
}

impl Running {
    /// Receives what the server wrote until `n` messages arrived.
    pub async fn take(&mut self, n: usize) -> Vec<SinkRecord> {
        let mut out = Vec::new();
        tokio::time::timeout(PATIENCE, async {
            while out.len() < n {
                out.push(self.deliveries.recv().await.expect("server stopped"));
            }
        })
        .await
        .unwrap_or_else(|_| panic!("only {} of {n} messages delivered", out.len()));
        out
    }

    /// Stops the server and returns what it delivered after `take` and its counters.
    pub async fn stop(mut self) -> (Vec<SinkRecord>, Stats) {
        let _ = self.stop.send(());
        let stats = self.task.await.unwrap();
        let mut rest = Vec::new();
        while let Ok(d) = self.deliveries.try_recv() {
            rest.push(d);
        }
        (rest, stats)
    }
}

pub fn texts(written: &[SinkRecord]) -> Vec<String> {
    written
        .iter()
        .map(|d| String::from_utf8(d.data.to_vec()).unwrap())
        .collect()
}

/// The `{client}` level and session id a written message came in (its `peer`,
/// `mqtt:{client}/{session}`).
pub fn client_and_session(r: &SinkRecord) -> (String, String) {
    let (client, session) = r.origin.peer["mqtt:".len()..].split_once('/').unwrap();
    (client.to_string(), session.to_string())
}

/// Asserts `got` holds each of `expected` exactly once (in any order).
pub fn assert_exactly_once(got: &[String], expected: &[String]) {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for g in got {
        *counts.entry(g).or_default() += 1;
    }
    for e in expected {
        assert_eq!(
            counts.get(e.as_str()),
            Some(&1),
            "message {e:?} not delivered exactly once"
        );
    }
    assert_eq!(got.len(), expected.len(), "unexpected extra messages");
}

pub fn messages(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!(r#"{{"{tag}":{i}}}"#)).collect()
}

/// Polls `done` until it holds (at most [`PATIENCE`]).
pub async fn wait_until(mut done: impl FnMut() -> bool) {
    tokio::time::timeout(PATIENCE, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("gave up waiting");
}

/// A plain MQTT client for spying and injecting.
pub async fn raw_client(m: &Mosquitto, id: &str) -> (AsyncClient, EventLoop) {
    raw_client_as(m, id, None).await
}

/// A plain MQTT client, with an account (user, password) if given.
pub async fn raw_client_as(
    m: &Mosquitto,
    id: &str,
    account: Option<(&str, &str)>,
) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(id, "127.0.0.1", m.port);
    o.set_max_packet_size(Some(64 * 1024));
    if let Some((user, password)) = account {
        o.set_credentials(user, password);
    }
    let (client, mut eventloop) = AsyncClient::new(o, 256);
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = eventloop.poll().await.unwrap() {
            break;
        }
    }
    (client, eventloop)
}

/// A raw client subscribed (confirmed by the broker) to `filter`, and what it receives.
pub async fn spy(
    m: &Mosquitto,
    id: &str,
    filter: &str,
) -> (AsyncClient, mpsc::UnboundedReceiver<(String, Vec<u8>)>) {
    spy_as(m, id, filter, None).await
}

/// [`spy`], with an account.
pub async fn spy_as(
    m: &Mosquitto,
    id: &str,
    filter: &str,
    account: Option<(&str, &str)>,
) -> (AsyncClient, mpsc::UnboundedReceiver<(String, Vec<u8>)>) {
    let (client, mut eventloop) = raw_client_as(m, id, account).await;
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = eventloop.poll().await.unwrap() {
            break;
        }
    }
    (client, forward(eventloop))
}

/// Polls a raw client's event loop in a task, forwarding (topic, payload) of publishes.
pub fn forward(mut eventloop: EventLoop) -> mpsc::UnboundedReceiver<(String, Vec<u8>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(ev) = eventloop.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = ev {
                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                if tx.send((topic, p.payload.to_vec())).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// A device driven by hand (the sans-IO handshake plus a raw client), so the test decides
/// exactly which frames reach the broker, in which order, how often.
pub struct HandDevice {
    client: AsyncClient,
    incoming: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    session: secchan::session::Session,
    up: String,
    stream: StreamId,
    drop_key_updates: bool,
}

impl HandDevice {
    pub async fn connect(m: &Mosquitto, keys: &Keys) -> Self {
        Self::connect_after(m, keys, &[]).await
    }

    /// Connects, publishing `forged` on the up topic after the ServerHello and before the
    /// DeviceFinish, as a stranger who saw the ServerHello can.
    pub async fn connect_after(m: &Mosquitto, keys: &Keys, forged: &[Vec<u8>]) -> Self {
        let topics = Topics::default();
        let sid = "00112233445566778899aabbccddeeff";
        let (client, eventloop) = raw_client(m, "hand-device").await;
        client
            .subscribe(topics.down_filter("hand-device", sid), QoS::AtLeastOnce)
            .await
            .unwrap();
        let mut incoming = forward(eventloop);
        let config = keys
            .device_config(0, &X25519_MLKEM768)
            .with_session(SessionConfig {
                ordered: false,
                ..SessionConfig::default()
            });
        let (expect, hello) = device::start(&config, &mut OsRandom).unwrap();
        client
            .publish(
                topics.hello("hand-device", sid),
                QoS::AtLeastOnce,
                false,
                hello,
            )
            .await
            .unwrap();
        let (topic, reply) = tokio::time::timeout(PATIENCE, incoming.recv())
            .await
            .unwrap()
            .unwrap();
        let instance = topic.rsplit('/').next().unwrap().to_string();
        let authed = expect.read_server_hello(&reply).unwrap();
        let (session, finish) = authed.finish(Instant::now()).unwrap();
        let up = topics.up("hand-device", &instance, sid);
        for frame in forged.iter().cloned().chain([finish]) {
            client
                .publish(up.clone(), QoS::AtLeastOnce, false, frame)
                .await
                .unwrap();
        }
        Self {
            client,
            incoming,
            session,
            up,
            stream: [7; 8],
            drop_key_updates: false,
        }
    }

    /// Seals message `seq` and returns its frame without sending it.
    pub fn seal(&mut self, seq: u64, text: &str) -> Vec<u8> {
        self.seal_on(self.stream, seq, text)
    }

    /// Seals message `seq` of `stream`.
    pub fn seal_on(&mut self, stream: StreamId, seq: u64, text: &str) -> Vec<u8> {
        let env = Envelope::Message {
            stream,
            seq,
            base: 0,
            data: text.as_bytes(),
        };
        self.session.send(&env.encode(), Instant::now()).unwrap();
        self.session.poll_transmit().unwrap()
    }

    /// Rotates the sending key; returns the KeyUpdate record without sending it.
    pub fn key_update(&mut self) -> Vec<u8> {
        self.session.update_keys(Instant::now()).unwrap();
        self.session.poll_transmit().unwrap()
    }

    /// Drops every KeyUpdate record the server sends from now on, as a lossy broker might.
    pub fn drop_key_updates(&mut self) {
        self.drop_key_updates = true;
    }

    pub async fn publish(&self, frame: &[u8]) {
        self.client
            .publish(self.up.clone(), QoS::AtLeastOnce, false, frame.to_vec())
            .await
            .unwrap();
    }

    /// Waits for an acknowledgement of everything below `next` in this device's stream.
    pub async fn expect_ack(&mut self, next: u64) {
        self.expect_acks(&[(self.stream, next)]).await;
    }

    /// Waits until each stream is acknowledged up to its `next`. The server must send no
    /// plaintext alert meanwhile: nothing here fails the handshake.
    pub async fn expect_acks(&mut self, wanted: &[(StreamId, u64)]) {
        let mut acked: HashMap<StreamId, u64> = HashMap::new();
        tokio::time::timeout(PATIENCE, async {
            while wanted
                .iter()
                .any(|(stream, next)| acked.get(stream).is_none_or(|n| n < next))
            {
                let (_, mut frame) = self.incoming.recv().await.unwrap();
                if self.drop_key_updates && FrameType::of(&frame) == Ok(FrameType::KeyUpdate) {
                    continue;
                }
                assert_ne!(
                    FrameType::of(&frame),
                    Ok(FrameType::Alert),
                    "the server sent an alert: {frame:?}"
                );
                if let Ok(secchan::session::Event::Message(m)) =
                    self.session.handle_frame(&mut frame, Instant::now())
                {
                    if let Ok(Envelope::Ack { stream, next }) = Envelope::decode(m) {
                        acked.insert(stream, next);
                    }
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("acknowledgements {acked:?}, wanted {wanted:?}"));
    }
}

/// The next delivery of a server driven by hand.
pub async fn next(server: &mut MqttServer) -> Delivery {
    tokio::time::timeout(PATIENCE, server.next())
        .await
        .expect("no delivery")
        .unwrap()
}

/// The broker, as this account.
pub fn account(m: &Mosquitto, (user, password): (&str, &str)) -> Broker {
    let mut b = broker(m);
    b.username = Some(user.into());
    b.password = Some(zeroize::Zeroizing::new(password.into()));
    b
}

/// A stranger on the broker answering every hello, as a client subscribed to
/// `$share/other-group/P/hs/+` can, with garbage, a malformed and a forged refusal alert,
/// and a ServerHello signed by a key of its own. Reports each session it answered.
pub async fn rogue(m: &Mosquitto) -> mpsc::UnboundedReceiver<String> {
    const INSTANCE: &str = "0123456789abcdef";
    let (client, mut eventloop) = raw_client(m, "rogue").await;
    client
        .subscribe("$share/rogue/secchan/+/hs/+", QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut config = ServerConfig::new(
        Arc::new(IdentityKey::generate(&mut OsRandom).unwrap()),
        Arc::new(AllowAnyDevice),
    );
    config.mode = Mode::Any;
    let (answered, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(ev) = eventloop.poll().await {
            let Event::Incoming(Packet::Publish(p)) = ev else {
                continue;
            };
            let topic = String::from_utf8_lossy(&p.topic).into_owned();
            let Some(Route::Hello {
                client: device,
                session: sid,
            }) = Topics::default().parse(&topic)
            else {
                continue;
            };
            let (_, server_hello) =
                server::accept_hello(&config, &p.payload, &mut OsRandom).unwrap();
            let down = Topics::default().down(device, sid, INSTANCE);
            for frame in [
                vec![],
                vec![FrameType::Alert as u8],
                vec![FrameType::ServerHello as u8, 1, 2, 3],
                encode_alert(AlertCode::UnknownDevice),
                server_hello,
            ] {
                client
                    .publish(down.clone(), QoS::AtLeastOnce, false, frame)
                    .await
                    .unwrap();
            }
            let _ = answered.send(sid.to_string());
        }
    });
    rx
}
