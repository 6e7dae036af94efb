//! Resumption over real loopback sockets (protocol.md §6.3, §6.4, §7.6): a ticket from a full
//! session resumes; forged, replayed, revoked and expired tickets are refused with a clear
//! error, and a full handshake afterwards works.

mod common;

use common::*;
use secchan::crypto::aead::AeadId;
use secchan::crypto::identity::PublicIdentity;
use secchan::crypto::kem::X25519_MLKEM768;
use secchan::crypto::random::OsRandom;
use secchan::handshake::resume::Ticket;
use secchan::handshake::ticket::{Resumption, TicketRejection};
use secchan::handshake::{Authorizer, HandshakeError, Mode};
use secchan::msgs::AlertCode;
use secchan::transport::tcp::{connect, resume, Connection};
use secchan::transport::TransportError;
use secchan::trust::Pinned;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The test device while `allowed`; then it is dropped from the list.
struct Switchable {
    allowed: AtomicBool,
}

impl Authorizer for Switchable {
    fn authorize(&self, device: Option<&PublicIdentity>) -> Result<String, AlertCode> {
        match device {
            Some(d) if *d == device_key().public() && self.allowed.load(Ordering::SeqCst) => {
                Ok("sensor-1".into())
            }
            _ => Err(AlertCode::UnknownDevice),
        }
    }
}

fn pin() -> Pinned {
    Pinned(server_key().public().fingerprint())
}

struct Server {
    addr: SocketAddr,
    outcomes: tokio::sync::mpsc::Receiver<ServerOutcome>,
    authorizer: Arc<Switchable>,
}

impl Server {
    async fn outcome(&mut self) -> ServerOutcome {
        tokio::time::timeout(Duration::from_secs(10), self.outcomes.recv())
            .await
            .expect("server reported no outcome")
            .expect("server task ended")
    }
}

async fn server(lifetime: Option<Duration>) -> Server {
    let authorizer = Arc::new(Switchable {
        allowed: AtomicBool::new(true),
    });
    let mut cfg = server_config(Mode::Hybrid);
    cfg.authorizer = authorizer.clone();
    cfg.resumption = lifetime
        .map(|l| Arc::new(Resumption::random(l, SystemTime::now(), &mut OsRandom).unwrap()));
    let (addr, outcomes) = start_server(cfg).await;
    Server {
        addr,
        outcomes,
        authorizer,
    }
}

fn config() -> secchan::handshake::device::DeviceConfig {
    device_config(&X25519_MLKEM768, AeadId::Aes256Gcm)
}

/// One echoed message (the server's NewTicket arrives before the echo), a clean close, and
/// the ticket the session left.
async fn use_and_close(mut conn: Connection, s: &mut Server) -> Option<Ticket> {
    conn.send(b"temp=21.5").await.unwrap();
    assert_eq!(&conn.recv().await.unwrap().unwrap()[..], b"echo: temp=21.5");
    let ticket = conn.take_ticket();
    conn.close(Duration::from_secs(5)).await.unwrap();
    assert!(s.outcome().await.end.is_ok());
    ticket
}

async fn full(s: &mut Server) -> Ticket {
    let conn = connect(s.addr, &config(), &pin(), short_timeouts())
        .await
        .unwrap();
    assert!(!conn.is_resumed());
    use_and_close(conn, s).await.expect("a ticket")
}

async fn refused(s: &mut Server, ticket: &Ticket) -> (TransportError, TransportError) {
    let err = resume(s.addr, &config(), ticket, &pin(), short_timeouts())
        .await
        .expect_err("resumption refused");
    let server_side = s.outcome().await.end.expect_err("server refused");
    (err, server_side)
}

#[tokio::test]
async fn a_ticket_from_a_full_session_resumes_and_yields_the_next_ticket() {
    let mut s = server(Some(Duration::from_secs(3600))).await;
    let ticket = full(&mut s).await;
    assert_eq!(ticket.server_identity(), &server_key().public());
    let conn = resume(s.addr, &config(), &ticket, &pin(), short_timeouts())
        .await
        .unwrap();
    assert!(conn.is_resumed());
    assert_eq!(conn.session().peer_identity(), Some(&server_key().public()));
    // ResumeHello 138 + 2 bytes, ResumeServerHello 50 + 2 bytes on the wire.
    let stats = conn.stats();
    assert_eq!((stats.handshake_sent, stats.handshake_received), (140, 52));
    let next = use_and_close(conn, &mut s).await.expect("the next ticket");
    let again = resume(s.addr, &config(), &next, &pin(), short_timeouts())
        .await
        .unwrap();
    assert!(again.is_resumed());
    drop(again);
}

#[tokio::test]
async fn a_forged_ticket_is_refused_and_a_full_handshake_follows() {
    let mut s = server(Some(Duration::from_secs(3600))).await;
    let ticket = full(&mut s).await;
    let mut bytes = ticket.to_bytes().to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let forged = Ticket::from_bytes(&bytes).unwrap();
    let (device, server) = refused(&mut s, &forged).await;
    assert!(
        matches!(
            device,
            TransportError::TicketRefused(AlertCode::TicketRejected)
        ),
        "{device}"
    );
    assert!(device.to_string().contains("full handshake"), "{device}");
    assert!(matches!(
        server,
        TransportError::Handshake(HandshakeError::TicketRejected(TicketRejection::Forged))
    ));
    full(&mut s).await;
}

#[tokio::test]
async fn a_ticket_is_accepted_once() {
    let mut s = server(Some(Duration::from_secs(3600))).await;
    let ticket = full(&mut s).await;
    let conn = resume(s.addr, &config(), &ticket, &pin(), short_timeouts())
        .await
        .unwrap();
    use_and_close(conn, &mut s).await;
    let (device, server) = refused(&mut s, &ticket).await;
    assert!(matches!(
        device,
        TransportError::TicketRefused(AlertCode::TicketRejected)
    ));
    assert!(matches!(
        server,
        TransportError::Handshake(HandshakeError::TicketRejected(TicketRejection::Replayed))
    ));
}

#[tokio::test]
async fn a_device_dropped_from_the_list_cannot_resume_nor_connect() {
    let mut s = server(Some(Duration::from_secs(3600))).await;
    let ticket = full(&mut s).await;
    s.authorizer.allowed.store(false, Ordering::SeqCst);
    let (device, _) = refused(&mut s, &ticket).await;
    assert!(
        matches!(
            device,
            TransportError::TicketRefused(AlertCode::UnknownDevice)
        ),
        "{device}"
    );
    let mut conn = connect(s.addr, &config(), &pin(), short_timeouts())
        .await
        .unwrap();
    assert!(matches!(
        conn.recv().await,
        Err(TransportError::Refused(AlertCode::UnknownDevice))
    ));
}

#[tokio::test]
async fn an_expired_ticket_is_not_sent_and_a_full_handshake_follows() {
    let mut s = server(Some(Duration::from_secs(1))).await;
    let ticket = full(&mut s).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(!ticket.is_valid_at(SystemTime::now()));
    let err = resume(s.addr, &config(), &ticket, &pin(), short_timeouts())
        .await
        .expect_err("expired");
    assert!(
        matches!(
            err,
            TransportError::Handshake(HandshakeError::TicketUnusable(_))
        ),
        "{err}"
    );
    full(&mut s).await;
}

#[tokio::test]
async fn a_server_without_resumption_issues_no_ticket_and_refuses_one() {
    let mut with = server(Some(Duration::from_secs(3600))).await;
    let ticket = full(&mut with).await;
    let mut without = server(None).await;
    let conn = connect(without.addr, &config(), &pin(), short_timeouts())
        .await
        .unwrap();
    assert!(use_and_close(conn, &mut without).await.is_none());
    let (device, _) = refused(&mut without, &ticket).await;
    assert!(matches!(
        device,
        TransportError::TicketRefused(AlertCode::TicketRejected)
    ));
}

#[tokio::test]
async fn a_ticket_for_another_pinned_server_is_not_used() {
    let mut s = server(Some(Duration::from_secs(3600))).await;
    let ticket = full(&mut s).await;
    let other = Pinned(
        secchan::crypto::identity::IdentityKey::from_seed(&[9; 32])
            .public()
            .fingerprint(),
    );
    let err = resume(s.addr, &config(), &ticket, &other, short_timeouts())
        .await
        .expect_err("pin mismatch");
    assert!(matches!(err, TransportError::Trust(_)), "{err}");
}
