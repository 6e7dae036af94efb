//! secchan over a real Mosquitto broker: end to end, duplicates, reordering, replays, a
//! broker restart, a `#` eavesdropper, two server instances, garbage on the topics.
#![cfg(feature = "mqtt")]

mod support;

use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use secchan::crypto::identity::IdentityKey;
use secchan::crypto::kem::{Suite, X25519_MLKEM768, X25519_ONLY};
use secchan::crypto::random::OsRandom;
use secchan::handshake::device::{self, DeviceConfig};
use secchan::handshake::server::ServerConfig;
use secchan::handshake::{AuthorizedDevices, Mode};
use secchan::msgs::AlertCode;
use secchan::session::SessionConfig;
use secchan::transport::mqtt::delivery::Envelope;
use secchan::transport::mqtt::{
    Broker, Delivery, DeviceOptions, MqttDevice, MqttError, MqttServer, ServerOptions, ServerStats,
    Topics,
};
use secchan::transport::{Timeouts, TransportError};
use secchan::trust::Pinned;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::mosquitto::Mosquitto;
use tokio::sync::{mpsc, oneshot};

/// Upper bound for anything a test waits for (never reached when things work).
const PATIENCE: Duration = Duration::from_secs(30);

struct Keys {
    server: Arc<IdentityKey>,
    devices: Vec<Arc<IdentityKey>>,
}

impl Keys {
    fn new(devices: usize) -> Self {
        Self {
            server: Arc::new(IdentityKey::generate(&mut OsRandom).unwrap()),
            devices: (0..devices)
                .map(|_| Arc::new(IdentityKey::generate(&mut OsRandom).unwrap()))
                .collect(),
        }
    }

    fn server_config(&self) -> Arc<ServerConfig> {
        let mut authorized = AuthorizedDevices::new();
        for (i, d) in self.devices.iter().enumerate() {
            authorized.insert(d.public().fingerprint(), format!("device-{i}"));
        }
        let mut c = ServerConfig::new(self.server.clone(), Arc::new(authorized));
        c.mode = Mode::Any;
        Arc::new(c)
    }

    fn device_config(&self, i: usize, suite: &'static Suite) -> DeviceConfig {
        DeviceConfig {
            suite,
            identity: Some(self.devices[i].clone()),
            ..DeviceConfig::default()
        }
    }

    fn pin(&self) -> Arc<Pinned> {
        Arc::new(Pinned(self.server.public().fingerprint()))
    }
}

/// Every test calls this: RUST_LOG=secchan=debug shows what happened in a failing test.
fn broker(m: &Mosquitto) -> Broker {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    Broker::parse_url(&m.url()).unwrap()
}

fn timeouts() -> Timeouts {
    Timeouts {
        handshake: Duration::from_secs(5),
        idle: Duration::from_secs(60),
    }
}

fn device_options() -> DeviceOptions {
    DeviceOptions {
        ack_timeout: Duration::from_secs(15),
        timeouts: timeouts(),
        ..DeviceOptions::default()
    }
}

async fn start_device(m: &Mosquitto, keys: &Keys, i: usize, suite: &'static Suite) -> MqttDevice {
    let config = keys.device_config(i, suite);
    MqttDevice::start(&broker(m), config, keys.pin(), device_options())
        .await
        .unwrap()
}

async fn send_all(dev: &mut MqttDevice, messages: &[String]) {
    for m in messages {
        dev.send(m.clone().into_bytes()).await.unwrap();
    }
}

/// A server instance running in a task, handing its deliveries to a channel.
struct Running {
    deliveries: mpsc::UnboundedReceiver<Delivery>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<ServerStats>,
    instance: String,
}

async fn spawn_server(m: &Mosquitto, keys: &Keys) -> Running {
    spawn_server_with(m, keys.server_config()).await
}

async fn spawn_server_with(m: &Mosquitto, config: Arc<ServerConfig>) -> Running {
    let options = ServerOptions {
        timeouts: timeouts(),
        ..ServerOptions::default()
    };
    let mut server = MqttServer::start(&broker(m), config, options)
        .await
        .unwrap();
    let instance = server.instance().to_string();
    let (tx, rx) = mpsc::unbounded_channel();
    let (stop_tx, mut stop_rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                d = server.next() => match d {
                    Ok(d) => { let _ = tx.send(d); }
                    Err(e) => panic!("server failed: {e}"),
                },
                _ = &mut stop_rx => break,
            }
        }
        server.shutdown().await
    });
    Running {
        deliveries: rx,
        stop: stop_tx,
        task,
        instance,
    }
}

impl Running {
    /// Receives deliveries until `n` arrived.
    async fn take(&mut self, n: usize) -> Vec<Delivery> {
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
    async fn stop(mut self) -> (Vec<Delivery>, ServerStats) {
        let _ = self.stop.send(());
        let stats = self.task.await.unwrap();
        let mut rest = Vec::new();
        while let Ok(d) = self.deliveries.try_recv() {
            rest.push(d);
        }
        (rest, stats)
    }
}

fn texts(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| String::from_utf8(d.data.clone()).unwrap())
        .collect()
}

/// Asserts `got` holds each of `expected` exactly once (in any order).
fn assert_exactly_once(got: &[String], expected: &[String]) {
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

fn messages(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!(r#"{{"{tag}":{i}}}"#)).collect()
}

/// A plain MQTT client for spying and injecting.
async fn raw_client(m: &Mosquitto, id: &str) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(id, "127.0.0.1", m.port);
    o.set_max_packet_size(Some(64 * 1024));
    let (client, mut eventloop) = AsyncClient::new(o, 256);
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = eventloop.poll().await.unwrap() {
            break;
        }
    }
    (client, eventloop)
}

/// A raw client subscribed (confirmed by the broker) to `filter`, and what it receives.
async fn spy(
    m: &Mosquitto,
    id: &str,
    filter: &str,
) -> (AsyncClient, mpsc::UnboundedReceiver<(String, Vec<u8>)>) {
    let (client, mut eventloop) = raw_client(m, id).await;
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = eventloop.poll().await.unwrap() {
            break;
        }
    }
    (client, forward(eventloop))
}

/// Polls a raw client's event loop in a task, forwarding (topic, payload) of publishes.
fn forward(mut eventloop: EventLoop) -> mpsc::UnboundedReceiver<(String, Vec<u8>)> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_hybrid_and_classical() {
    let m = Mosquitto::start();
    let keys = Keys::new(2);
    let mut server = spawn_server(&m, &keys).await;
    for (i, suite) in [(0, &X25519_MLKEM768), (1, &X25519_ONLY)] {
        let mut dev = MqttDevice::start(
            &broker(&m),
            keys.device_config(i, suite),
            keys.pin(),
            device_options(),
        )
        .await
        .unwrap();
        let sent = messages(suite.name, 20);
        send_all(&mut dev, &sent).await;
        let stats = dev.finish(PATIENCE).await.unwrap();
        assert_eq!(stats.acknowledged, 20);
        assert_eq!(stats.sessions, 1);
        let got = server.take(20).await;
        assert_exactly_once(&texts(&got), &sent);
        for d in &got {
            assert_eq!(d.device.name, format!("device-{i}"));
            assert_eq!(d.suite, suite.name);
        }
        let seqs: Vec<u64> = got.iter().map(|d| d.seq).collect();
        assert_eq!(
            seqs,
            (0..20).collect::<Vec<_>>(),
            "in order when nothing was lost"
        );
    }
    let (rest, stats) = server.stop().await;
    assert!(rest.is_empty());
    assert_eq!(stats.sessions_established, 2);
    assert_eq!(stats.delivered, 40);
}

/// A device driven by hand (the sans-IO handshake plus a raw client), so the test decides
/// exactly which frames reach the broker, in which order, how often.
struct HandDevice {
    client: AsyncClient,
    incoming: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    session: secchan::session::Session,
    up: String,
    stream: [u8; 8],
}

impl HandDevice {
    async fn connect(m: &Mosquitto, keys: &Keys) -> Self {
        let topics = Topics::default();
        let sid = "00112233445566778899aabbccddeeff";
        let (client, eventloop) = raw_client(m, "hand-device").await;
        client
            .subscribe(topics.down_filter(sid), QoS::AtLeastOnce)
            .await
            .unwrap();
        let mut incoming = forward(eventloop);
        let config = DeviceConfig {
            session: SessionConfig {
                ordered: false,
                ..SessionConfig::default()
            },
            ..keys.device_config(0, &X25519_MLKEM768)
        };
        let (expect, hello) = device::start(&config, &mut OsRandom).unwrap();
        client
            .publish(topics.hello(sid), QoS::AtLeastOnce, false, hello)
            .await
            .unwrap();
        let (topic, reply) = tokio::time::timeout(PATIENCE, incoming.recv())
            .await
            .unwrap()
            .unwrap();
        let instance = topic.rsplit('/').next().unwrap().to_string();
        let authed = expect.read_server_hello(&reply).unwrap();
        let (session, finish) = authed.finish(Instant::now()).unwrap();
        let up = topics.up(&instance, sid);
        client
            .publish(up.clone(), QoS::AtLeastOnce, false, finish)
            .await
            .unwrap();
        Self {
            client,
            incoming,
            session,
            up,
            stream: [7; 8],
        }
    }

    /// Seals message `seq` and returns its frame without sending it.
    fn seal(&mut self, seq: u64, text: &str) -> Vec<u8> {
        let env = Envelope::Message {
            stream: self.stream,
            seq,
            base: 0,
            data: text.as_bytes(),
        };
        self.session.send(&env.encode(), Instant::now()).unwrap();
        self.session.poll_transmit().unwrap()
    }

    async fn publish(&self, frame: &[u8]) {
        self.client
            .publish(self.up.clone(), QoS::AtLeastOnce, false, frame.to_vec())
            .await
            .unwrap();
    }

    /// Waits for an acknowledgement of everything below `next`.
    async fn expect_ack(&mut self, next: u64) {
        tokio::time::timeout(PATIENCE, async {
            loop {
                let (_, mut frame) = self.incoming.recv().await.unwrap();
                if let Ok(secchan::session::Event::Message(m)) =
                    self.session.handle_frame(&mut frame, Instant::now())
                {
                    if let Ok(Envelope::Ack { next: n, .. }) = Envelope::decode(m) {
                        if n >= next {
                            return;
                        }
                    }
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no acknowledgement up to {next}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_reordering_and_replays_are_absorbed() {
    let m = Mosquitto::start();
    let keys = Keys::new(1);
    let mut server = spawn_server(&m, &keys).await;
    let mut dev = HandDevice::connect(&m, &keys).await;
    let sent = messages("r", 6);
    let frames: Vec<Vec<u8>> = (0..6).map(|i| dev.seal(i as u64, &sent[i])).collect();
    // Reordered within the window, with two duplicated deliveries (as QoS 1 redelivers).
    for i in [1usize, 0, 0, 3, 2, 5, 4, 5] {
        dev.publish(&frames[i]).await;
    }
    let got = server.take(6).await;
    assert_exactly_once(&texts(&got), &sent);
    dev.expect_ack(6).await;
    // A captured ciphertext published again later is a replay.
    dev.publish(&frames[2]).await;
    // The same message sealed in a new record (a resend) is a duplicate message.
    let resend = dev.seal(3, &sent[3]);
    dev.publish(&resend).await;
    // The session is unharmed: a new message still arrives.
    let next = dev.seal(6, "after");
    dev.publish(&next).await;
    let got = server.take(1).await;
    assert_eq!(texts(&got), ["after"]);
    let (rest, stats) = server.stop().await;
    assert!(
        rest.is_empty(),
        "a duplicate reached the output: {:?}",
        texts(&rest)
    );
    assert_eq!(stats.delivered, 7);
    assert_eq!(
        stats.duplicate_records, 3,
        "two redeliveries and one replay"
    );
    assert_eq!(stats.duplicate_messages, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_loses_nothing_and_duplicates_nothing() {
    let mut m = Mosquitto::start();
    let keys = Keys::new(1);
    let mut server = spawn_server(&m, &keys).await;
    let mut dev = start_device(&m, &keys, 0, &X25519_MLKEM768).await;
    let sent = messages("restart", 120);
    send_all(&mut dev, &sent[..60]).await;
    let mut got = server.take(30).await;
    m.restart();
    // Produced while the broker is away or just back: buffered, then delivered.
    send_all(&mut dev, &sent[60..]).await;
    let stats = dev.finish(PATIENCE).await.unwrap();
    assert_eq!(stats.acknowledged, 120);
    got.extend(server.take(90).await);
    let (rest, _) = server.stop().await;
    got.extend(rest);
    assert_exactly_once(&texts(&got), &sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eavesdropper_on_hash_sees_no_plaintext_and_no_identity() {
    let m = Mosquitto::start();
    let keys = Keys::new(1);
    let (_spy, mut seen) = spy(&m, "spy", "#").await;
    let mut server = spawn_server(&m, &keys).await;
    let mut dev = start_device(&m, &keys, 0, &X25519_MLKEM768).await;
    let marker = "heart_rate_bpm=71;patient=Ada Lovelace";
    for _ in 0..5 {
        dev.send(marker.as_bytes().to_vec()).await.unwrap();
    }
    dev.finish(PATIENCE).await.unwrap();
    server.take(5).await;
    let instance = server.instance.clone();
    server.stop().await;
    let device_key = keys.devices[0].public();
    let fingerprint = device_key.fingerprint();
    let mut captured = Vec::new();
    while let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(300), seen.recv()).await {
        captured.push(item);
    }
    assert!(
        captured.len() >= 8,
        "the spy saw the traffic: {}",
        captured.len()
    );
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    for (topic, payload) in &captured {
        assert!(
            !contains(payload, marker.as_bytes()),
            "plaintext on {topic}"
        );
        assert!(!contains(payload, b"patient"), "plaintext on {topic}");
        assert!(!contains(payload, &device_key.0), "device key on {topic}");
        assert!(
            !contains(payload, fingerprint.as_bytes()),
            "fingerprint on {topic}"
        );
        assert!(
            !topic.contains(&fingerprint) && !topic.contains("device-0"),
            "{topic}"
        );
        assert!(
            !contains(topic.as_bytes(), hex::encode(device_key.0).as_bytes()),
            "{topic}"
        );
        assert!(topic.starts_with("secchan/"), "{topic}");
    }
    assert!(captured.iter().any(|(t, _)| t.contains(&instance)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_server_instances_share_the_load() {
    let m = Mosquitto::start();
    let keys = Keys::new(6);
    let a = spawn_server(&m, &keys).await;
    let b = spawn_server(&m, &keys).await;
    let mut expected = Vec::new();
    for i in 0..6 {
        let mut dev = start_device(&m, &keys, i, &X25519_ONLY).await;
        let sent = messages(&format!("dev{i}"), 5);
        send_all(&mut dev, &sent).await;
        dev.finish(PATIENCE).await.unwrap();
        expected.extend(sent);
    }
    let (mut got, stats_a) = a.stop().await;
    let (got_b, stats_b) = b.stop().await;
    got.extend(got_b);
    assert_exactly_once(&texts(&got), &expected);
    assert!(
        stats_a.sessions_established > 0,
        "instance A took no session"
    );
    assert!(
        stats_b.sessions_established > 0,
        "instance B took no session"
    );
    assert_eq!(
        stats_a.sessions_established + stats_b.sessions_established,
        6
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_moves_to_the_other_instance_when_its_server_stops() {
    let m = Mosquitto::start();
    let keys = Keys::new(1);
    let mut a = spawn_server(&m, &keys).await;
    let mut dev = start_device(&m, &keys, 0, &X25519_ONLY).await;
    let sent = messages("move", 20);
    send_all(&mut dev, &sent[..10]).await;
    let mut got = a.take(10).await;
    let mut b = spawn_server(&m, &keys).await;
    let (rest, _) = a.stop().await;
    got.extend(rest);
    send_all(&mut dev, &sent[10..]).await;
    let stats = dev.finish(PATIENCE).await.unwrap();
    assert_eq!(stats.sessions, 2, "a second session, with instance B");
    got.extend(b.take(10).await);
    b.stop().await;
    assert_exactly_once(&texts(&got), &sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_topics_is_dropped_and_disturbs_no_session() {
    let m = Mosquitto::start();
    let keys = Keys::new(1);
    let mut server = spawn_server(&m, &keys).await;
    let mut dev = start_device(&m, &keys, 0, &X25519_MLKEM768).await;
    dev.send(b"before".to_vec()).await.unwrap();
    server.take(1).await;
    let (vandal, mut seen) = spy(&m, "vandal", "secchan/up/#").await;
    // Learn the live session's topic from its traffic, then aim garbage at it.
    dev.send(b"probe".to_vec()).await.unwrap();
    let (up, _) = tokio::time::timeout(PATIENCE, seen.recv())
        .await
        .unwrap()
        .unwrap();
    let instance = &server.instance;
    let garbage: Vec<(String, Vec<u8>)> = vec![
        (up.clone(), vec![]),
        (up.clone(), vec![0x10]),
        (up.clone(), vec![0x10; 40]),
        (up.clone(), vec![0x03; 50]),
        (up.clone(), vec![0xff; 100]),
        (
            up.clone(),
            vec![
                0x12, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18,
            ],
        ),
        (
            "secchan/hs/00000000000000000000000000000000".into(),
            b"hello?".to_vec(),
        ),
        ("secchan/hs/not-a-session".into(), vec![1, 2, 3]),
        (
            format!("secchan/up/{instance}/ffffffffffffffffffffffffffffffff"),
            vec![0x10; 40],
        ),
        (format!("secchan/up/{instance}/x"), vec![0x10; 40]),
        (up.clone(), vec![0x10; 20_000]),
    ];
    for (topic, payload) in garbage {
        vandal
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
    dev.send(b"after".to_vec()).await.unwrap();
    let stats = dev.finish(PATIENCE).await.unwrap();
    assert_eq!(stats.sessions, 1, "the session survived the garbage");
    let got = server.take(2).await;
    assert_eq!(texts(&got), ["probe", "after"]);
    let (rest, stats) = server.stop().await;
    assert!(rest.is_empty());
    assert!(stats.malformed >= 6, "{stats:?}");
    assert!(stats.rejected_records >= 1, "{stats:?}");
    assert_eq!(stats.handshake_failures, 1, "the hello garbage: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_device_is_refused() {
    let m = Mosquitto::start();
    let keys = Keys::new(1);
    let server = spawn_server(&m, &keys).await;
    let stranger = Keys::new(1);
    let config = stranger.device_config(0, &X25519_MLKEM768);
    // The refusal comes after the device's last handshake message, like over TCP: the
    // first send or the finish reports it.
    let mut dev = MqttDevice::start(&broker(&m), config, keys.pin(), device_options())
        .await
        .unwrap();
    let _ = dev.send(b"let me in".to_vec()).await;
    let err = dev.finish(PATIENCE).await.unwrap_err();
    assert!(
        matches!(err, TransportError::Refused(AlertCode::UnknownDevice)),
        "{err}"
    );
    let (_, stats) = server.stop().await;
    assert_eq!(stats.handshake_failures, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_server_key_is_refused_by_the_device() {
    let m = Mosquitto::start();
    let keys = Keys::new(1);
    let server = spawn_server(&m, &keys).await;
    let other = Arc::new(Pinned(Keys::new(0).server.public().fingerprint()));
    let err = MqttDevice::start(
        &broker(&m),
        keys.device_config(0, &X25519_ONLY),
        other,
        device_options(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, TransportError::Trust(_)), "{err}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_server_and_no_broker_are_clear_errors() {
    let m = Mosquitto::start();
    let keys = Keys::new(1);
    let mut options = device_options();
    options.timeouts.handshake = Duration::from_millis(500);
    let err = MqttDevice::start(
        &broker(&m),
        keys.device_config(0, &X25519_ONLY),
        keys.pin(),
        options.clone(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, TransportError::Mqtt(MqttError::NoServer { .. })),
        "{err}"
    );
    let port = m.port;
    drop(m);
    let gone = Broker::parse_url(&format!("mqtt://127.0.0.1:{port}")).unwrap();
    let err = MqttDevice::start(
        &gone,
        keys.device_config(0, &X25519_ONLY),
        keys.pin(),
        options,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, TransportError::Mqtt(MqttError::Unreachable { .. })),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_pauses_the_source_and_loses_nothing() {
    let mut m = Mosquitto::start();
    let keys = Keys::new(1);
    let mut server = spawn_server(&m, &keys).await;
    let options = DeviceOptions {
        buffer: 10,
        ..device_options()
    };
    let config = keys.device_config(0, &X25519_ONLY);
    let mut dev = MqttDevice::start(&broker(&m), config, keys.pin(), options)
        .await
        .unwrap();
    let sent = messages("buffered", 30);
    send_all(&mut dev, &sent[..5]).await;
    let mut got = server.take(5).await;
    m.kill();
    // With the broker gone, the device takes 10 messages and then makes the sender wait.
    let producer = tokio::spawn({
        let rest = sent[5..].to_vec();
        async move {
            send_all(&mut dev, &rest).await;
            dev
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !producer.is_finished(),
        "the sender waits while the buffer is full"
    );
    m.spawn();
    let dev = producer.await.unwrap();
    let stats = dev.finish(PATIENCE).await.unwrap();
    assert!(stats.buffer_full >= 1, "{stats:?}");
    assert_eq!(stats.acknowledged, 30);
    got.extend(server.take(25).await);
    let (rest, _) = server.stop().await;
    got.extend(rest);
    assert_exactly_once(&texts(&got), &sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_credentials_are_used_and_wrong_ones_refused() {
    let m = Mosquitto::start_with_password("sensor", "correct horse");
    let keys = Keys::new(1);
    let mut good = broker(&m);
    good.username = Some("sensor".into());
    good.password = Some(zeroize::Zeroizing::new("correct horse".into()));
    let options = ServerOptions {
        timeouts: timeouts(),
        ..ServerOptions::default()
    };
    let server = MqttServer::start(&good, keys.server_config(), options).await;
    assert!(server.is_ok(), "{:?}", server.err());
    let mut bad = good.clone();
    bad.password = Some(zeroize::Zeroizing::new("wrong".into()));
    let config = keys.device_config(0, &X25519_ONLY);
    let err = MqttDevice::start(&bad, config, keys.pin(), device_options())
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransportError::Mqtt(MqttError::Refused { .. })),
        "{err}"
    );
    let anonymous = broker(&m);
    let config = keys.device_config(0, &X25519_ONLY);
    let err = MqttDevice::start(&anonymous, config, keys.pin(), device_options())
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransportError::Mqtt(MqttError::Refused { .. })),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_updates_inside_an_mqtt_session() {
    let m = Mosquitto::start();
    let keys = Keys::new(1);
    let mut server = spawn_server(&m, &keys).await;
    let mut config = keys.device_config(0, &X25519_MLKEM768);
    config.session.key_update.max_records = 4;
    let mut dev = MqttDevice::start(&broker(&m), config, keys.pin(), device_options())
        .await
        .unwrap();
    let sent = messages("rekey", 30);
    send_all(&mut dev, &sent).await;
    let stats = dev.finish(PATIENCE).await.unwrap();
    assert_eq!(stats.sessions, 1, "key updates need no new session");
    assert_exactly_once(&texts(&server.take(30).await), &sent);
    let (rest, stats) = server.stop().await;
    assert!(rest.is_empty());
    assert_eq!(stats.rejected_records, 0);
}

/// Accepts the test devices until `revoked` is set, then refuses them as a fleet registry
/// does after `secchan registry revoke`.
struct Revocable {
    devices: AuthorizedDevices,
    revoked: std::sync::atomic::AtomicBool,
}

impl Revocable {
    fn refused(&self) -> Result<(), AlertCode> {
        if self.revoked.load(std::sync::atomic::Ordering::SeqCst) {
            Err(AlertCode::Revoked)
        } else {
            Ok(())
        }
    }
}

impl secchan::handshake::Authorizer for Revocable {
    fn authorize(
        &self,
        device: Option<&secchan::crypto::identity::PublicIdentity>,
    ) -> Result<String, AlertCode> {
        self.refused()?;
        self.devices.authorize(device)
    }

    fn still_authorized(
        &self,
        _device: &secchan::crypto::identity::PublicIdentity,
    ) -> Result<(), AlertCode> {
        self.refused()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_closes_a_live_session_and_refuses_the_next_handshake() {
    use secchan::handshake::Authorizer as _;
    let m = Mosquitto::start();
    let keys = Keys::new(1);
    let mut devices = AuthorizedDevices::new();
    devices.insert(keys.devices[0].public().fingerprint(), "device-0".into());
    let authorizer = Arc::new(Revocable {
        devices,
        revoked: false.into(),
    });
    assert!(authorizer
        .authorize(Some(&keys.devices[0].public()))
        .is_ok());
    let mut config = ServerConfig::new(keys.server.clone(), authorizer.clone());
    config.mode = Mode::Any;
    let mut server = spawn_server_with(&m, Arc::new(config)).await;
    let mut dev = start_device(&m, &keys, 0, &X25519_MLKEM768).await;
    dev.send(b"before".to_vec()).await.unwrap();
    assert_eq!(texts(&server.take(1).await), vec!["before".to_string()]);
    authorizer
        .revoked
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // Within one sweep the server closes the session with `revoked`; the device's attempt to
    // start a new one is refused with the same alert.
    let _ = dev.send(b"after".to_vec()).await;
    let err = dev.finish(PATIENCE).await.unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Refused(AlertCode::Revoked)
                | TransportError::Session(secchan::session::SessionError::PeerAlert(
                    AlertCode::Revoked
                ))
        ),
        "{err}"
    );
    let (rest, _) = server.stop().await;
    assert!(
        texts(&rest).is_empty(),
        "nothing after the revocation is output"
    );
}
