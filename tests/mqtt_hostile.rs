//! Forged and foreign input on secchan's MQTT topics, through a real Mosquitto: garbage on
//! every topic form, a rogue answering every hello, forged alerts before a session's first
//! record, forged frames for a pending handshake, a flood of replayed hellos. None of it may
//! end a session or a handshake, or make an endpoint believe anything.
#![cfg(feature = "mqtt")]

mod support;

use rumqttc::v5::mqttbytes::QoS;
use secchan::crypto::kem::{X25519_MLKEM768, X25519_ONLY};
use secchan::crypto::random::OsRandom;
use secchan::handshake::device;
use secchan::handshake::server;
use secchan::msgs::{encode_alert, AlertCode, FrameType};
use secchan::transport::mqtt::{DeviceOptions, MqttDevice, ServerOptions, Topics};
use secchan::transport::Timeouts;
use secchan::trust::{KnownServers, ServerVerifier};
use std::sync::Arc;
use std::time::Instant;
use support::mosquitto::Mosquitto;
use support::mqtt::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_topics_is_dropped_and_disturbs_no_session() {
    let m = Mosquitto::start();
    let keys = Keys::new(1);
    let mut server = spawn_server(&m, &keys).await;
    let mut dev = start_device(&m, &keys, 0, &X25519_MLKEM768).await;
    dev.send(b"before".to_vec()).await.unwrap();
    server.take(1).await;
    let (vandal, mut seen) = spy(&m, "vandal", "secchan/+/up/#").await;
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
            "secchan/vandal/hs/00000000000000000000000000000000".into(),
            b"hello?".to_vec(),
        ),
        ("secchan/vandal/hs/not-a-session".into(), vec![1, 2, 3]),
        (
            format!("secchan/vandal/up/{instance}/ffffffffffffffffffffffffffffffff"),
            vec![0x10; 40],
        ),
        (format!("secchan/vandal/up/{instance}/x"), vec![0x10; 40]),
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
    assert!(stats.malformed >= 7, "with the hello garbage: {stats:?}");
    assert!(stats.rejected_records >= 1, "{stats:?}");
    assert_eq!(
        stats.handshake_failures, 0,
        "garbage hellos are dropped unanswered: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rogue_answers_on_the_down_topic_neither_stop_nor_capture_a_device() {
    let m = Mosquitto::start();
    let keys = Keys::new(2);
    let mut answered = rogue(&m).await;
    let (_spy, mut down) = spy(&m, "spy", "secchan/+/dn/#").await;
    // One device pins the server's key; the other knows it from its known-servers file.
    let dir = std::env::temp_dir().join(format!("secchan-rogue-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let known = dir.join("known_servers");
    let host = broker(&m).display_name();
    std::fs::write(
        &known,
        format!("{host} {}\n", keys.server.public().fingerprint()),
    )
    .unwrap();
    let verifiers: [Arc<dyn ServerVerifier>; 2] =
        [keys.pin(), Arc::new(KnownServers::new(&known, host))];
    let options = DeviceOptions {
        timeouts: Timeouts {
            handshake: PATIENCE,
            ..timeouts()
        },
        ..device_options()
    };
    let starting: Vec<_> = verifiers
        .into_iter()
        .enumerate()
        .map(|(i, verifier)| {
            let (b, config, options) = (
                broker(&m),
                keys.device_config(i, &X25519_MLKEM768),
                options.clone(),
            );
            tokio::spawn(async move { MqttDevice::start(&b, config, verifier, options).await })
        })
        .collect();
    // The rogue answered both devices, and the broker delivered its last frame, before any
    // secchan server runs: each device had all of it before the server's ServerHello.
    let mut sids = std::collections::HashSet::new();
    while sids.len() < 2 {
        sids.insert(answered.recv().await.unwrap());
    }
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 2 {
        let (topic, frame) = down.recv().await.unwrap();
        let sid = topic.split('/').nth(3).unwrap_or_default().to_string();
        if sids.contains(&sid)
            && FrameType::of(&frame) == Ok(FrameType::ServerHello)
            && frame.len() > 4
        {
            seen.insert(sid);
        }
    }
    let mut server = spawn_server(&m, &keys).await;
    for (i, device) in starting.into_iter().enumerate() {
        let mut dev = tokio::time::timeout(PATIENCE, device)
            .await
            .unwrap()
            .unwrap()
            .unwrap_or_else(|e| panic!("device {i} did not reach the real server: {e}"));
        dev.send(format!("device {i} is fine").into_bytes())
            .await
            .unwrap();
        let stats = dev.finish(PATIENCE).await.unwrap();
        assert_eq!(stats.sessions, 1);
        // The non-verifying ServerHello, the refusal alert and the rogue's ServerHello.
        assert!(stats.rejected_handshake_messages >= 3, "{stats:?}");
        // The empty frame and the one-byte alert.
        assert!(stats.malformed >= 2, "{stats:?}");
    }
    let mut got = texts(&server.take(2).await);
    got.sort();
    assert_eq!(got, ["device 0 is fine", "device 1 is fine"]);
    assert_eq!(
        std::fs::read_to_string(&known).unwrap().lines().count(),
        1,
        "the rogue's key was not recorded"
    );
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_alerts_before_the_first_record_do_not_end_a_session() {
    let m = Mosquitto::start();
    let keys = Keys::new(1);
    let mut server = spawn_server(&m, &keys).await;
    let (vandal, mut down) = spy(&m, "vandal", "secchan/+/dn/#").await;
    // Nothing is sent yet, so after the handshake the device has no authenticated record
    // from the server: the window in which a plaintext refusal is possible.
    let mut dev = start_device(&m, &keys, 0, &X25519_MLKEM768).await;
    let (topic, _) = tokio::time::timeout(PATIENCE, down.recv())
        .await
        .unwrap()
        .unwrap();
    let forged = [
        vec![FrameType::Alert as u8],
        encode_alert(AlertCode::HandshakeFailure),
        encode_alert(AlertCode::UnknownDevice),
        vec![0x10; 40],
    ];
    for frame in &forged {
        vandal
            .publish(topic.clone(), QoS::AtLeastOnce, false, frame.clone())
            .await
            .unwrap();
    }
    // Once the broker delivered the last forgery, the device had them all before any
    // record the server sends from now on.
    for _ in 0..forged.len() {
        tokio::time::timeout(PATIENCE, down.recv()).await.unwrap();
    }
    dev.send(b"still here".to_vec()).await.unwrap();
    let stats = dev.finish(PATIENCE).await.unwrap();
    assert_eq!(stats.sessions, 1, "{stats:?}");
    assert_eq!(stats.acknowledged, 1);
    assert!(stats.rejected_handshake_messages >= 2, "{stats:?}");
    assert!(stats.malformed >= 1, "{stats:?}");
    assert_eq!(texts(&server.take(1).await), ["still here"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_frames_do_not_end_a_pending_handshake() {
    let m = Mosquitto::start();
    let keys = Keys::new(1);
    let mut server = spawn_server(&m, &keys).await;
    let forged = [
        vec![FrameType::DeviceFinish as u8; 80],
        vec![FrameType::DeviceFinish as u8],
        encode_alert(AlertCode::HandshakeFailure),
        vec![FrameType::Alert as u8],
        vec![],
    ];
    let mut dev = HandDevice::connect_after(&m, &keys, &forged).await;
    let text = "after the forgeries";
    let frame = dev.seal(0, text);
    dev.publish(&frame).await;
    assert_eq!(texts(&server.take(1).await), [text]);
    // No alert reached the device: the forged DeviceFinish earned none.
    dev.expect_ack(1).await;
    let (_, stats) = server.stop().await;
    assert_eq!(stats.sessions_established, 1);
    assert_eq!(stats.handshake_failures, 0, "{stats:?}");
    assert!(stats.rejected_handshake_messages >= 3, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_hellos_does_not_lock_devices_out() {
    let m = Mosquitto::start();
    let keys = Keys::new(1);
    let options = ServerOptions {
        max_sessions: 4,
        max_pending: 2,
        ..server_options()
    };
    let mut server = spawn_server_with(&m, keys.server_config(), options).await;
    let (_spy, mut down) = spy(&m, "spy", "secchan/+/dn/#").await;
    // A captured hello costs nothing to publish again under fresh session ids; on a broker
    // without an ACL, under other clients' topic levels too (5 of them, 4 hellos each: as
    // many as a client's hello queue holds, so every one is answered).
    let (_, hello) = device::start(&keys.device_config(0, &X25519_ONLY), &mut OsRandom).unwrap();
    let (flooder, eventloop) = raw_client(&m, "flooder").await;
    let _acks = forward(eventloop);
    const FLOOD: usize = 20;
    for i in 0..FLOOD {
        flooder
            .publish(
                Topics::default().hello(&format!("flooder-{}", i % 5), &format!("{i:032x}")),
                QoS::AtLeastOnce,
                false,
                hello.clone(),
            )
            .await
            .unwrap();
    }
    for _ in 0..FLOOD {
        tokio::time::timeout(PATIENCE, down.recv()).await.unwrap();
    }
    // Every slot is taken by a pending handshake that will never finish.
    let mut dev = start_device(&m, &keys, 0, &X25519_ONLY).await;
    dev.send(b"got in".to_vec()).await.unwrap();
    dev.finish(PATIENCE).await.unwrap();
    assert_eq!(texts(&server.take(1).await), ["got in"]);
    let (_, stats) = server.stop().await;
    assert!(stats.evicted_handshakes >= FLOOD as u64 - 1, "{stats:?}");
    assert_eq!(stats.sessions_established, 1);
}

#[test]
fn a_failed_read_leaves_the_handshake_state_usable() {
    let keys = Keys::new(1);
    let config = keys.server_config();
    let (expect, hello) =
        device::start(&keys.device_config(0, &X25519_MLKEM768), &mut OsRandom).unwrap();
    let (expect_finish, server_hello) =
        server::accept_hello(&config, &hello, &mut OsRandom).unwrap();
    let mut tampered = server_hello.clone();
    *tampered.last_mut().unwrap() ^= 1;
    assert!(expect.read_server_hello(&tampered).is_err());
    assert!(expect
        .read_server_hello(&encode_alert(AlertCode::UnknownDevice))
        .is_err());
    let authed = expect.read_server_hello(&server_hello).unwrap();
    let (mut device_session, finish) = authed.finish(Instant::now()).unwrap();
    let mut tampered = finish.clone();
    *tampered.last_mut().unwrap() ^= 1;
    let now = Instant::now();
    assert!(expect_finish.read_device_finish(&tampered, now).is_err());
    assert!(expect_finish.read_device_finish(&[], now).is_err());
    let (mut server_session, peer) = expect_finish.read_device_finish(&finish, now).unwrap();
    assert_eq!(peer.name, "device-0");
    device_session.send(b"intact", now).unwrap();
    let mut record = device_session.poll_transmit().unwrap();
    assert_eq!(
        server_session.handle_frame(&mut record, now),
        Ok(secchan::session::Event::Message(&b"intact"[..]))
    );
}
