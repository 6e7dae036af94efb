//! Server and device in one process over real loopback sockets: every mode and AEAD, refusals
//! and trust checks. tests/tcp_hostile.rs has the negative tests against a hostile network.

mod common;

use common::*;
use secchan::crypto::aead::AeadId;
use secchan::crypto::identity::IdentityKey;
#[cfg(feature = "kyber-r3")]
use secchan::crypto::kem::X25519_KYBER768R3;
use secchan::crypto::kem::{X25519_MLKEM768, X25519_ONLY};
use secchan::crypto::random::OsRandom;
use secchan::handshake::{server, HandshakeError, Mode};
use secchan::msgs::{encode_alert, AlertCode, FrameType};
use secchan::session::SessionError;
use secchan::transport::tcp::connect;
use secchan::transport::TransportError;
use secchan::trust::{KnownServers, Pinned, TrustError};
use std::sync::Arc;
use std::time::Duration;

fn pin() -> Pinned {
    Pinned(server_key().public().fingerprint())
}

async fn next(rx: &mut tokio::sync::mpsc::Receiver<ServerOutcome>) -> ServerOutcome {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("server reported no outcome")
        .expect("server task ended")
}

#[tokio::test]
async fn every_suite_and_aead_carries_messages_both_ways_and_closes_cleanly() {
    let cases = [
        (Mode::Hybrid, &X25519_MLKEM768, AeadId::Aes256Gcm),
        (Mode::Hybrid, &X25519_MLKEM768, AeadId::ChaCha20Poly1305),
        #[cfg(feature = "kyber-r3")]
        (Mode::Any, &X25519_KYBER768R3, AeadId::Aes256Gcm),
        (Mode::Classical, &X25519_ONLY, AeadId::Aes256Gcm),
        (Mode::Any, &X25519_ONLY, AeadId::ChaCha20Poly1305),
    ];
    for (mode, suite, aead) in cases {
        let (addr, mut rx) = start_server(server_config(mode)).await;
        let mut conn = connect(addr, &device_config(suite, aead), &pin(), short_timeouts())
            .await
            .unwrap();
        assert_eq!(conn.session().suite(), suite);
        assert_eq!(conn.session().aead(), aead);
        for msg in [
            &b"temp=21.5"[..],
            b"",
            &[0xff, 0xfe, 0x00],
            &vec![7u8; 16_000],
        ] {
            conn.send(msg).await.unwrap();
            let reply = conn.recv().await.unwrap().unwrap();
            assert_eq!(&reply[6..], msg);
        }
        conn.send_close().await.unwrap();
        assert_eq!(conn.recv().await.unwrap(), None);
        let outcome = next(&mut rx).await;
        assert!(outcome.end.is_ok(), "{:?}", outcome.end);
        assert_eq!(outcome.messages.len(), 4);
        assert_eq!(outcome.peer.unwrap().name, "sensor-1");
    }
}

#[tokio::test]
async fn key_updates_every_few_records_keep_the_session_working() {
    let mut scfg = server_config(Mode::Hybrid);
    scfg.session.key_update.max_records = 3;
    let (addr, mut rx) = start_server(scfg).await;
    let mut dcfg = device_config(&X25519_MLKEM768, AeadId::Aes256Gcm);
    dcfg.session.key_update.max_records = 2;
    let mut conn = connect(addr, &dcfg, &pin(), short_timeouts())
        .await
        .unwrap();
    for i in 0..20u32 {
        conn.send(&i.to_be_bytes()).await.unwrap();
        assert_eq!(&conn.recv().await.unwrap().unwrap()[6..], i.to_be_bytes());
    }
    // 20 data records plus a key update before every third: 9 key updates, so 29 records.
    assert_eq!(conn.session().next_send_counter(), 29);
    conn.update_keys().await.unwrap();
    conn.send(b"after forced update").await.unwrap();
    assert!(conn.recv().await.unwrap().is_some());
    conn.close(Duration::from_secs(5)).await.unwrap();
    assert_eq!(next(&mut rx).await.messages.len(), 21);
}

#[tokio::test]
async fn hybrid_server_refuses_classical_and_pre_standard_kyber_on_both_ends() {
    for suite in [
        &X25519_ONLY,
        #[cfg(feature = "kyber-r3")]
        &X25519_KYBER768R3,
    ] {
        let (addr, mut rx) = start_server(server_config(Mode::Hybrid)).await;
        let err = connect(
            addr,
            &device_config(suite, AeadId::Aes256Gcm),
            &pin(),
            short_timeouts(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                TransportError::Handshake(HandshakeError::PeerAlert(AlertCode::SuiteRefused))
            ),
            "{err:?}"
        );
        let end = next(&mut rx).await.end;
        assert!(
            matches!(
                &end,
                Err(TransportError::Handshake(HandshakeError::SuiteRefused { suite: s, mode: Mode::Hybrid }))
                    if *s == suite.name
            ),
            "{end:?}"
        );
    }
}

#[tokio::test]
async fn unknown_device_is_refused_on_both_ends() {
    let (addr, mut rx) = start_server(server_config(Mode::Hybrid)).await;
    let mut cfg = device_config(&X25519_MLKEM768, AeadId::Aes256Gcm);
    let stranger = Arc::new(IdentityKey::from_seed(&[0x77; 32]));
    cfg.identity = Some(stranger.clone());
    // The device completes its side (1-RTT), sends right behind its DeviceFinish, and learns
    // of the refusal on its first read: the server's lingering close keeps the connection
    // from being reset under the alert.
    let mut conn = connect(addr, &cfg, &pin(), short_timeouts()).await.unwrap();
    for _ in 0..100 {
        conn.send(&[0x55; 500]).await.unwrap();
        tokio::task::yield_now().await;
    }
    let err = conn.recv().await.unwrap_err();
    assert!(
        matches!(err, TransportError::Refused(AlertCode::UnknownDevice)),
        "{err:?}"
    );
    drop(conn);
    match next(&mut rx).await.end {
        Err(TransportError::Handshake(HandshakeError::DeviceRefused { device, code })) => {
            assert_eq!(device, stranger.public().fingerprint());
            assert_eq!(code, AlertCode::UnknownDevice);
        }
        other => panic!("unexpected server outcome {other:?}"),
    }
}

#[tokio::test]
async fn anonymous_device_is_refused_by_default() {
    let (addr, mut rx) = start_server(server_config(Mode::Hybrid)).await;
    let mut cfg = device_config(&X25519_MLKEM768, AeadId::Aes256Gcm);
    cfg.identity = None;
    let mut conn = connect(addr, &cfg, &pin(), short_timeouts()).await.unwrap();
    assert!(matches!(
        conn.recv().await.unwrap_err(),
        TransportError::Refused(AlertCode::DeviceAuthRequired)
    ));
    drop(conn);
    match next(&mut rx).await.end {
        Err(TransportError::Handshake(HandshakeError::DeviceRefused { device, code })) => {
            assert_eq!(device, "anonymous");
            assert_eq!(code, AlertCode::DeviceAuthRequired);
        }
        other => panic!("unexpected server outcome {other:?}"),
    }
}

#[tokio::test]
async fn plaintext_alert_after_the_first_frame_is_not_a_refusal() {
    let (addr, mut rx) = start_server(server_config(Mode::Hybrid)).await;
    // The attacker appends a forged "revoked" alert to the server's first record.
    let mitm = start_mitm(addr, |up, i, f| {
        if !up && i == 1 {
            vec![f, encode_alert(AlertCode::Revoked)]
        } else {
            vec![f]
        }
    })
    .await;
    let mut conn = connect_hybrid(mitm).await.unwrap();
    conn.send(b"x").await.unwrap();
    assert_eq!(&conn.recv().await.unwrap().unwrap()[..], b"echo: x");
    let err = conn.recv().await.unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Session(SessionError::UnexpectedFrame(FrameType::Alert))
        ),
        "{err:?}"
    );
    // The device closed with unexpected_message, authenticated.
    assert!(matches!(
        next(&mut rx).await.end,
        Err(TransportError::Session(SessionError::PeerAlert(
            AlertCode::UnexpectedMessage
        )))
    ));
}

#[tokio::test]
async fn plaintext_alert_after_the_handshake_timeout_is_not_a_refusal() {
    // A server that completes the handshake, then sends an alert only after the device's
    // refusal window (the handshake timeout) has passed.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let timeouts = short_timeouts();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let hello = read_frame(&mut s).await.unwrap();
        let config = server_config(Mode::Hybrid);
        let (_, reply) = server::accept_hello(&config, &hello, &mut OsRandom).unwrap();
        write_frame(&mut s, &reply).await.unwrap();
        read_frame(&mut s).await.unwrap();
        tokio::time::sleep(timeouts.handshake * 2).await;
        write_frame(&mut s, &encode_alert(AlertCode::UnknownDevice))
            .await
            .unwrap();
        // Hold the connection until the device has read the alert.
        let _ = read_frame(&mut s).await;
    });
    let mut conn = connect_hybrid(addr).await.unwrap();
    let err = conn.recv().await.unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Session(SessionError::UnexpectedFrame(FrameType::Alert))
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn wrong_pinned_server_key_is_refused_before_device_identity_is_sent() {
    let (addr, mut rx) = start_server(server_config(Mode::Hybrid)).await;
    let wrong = Pinned(IdentityKey::from_seed(&[0x99; 32]).public().fingerprint());
    let err = connect(
        addr,
        &device_config(&X25519_MLKEM768, AeadId::Aes256Gcm),
        &wrong,
        short_timeouts(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, TransportError::Trust(TrustError::Mismatch { .. })),
        "{err:?}"
    );
    // The server never got a DeviceFinish: the device told it why instead.
    assert!(matches!(
        next(&mut rx).await.end,
        Err(TransportError::Handshake(HandshakeError::PeerAlert(
            AlertCode::ServerRejected
        )))
    ));
}

#[tokio::test]
async fn changed_server_key_under_tofu_names_file_and_line() {
    let dir = std::env::temp_dir().join(format!("secchan-tofu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("known_servers");
    let _ = std::fs::remove_file(&file);
    let (addr, _rx) = start_server(server_config(Mode::Hybrid)).await;
    let host = addr.to_string();
    let cfg = device_config(&X25519_MLKEM768, AeadId::Aes256Gcm);
    // First use: accepted and recorded.
    let conn = connect(
        addr,
        &cfg,
        &KnownServers::new(&file, &host),
        short_timeouts(),
    )
    .await
    .unwrap();
    conn.close(Duration::from_secs(5)).await.unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        text.trim(),
        format!("{host} {}", server_key().public().fingerprint())
    );
    // Same address, new server key.
    let mut impostor = server_config(Mode::Hybrid);
    impostor.identity = Arc::new(IdentityKey::from_seed(&[0x42; 32]));
    let (addr2, _rx2) = start_server(impostor).await;
    let err = connect(
        addr2,
        &cfg,
        &KnownServers::new(&file, &host),
        short_timeouts(),
    )
    .await
    .unwrap_err();
    match err {
        TransportError::Trust(TrustError::Changed { file: f, line, .. }) => {
            assert_eq!(f, file);
            assert_eq!(line, 1);
        }
        other => panic!("expected Changed, got {other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
