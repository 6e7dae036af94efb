//! What a device does when a handshake fails with nothing authenticated to show for it, and
//! when key updates are lost, through a real Mosquitto: an authenticated refusal is final, an
//! untrusted key, a plaintext refusal or silence are tried again with the buffer kept (and
//! given up after the attempts allowed), and a receiver that misses or reorders KeyUpdate
//! records opens everything that follows (docs/mqtt.md §4, §5; protocol.md §7.5).
#![cfg(feature = "mqtt")]

mod support;

use secchan::crypto::kem::{X25519_MLKEM768, X25519_ONLY};
use secchan::msgs::AlertCode;
use secchan::transport::mqtt::{Broker, DeviceOptions, MqttDevice, MqttError, MqttServer};
use secchan::transport::{Timeouts, TransportError};
use secchan::trust::Pinned;
use std::sync::Arc;
use std::time::Duration;
use support::mosquitto::Mosquitto;
use support::mqtt::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_device_is_refused() {
    let m = Mosquitto::start();
    let keys = Keys::new(1);
    let server = spawn_server(&m, &keys).await;
    let stranger = Keys::new(1);
    let config = stranger.device_config(0, &X25519_MLKEM768);
    // The refusal comes after the device's last handshake message, like over TCP: the
    // first send or the finish reports it. It comes in an authenticated Close record, so the
    // device believes it at once and does not try again.
    let mut dev = MqttDevice::start(&broker(&m), config, keys.pin(), device_options())
        .await
        .unwrap();
    let _ = dev.send(b"let me in".to_vec()).await;
    let err = dev.finish(PATIENCE).await.unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Session(secchan::session::SessionError::PeerAlert(
                AlertCode::UnknownDevice
            ))
        ),
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
    // An untrusted key is no proof of anything (anyone can answer with a key of their own):
    // the device tries again, and gives up with the trust error after its attempts.
    let mut options = device_options();
    options.timeouts.handshake = Duration::from_millis(500);
    options.handshake_attempts = 2;
    let err = MqttDevice::start(
        &broker(&m),
        keys.device_config(0, &X25519_ONLY),
        other,
        options,
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
    options.handshake_attempts = 1;
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
async fn broker_credentials_are_used_and_wrong_ones_refused() {
    let m = Mosquitto::start_with_password("sensor", "correct horse");
    let keys = Keys::new(1);
    let mut good = broker(&m);
    good.username = Some("sensor".into());
    good.password = Some(zeroize::Zeroizing::new("correct horse".into()));
    let server = MqttServer::start(&good, keys.server_config(), server_options()).await;
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
async fn forged_refusals_and_rogue_keys_are_retried_and_the_buffer_kept() {
    let m = Mosquitto::start();
    let keys = Keys::new(1);
    let mut a = spawn_server(&m, &keys).await;
    let options = DeviceOptions {
        timeouts: Timeouts {
            handshake: Duration::from_millis(700),
            ..timeouts()
        },
        handshake_attempts: 0,
        ..device_options()
    };
    let config = keys.device_config(0, &X25519_ONLY);
    let mut dev = MqttDevice::start(&broker(&m), config, keys.pin(), options)
        .await
        .unwrap();
    let sent = messages("kept", 10);
    send_all(&mut dev, &sent[..5]).await;
    let mut got = a.take(5).await;
    wait_until(|| dev.stats().acknowledged == 5).await;
    // Only a stranger answers now: a refusal alert and a ServerHello with its own key for
    // every hello. Neither stops the device, and what it is given meanwhile is kept.
    let mut answered = rogue(&m).await;
    let (rest, _) = a.stop().await;
    got.extend(rest);
    send_all(&mut dev, &sent[5..]).await;
    for _ in 0..2 {
        tokio::time::timeout(PATIENCE, answered.recv())
            .await
            .unwrap();
    }
    wait_until(|| dev.stats().handshake_retries >= 1).await;
    let mut b = spawn_server(&m, &keys).await;
    let stats = dev.finish(PATIENCE).await.unwrap();
    got.extend(b.take(5).await);
    b.stop().await;
    assert_exactly_once(&texts(&got), &sent);
    assert_eq!(stats.sessions, 2, "{stats:?}");
    assert!(stats.rejected_handshake_messages >= 2, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_gives_up_after_its_attempts_with_the_first_reason_that_applies() {
    let m = Mosquitto::start();
    let keys = Keys::new(1);
    let _answered = rogue(&m).await;
    let mut options = device_options();
    options.timeouts.handshake = Duration::from_millis(500);
    options.handshake_attempts = 2;
    let err = MqttDevice::start(
        &broker(&m),
        keys.device_config(0, &X25519_ONLY),
        keys.pin(),
        options,
    )
    .await
    .unwrap_err();
    // The rogue's ServerHello verified but its key is not the pinned one: that comes first.
    assert!(matches!(err, TransportError::Trust(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_and_reordered_key_updates_from_a_device_cost_nothing() {
    let m = Mosquitto::start();
    let keys = Keys::new(1);
    let mut server = spawn_server(&m, &keys).await;
    let mut dev = HandDevice::connect(&m, &keys).await;
    let sent = messages("ku", 4);
    let m0 = dev.seal(0, &sent[0]);
    let _lost = dev.key_update();
    let m1 = dev.seal(1, &sent[1]);
    let late = dev.key_update();
    let m2 = dev.seal(2, &sent[2]);
    let _lost_too = dev.key_update();
    let m3 = dev.seal(3, &sent[3]);
    // Generation 0, then 2 before 1, then 3; one KeyUpdate late, two never.
    for frame in [&m0, &m2, &m1, &m3, &late] {
        dev.publish(frame).await;
    }
    assert_exactly_once(&texts(&server.take(4).await), &sent);
    dev.expect_ack(4).await;
    let after = dev.seal(4, "after");
    dev.publish(&after).await;
    assert_eq!(texts(&server.take(1).await), ["after"]);
    let (_, stats) = server.stop().await;
    assert_eq!(stats.rejected_records, 0, "{stats:?}");
    assert_eq!(stats.sessions_established, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_misses_every_key_update_of_the_server_still_reads_its_acks() {
    let m = Mosquitto::start();
    let keys = Keys::new(1);
    let mut config = (*keys.server_config()).clone();
    // A key update before every record the server sends.
    config.session.key_update.max_records = 1;
    let mut server = spawn_server_with(&m, Arc::new(config), server_options()).await;
    let mut dev = HandDevice::connect(&m, &keys).await;
    dev.drop_key_updates();
    for i in 0..5 {
        let text = format!("m{i}");
        let frame = dev.seal(i, &text);
        dev.publish(&frame).await;
        assert_eq!(texts(&server.take(1).await), [text]);
        dev.expect_ack(i + 1).await;
    }
    server.stop().await;
}
