//! Server and device in one process over real loopback sockets, with a hostile network or
//! peer between them: a man in the middle, tampered, replayed and reordered records, cut
//! streams, oversize and garbage frames, stalled and idle peers. tests/tcp.rs has the honest
//! paths and the trust checks.

mod common;

use common::*;
use secchan::crypto::aead::AeadId;
use secchan::crypto::kem::X25519_MLKEM768;
use secchan::crypto::random::OsRandom;
use secchan::handshake::{device, HandshakeError, Mode};
use secchan::msgs::{AlertCode, FrameType, VERSION};
use secchan::record::replay::ReplayError;
use secchan::record::{RecordError, MAX_PAYLOAD};
use secchan::session::SessionError;
use secchan::transport::framing::{MAX_FINISH_FRAME, MAX_FIRST_FRAME};
use secchan::transport::tcp::{connect, Listener};
use secchan::transport::{TransportError, MAX_FRAME_LEN};
use secchan::trust::Pinned;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

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
async fn mitm_downgrade_to_classical_is_detected() {
    let (addr, _rx) = start_server(server_config(Mode::Any)).await;
    // Rewrite the hybrid DeviceHello into a classical one with the same X25519 value.
    let mitm = start_mitm(addr, |up, i, f| {
        if up && i == 0 {
            let mut forged = f[..4].to_vec();
            forged[2] = 0x03; // X25519 suite
            let n = usize::from(f[3]);
            forged.extend_from_slice(&f[4..4 + n + 32]);
            vec![forged]
        } else {
            vec![f]
        }
    })
    .await;
    let err = connect_hybrid(mitm).await.unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Handshake(HandshakeError::Downgrade { .. })
        ),
        "{err:?}"
    );
}

/// Sets up a MITM that applies `tamper` to device->server records (frame index >= 2).
async fn session_through(
    tamper: impl Fn(usize, Vec<u8>) -> Vec<Vec<u8>> + Send + Sync + 'static,
) -> (
    secchan::transport::tcp::Connection,
    tokio::sync::mpsc::Receiver<ServerOutcome>,
) {
    let (addr, rx) = start_server(server_config(Mode::Hybrid)).await;
    let mitm = start_mitm(addr, move |up, i, f| {
        if up && i >= 2 {
            tamper(i - 2, f)
        } else {
            vec![f]
        }
    })
    .await;
    let conn = connect_hybrid(mitm).await.unwrap();
    (conn, rx)
}

#[tokio::test]
async fn tampered_record_is_fatal_with_bad_tag() {
    let (mut conn, mut rx) = session_through(|_, mut f| {
        let last = f.len() - 1;
        f[last] ^= 1;
        vec![f]
    })
    .await;
    conn.send(b"x").await.unwrap();
    assert!(matches!(
        conn.recv().await.unwrap_err(),
        TransportError::Session(SessionError::PeerAlert(AlertCode::BadRecord))
    ));
    // A caller that goes on after the error gets it again, never an orderly end.
    assert!(matches!(
        conn.recv().await.unwrap_err(),
        TransportError::Session(SessionError::PeerAlert(AlertCode::BadRecord))
    ));
    assert!(matches!(
        next(&mut rx).await.end,
        Err(TransportError::Session(SessionError::Record(
            RecordError::BadTag(0)
        )))
    ));
}

#[tokio::test]
async fn error_close_reaches_a_device_that_keeps_sending() {
    // The server's lingering close: its Close record is read, not lost to a reset, while
    // the device's later records are still arriving.
    let (mut conn, mut rx) = session_through(|i, mut f| {
        if i == 0 {
            let last = f.len() - 1;
            f[last] ^= 1;
        }
        vec![f]
    })
    .await;
    conn.send(b"x").await.unwrap();
    for _ in 0..100 {
        conn.send(&[0x55; 500]).await.unwrap();
        tokio::task::yield_now().await;
    }
    let err = conn.recv().await.unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Session(SessionError::PeerAlert(AlertCode::BadRecord))
        ),
        "{err:?}"
    );
    drop(conn);
    assert!(matches!(
        next(&mut rx).await.end,
        Err(TransportError::Session(SessionError::Record(
            RecordError::BadTag(0)
        )))
    ));
}

#[tokio::test]
async fn replayed_record_is_fatal_on_tcp() {
    let (mut conn, mut rx) =
        session_through(|i, f| if i == 0 { vec![f.clone(), f] } else { vec![f] }).await;
    conn.send(b"once").await.unwrap();
    let outcome = next(&mut rx).await;
    assert_eq!(outcome.messages, vec![b"once".to_vec()]);
    assert!(matches!(
        outcome.end,
        Err(TransportError::Session(SessionError::Record(
            RecordError::Replay(ReplayError::Duplicate(0))
        )))
    ));
    let _ = conn.recv().await;
}

#[tokio::test]
async fn reordered_record_is_fatal_on_tcp() {
    let held = Arc::new(std::sync::Mutex::new(None));
    let (mut conn, mut rx) = session_through(move |i, f| {
        let mut h = held.lock().unwrap();
        match i {
            0 => {
                *h = Some(f);
                vec![]
            }
            1 => vec![f, h.take().unwrap()],
            _ => vec![f],
        }
    })
    .await;
    conn.send(b"first").await.unwrap();
    conn.send(b"second").await.unwrap();
    let outcome = next(&mut rx).await;
    assert!(outcome.messages.is_empty());
    assert!(matches!(
        outcome.end,
        Err(TransportError::Session(SessionError::Record(
            RecordError::OutOfOrder {
                expected: 0,
                got: 1
            }
        )))
    ));
}

#[tokio::test]
async fn dropped_close_is_reported_as_truncation() {
    // The attacker swallows the device's Close and cuts the connection.
    let (mut conn, mut rx) = session_through(|_, f| {
        if f[0] == FrameType::Close as u8 {
            vec![]
        } else {
            vec![f]
        }
    })
    .await;
    conn.send(b"data").await.unwrap();
    assert!(conn.recv().await.unwrap().is_some());
    conn.send_close().await.unwrap();
    drop(conn);
    let outcome = next(&mut rx).await;
    assert_eq!(outcome.messages.len(), 1);
    assert!(
        matches!(outcome.end, Err(TransportError::Truncated)),
        "{:?}",
        outcome.end
    );
}

#[tokio::test]
async fn stream_cut_inside_a_record_is_reported_as_truncation() {
    // The attacker relays the handshake, then only the first half of the device's first
    // record, and ends the stream there.
    let (addr, mut rx) = start_server(server_config(Mode::Hybrid)).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (device, _) = listener.accept().await.unwrap();
        let server = TcpStream::connect(addr).await.unwrap();
        let (mut dr, mut dw) = device.into_split();
        let (mut sr, mut sw) = server.into_split();
        tokio::spawn(async move { tokio::io::copy(&mut sr, &mut dw).await });
        for _ in 0..2 {
            let frame = read_frame(&mut dr).await.unwrap();
            write_frame(&mut sw, &frame).await.unwrap();
        }
        let record = read_frame(&mut dr).await.unwrap();
        let mut wire = u16::try_from(record.len()).unwrap().to_be_bytes().to_vec();
        wire.extend_from_slice(&record[..record.len() / 2]);
        tokio::io::AsyncWriteExt::write_all(&mut sw, &wire)
            .await
            .unwrap();
        // Dropping the write half ends the stream towards the server.
    });
    let mut conn = connect_hybrid(relay).await.unwrap();
    conn.send(b"a message the attacker cuts in half")
        .await
        .unwrap();
    let outcome = next(&mut rx).await;
    assert!(outcome.messages.is_empty());
    assert!(
        matches!(outcome.end, Err(TransportError::Truncated)),
        "{:?}",
        outcome.end
    );
}

#[tokio::test]
async fn oversize_frame_is_refused_before_allocation() {
    // Before the device is authenticated the limit is the largest legal first message
    // (protocol.md §2.1), not a record's: the largest prefix, a record's and one past the
    // limit are refused on the prefix alone (no body follows). A frame of exactly the limit
    // is read and judged on its contents.
    for prefix in [0xffff_u16, MAX_FRAME_LEN as u16, MAX_FIRST_FRAME as u16 + 1] {
        let (addr, mut rx) = start_server(server_config(Mode::Hybrid)).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&prefix.to_be_bytes()).await.unwrap();
        s.write_all(&[0x01]).await.unwrap();
        let end = next(&mut rx).await.end;
        assert!(
            matches!(end, Err(TransportError::FrameTooLarge)),
            "{prefix}: {end:?}"
        );
    }
    let (addr, mut rx) = start_server(server_config(Mode::Hybrid)).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut at_limit = vec![0u8; MAX_FIRST_FRAME];
    at_limit[..2].copy_from_slice(&[0x01, 0x01]);
    write_frame(&mut s, &at_limit).await.unwrap();
    let end = next(&mut rx).await.end;
    assert!(
        matches!(
            end,
            Err(TransportError::Handshake(HandshakeError::Decode(_)))
        ),
        "{end:?}"
    );
}

#[tokio::test]
async fn oversize_frame_in_place_of_device_finish_is_refused_before_allocation() {
    // After its ServerHello a server expects a DeviceFinish (at most 210 bytes): one byte
    // more is refused on the prefix alone, before the device has authenticated anything.
    let (addr, mut rx) = start_server(server_config(Mode::Hybrid)).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (_, hello) = device::start(
        &device_config(&X25519_MLKEM768, AeadId::Aes256Gcm),
        &mut OsRandom,
    )
    .unwrap();
    write_frame(&mut s, &hello).await.unwrap();
    assert_eq!(
        read_frame(&mut s).await.unwrap()[0],
        FrameType::ServerHello as u8
    );
    s.write_all(&(MAX_FINISH_FRAME as u16 + 1).to_be_bytes())
        .await
        .unwrap();
    s.write_all(&[FrameType::DeviceFinish as u8]).await.unwrap();
    let end = next(&mut rx).await.end;
    assert!(matches!(end, Err(TransportError::FrameTooLarge)), "{end:?}");
}

#[tokio::test]
async fn oversize_frame_in_an_established_session_is_refused() {
    assert_eq!(MAX_FRAME_LEN, 16_403);
    // A server that only collects messages (an echo of a full record would not fit).
    let listener = Listener::bind(
        "127.0.0.1:0",
        Arc::new(server_config(Mode::Hybrid)),
        short_timeouts(),
    )
    .await
    .unwrap();
    let upstream = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap().handshake().await.unwrap();
        let mut messages = Vec::new();
        loop {
            match conn.recv().await {
                Ok(Some(m)) => messages.push(m.len()),
                end => return (messages, end),
            }
        }
    });
    // The device's second record is replaced by a frame one byte over the limit.
    let mitm = start_mitm(upstream, |up, i, f| {
        if up && i == 3 {
            vec![vec![FrameType::Data as u8; MAX_FRAME_LEN + 1]]
        } else {
            vec![f]
        }
    })
    .await;
    let mut conn = connect_hybrid(mitm).await.unwrap();
    // A full record is exactly the limit, and is accepted.
    conn.send(&vec![7u8; MAX_PAYLOAD]).await.unwrap();
    conn.send(b"replaced").await.unwrap();
    let (messages, end) = server.await.unwrap();
    assert_eq!(messages, vec![MAX_PAYLOAD]);
    assert!(matches!(end, Err(TransportError::FrameTooLarge)), "{end:?}");
}

#[tokio::test]
async fn garbage_in_place_of_hello_gets_decode_alert() {
    let (addr, mut rx) = start_server(server_config(Mode::Hybrid)).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let garbage = [
        &[FrameType::DeviceHello as u8, VERSION, 0x01, 0x02][..],
        b"GARBAGE",
    ]
    .concat();
    write_frame(&mut s, &garbage).await.unwrap();
    let alert = read_frame(&mut s).await.unwrap();
    assert_eq!(
        alert,
        vec![
            FrameType::Alert as u8,
            VERSION,
            AlertCode::DecodeError as u8
        ]
    );
    assert!(matches!(
        next(&mut rx).await.end,
        Err(TransportError::Handshake(HandshakeError::Decode(_)))
    ));
}

#[tokio::test]
async fn stalled_peer_mid_handshake_times_out() {
    let timeout_alert = vec![FrameType::Alert as u8, VERSION, AlertCode::Timeout as u8];
    // A device that sends a valid DeviceHello, reads the ServerHello, and never finishes.
    let (addr, mut rx) = start_server(server_config(Mode::Hybrid)).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (_, hello) = device::start(
        &device_config(&X25519_MLKEM768, AeadId::Aes256Gcm),
        &mut OsRandom,
    )
    .unwrap();
    write_frame(&mut s, &hello).await.unwrap();
    let server_hello = read_frame(&mut s).await.unwrap();
    assert_eq!(server_hello[0], FrameType::ServerHello as u8);
    // The server gives up, says why, and closes.
    assert_eq!(read_frame(&mut s).await.unwrap(), timeout_alert);
    assert!(matches!(
        next(&mut rx).await.end,
        Err(TransportError::HandshakeTimeout(_))
    ));
    // One that stalls inside its first length prefix.
    let (addr, mut rx) = start_server(server_config(Mode::Hybrid)).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0x04]).await.unwrap();
    assert_eq!(read_frame(&mut s).await.unwrap(), timeout_alert);
    assert!(matches!(
        next(&mut rx).await.end,
        Err(TransportError::HandshakeTimeout(_))
    ));
    // The device side of a stalled server: a listener that never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = connect(
        silent.local_addr().unwrap(),
        &device_config(&X25519_MLKEM768, AeadId::Aes256Gcm),
        &pin(),
        short_timeouts(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, TransportError::HandshakeTimeout(_)),
        "{err:?}"
    );
}

#[tokio::test]
async fn oversize_message_is_refused_locally() {
    let (addr, _rx) = start_server(server_config(Mode::Hybrid)).await;
    let mut conn = connect_hybrid(addr).await.unwrap();
    assert!(matches!(
        conn.send(&vec![0u8; 16385]).await.unwrap_err(),
        TransportError::Session(SessionError::Record(RecordError::PayloadTooLarge(16385)))
    ));
}

#[tokio::test]
async fn idle_session_is_closed_with_timeout_alert() {
    let mut scfg = server_config(Mode::Hybrid);
    scfg.session = Default::default();
    let listener = secchan::transport::tcp::Listener::bind(
        "127.0.0.1:0",
        Arc::new(scfg),
        secchan::transport::Timeouts {
            handshake: Duration::from_secs(5),
            idle: Duration::from_millis(200),
        },
    )
    .await
    .unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap().handshake().await.unwrap();
        (conn.recv().await, conn.recv().await)
    });
    let mut conn = connect_hybrid(addr).await.unwrap();
    // The device stays silent; the server gives up and says why, and a second receive does
    // not turn the timeout into an orderly end.
    let (first, second) = server.await.unwrap();
    assert!(
        matches!(first, Err(TransportError::IdleTimeout(_))),
        "{first:?}"
    );
    assert!(
        matches!(second, Err(TransportError::Session(SessionError::Closed))),
        "{second:?}"
    );
    assert!(matches!(
        conn.recv().await.unwrap_err(),
        TransportError::Session(SessionError::PeerAlert(AlertCode::Timeout))
    ));
}
