//! secchan through a Mosquitto that protects its topics: per-device ACLs on the `{client}`
//! topic level, TLS to the broker (a throwaway CA from rcgen), password and client-certificate
//! accounts, and the errors for each way connecting fails (docs/mqtt.md §2, §9).
#![cfg(feature = "mqtt")]

mod support;

use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use secchan::crypto::kem::{X25519_MLKEM768, X25519_ONLY};
use secchan::transport::mqtt::{Broker, ClientCert, MqttDevice, MqttError, TopicLevel, Topics};
use secchan::transport::TransportError;
use support::mosquitto::{Mosquitto, TlsFiles};
use support::mqtt::*;

/// The ACL of docs/mqtt.md §9: every device reads and writes only under its own user name
/// (the devices run with `--mqtt-topic-level username`); the server account reads every
/// device's hellos and up topics and writes their down topics.
const ACL: &str = "\
pattern write secchan/%u/hs/+
pattern write secchan/%u/up/+/+
pattern read secchan/%u/dn/+/+

user server
topic read secchan/+/hs/+
topic read secchan/+/up/+/+
topic write secchan/+/dn/+/+
";

const SERVER: (&str, &str) = ("server", "server-pw");
const DEV_A: (&str, &str) = ("dev-a", "a-pw");
const DEV_B: (&str, &str) = ("dev-b", "b-pw");

/// `account`, its topics carrying its user name, as the ACL's `%u` expects.
fn device_account(m: &Mosquitto, who: (&str, &str)) -> Broker {
    let mut b = account(m, who);
    b.topic_level = TopicLevel::Username;
    b
}

/// Publishes at QoS 1 and returns the broker's PUBACK reason.
async fn publish_reason(
    client: &AsyncClient,
    eventloop: &mut EventLoop,
    topic: String,
) -> PubAckReason {
    client
        .publish(topic, QoS::AtLeastOnce, false, vec![0x10; 40])
        .await
        .unwrap();
    loop {
        if let Event::Incoming(Packet::PubAck(ack)) = eventloop.poll().await.unwrap() {
            return ack.reason;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_confines_each_device_to_its_own_topics() {
    let m = Mosquitto::start_with_acl(&[SERVER, DEV_A, DEV_B], ACL);
    let keys = Keys::new(2);
    let server_broker = account(&m, SERVER);
    let config = keys.server_config();
    let mut server = spawn_server_with_broker(&server_broker, config).await;
    let mut dev_a = MqttDevice::start(
        &device_account(&m, DEV_A),
        keys.device_config(0, &X25519_MLKEM768),
        keys.pin(),
        device_options(),
    )
    .await
    .unwrap();
    dev_a.send(b"from a".to_vec()).await.unwrap();
    let got = server.take(1).await;
    assert_eq!(
        (
            client_and_session(&got[0]).0.as_str(),
            texts(&got)[0].as_str()
        ),
        ("dev-a", "from a")
    );
    let session = client_and_session(&got[0]).1;
    let topics = Topics::default();

    // Device B's account tries A's topics, even under A's client id: the broker drops every
    // publish.
    let (b, mut b_loop) = raw_client_as(&m, "dev-a", Some(DEV_B)).await;
    for topic in [
        topics.up("dev-a", &server.instance, &session),
        topics.down("dev-a", &session, &server.instance),
        topics.hello("dev-a", &"0".repeat(32)),
        topics.hello("anyone", &"0".repeat(32)),
    ] {
        assert_eq!(
            publish_reason(&b, &mut b_loop, topic.clone()).await,
            PubAckReason::NotAuthorized,
            "{topic}"
        );
    }
    drop((b, b_loop));
    // ... and reads none of them: a spy of B's subscribed to everything sees the traffic of
    // B's own session, and nothing of A's, sent before it.
    let (_spy, mut seen) = spy_as(&m, "dev-b-spy", "#", Some(DEV_B)).await;
    dev_a.send(b"a again".to_vec()).await.unwrap();
    assert_eq!(texts(&server.take(1).await), ["a again"]);
    let mut dev_b = MqttDevice::start(
        &device_account(&m, DEV_B),
        keys.device_config(1, &X25519_ONLY),
        keys.pin(),
        device_options(),
    )
    .await
    .unwrap();
    dev_b.send(b"from b".to_vec()).await.unwrap();
    assert_eq!(texts(&server.take(1).await), ["from b"]);
    let (topic, _) = tokio::time::timeout(PATIENCE, seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        topic.starts_with("secchan/dev-b/dn/"),
        "the spy's first message: {topic}"
    );
    dev_a.finish(PATIENCE).await.unwrap();
    dev_b.finish(PATIENCE).await.unwrap();
    while let Ok(Some((topic, _))) =
        tokio::time::timeout(std::time::Duration::from_millis(200), seen.recv()).await
    {
        assert!(topic.starts_with("secchan/dev-b/dn/"), "B read {topic}");
    }
    let (rest, stats) = server.stop().await;
    assert!(rest.is_empty());
    assert_eq!(
        stats.malformed, 0,
        "nothing of B's publishes reached the server: {stats:?}"
    );
}

/// The broker with TLS and a password for `user`; the server and device brokers for it.
fn tls_accounts(m: &Mosquitto, tls: &TlsFiles) -> (Broker, Broker) {
    let mut b = Broker::parse_url(&m.tls_url()).unwrap();
    b.tls.as_mut().unwrap().ca_file = Some(tls.ca.clone());
    b.username = Some("sensor".into());
    b.password = Some(zeroize::Zeroizing::new("correct horse".into()));
    let _ = broker(m); // logging
    (b.clone(), b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_broker_with_a_password_and_each_failure_named() {
    let dir = std::env::temp_dir().join(format!("secchan-tls-test-{}", std::process::id()));
    let tls = TlsFiles::generate(&dir, "good", "sensor-1");
    let m = Mosquitto::start_with_tls(&tls, &[("sensor", "correct horse")], false);
    let keys = Keys::new(1);
    let (server_broker, device_broker) = tls_accounts(&m, &tls);
    let mut server = spawn_server_with_broker(&server_broker, keys.server_config()).await;
    let mut dev = MqttDevice::start(
        &device_broker,
        keys.device_config(0, &X25519_MLKEM768),
        keys.pin(),
        device_options(),
    )
    .await
    .unwrap();
    dev.send(b"over tls".to_vec()).await.unwrap();
    dev.finish(PATIENCE).await.unwrap();
    assert_eq!(texts(&server.take(1).await), ["over tls"]);
    server.stop().await;

    let start = |b: Broker| {
        let config = keys.device_config(0, &X25519_ONLY);
        let pin = keys.pin();
        async move {
            MqttDevice::start(&b, config, pin, device_options())
                .await
                .unwrap_err()
        }
    };
    // Another CA: the broker's certificate does not verify.
    let other = TlsFiles::generate(&dir, "other", "x");
    let mut b = device_broker.clone();
    b.tls.as_mut().unwrap().ca_file = Some(other.ca.clone());
    let err = start(b).await;
    assert!(
        matches!(err, TransportError::Mqtt(MqttError::TlsHandshake { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("--mqtt-ca"), "{err}");
    // A CA file that holds no certificate.
    let mut b = device_broker.clone();
    b.tls.as_mut().unwrap().ca_file = Some(tls.server_key.clone());
    let err = start(b).await;
    assert!(
        matches!(err, TransportError::Mqtt(MqttError::TlsFile { .. })),
        "{err}"
    );
    // The wrong password, through TLS.
    let mut b = device_broker.clone();
    b.password = Some(zeroize::Zeroizing::new("wrong".into()));
    let err = start(b).await;
    assert!(
        matches!(err, TransportError::Mqtt(MqttError::Refused { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("check --mqtt-username"), "{err}");
    // Plain MQTT to a TLS listener.
    let err = start(Broker::parse_url(&m.url()).unwrap()).await;
    assert!(
        matches!(err, TransportError::Mqtt(MqttError::Unreachable { .. })),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_requires_a_client_certificate() {
    let dir = std::env::temp_dir().join(format!("secchan-tls-cert-{}", std::process::id()));
    let tls = TlsFiles::generate(&dir, "ca", "sensor-1");
    let m = Mosquitto::start_with_tls(&tls, &[], true);
    let keys = Keys::new(1);
    let mut b = Broker::parse_url(&m.tls_url()).unwrap();
    let _ = broker(&m);
    b.tls.as_mut().unwrap().ca_file = Some(tls.ca.clone());
    let without = b.clone();
    b.tls.as_mut().unwrap().client_cert = Some(ClientCert {
        cert_file: tls.client_cert.clone(),
        key_file: tls.client_key.clone(),
    });
    let mut server = spawn_server_with_broker(&b, keys.server_config()).await;
    let mut dev = MqttDevice::start(
        &b,
        keys.device_config(0, &X25519_ONLY),
        keys.pin(),
        device_options(),
    )
    .await
    .unwrap();
    dev.send(b"with a certificate".to_vec()).await.unwrap();
    dev.finish(PATIENCE).await.unwrap();
    assert_eq!(texts(&server.take(1).await), ["with a certificate"]);
    server.stop().await;
    assert!(
        m.log().contains("u'sensor-1'"),
        "the certificate's CN is the user: {}",
        m.log()
    );
    let err = MqttDevice::start(
        &without,
        keys.device_config(0, &X25519_ONLY),
        keys.pin(),
        device_options(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Mqtt(MqttError::TlsHandshake { .. } | MqttError::Unreachable { .. })
        ),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
