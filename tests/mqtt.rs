//! secchan over a real Mosquitto broker: end to end, duplicates, reordering, replays, a
//! broker restart, a `#` eavesdropper, two server instances, a full buffer and revocation.
//! Forged and foreign input is in tests/mqtt_hostile.rs; refusals, retries and lost key
//! updates in tests/mqtt_recovery.rs; ACLs and TLS in tests/mqtt_broker.rs.
#![cfg(feature = "mqtt")]

mod support;

use rumqttc::v5::mqttbytes::QoS;
use secchan::crypto::kem::{X25519_MLKEM768, X25519_ONLY};
use secchan::crypto::random::OsRandom;
use secchan::delivery::{StreamKey, Streams, Verdict};
use secchan::handshake::device;
use secchan::handshake::server::ServerConfig;
use secchan::handshake::{AuthorizedDevices, Mode};
use secchan::msgs::AlertCode;
use secchan::transport::mqtt::{
    Broker, Delivery, DeviceOptions, MqttDevice, MqttError, MqttServer, Topics,
};
use secchan::transport::{Timeouts, TransportError};
use std::sync::Arc;
use std::time::Duration;
use support::mosquitto::Mosquitto;
use support::mqtt::*;
use tokio::sync::mpsc;

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
            assert_eq!(d.origin.device.name, format!("device-{i}"));
            assert_eq!(d.origin.suite, suite.name);
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
    assert_eq!(stats.intake.written, 40);
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
    assert_eq!(stats.intake.written, 7);
    assert_eq!(
        stats.duplicate_records, 3,
        "two redeliveries and one replay"
    );
    assert_eq!(stats.intake.duplicates, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_loses_nothing_and_duplicates_nothing() {
    const SERVER: (&str, &str) = ("server", "server-pw");
    const DEVICE: (&str, &str) = ("device", "device-pw");
    let mut m = Mosquitto::start_with_users(&[SERVER, DEVICE]);
    let keys = Keys::new(1);
    let (server_account, device_account) = (account(&m, SERVER), account(&m, DEVICE));
    // Driven by hand: the test is the intake, and acknowledges only what it chooses, so what
    // it holds back stays unacknowledged on the device.
    let mut server = MqttServer::start(&server_account, keys.server_config(), server_options())
        .await
        .unwrap();
    let mut hand = HandIntake::default();
    let mut dev = {
        let config = keys.device_config(0, &X25519_MLKEM768);
        let starting = MqttDevice::start(&device_account, config, keys.pin(), device_options());
        tokio::pin!(starting);
        tokio::select! {
            dev = &mut starting => dev.unwrap(),
            d = server.next() => panic!("a delivery before any message: {d:?}"),
        }
    };
    let sent = messages("restart", 120);
    send_all(&mut dev, &sent[..60]).await;
    while hand.written.len() < 30 {
        hand.write(next(&mut server).await);
        if hand.written.len() < 30 {
            hand.acknowledge(&mut server);
        }
    }
    // At least the 30th message was written and not acknowledged, and the rest may be on
    // their way: all of that is in flight when the broker dies.
    m.kill();
    // Produced while the broker is away: buffered, then delivered.
    send_all(&mut dev, &sent[60..90]).await;
    // The broker comes back without the device's account, so the server is surely back
    // first: what it acknowledges now is lost, and the device sends everything again.
    m.set_users(&[SERVER]);
    m.spawn();
    let (probe, mut answers) = spy_as(&m, "probe", "secchan/probe/dn/#", Some(SERVER)).await;
    let (_, hello) = device::start(&keys.device_config(0, &X25519_ONLY), &mut OsRandom).unwrap();
    let probe_sid = "ffeeddccbbaa99887766554433221100";
    // A ServerHello to the probe shows that the server subscribed again (until it has, the
    // probe's hello is lost, so it is published again, as a device does).
    let mut again = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            d = server.next() => {
                hand.write(d.unwrap());
                hand.acknowledge(&mut server);
            }
            a = answers.recv() => if a.unwrap().0.contains(probe_sid) { break },
            _ = again.tick() => probe
                .publish(Topics::default().hello("probe", probe_sid), QoS::AtLeastOnce, false, hello.clone())
                .await
                .unwrap(),
        }
    }
    m.set_users(&[SERVER, DEVICE]);
    send_all(&mut dev, &sent[90..]).await;
    let mut finish = tokio::spawn(dev.finish(PATIENCE));
    while hand.written.len() < sent.len() {
        hand.write(next(&mut server).await);
        hand.acknowledge(&mut server);
    }
    // Keep acknowledging until the device has every acknowledgement; nothing new may come.
    let dev_stats = loop {
        tokio::select! {
            d = server.next() => {
                let before = hand.written.len();
                hand.write(d.unwrap());
                assert_eq!(hand.written.len(), before, "written twice");
                hand.acknowledge(&mut server);
            }
            stats = &mut finish => break stats.unwrap().unwrap(),
        }
    };
    server.shutdown().await;
    assert_exactly_once(&hand.written, &sent);
    assert_eq!(dev_stats.acknowledged, 120);
    assert_eq!(dev_stats.sessions, 1, "the session resumed: {dev_stats:?}");
    assert!(
        dev_stats.sent > dev_stats.queued,
        "messages in flight were sent again: {dev_stats:?}"
    );
    assert!(
        hand.duplicates >= 1,
        "the resent messages already written were dropped: {}",
        hand.duplicates
    );
}

/// The delivery intake's job done by the test: the library's duplicate filter, and
/// acknowledgements only when the test asks.
#[derive(Default)]
struct HandIntake {
    streams: Option<Streams>,
    written: Vec<String>,
    duplicates: u64,
    due: Vec<StreamKey>,
}

impl HandIntake {
    fn write(&mut self, d: Delivery) {
        let streams = self
            .streams
            .get_or_insert_with(|| Streams::new(10, 1000, Duration::from_secs(600)));
        let key: StreamKey = (d.device.identity.map(|i| i.fingerprint()), d.stream);
        match streams.accept(&key, d.seq, d.base, std::time::Instant::now()) {
            Verdict::New => self.written.push(String::from_utf8(d.data).unwrap()),
            Verdict::Duplicate => self.duplicates += 1,
            Verdict::TooFarAhead => panic!("too far ahead: {}", d.seq),
            other => panic!("unexpected verdict {other:?}"),
        }
        if !self.due.contains(&key) {
            self.due.push(key);
        }
    }

    fn acknowledge(&mut self, server: &mut MqttServer) {
        let Some(streams) = &self.streams else { return };
        for key in self.due.drain(..) {
            server.acknowledge(&key, streams.ack(&key));
        }
    }
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
    // A closes its sessions with going_away (protocol.md §11.4): the device moves on at once,
    // sending again whatever A did not acknowledge.
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
    wait_until(|| dev.stats().acknowledged == 5).await;
    m.kill();
    // With the broker gone, the device buffers 10 messages, its input holds one more, and
    // then the sender waits: exactly 11 sends complete until the broker is back.
    let (progress, mut completed) = mpsc::unbounded_channel();
    let producer = tokio::spawn({
        let rest = sent[5..].to_vec();
        async move {
            for m in rest {
                dev.send(m.into_bytes()).await.unwrap();
                let _ = progress.send(());
            }
            dev
        }
    });
    for _ in 0..11 {
        tokio::time::timeout(PATIENCE, completed.recv())
            .await
            .unwrap()
            .unwrap();
    }
    assert!(
        completed.try_recv().is_err() && !producer.is_finished(),
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
    let mut server = spawn_server_with(&m, Arc::new(config), server_options()).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_starts_before_any_server_finds_one_later() {
    let m = Mosquitto::start();
    let keys = Keys::new(1);
    let (_spy, mut hellos) = spy(&m, "spy", "secchan/+/hs/+").await;
    let starting = tokio::spawn({
        let (b, config) = (broker(&m), keys.device_config(0, &X25519_ONLY));
        let options = DeviceOptions {
            timeouts: Timeouts {
                handshake: PATIENCE,
                ..timeouts()
            },
            ..device_options()
        };
        let pin = keys.pin();
        async move { MqttDevice::start(&b, config, pin, options).await }
    });
    // The first hello passed through the broker while no server subscribed: lost for them.
    let (first, _) = tokio::time::timeout(PATIENCE, hellos.recv())
        .await
        .unwrap()
        .unwrap();
    let mut server = spawn_server(&m, &keys).await;
    let mut dev = tokio::time::timeout(PATIENCE, starting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    dev.send(b"found you".to_vec()).await.unwrap();
    dev.finish(PATIENCE).await.unwrap();
    let got = server.take(1).await;
    assert_eq!(texts(&got), ["found you"]);
    let (client, session) = client_and_session(&got[0]);
    assert_eq!(
        first,
        Topics::default().hello(&client, &session),
        "the same session id, published again"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stream_of_a_session_is_acknowledged() {
    let m = Mosquitto::start();
    let keys = Keys::new(1);
    let mut server = spawn_server(&m, &keys).await;
    let mut dev = HandDevice::connect(&m, &keys).await;
    let (a, b) = ([1; 8], [2; 8]);
    let frames = [
        dev.seal_on(a, 0, "a0"),
        dev.seal_on(b, 0, "b0"),
        dev.seal_on(a, 1, "a1"),
        dev.seal_on(b, 1, "b1"),
    ];
    for f in &frames {
        dev.publish(f).await;
    }
    assert_eq!(server.take(4).await.len(), 4);
    dev.expect_acks(&[(a, 2), (b, 2)]).await;
    server.stop().await;
}

#[tokio::test]
async fn a_server_refuses_a_replay_window_smaller_than_the_messages_in_flight() {
    let keys = Keys::new(0);
    let mut config = (*keys.server_config()).clone();
    config.session.replay_window = 256;
    // Refused before the broker is contacted.
    let broker = Broker::parse_url("mqtt://127.0.0.1:1").unwrap();
    let err = MqttServer::start(&broker, Arc::new(config), server_options())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Mqtt(MqttError::ReplayWindow {
                window: 256,
                min: 512
            })
        ),
        "{err}"
    );
}
