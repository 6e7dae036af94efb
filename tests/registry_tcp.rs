//! A registry-backed server and devices in one process over loopback: enrollment by key and
//! by token, every token refusal, stolen proofs, revocation and group changes closing live
//! sessions.

use secchan::crypto::identity::{IdentityKey, PublicIdentity};
use secchan::crypto::random::OsRandom;
use secchan::handshake::device::{self, DeviceConfig};
use secchan::handshake::server::{self, ServerConfig};
use secchan::handshake::{
    AuthorizedDevices, HandshakeError, DEVICE_SIGNATURE_CONTEXT, ENROLLMENT_PROOF_CONTEXT,
};
use secchan::msgs::{AlertCode, DeviceAuth};
use secchan::registry::entry::Op;
use secchan::registry::{file, unix_now, EnrollmentToken, Groups, Received, RegistryAuthorizer};
use secchan::session::SessionError;
use secchan::transport::tcp::{connect, Connection, Listener};
use secchan::transport::{Timeouts, TransportError};
use secchan::trust::Pinned;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Guards against a hung test only; no assertion depends on it.
const HANG_GUARD: Duration = Duration::from_secs(60);

fn server_key() -> Arc<IdentityKey> {
    Arc::new(IdentityKey::from_seed(&[0x51; 32]))
}

fn key(n: u8) -> Arc<IdentityKey> {
    Arc::new(IdentityKey::from_seed(&[n; 32]))
}

fn timeouts() -> Timeouts {
    Timeouts {
        handshake: Duration::from_secs(5),
        idle: Duration::from_secs(30),
    }
}

fn registry(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "secchan-registry-tcp-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let path = d.join("fleet.reg");
    file::init(&path, &server_key(), unix_now()).unwrap();
    path
}

fn append(path: &Path, op: Op) {
    file::append(path, &server_key(), unix_now(), |_| Ok(op)).unwrap();
}

fn enroll(path: &Path, device: &IdentityKey, name: &str, group: &str) {
    append(
        path,
        Op::Enroll {
            device: device.public().fingerprint(),
            name: name.into(),
            group: group.into(),
            token: None,
        },
    );
}

/// Issues a token for `group` valid until `expires` (unix seconds).
fn token(path: &Path, group: &str, name: &str, expires: u64) -> EnrollmentToken {
    let t = EnrollmentToken::generate(&mut OsRandom, server_key().public()).unwrap();
    append(
        path,
        Op::Token {
            id: t.id(),
            group: group.into(),
            name: name.into(),
            expires,
        },
    );
    t
}

type Outcome = Result<Received, TransportError>;

/// A registry-backed echo server, run the way `secchan server` runs it: every session's
/// receive goes through the registry, which closes it when the device loses authorization.
async fn start(
    path: &Path,
    groups: Groups,
) -> (SocketAddr, Arc<RegistryAuthorizer>, mpsc::Receiver<Outcome>) {
    // A short poll keeps the test quick; the bound under test is "closed after the change".
    start_polling(path, groups, Duration::from_millis(50)).await
}

async fn start_polling(
    path: &Path,
    groups: Groups,
    poll: Duration,
) -> (SocketAddr, Arc<RegistryAuthorizer>, mpsc::Receiver<Outcome>) {
    let registry = Arc::new(RegistryAuthorizer::open(path, server_key(), groups).unwrap());
    registry.watch(poll);
    let config = ServerConfig::new(server_key(), registry.clone());
    let listener = Listener::bind("127.0.0.1:0", Arc::new(config), timeouts())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(16);
    let reg = registry.clone();
    tokio::spawn(async move {
        while let Ok(incoming) = listener.accept().await {
            let (tx, reg) = (tx.clone(), reg.clone());
            tokio::spawn(async move {
                let outcome = match incoming.handshake().await {
                    Ok((conn, peer)) => serve(conn, peer.identity.unwrap(), &reg).await,
                    Err(e) => Err(e),
                };
                let _ = tx.send(outcome).await;
            });
        }
    });
    (addr, registry, rx)
}

async fn serve(mut conn: Connection, id: PublicIdentity, reg: &RegistryAuthorizer) -> Outcome {
    loop {
        match reg.recv(&mut conn, &id).await? {
            Received::Message(m) => conn.send(&[b"echo: ", &m[..]].concat()).await?,
            end => return Ok(end),
        }
    }
}

fn config(device: &Arc<IdentityKey>, token: Option<EnrollmentToken>) -> DeviceConfig {
    DeviceConfig::default()
        .with_identity(device.clone())
        .with_enrollment(token.map(|t| Arc::new(t.into_key())))
}

/// Connects and exchanges one message; returns the open connection.
async fn session(addr: SocketAddr, cfg: &DeviceConfig) -> Result<Connection, TransportError> {
    let pin = Pinned(server_key().public().fingerprint());
    let mut conn = connect(addr, cfg, &pin, timeouts()).await?;
    conn.send(b"hello").await?;
    match conn.recv().await? {
        Some(reply) => {
            assert_eq!(&reply[..], b"echo: hello");
            Ok(conn)
        }
        None => Err(TransportError::Truncated),
    }
}

async fn next(rx: &mut mpsc::Receiver<Outcome>) -> Outcome {
    tokio::time::timeout(HANG_GUARD, rx.recv())
        .await
        .expect("server reported no outcome")
        .expect("server task ended")
}

/// The device is refused with `code`, and the server reports the same refusal.
async fn assert_refused(
    addr: SocketAddr,
    rx: &mut mpsc::Receiver<Outcome>,
    cfg: &DeviceConfig,
    code: AlertCode,
) {
    let err = session(addr, cfg).await.unwrap_err();
    assert!(
        matches!(err, TransportError::Refused(c) if c == code),
        "device: expected {code:?}, got {err:?}"
    );
    match next(rx).await {
        Err(TransportError::Handshake(HandshakeError::DeviceRefused { device, code: c })) => {
            assert_eq!(c, code);
            assert_eq!(
                device,
                cfg.identity.as_ref().unwrap().public().fingerprint()
            );
        }
        other => panic!("server: expected a refusal with {code:?}, got {other:?}"),
    }
}

async fn close(conn: Connection, rx: &mut mpsc::Receiver<Outcome>) {
    conn.close(Duration::from_secs(5)).await.unwrap();
    assert_eq!(next(rx).await.unwrap(), Received::Closed);
}

#[tokio::test]
async fn enrolled_by_key_connects_unknown_and_anonymous_do_not() {
    let path = registry("by-key");
    let dev = key(1);
    enroll(&path, &dev, "sensor-1", "greenhouse");
    let (addr, _, mut rx) = start(&path, Groups::all()).await;
    let conn = session(addr, &config(&dev, None)).await.unwrap();
    close(conn, &mut rx).await;
    assert_refused(
        addr,
        &mut rx,
        &config(&key(2), None),
        AlertCode::UnknownDevice,
    )
    .await;
    let anonymous = DeviceConfig::default();
    let err = session(addr, &anonymous).await.unwrap_err();
    assert!(
        matches!(err, TransportError::Refused(AlertCode::DeviceAuthRequired)),
        "{err:?}"
    );
}

#[tokio::test]
async fn token_enrolls_once_and_is_then_refused_to_others() {
    let path = registry("token");
    let t = token(&path, "greenhouse", "sensor-9", unix_now() + 3600);
    let text = t.to_text();
    let (addr, registry, mut rx) = start(&path, Groups::all()).await;
    let dev = key(1);
    let conn = session(addr, &config(&dev, Some(t))).await.unwrap();
    close(conn, &mut rx).await;
    // Recorded in the registry: enrolled in the token's group with its name, token used.
    let v = file::load(&path, Some(&server_key().public())).unwrap();
    let d = v.fleet.device(&dev.public().fingerprint()).unwrap();
    assert_eq!(
        (d.name.as_str(), d.group.as_str(), d.by_token),
        ("sensor-9", "greenhouse", true)
    );
    assert_eq!(registry.check(&dev.public()).unwrap(), "sensor-9");
    // The same device again, token and all: accepted by its key, nothing more is recorded.
    let again = EnrollmentToken::parse(&text).unwrap();
    let conn = session(addr, &config(&dev, Some(again))).await.unwrap();
    close(conn, &mut rx).await;
    assert_eq!(
        file::load(&path, None).unwrap().entries.len(),
        v.entries.len()
    );
    // Another device with the used token: refused.
    let reuse = EnrollmentToken::parse(&text).unwrap();
    assert_refused(
        addr,
        &mut rx,
        &config(&key(2), Some(reuse)),
        AlertCode::TokenUsed,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_racing_for_one_token_cannot_both_enroll() {
    let path = registry("token-race");
    let text = token(&path, "greenhouse", "winner", unix_now() + 3600).to_text();
    let (addr, _, _rx) = start(&path, Groups::all()).await;
    let racers: Vec<_> = (1..=4u8)
        .map(|n| {
            let t = EnrollmentToken::parse(&text).unwrap();
            let cfg = config(&key(n), Some(t));
            tokio::spawn(async move { session(addr, &cfg).await.map(|_| ()) })
        })
        .collect();
    let mut won = 0;
    for r in racers {
        match r.await.unwrap() {
            Ok(()) => won += 1,
            Err(TransportError::Refused(AlertCode::TokenUsed)) => {}
            Err(e) => panic!("unexpected outcome {e:?}"),
        }
    }
    assert_eq!(won, 1);
    let v = file::load(&path, Some(&server_key().public())).unwrap();
    assert_eq!(v.fleet.devices().count(), 1);
}

#[tokio::test]
async fn expired_foreign_group_and_unknown_tokens_are_refused() {
    let path = registry("token-refusals");
    let expired = token(&path, "greenhouse", "late", unix_now() - 60);
    let other_group = token(&path, "ward", "patch", unix_now() + 3600);
    let (addr, _, mut rx) = start(&path, Groups::only(["greenhouse".to_string()])).await;
    assert_refused(
        addr,
        &mut rx,
        &config(&key(1), Some(expired)),
        AlertCode::TokenExpired,
    )
    .await;
    assert_refused(
        addr,
        &mut rx,
        &config(&key(2), Some(other_group)),
        AlertCode::WrongGroup,
    )
    .await;
    // A token this registry never issued (e.g. from another server's registry).
    let stranger = EnrollmentToken::generate(&mut OsRandom, server_key().public()).unwrap();
    assert_refused(
        addr,
        &mut rx,
        &config(&key(3), Some(stranger)),
        AlertCode::EnrollmentRefused,
    )
    .await;
    // None of the refused devices was enrolled.
    assert_eq!(file::load(&path, None).unwrap().fleet.devices().count(), 0);
}

#[tokio::test]
async fn revoked_and_wrong_group_devices_are_refused() {
    let path = registry("revoked");
    let (a, b) = (key(1), key(2));
    enroll(&path, &a, "a", "greenhouse");
    enroll(&path, &b, "b", "ward");
    append(
        &path,
        Op::Revoke {
            device: a.public().fingerprint(),
        },
    );
    let (addr, _, mut rx) = start(&path, Groups::only(["greenhouse".to_string()])).await;
    assert_refused(addr, &mut rx, &config(&a, None), AlertCode::Revoked).await;
    assert_refused(addr, &mut rx, &config(&b, None), AlertCode::WrongGroup).await;
    // A revoked device cannot come back with a token either.
    let t = token(&path, "greenhouse", "again", unix_now() + 3600);
    assert_refused(addr, &mut rx, &config(&a, Some(t)), AlertCode::Revoked).await;
}

#[tokio::test]
async fn revocation_refuses_the_next_handshake_without_waiting_for_the_poll() {
    let path = registry("revoke-now");
    let dev = key(1);
    enroll(&path, &dev, "sensor-1", "greenhouse");
    let hour = Duration::from_secs(3600);
    let (addr, _, mut rx) = start_polling(&path, Groups::all(), hour).await;
    let conn = session(addr, &config(&dev, None)).await.unwrap();
    close(conn, &mut rx).await;
    append(
        &path,
        Op::Revoke {
            device: dev.public().fingerprint(),
        },
    );
    assert_refused(addr, &mut rx, &config(&dev, None), AlertCode::Revoked).await;
}

/// A device in `group` has an open session with a server serving `groups`; the operator
/// appends `change(device)` from another process; the session is closed with `code`.
async fn assert_live_session_closed(
    name: &str,
    groups: Groups,
    change: impl FnOnce(String) -> Op,
    code: AlertCode,
) {
    let path = registry(name);
    let dev = key(1);
    enroll(&path, &dev, "sensor-1", "greenhouse");
    let (addr, _, mut rx) = start(&path, groups).await;
    let mut conn = session(addr, &config(&dev, None)).await.unwrap();
    append(&path, change(dev.public().fingerprint()));
    let err = tokio::time::timeout(HANG_GUARD, conn.recv())
        .await
        .expect("session was not closed")
        .unwrap_err();
    assert!(
        matches!(err, TransportError::Session(SessionError::PeerAlert(c)) if c == code),
        "{err:?}"
    );
    assert_eq!(next(&mut rx).await.unwrap(), Received::Refused(code));
    // And it cannot come back.
    assert_refused(addr, &mut rx, &config(&dev, None), code).await;
}

#[tokio::test]
async fn revocation_closes_a_live_session() {
    let revoke = |device| Op::Revoke { device };
    assert_live_session_closed("live-revoke", Groups::all(), revoke, AlertCode::Revoked).await;
}

#[tokio::test]
async fn moving_a_device_out_of_the_served_groups_closes_its_session() {
    let regroup = |device| Op::Regroup {
        device,
        group: "ward".into(),
    };
    let greenhouse = Groups::only(["greenhouse".to_string()]);
    assert_live_session_closed("live-regroup", greenhouse, regroup, AlertCode::WrongGroup).await;
}

/// Runs the device side of one handshake up to TH2 against `scfg`, finishing with the auth
/// `build(th2)` returns; returns the server's verdict.
fn handshake_with(
    scfg: &ServerConfig,
    build: impl FnOnce(&[u8; 32]) -> DeviceAuth,
) -> Result<String, HandshakeError> {
    let (expect, hello) = device::start(&DeviceConfig::default(), &mut OsRandom)?;
    let (expect_finish, reply) = server::accept_hello(scfg, &hello, &mut OsRandom)?;
    let authed = expect.read_server_hello(&reply)?;
    let th2 = authed.transcript_hash();
    let auth = build(&th2);
    let (_, finish) = authed.finish_with(&auth, Instant::now())?;
    let (_, peer) = expect_finish.read_device_finish(&finish, Instant::now())?;
    Ok(peer.name)
}

/// A correct enrollment of `device` with `token` over `th2`.
fn enrollment(device: &IdentityKey, token: &IdentityKey, th2: &[u8; 32]) -> DeviceAuth {
    let public = device.public().0;
    DeviceAuth::Enroll {
        public,
        signature: device.sign(DEVICE_SIGNATURE_CONTEXT, th2),
        token: token.public().0,
        proof: token.sign(ENROLLMENT_PROOF_CONTEXT, &[&th2[..], &public].concat()),
    }
}

#[test]
fn authorizers_without_enrollment_treat_a_token_as_absent() {
    let (listed, stranger, token) = (key(1), key(2), key(3));
    let mut list = AuthorizedDevices::new();
    list.insert(listed.public().fingerprint(), "listed".into());
    let scfg = ServerConfig::new(server_key(), Arc::new(list));
    let name = handshake_with(&scfg, |th2| enrollment(&listed, &token, th2)).unwrap();
    assert_eq!(name, "listed");
    let err = handshake_with(&scfg, |th2| enrollment(&stranger, &token, th2)).unwrap_err();
    assert!(
        matches!(
            err,
            HandshakeError::DeviceRefused {
                code: AlertCode::UnknownDevice,
                ..
            }
        ),
        "{err:?}"
    );
    // A token without a device identity is a configuration error, caught before any I/O.
    let cfg = DeviceConfig::default().with_enrollment(token);
    assert_eq!(
        device::start(&cfg, &mut OsRandom).err(),
        Some(HandshakeError::EnrollmentWithoutIdentity)
    );
}

#[tokio::test]
async fn revoking_or_refusing_one_device_leaves_other_sessions_alone() {
    let path = registry("bystander");
    let (a, b) = (key(1), key(2));
    enroll(&path, &a, "a", "greenhouse");
    enroll(&path, &b, "b", "greenhouse");
    let (addr, _, mut rx) = start(&path, Groups::all()).await;
    let mut conn_a = session(addr, &config(&a, None)).await.unwrap();
    let mut conn_b = session(addr, &config(&b, None)).await.unwrap();
    // A stranger is refused while both sessions are open...
    assert_refused(
        addr,
        &mut rx,
        &config(&key(3), None),
        AlertCode::UnknownDevice,
    )
    .await;
    // ...and device a is revoked: its session is closed.
    append(
        &path,
        Op::Revoke {
            device: a.public().fingerprint(),
        },
    );
    let err = tokio::time::timeout(HANG_GUARD, conn_a.recv())
        .await
        .expect("session was not closed")
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Session(SessionError::PeerAlert(AlertCode::Revoked))
        ),
        "{err:?}"
    );
    assert_eq!(
        next(&mut rx).await.unwrap(),
        Received::Refused(AlertCode::Revoked)
    );
    // Device b's session, open all along, still carries messages.
    conn_b.send(b"still here").await.unwrap();
    assert_eq!(
        &conn_b.recv().await.unwrap().unwrap()[..],
        b"echo: still here"
    );
    close(conn_b, &mut rx).await;
}

async fn write_raw(stream: &mut tokio::net::TcpStream, frame: &[u8]) {
    use tokio::io::AsyncWriteExt;
    let len = u16::try_from(frame.len()).unwrap().to_be_bytes();
    stream.write_all(&[&len[..], frame].concat()).await.unwrap();
}

async fn read_raw(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.unwrap();
    let mut frame = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut frame).await.unwrap();
    frame
}

/// A device driven by hand over a loopback socket, as an attacker would: the handshake up
/// to TH2, then the DeviceFinish `build` returns (`None`: hang up instead). Returns the
/// server's answer, if the DeviceFinish was sent.
async fn raw_handshake(
    addr: SocketAddr,
    build: impl FnOnce(&[u8; 32]) -> Option<DeviceAuth>,
) -> Option<AlertCode> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (expect, hello) = device::start(&DeviceConfig::default(), &mut OsRandom).unwrap();
    write_raw(&mut stream, &hello).await;
    let reply = read_raw(&mut stream).await;
    let authed = expect.read_server_hello(&reply).unwrap();
    let auth = build(&authed.transcript_hash())?;
    let (_, finish) = authed.finish_with(&auth, Instant::now()).unwrap();
    write_raw(&mut stream, &finish).await;
    let answer = tokio::time::timeout(HANG_GUARD, read_raw(&mut stream))
        .await
        .expect("no answer");
    Some(secchan::msgs::decode_alert(&answer).unwrap())
}

#[tokio::test]
async fn a_stolen_proof_is_refused_over_tcp() {
    let path = registry("stolen-tcp");
    let t = token(&path, "greenhouse", "victim", unix_now() + 3600);
    let text = t.to_text();
    let token_key = t.into_key();
    let (addr, _, mut rx) = start(&path, Groups::all()).await;
    let (victim, attacker) = (key(1), key(2));

    // Handshake A: the victim's authentication is made, then the connection drops before
    // it is sent, so the token stays unused (the attacker's best case).
    let mut captured = None;
    let sent = raw_handshake(addr, |th2| {
        captured = Some(enrollment(&victim, &token_key, th2));
        None
    })
    .await;
    assert_eq!(sent, None);
    assert!(next(&mut rx).await.is_err());
    let Some(DeviceAuth::Enroll {
        public,
        signature,
        token,
        proof,
    }) = captured
    else {
        panic!("nothing captured")
    };

    // Handshake B with the attacker's key and the captured proof.
    let answer = raw_handshake(addr, |th2| {
        Some(DeviceAuth::Enroll {
            public: attacker.public().0,
            signature: attacker.sign(DEVICE_SIGNATURE_CONTEXT, th2),
            token,
            proof,
        })
    })
    .await;
    assert_eq!(answer, Some(AlertCode::EnrollmentRefused));
    match next(&mut rx).await {
        Err(TransportError::Handshake(HandshakeError::EnrollmentProofFailed { device })) => {
            assert_eq!(device, attacker.public().fingerprint());
        }
        other => panic!("server: {other:?}"),
    }
    // Handshake C replaying the victim's whole authentication.
    let answer = raw_handshake(addr, |_| {
        Some(DeviceAuth::Enroll {
            public,
            signature,
            token,
            proof,
        })
    })
    .await;
    assert_eq!(answer, Some(AlertCode::HandshakeFailure));
    assert!(matches!(
        next(&mut rx).await,
        Err(TransportError::Handshake(HandshakeError::DeviceAuthFailed))
    ));

    // Nothing was enrolled; the victim still enrolls with its token.
    assert_eq!(file::load(&path, None).unwrap().fleet.devices().count(), 0);
    let token = EnrollmentToken::parse(&text).unwrap();
    let conn = session(addr, &config(&victim, Some(token))).await.unwrap();
    close(conn, &mut rx).await;
    let v = file::load(&path, None).unwrap();
    assert_eq!(
        v.fleet.device(&victim.public().fingerprint()).unwrap().name,
        "victim"
    );
}
