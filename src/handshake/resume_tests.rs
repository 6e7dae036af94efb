//! In-memory resumptions: success, and every server and device check's failure
//! (protocol.md §6.3, §6.4).

use super::device::{self, DeviceConfig};
use super::resume::{self, Ticket};
use super::server::{self, FirstReply, PeerDevice, ServerConfig};
use super::tests::exchange;
use super::ticket::{Resumption, TicketKeys, TicketRejection, DEFAULT_LIFETIME};
use super::*;
use crate::crypto::identity::IdentityKey;
use crate::crypto::kem::{X25519_MLKEM768, X25519_ONLY};
use crate::crypto::random::OsRandom;
use crate::session::{Event, Session, SessionError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const DAY: u64 = 86_400;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// Ticket issue time in these tests: period 20,000, 100 s in.
const T0: u64 = 20_000 * DAY + 100;

struct Setup {
    scfg: ServerConfig,
    dcfg: DeviceConfig,
}

fn setup(authorizer: Arc<dyn Authorizer>) -> Setup {
    let device = Arc::new(IdentityKey::from_seed(&[2; 32]));
    let mut scfg = ServerConfig::new(Arc::new(IdentityKey::from_seed(&[1; 32])), authorizer);
    let keys = TicketKeys::from_key(T0 / DAY, &[0x77; 32]);
    scfg.resumption = Some(Arc::new(Resumption::new(keys, DEFAULT_LIFETIME).unwrap()));
    let dcfg = DeviceConfig {
        suite: &X25519_MLKEM768,
        identity: Some(device),
        ..DeviceConfig::default()
    };
    Setup { scfg, dcfg }
}

fn listed() -> Setup {
    let mut list = AuthorizedDevices::new();
    list.insert(
        IdentityKey::from_seed(&[2; 32]).public().fingerprint(),
        "sensor-1".into(),
    );
    setup(Arc::new(list))
}

/// The server issues a ticket in `server` at `wall`; the device receives it.
fn hand_over_ticket(server: &mut Session, device: &mut Session, s: &Setup, wall: u64) -> Ticket {
    let resumption = s.scfg.resumption.as_deref().unwrap();
    server.issue_ticket(resumption, at(wall)).unwrap();
    let mut record = server.poll_transmit().unwrap();
    assert_eq!(record[0], 0x13);
    assert_eq!(record.len(), 3 + 4 + 88 + 16);
    assert_eq!(
        device.handle_frame(&mut record, Instant::now()),
        Ok(Event::Ticket)
    );
    device.take_ticket(at(wall)).unwrap()
}

/// A full handshake at `T0`, then the ticket its server issues.
fn full_then_ticket(s: &Setup) -> Ticket {
    let now = Instant::now();
    let (expect, hello) = device::start(&s.dcfg, &mut OsRandom).unwrap();
    let (ef, sh) = server::accept_hello(&s.scfg, &hello, &mut OsRandom).unwrap();
    let (mut d, finish) = expect.read_server_hello(&sh).unwrap().finish(now).unwrap();
    let (mut srv, _) = ef.read_device_finish(&finish, now).unwrap();
    assert!(!d.is_resumed());
    hand_over_ticket(&mut srv, &mut d, s, T0)
}

fn resume_at(
    s: &Setup,
    ticket: &Ticket,
    wall: u64,
) -> Result<(Session, Session, PeerDevice, [usize; 2]), HandshakeError> {
    let now = Instant::now();
    let (expect, hello) = resume::start(&s.dcfg, ticket, &mut OsRandom)?;
    match server::accept_first(&s.scfg, &hello, &mut OsRandom, now, at(wall))? {
        FirstReply::Resumed(established, reply) => {
            let (session, peer) = *established;
            let device = expect.read_reply(&reply, now)?;
            Ok((device, session, peer, [hello.len(), reply.len()]))
        }
        FirstReply::Full(..) => panic!("a ResumeHello never starts a full handshake"),
    }
}

fn refused(s: &Setup, ticket: &Ticket, wall: u64) -> HandshakeError {
    resume_at(s, ticket, wall).expect_err("resumption refused")
}

#[test]
fn resumption_fits_budget_carries_data_and_chains() {
    let s = listed();
    let ticket = full_then_ticket(&s);
    assert_eq!(ticket.server_identity(), &s.scfg.identity.public());
    let (mut d, mut srv, peer, sizes) = resume_at(&s, &ticket, T0 + 60).unwrap();
    // 138 + 50 frame bytes, 192 on TCP: under the 200-byte budget.
    assert_eq!(sizes, [138, 50]);
    assert!(sizes.iter().sum::<usize>() + 4 <= 200);
    assert!(d.is_resumed() && srv.is_resumed());
    assert_eq!(peer.name, "sensor-1");
    assert_eq!(d.peer_identity(), Some(&s.scfg.identity.public()));
    assert_eq!(srv.suite().name, "X25519MLKEM768");
    exchange(&mut d, &mut srv, b"temp=21.5");
    exchange(&mut srv, &mut d, b"ack");
    // The resumed session issues the next ticket, which resumes again.
    let next = hand_over_ticket(&mut srv, &mut d, &s, T0 + 61);
    let (mut d2, mut s2, _, _) = resume_at(&s, &next, T0 + 120).unwrap();
    exchange(&mut d2, &mut s2, b"again");
}

#[test]
fn forged_ticket_is_refused() {
    let s = listed();
    let ticket = full_then_ticket(&s);
    let mut bytes = ticket.to_bytes().to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 1; // the ticket's last byte (its tag)
    let forged = Ticket::from_bytes(&bytes).unwrap();
    let err = refused(&s, &forged, T0 + 1);
    assert_eq!(err, HandshakeError::TicketRejected(TicketRejection::Forged));
    assert_eq!(err.alert(), Some(AlertCode::TicketRejected));
}

#[test]
fn unknown_key_id_is_refused() {
    let s = listed();
    let ticket = full_then_ticket(&s);
    let mut bytes = ticket.to_bytes().to_vec();
    let first = bytes.len() - 88; // the ticket's key id
    bytes[first] ^= 0x55;
    let err = refused(&s, &Ticket::from_bytes(&bytes).unwrap(), T0 + 1);
    assert!(matches!(
        err,
        HandshakeError::TicketRejected(TicketRejection::UnknownKey(_))
    ));
}

#[test]
fn expiry_and_key_periods_follow_the_time_passed_in() {
    // Issued 100 s into its period: still valid, under the previous period's key, a day later
    // minus a second; expired at its lifetime.
    let s = listed();
    let ticket = full_then_ticket(&s);
    resume_at(&s, &ticket, T0 + DAY - 1).unwrap();
    let s = listed();
    let ticket = full_then_ticket(&s);
    assert_eq!(
        refused(&s, &ticket, T0 + DAY),
        HandshakeError::TicketRejected(TicketRejection::Expired)
    );
    // Two periods later the key itself is gone.
    let s = listed();
    let ticket = full_then_ticket(&s);
    assert!(matches!(
        refused(&s, &ticket, T0 + 2 * DAY),
        HandshakeError::TicketRejected(TicketRejection::UnknownKey(_))
    ));
}

#[test]
fn replayed_resume_hello_is_refused() {
    let s = listed();
    let ticket = full_then_ticket(&s);
    let (_, hello) = resume::start(&s.dcfg, &ticket, &mut OsRandom).unwrap();
    let accept = || server::accept_first(&s.scfg, &hello, &mut OsRandom, Instant::now(), at(T0));
    assert!(matches!(accept(), Ok(FirstReply::Resumed(..))));
    assert_eq!(
        accept().err(),
        Some(HandshakeError::TicketRejected(TicketRejection::Replayed))
    );
    // The same ticket in a fresh hello (new X25519 value, valid binder) is a replay too.
    assert_eq!(
        refused(&s, &ticket, T0),
        HandshakeError::TicketRejected(TicketRejection::Replayed)
    );
}

#[test]
fn wrong_binder_is_refused_and_does_not_burn_the_ticket() {
    let s = listed();
    let ticket = full_then_ticket(&s);
    let (_, mut hello) = resume::start(&s.dcfg, &ticket, &mut OsRandom).unwrap();
    let last = hello.len() - 1;
    hello[last] ^= 1;
    let accept = |h: &[u8]| server::accept_first(&s.scfg, h, &mut OsRandom, Instant::now(), at(T0));
    assert_eq!(
        accept(&hello).err(),
        Some(HandshakeError::TicketRejected(TicketRejection::Binder))
    );
    // Changing the X25519 value breaks the binder too.
    hello[last] ^= 1;
    hello[5] ^= 1;
    assert_eq!(
        accept(&hello).err(),
        Some(HandshakeError::TicketRejected(TicketRejection::Binder))
    );
    resume_at(&s, &ticket, T0).unwrap();
}

/// Refuses every device as revoked.
struct RevokeAll;

impl Authorizer for RevokeAll {
    fn authorize(&self, _: Option<&PublicIdentity>) -> Result<String, AlertCode> {
        Err(AlertCode::Revoked)
    }
}

#[test]
fn revoked_device_is_refused() {
    let mut s = listed();
    let ticket = full_then_ticket(&s);
    s.scfg.authorizer = Arc::new(RevokeAll);
    let err = refused(&s, &ticket, T0 + 1);
    assert_eq!(
        err,
        HandshakeError::DeviceRefused {
            device: IdentityKey::from_seed(&[2; 32]).public().fingerprint(),
            code: AlertCode::Revoked
        }
    );
    assert_eq!(err.alert(), Some(AlertCode::Revoked));
}

#[test]
fn a_suite_or_aead_the_server_no_longer_accepts_is_refused() {
    let mut s = setup(Arc::new(AllowAnyDevice));
    s.scfg.mode = Mode::Any;
    s.dcfg.suite = &X25519_ONLY;
    let ticket = full_then_ticket(&s);
    s.scfg.mode = Mode::Hybrid;
    assert_eq!(
        refused(&s, &ticket, T0 + 1),
        HandshakeError::TicketRejected(TicketRejection::Suite("X25519"))
    );
    s.scfg.mode = Mode::Any;
    s.scfg.aeads = vec![AeadId::ChaCha20Poly1305];
    assert_eq!(
        refused(&s, &ticket, T0 + 1),
        HandshakeError::TicketRejected(TicketRejection::Aead(ticket.aead()))
    );
}

#[test]
fn all_zero_x25519_is_refused() {
    let s = listed();
    let ticket = full_then_ticket(&s);
    // A ticket holder that sends a low-order point: the binder is valid, X25519 fails.
    let bytes = ticket.to_bytes();
    let mut hello =
        crate::msgs::ResumeHello::encode_without_binder(&[0; 32], &bytes[bytes.len() - 88..]);
    let psk = &bytes[76..108];
    let psk = zeroize::Zeroizing::new(<[u8; 32]>::try_from(psk).unwrap());
    hello.extend_from_slice(&super::key_schedule::binder(&psk, &hello));
    assert_eq!(
        server::accept_first(&s.scfg, &hello, &mut OsRandom, Instant::now(), at(T0)).err(),
        Some(HandshakeError::KeyExchange(
            crate::crypto::CryptoError::ZeroSharedSecret
        ))
    );
}

#[test]
fn server_without_resumption_refuses_every_ticket() {
    let mut s = listed();
    let ticket = full_then_ticket(&s);
    s.scfg.resumption = None;
    assert_eq!(
        refused(&s, &ticket, T0),
        HandshakeError::TicketRejected(TicketRejection::NotOffered)
    );
}

#[test]
fn device_refuses_a_wrong_confirmation_and_reports_alerts() {
    let s = listed();
    let ticket = full_then_ticket(&s);
    let (expect, hello) = resume::start(&s.dcfg, &ticket, &mut OsRandom).unwrap();
    let Ok(FirstReply::Resumed(_, mut reply)) =
        server::accept_first(&s.scfg, &hello, &mut OsRandom, Instant::now(), at(T0))
    else {
        panic!("resumption accepted");
    };
    for i in [2, 40, 49] {
        reply[i] ^= 1;
        assert!(
            expect.read_reply(&reply, Instant::now()).is_err(),
            "byte {i}"
        );
        reply[i] ^= 1;
    }
    reply[49] ^= 1;
    assert_eq!(
        expect.read_reply(&reply, Instant::now()).err(),
        Some(HandshakeError::ServerAuthFailed)
    );
    let alert = crate::msgs::encode_alert(AlertCode::TicketRejected);
    assert_eq!(
        expect.read_reply(&alert, Instant::now()).err(),
        Some(HandshakeError::PeerAlert(AlertCode::TicketRejected))
    );
}

#[test]
fn device_uses_a_ticket_only_with_the_configuration_it_came_from() {
    let s = listed();
    let ticket = full_then_ticket(&s);
    let mut other = s.dcfg.clone();
    other.suite = &X25519_ONLY;
    assert!(matches!(
        resume::start(&other, &ticket, &mut OsRandom).err(),
        Some(HandshakeError::TicketUnusable(_))
    ));
    let mut other = s.dcfg.clone();
    other.aeads = vec![AeadId::ChaCha20Poly1305];
    if ticket.aead() != AeadId::ChaCha20Poly1305 {
        assert!(resume::start(&other, &ticket, &mut OsRandom).is_err());
    }
    let mut other = s.dcfg.clone();
    other.identity = Some(Arc::new(IdentityKey::from_seed(&[3; 32])));
    let err = resume::start(&other, &ticket, &mut OsRandom).err().unwrap();
    assert!(matches!(err, HandshakeError::TicketUnusable(_)));
    assert_eq!(err.alert(), None);
}

#[test]
fn tickets_survive_storage_and_hide_their_psk() {
    let s = listed();
    let ticket = full_then_ticket(&s);
    let bytes = ticket.to_bytes();
    assert_eq!(bytes.len(), 109 + 88);
    let back = Ticket::from_bytes(&bytes).unwrap();
    assert_eq!(*back.to_bytes(), *bytes);
    assert_eq!(back.expires(), at(T0 + DAY));
    assert!(back.is_valid_at(at(T0 + DAY - 1)) && !back.is_valid_at(at(T0 + DAY)));
    assert!(Ticket::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    assert!(Ticket::from_bytes(&[&bytes[..], &[0]].concat()).is_err());
    // An expiry past what the clock can hold is a corrupt file, not a panic.
    let mut corrupt = bytes.to_vec();
    corrupt[3..11].copy_from_slice(&[0xff; 8]);
    assert!(Ticket::from_bytes(&corrupt).is_err());
    let debug = format!("{ticket:?}");
    assert!(debug.contains("SHA256:") && !debug.contains(&hex::encode(&bytes[76..108])));
}

#[test]
fn tickets_are_issued_by_servers_once_per_session() {
    let s = listed();
    let now = Instant::now();
    let (expect, hello) = device::start(&s.dcfg, &mut OsRandom).unwrap();
    let (ef, sh) = server::accept_hello(&s.scfg, &hello, &mut OsRandom).unwrap();
    let (mut d, finish) = expect.read_server_hello(&sh).unwrap().finish(now).unwrap();
    let (mut srv, _) = ef.read_device_finish(&finish, now).unwrap();
    let r = s.scfg.resumption.as_deref().unwrap();
    assert_eq!(d.issue_ticket(r, at(T0)), Err(SessionError::NoTicket));
    srv.issue_ticket(r, at(T0)).unwrap();
    assert_eq!(srv.issue_ticket(r, at(T0)), Err(SessionError::NoTicket));
    let mut record = srv.poll_transmit().unwrap();
    assert_eq!(d.handle_frame(&mut record, now), Ok(Event::Ticket));
    assert!(d.take_ticket(at(T0)).is_some());
    assert!(d.take_ticket(at(T0)).is_none(), "taken once");
}
