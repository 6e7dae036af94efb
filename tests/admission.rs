//! The TCP server under attack, one defence per test (protocol.md §2.3, §6.5): the real accept
//! loop (`tcp_server`) on loopback, attackers bound to 127.0.0.2 and up, the device on
//! 127.0.0.1 through `tcp::connect`. Each test asserts what the device and the attacker see
//! and what the server counted, never how fast.

mod common;

use common::*;
use secchan::crypto::aead::AeadId;
use secchan::crypto::identity::IdentityKey;
use secchan::crypto::kem::X25519_MLKEM768;
use secchan::crypto::random::OsRandom;
use secchan::delivery::{Envelope, Streams};
use secchan::handshake::cookie;
use secchan::handshake::server::ServerConfig;
use secchan::handshake::ticket::Resumption;
use secchan::handshake::{device, AuthorizedDevices, Mode};
use secchan::msgs::{decode_alert, AlertCode, CookieReply, FrameType};
use secchan::service::admission::{AdmissionStats, Limits};
use secchan::service::intake;
use secchan::service::sink::Discard;
use secchan::service::tcp_server::{Counters, ServerOptions, TcpServer};
use secchan::session::SessionError;
use secchan::transport::tcp::{self, Connection, Listener};
use secchan::transport::{Timeouts, TransportError};
use secchan::trust::Pinned;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A `tcp_server` on loopback, stopped by dropping `stop`.
struct Running {
    addr: SocketAddr,
    counters: Counters,
    stop: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<AdmissionStats>,
}

impl Running {
    /// Stops the server; what it counted.
    async fn stop(self) -> AdmissionStats {
        let _ = self.stop.send(());
        self.done.await.unwrap()
    }
}

fn timeouts() -> Timeouts {
    Timeouts {
        handshake: Duration::from_secs(10),
        idle: Duration::from_secs(30),
    }
}

/// Three device identities the server knows.
fn device_keys() -> Vec<Arc<IdentityKey>> {
    (0..3)
        .map(|i| Arc::new(IdentityKey::from_seed(&[0xd1 + i; 32])))
        .collect()
}

fn config() -> ServerConfig {
    let mut devices = AuthorizedDevices::new();
    for (i, k) in device_keys().iter().enumerate() {
        devices.insert(k.public().fingerprint(), format!("sensor-{i}"));
    }
    let mut cfg = ServerConfig::new(server_key(), Arc::new(devices));
    cfg.mode = Mode::Hybrid;
    cfg
}

async fn start_with(limits: Limits, hello_timeout: Duration, config: ServerConfig) -> Running {
    let listener = Listener::bind("127.0.0.1:0", Arc::new(config), timeouts())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let streams = Streams::new(1000, 1024, Duration::from_secs(60));
    let (intake, _written) = intake::start(Box::new(Discard), streams, None);
    let options = ServerOptions {
        limits,
        hello_timeout,
        drain_timeout: Duration::from_secs(1),
        live: None,
        hub: std::sync::Arc::new(secchan::service::hub::Hub::new(
            secchan::service::hub::RelayPolicy::Off,
        )),
        latency: None,
    };
    let server = TcpServer::new(options).unwrap();
    let counters = server.counters();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(server.run(listener, intake, async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        counters,
        stop,
        done,
    }
}

async fn start(limits: Limits) -> Running {
    start_with(limits, Duration::from_secs(5), config()).await
}

/// Waits (at most 10 s) until `f` holds.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("gave up waiting for {what}");
}

/// A raw TCP connection from `source` (an address on loopback).
async fn from(source: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Whether the server closed `s` (within 10 s).
async fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// A device with identity `key`, from 127.0.0.1.
async fn device(addr: SocketAddr, key: &Arc<IdentityKey>) -> Result<Connection, TransportError> {
    let mut cfg = device_config(&X25519_MLKEM768, AeadId::Aes256Gcm);
    cfg.identity = Some(key.clone());
    tcp::connect(
        addr,
        &cfg,
        &Pinned(server_key().public().fingerprint()),
        timeouts(),
    )
    .await
}

/// Sends message `seq` and waits for the server's acknowledgement of it.
async fn delivers(conn: &mut Connection, seq: u64) -> Result<(), TransportError> {
    let message = Envelope::Message {
        stream: [7; 8],
        seq,
        base: 0,
        data: b"{\"honest\":true}",
    };
    conn.send(&message.encode()).await?;
    loop {
        let m = conn.recv().await?.ok_or(TransportError::Truncated)?;
        if let Ok(Envelope::Ack { next, .. }) = Envelope::decode(&m) {
            if next > seq {
                return Ok(());
            }
        }
    }
}

fn hello() -> Vec<u8> {
    let cfg = device_config(&X25519_MLKEM768, AeadId::Aes256Gcm);
    device::start(&cfg, &mut OsRandom).unwrap().1
}

/// Sends `frame` from `source` and returns the server's answer (`None`: it closed first).
async fn ask(source: &str, addr: SocketAddr, frame: &[u8]) -> (Option<Vec<u8>>, TcpStream) {
    let mut s = from(source, addr).await;
    write_frame(&mut s, frame).await.unwrap();
    let reply = read_frame(&mut s).await;
    (reply, s)
}

#[tokio::test]
async fn a_device_behind_an_attacker_s_address_gets_in_once_the_attacker_s_source_budget_is_spent()
{
    let server = start(Limits {
        pending_per_source: 3,
        ..Limits::default()
    })
    .await;
    // The attacker shares the device's address and holds its source's every pending slot.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(from("127.0.0.1", server.addr).await);
    }
    until("the idle connections", || server.counters.now().0 == 3).await;
    let keys = device_keys();
    let mut conn = device(server.addr, &keys[0]).await.unwrap();
    delivers(&mut conn, 0).await.unwrap();
    assert!(closed(&mut idle[0]).await, "the attacker's oldest gave way");
    let stats = server.stop().await;
    assert_eq!((stats.evicted_source, stats.sessions), (1, 1));
}

#[tokio::test]
async fn idle_sockets_at_the_limit_keep_no_device_out_and_sessions_are_never_given_up_for_them() {
    // Separate budgets: two pending, two sessions. An attacker on 127.0.0.2 holds idle
    // sockets beyond the pending budget, reopening what is given up.
    let server = start(Limits {
        max_sessions: 2,
        max_pending: 2,
        ..Limits::default()
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(from("127.0.0.2", server.addr).await);
    }
    until("the idle connections", || {
        server.counters.stats().accepted == 3
    })
    .await;
    assert!(closed(&mut idle[0]).await, "the pending budget is 2");
    let keys = device_keys();
    let mut conn = device(server.addr, &keys[0]).await.unwrap();
    delivers(&mut conn, 0).await.unwrap();
    // More idle sockets: they displace one another, never the session.
    for _ in 0..5 {
        idle.push(from("127.0.0.2", server.addr).await);
    }
    until("more idle connections", || {
        server.counters.stats().accepted == 9
    })
    .await;
    delivers(&mut conn, 1).await.unwrap();
    assert_eq!(server.counters.now(), (2, 1));
    let stats = server.stop().await;
    assert_eq!((stats.evicted, stats.sessions), (6, 1));
}

#[tokio::test]
async fn a_slow_first_frame_is_cut_off_at_the_hello_deadline() {
    let server = start_with(Limits::default(), Duration::from_secs(1), config()).await;
    let mut s = from("127.0.0.2", server.addr).await;
    let (mut reader, mut writer) = s.split();
    // Slowloris: a hello's length, then one byte every 100 ms, far slower than the hello's
    // 1,221 bytes need.
    let dribble = async {
        writer.write_all(&1221u16.to_be_bytes()).await.unwrap();
        for _ in 0..60 {
            if writer.write_all(&[0x01]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let answer =
        async { tokio::time::timeout(Duration::from_secs(4), read_frame(&mut reader)).await };
    let (_, answer) = tokio::join!(dribble, answer);
    let alert = answer
        .expect("cut off before the handshake timeout")
        .unwrap();
    assert_eq!(decode_alert(&alert).unwrap(), AlertCode::Timeout);
    drop(s);
    let stats = server.stop().await;
    assert_eq!((stats.hello_timeouts, stats.handshake_timeouts), (1, 0));
}

#[tokio::test]
async fn under_load_a_hello_gets_a_cookie_and_the_device_comes_back_with_it() {
    // Under load from the first pending handshake on.
    let server = start(Limits {
        cookie_pending: 0,
        ..Limits::default()
    })
    .await;
    let hello = hello();
    let (reply, mut s) = ask("127.0.0.2", server.addr, &hello).await;
    let reply = reply.unwrap();
    assert_eq!(reply.len(), CookieReply::LEN);
    assert_eq!(FrameType::of(&reply).unwrap(), FrameType::CookieReply);
    assert!(closed(&mut s).await, "the server keeps nothing for it");
    // tcp::connect follows the cookie on its own.
    let keys = device_keys();
    let mut conn = device(server.addr, &keys[0]).await.unwrap();
    delivers(&mut conn, 0).await.unwrap();
    let stats = server.stop().await;
    assert_eq!((stats.cookies_sent, stats.full_handshakes), (2, 1));
}

#[tokio::test]
async fn a_cookie_cannot_be_used_from_another_address() {
    let server = start(Limits {
        cookie_pending: 0,
        ..Limits::default()
    })
    .await;
    let hello = hello();
    let (reply, _) = ask("127.0.0.2", server.addr, &hello).await;
    let again = cookie::retry(&reply.unwrap(), &hello).unwrap().unwrap();
    // From 127.0.0.3 the cookie is refused: a new cookie, no handshake.
    let (elsewhere, _) = ask("127.0.0.3", server.addr, &again).await;
    assert_eq!(
        FrameType::of(&elsewhere.unwrap()).unwrap(),
        FrameType::CookieReply
    );
    // From the address it was given to, it opens the handshake.
    let (here, _) = ask("127.0.0.2", server.addr, &again).await;
    assert_eq!(
        FrameType::of(&here.unwrap()).unwrap(),
        FrameType::ServerHello
    );
    let stats = server.stop().await;
    assert_eq!(
        (
            stats.cookies_sent,
            stats.cookies_refused,
            stats.full_handshakes
        ),
        (2, 1, 1)
    );
}

#[tokio::test]
async fn under_load_a_source_gets_full_handshakes_at_its_rate_and_other_sources_theirs() {
    let server = start(Limits {
        cookie_pending: 0,
        source_rate: 1,
        ..Limits::default()
    })
    .await;
    let hello = hello();
    let (reply, _) = ask("127.0.0.2", server.addr, &hello).await;
    let again = cookie::retry(&reply.unwrap(), &hello).unwrap().unwrap();
    // A captured hello with its valid cookie, replayed: one full handshake, then busy.
    let mut kinds = Vec::new();
    for _ in 0..4 {
        let (answer, _) = ask("127.0.0.2", server.addr, &again).await;
        kinds.push(answer.map(|a| (FrameType::of(&a).unwrap(), a)));
    }
    assert_eq!(kinds[0].as_ref().unwrap().0, FrameType::ServerHello);
    let busy = kinds
        .iter()
        .flatten()
        .filter(|(t, a)| *t == FrameType::Alert && decode_alert(a) == Ok(AlertCode::Busy))
        .count();
    assert!(busy >= 2, "{kinds:?}");
    // The device on its own address is not held back.
    let keys = device_keys();
    let mut conn = device(server.addr, &keys[0]).await.unwrap();
    delivers(&mut conn, 0).await.unwrap();
    let stats = server.stop().await;
    assert_eq!(stats.busy, busy as u64);
}

#[tokio::test]
async fn a_resumption_is_answered_without_a_cookie_under_load() {
    let mut cfg = config();
    cfg.resumption = Some(Arc::new(
        Resumption::random(
            Duration::from_secs(3600),
            std::time::SystemTime::now(),
            &mut OsRandom,
        )
        .unwrap(),
    ));
    let limits = Limits {
        cookie_pending: 0,
        ..Limits::default()
    };
    let server = start_with(limits, Duration::from_secs(5), cfg).await;
    let keys = device_keys();
    let mut conn = device(server.addr, &keys[0]).await.unwrap();
    delivers(&mut conn, 0).await.unwrap();
    let ticket = conn.take_ticket().expect("a ticket with the first record");
    conn.close(Duration::from_secs(5)).await.unwrap();
    let mut dcfg = device_config(&X25519_MLKEM768, AeadId::Aes256Gcm);
    dcfg.identity = Some(keys[0].clone());
    let pin = Pinned(server_key().public().fingerprint());
    let mut resumed = tcp::resume(server.addr, &dcfg, &ticket, &pin, timeouts())
        .await
        .unwrap();
    assert!(resumed.is_resumed());
    delivers(&mut resumed, 1).await.unwrap();
    let stats = server.stop().await;
    assert_eq!((stats.cookies_sent, stats.other_first), (1, 1));
}

#[tokio::test]
async fn a_newer_session_of_one_identity_replaces_its_oldest_at_the_cap() {
    let server = start(Limits {
        sessions_per_device: 1,
        ..Limits::default()
    })
    .await;
    let keys = device_keys();
    let mut old = device(server.addr, &keys[0]).await.unwrap();
    delivers(&mut old, 0).await.unwrap();
    // The same identity again (a device that reconnected, or a stolen key): the newer wins.
    let mut new = device(server.addr, &keys[0]).await.unwrap();
    delivers(&mut new, 1).await.unwrap();
    assert!(old.recv().await.is_err(), "the older session was closed");
    // Another identity is not affected.
    let mut other = device(server.addr, &keys[1]).await.unwrap();
    delivers(&mut other, 0).await.unwrap();
    assert_eq!(server.counters.now(), (0, 2));
    let stats = server.stop().await;
    assert_eq!((stats.sessions, stats.sessions_replaced), (3, 1));
}

#[tokio::test]
async fn a_source_at_its_session_limit_gets_busy_unless_it_is_allowed() {
    let limits = Limits {
        sessions_per_source: 1,
        ..Limits::default()
    };
    let keys = device_keys();
    let server = start(limits.clone()).await;
    let mut first = device(server.addr, &keys[0]).await.unwrap();
    delivers(&mut first, 0).await.unwrap();
    let mut second = device(server.addr, &keys[1]).await.unwrap();
    let refused = delivers(&mut second, 0).await.unwrap_err();
    assert!(
        matches!(
            refused,
            TransportError::Session(SessionError::PeerAlert(AlertCode::Busy))
        ),
        "{refused:?}"
    );
    let stats = server.stop().await;
    assert_eq!((stats.sessions, stats.sessions_refused), (1, 1));
    // A fleet behind one NAT: its address is exempt.
    let allowed = start(Limits {
        exempt: vec!["127.0.0.0/8".parse().unwrap()],
        ..limits
    })
    .await;
    for key in &keys {
        let mut conn = device(allowed.addr, key).await.unwrap();
        delivers(&mut conn, 0).await.unwrap();
    }
    assert_eq!(allowed.stop().await.sessions_refused, 0);
}

#[tokio::test]
async fn dropping_the_running_server_ends_its_sessions_and_pending_handshakes() {
    // `run` spawns its accept loop and tracks the connections' tasks: dropping `run` (here,
    // aborting the task that awaits it) must still end every one of them, not leave them
    // serving without a server.
    let server = start(Limits::default()).await;
    let keys = device_keys();
    let mut conn = device(server.addr, &keys[0]).await.unwrap();
    delivers(&mut conn, 0).await.unwrap();
    let mut pending = from("127.0.0.2", server.addr).await;
    until("the pending connection", || server.counters.now() == (1, 1)).await;
    server.done.abort();
    assert!(closed(&mut pending).await, "the pending handshake ended");
    let ended = tokio::time::timeout(Duration::from_secs(10), conn.recv()).await;
    assert!(
        matches!(ended, Ok(Ok(None) | Err(_))),
        "the session ended: {ended:?}"
    );
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "nothing listens any more"
    );
}
