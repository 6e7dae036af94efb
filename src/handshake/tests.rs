//! In-memory handshakes: every step's success and every check's failure.

use super::device::{self, DeviceConfig};
use super::server::{self, ServerConfig};
use super::*;
use crate::crypto::identity::IdentityKey;
#[cfg(feature = "kyber-r3")]
use crate::crypto::kem::X25519_KYBER768R3;
use crate::crypto::kem::{X25519_MLKEM768, X25519_ONLY};
use crate::crypto::random::OsRandom;
use crate::msgs::{DeviceAuth, DeviceHello, FrameType};
use crate::session::{Event, Session, SessionError};
use std::sync::Arc;
use std::time::Instant;

fn server_config(mode: Mode) -> (ServerConfig, Arc<IdentityKey>) {
    let device = Arc::new(IdentityKey::from_seed(&[2; 32]));
    let mut list = AuthorizedDevices::new();
    list.insert(device.public().fingerprint(), "sensor-1".into());
    let mut cfg = ServerConfig::new(Arc::new(IdentityKey::from_seed(&[1; 32])), Arc::new(list));
    cfg.mode = mode;
    (cfg, device)
}

fn device_config(suite: &'static Suite, identity: Option<Arc<IdentityKey>>) -> DeviceConfig {
    DeviceConfig {
        suite,
        identity,
        ..DeviceConfig::default()
    }
}

/// Runs a full handshake; returns both sessions and the bytes each side sent.
fn handshake(
    dcfg: &DeviceConfig,
    scfg: &ServerConfig,
) -> Result<(Session, Session, [usize; 3]), HandshakeError> {
    let now = Instant::now();
    let (expect, hello) = device::start(dcfg, &mut OsRandom)?;
    let (expect_finish, server_hello) = server::accept_hello(scfg, &hello, &mut OsRandom)?;
    let authed = expect.read_server_hello(&server_hello)?;
    assert_eq!(*authed.server_identity(), scfg.identity.public());
    let (dsession, finish) = authed.finish(now)?;
    let (ssession, peer) = expect_finish.read_device_finish(&finish, now)?;
    assert_eq!(peer.identity, dcfg.identity.as_ref().map(|i| i.public()));
    Ok((
        dsession,
        ssession,
        [hello.len(), server_hello.len(), finish.len()],
    ))
}

pub(super) fn exchange(a: &mut Session, b: &mut Session, msg: &[u8]) {
    let now = Instant::now();
    a.send(msg, now).unwrap();
    let mut frame = a.poll_transmit().unwrap();
    assert_eq!(
        b.handle_frame(&mut frame, now).unwrap(),
        Event::Message(msg)
    );
}

#[test]
fn hybrid_mutual_handshake_fits_budget_and_carries_data_both_ways() {
    for aead in [AeadId::Aes256Gcm, AeadId::ChaCha20Poly1305] {
        let (scfg, dev) = server_config(Mode::Hybrid);
        let mut dcfg = device_config(&X25519_MLKEM768, Some(dev));
        dcfg.aeads = vec![aead];
        let (mut d, mut s, sizes) = handshake(&dcfg, &scfg).unwrap();
        assert_eq!(sizes, [1220 + dcfg.aeads.len(), 1236, 114]);
        // Each TCP frame adds a 2-byte length: 2,578 bytes in all, under 2,600.
        assert!(sizes.iter().sum::<usize>() + 6 <= 2600);
        assert_eq!(d.aead(), aead);
        assert_eq!(s.suite().name, "X25519MLKEM768");
        exchange(&mut d, &mut s, b"temp=21.5");
        exchange(&mut s, &mut d, b"ack");
    }
}

#[test]
fn classical_handshake_fits_budget() {
    let (scfg, dev) = server_config(Mode::Classical);
    let (mut d, mut s, sizes) = handshake(&device_config(&X25519_ONLY, Some(dev)), &scfg).unwrap();
    assert_eq!(sizes, [38, 148, 114]);
    assert!(sizes.iter().sum::<usize>() + 6 <= 400);
    exchange(&mut d, &mut s, b"x");
}

#[cfg(feature = "kyber-r3")]
#[test]
fn kyber_round3_suite_works_only_with_a_server_in_any_mode() {
    let (scfg, dev) = server_config(Mode::Any);
    let (mut d, mut s, _) =
        handshake(&device_config(&X25519_KYBER768R3, Some(dev.clone())), &scfg).unwrap();
    exchange(&mut d, &mut s, b"kyber");
    for mode in [Mode::Hybrid, Mode::Classical] {
        let (scfg, _) = server_config(mode);
        assert_eq!(
            handshake(&device_config(&X25519_KYBER768R3, Some(dev.clone())), &scfg).err(),
            Some(HandshakeError::SuiteRefused {
                suite: "X25519Kyber768R3",
                mode
            })
        );
    }
}

#[test]
fn hybrid_server_refuses_classical_device() {
    let (scfg, dev) = server_config(Mode::Hybrid);
    let err = handshake(&device_config(&X25519_ONLY, Some(dev)), &scfg).unwrap_err();
    assert_eq!(
        err,
        HandshakeError::SuiteRefused {
            suite: "X25519",
            mode: Mode::Hybrid
        }
    );
    assert_eq!(err.alert(), Some(AlertCode::SuiteRefused));
}

#[test]
fn any_mode_accepts_both() {
    let (scfg, dev) = server_config(Mode::Any);
    handshake(&device_config(&X25519_ONLY, Some(dev.clone())), &scfg).unwrap();
    handshake(&device_config(&X25519_MLKEM768, Some(dev)), &scfg).unwrap();
}

#[test]
fn man_in_the_middle_downgrade_to_classical_is_detected() {
    // The attacker replaces the device's hybrid hello with a classical one built from the
    // same X25519 value; the server (mode any) answers classically.
    let (scfg, dev) = server_config(Mode::Any);
    let dcfg = device_config(&X25519_MLKEM768, Some(dev));
    let (expect, hello) = device::start(&dcfg, &mut OsRandom).unwrap();
    let parsed = DeviceHello::decode(&hello).unwrap();
    let forged = DeviceHello {
        suite: &X25519_ONLY,
        aeads: parsed.aeads.clone(),
        x25519: parsed.x25519,
        encaps_key: &[],
    }
    .encode();
    let (_, server_hello) = server::accept_hello(&scfg, &forged, &mut OsRandom).unwrap();
    assert!(matches!(
        expect.read_server_hello(&server_hello),
        Err(HandshakeError::Downgrade { .. })
    ));
}

#[test]
fn man_in_the_middle_aead_downgrade_is_detected() {
    // The attacker strips AES-256-GCM from the offer; the server's signature covers the
    // hello it saw, so the device's transcript disagrees.
    let (scfg, dev) = server_config(Mode::Hybrid);
    let mut dcfg = device_config(&X25519_MLKEM768, Some(dev));
    dcfg.aeads = vec![AeadId::Aes256Gcm, AeadId::ChaCha20Poly1305];
    let (expect, mut hello) = device::start(&dcfg, &mut OsRandom).unwrap();
    hello[3] = 1;
    hello.remove(4);
    let (_, server_hello) = server::accept_hello(&scfg, &hello, &mut OsRandom).unwrap();
    assert_eq!(
        expect.read_server_hello(&server_hello).err(),
        Some(HandshakeError::ServerAuthFailed)
    );
}

#[test]
fn tampered_server_hello_fails_server_authentication() {
    let (scfg, dev) = server_config(Mode::Hybrid);
    let dcfg = device_config(&X25519_MLKEM768, Some(dev));
    for index in [10, 500, 1200, 1230] {
        let (expect, hello) = device::start(&dcfg, &mut OsRandom).unwrap();
        let (_, mut server_hello) = server::accept_hello(&scfg, &hello, &mut OsRandom).unwrap();
        server_hello[index] ^= 0x40;
        assert_eq!(
            expect.read_server_hello(&server_hello).err(),
            Some(HandshakeError::ServerAuthFailed),
            "flipping byte {index}"
        );
    }
}

#[test]
fn impostor_server_with_own_key_is_reported_by_identity() {
    // A man in the middle that completes the handshake with its own identity key passes the
    // cryptographic checks; the device sees a different identity and must refuse it (the
    // transport compares it with the pin or known-servers entry).
    let (scfg, dev) = server_config(Mode::Hybrid);
    let mut impostor = scfg.clone();
    impostor.identity = Arc::new(IdentityKey::from_seed(&[66; 32]));
    let (expect, hello) =
        device::start(&device_config(&X25519_MLKEM768, Some(dev)), &mut OsRandom).unwrap();
    let (_, sh) = server::accept_hello(&impostor, &hello, &mut OsRandom).unwrap();
    let authed = expect.read_server_hello(&sh).unwrap();
    assert_ne!(*authed.server_identity(), scfg.identity.public());
}

#[test]
fn unknown_and_anonymous_devices_are_refused() {
    let (scfg, _) = server_config(Mode::Hybrid);
    let stranger = Arc::new(IdentityKey::from_seed(&[9; 32]));
    let err = handshake(
        &device_config(&X25519_MLKEM768, Some(stranger.clone())),
        &scfg,
    )
    .unwrap_err();
    assert_eq!(
        err,
        HandshakeError::DeviceRefused {
            device: stranger.public().fingerprint(),
            code: AlertCode::UnknownDevice
        }
    );
    let err = handshake(&device_config(&X25519_MLKEM768, None), &scfg).unwrap_err();
    assert_eq!(err.alert(), Some(AlertCode::DeviceAuthRequired));
}

#[test]
fn allow_any_device_accepts_anonymous() {
    let (mut scfg, _) = server_config(Mode::Hybrid);
    scfg.authorizer = Arc::new(AllowAnyDevice);
    let (mut d, mut s, sizes) = handshake(&device_config(&X25519_MLKEM768, None), &scfg).unwrap();
    // Padded to an identified device's length (protocol.md §4.3).
    assert_eq!(sizes[2], 114);
    exchange(&mut d, &mut s, b"anon");
}

#[test]
fn tampered_device_finish_fails_device_authentication() {
    let (scfg, dev) = server_config(Mode::Hybrid);
    let dcfg = device_config(&X25519_MLKEM768, Some(dev));
    let (expect, hello) = device::start(&dcfg, &mut OsRandom).unwrap();
    let (ef, sh) = server::accept_hello(&scfg, &hello, &mut OsRandom).unwrap();
    let (_, mut finish) = expect
        .read_server_hello(&sh)
        .unwrap()
        .finish(Instant::now())
        .unwrap();
    finish[20] ^= 1;
    assert_eq!(
        ef.read_device_finish(&finish, Instant::now()).err(),
        Some(HandshakeError::DeviceAuthFailed)
    );
}

#[test]
fn garbage_instead_of_hello_is_a_decode_error() {
    let (scfg, _) = server_config(Mode::Hybrid);
    for garbage in [
        &b""[..],
        b"GET / HTTP/1.1\r\n",
        &[0x01, 0x01],
        &[0x01; 3000],
    ] {
        let err = server::accept_hello(&scfg, garbage, &mut OsRandom)
            .err()
            .unwrap();
        assert!(
            matches!(
                err,
                HandshakeError::Decode(_) | HandshakeError::UnexpectedMessage(_)
            ),
            "{err:?}"
        );
        assert!(err.alert().is_some());
    }
}

#[test]
fn invalid_mlkem_key_is_refused() {
    let (scfg, dev) = server_config(Mode::Hybrid);
    let (_, mut hello) =
        device::start(&device_config(&X25519_MLKEM768, Some(dev)), &mut OsRandom).unwrap();
    // First coefficient of the encapsulation key (after the 38-byte header) set to 4095.
    hello[38] = 0xff;
    hello[39] |= 0x0f;
    assert_eq!(
        server::accept_hello(&scfg, &hello, &mut OsRandom).err(),
        Some(HandshakeError::KeyExchange(
            crate::crypto::CryptoError::InvalidEncapsulationKey
        ))
    );
}

#[test]
fn low_order_x25519_value_is_refused() {
    let (scfg, dev) = server_config(Mode::Hybrid);
    let (_, mut hello) =
        device::start(&device_config(&X25519_MLKEM768, Some(dev)), &mut OsRandom).unwrap();
    hello[6..38].fill(0);
    assert_eq!(
        server::accept_hello(&scfg, &hello, &mut OsRandom).err(),
        Some(HandshakeError::KeyExchange(
            crate::crypto::CryptoError::ZeroSharedSecret
        ))
    );
}

#[test]
fn x25519_is_checked_before_the_kem_key() {
    // protocol.md §6.2 steps 4 and 5: a hello failing both checks reports the first.
    let (scfg, dev) = server_config(Mode::Hybrid);
    let (_, mut hello) =
        device::start(&device_config(&X25519_MLKEM768, Some(dev)), &mut OsRandom).unwrap();
    hello[6..38].fill(0);
    hello[38] = 0xff;
    hello[39] |= 0x0f;
    assert_eq!(
        server::accept_hello(&scfg, &hello, &mut OsRandom).err(),
        Some(HandshakeError::KeyExchange(
            crate::crypto::CryptoError::ZeroSharedSecret
        ))
    );
}

#[test]
fn device_offering_no_aead_or_too_many_is_a_local_error() {
    let (_, dev) = server_config(Mode::Hybrid);
    for n in [0, crate::msgs::MAX_AEAD_OFFERS + 1] {
        let mut dcfg = device_config(&X25519_MLKEM768, Some(dev.clone()));
        dcfg.aeads = vec![AeadId::Aes256Gcm; n];
        let err = device::start(&dcfg, &mut OsRandom).err();
        assert_eq!(err, Some(HandshakeError::AeadOfferCount(n)));
        assert_eq!(err.and_then(|e| e.alert()), None);
    }
}

#[test]
fn no_common_aead_is_refused() {
    let (mut scfg, dev) = server_config(Mode::Hybrid);
    scfg.aeads = vec![AeadId::Aes256Gcm];
    let mut dcfg = device_config(&X25519_MLKEM768, Some(dev));
    dcfg.aeads = vec![AeadId::ChaCha20Poly1305];
    assert_eq!(
        handshake(&dcfg, &scfg).err(),
        Some(HandshakeError::NoCommonAead)
    );
}

#[test]
fn server_alert_reaches_device_as_peer_alert() {
    let (_, dev) = server_config(Mode::Hybrid);
    let (expect, _) =
        device::start(&device_config(&X25519_MLKEM768, Some(dev)), &mut OsRandom).unwrap();
    let alert = crate::msgs::encode_alert(AlertCode::SuiteRefused);
    assert_eq!(
        expect.read_server_hello(&alert).err(),
        Some(HandshakeError::PeerAlert(AlertCode::SuiteRefused))
    );
}

#[test]
fn close_notify_and_error_close_are_distinguished() {
    let (scfg, dev) = server_config(Mode::Hybrid);
    let (mut d, mut s, _) = handshake(&device_config(&X25519_MLKEM768, Some(dev)), &scfg).unwrap();
    let now = Instant::now();
    d.close(AlertCode::CloseNotify);
    let mut f = d.poll_transmit().unwrap();
    assert_eq!(s.handle_frame(&mut f, now).unwrap(), Event::Closed);
    s.close(AlertCode::CloseNotify);
    let mut f = s.poll_transmit().unwrap();
    assert_eq!(d.handle_frame(&mut f, now).unwrap(), Event::Closed);
    assert!(d.is_closed() && s.is_closed());
    assert_eq!(d.end(), Some(Ok(())));
    assert_eq!(s.end(), Some(Ok(())));
    assert_eq!(d.send(b"late", now), Err(SessionError::Closed));

    // An error close ends the session on both sides with that error, unanswered.
    let (scfg, dev) = server_config(Mode::Hybrid);
    let (mut d, mut s, _) = handshake(&device_config(&X25519_MLKEM768, Some(dev)), &scfg).unwrap();
    s.close(AlertCode::Revoked);
    let mut f = s.poll_transmit().unwrap();
    assert_eq!(
        d.handle_frame(&mut f, now),
        Err(SessionError::PeerAlert(AlertCode::Revoked))
    );
    assert!(
        d.poll_transmit().is_none(),
        "an error close is not answered"
    );
    assert_eq!(
        d.end(),
        Some(Err(SessionError::PeerAlert(AlertCode::Revoked)))
    );
    assert_eq!(s.end(), Some(Err(SessionError::Closed)));
}

#[test]
fn a_failed_session_reports_its_error_on_every_later_call() {
    let (scfg, dev) = server_config(Mode::Hybrid);
    let (mut d, mut s, _) = handshake(&device_config(&X25519_MLKEM768, Some(dev)), &scfg).unwrap();
    let now = Instant::now();
    d.send(b"x", now).unwrap();
    let mut forged = d.poll_transmit().unwrap();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let bad_tag = SessionError::Record(crate::record::RecordError::BadTag(0));
    assert_eq!(s.handle_frame(&mut forged, now), Err(bad_tag.clone()));
    // Never an orderly end: the error comes back for any later frame, send or key update.
    assert_eq!(s.end(), Some(Err(bad_tag.clone())));
    d.send(b"y", now).unwrap();
    let mut next = d.poll_transmit().unwrap();
    assert_eq!(s.handle_frame(&mut next, now), Err(bad_tag.clone()));
    assert_eq!(s.send(b"z", now), Err(bad_tag.clone()));
    assert_eq!(s.update_keys(now), Err(bad_tag));
}

#[test]
fn no_key_update_after_our_close() {
    let (scfg, dev) = server_config(Mode::Hybrid);
    let (mut d, _s, _) = handshake(&device_config(&X25519_MLKEM768, Some(dev)), &scfg).unwrap();
    let now = Instant::now();
    d.close(AlertCode::CloseNotify);
    assert!(d.poll_transmit().is_some());
    assert_eq!(d.update_keys(now), Err(SessionError::Closed));
    assert!(d.poll_transmit().is_none(), "nothing may follow our Close");
}

#[test]
fn malformed_alert_is_a_decode_error_and_an_unknown_code_reads_as_internal_error() {
    // protocol.md §7.3 "A malformed Alert" and §8.2.
    let (expect, _) = device::start(&device_config(&X25519_ONLY, None), &mut OsRandom).unwrap();
    let mut alert = crate::msgs::encode_alert(AlertCode::SuiteRefused);
    alert.push(0);
    let err = expect.read_server_hello(&alert).err().unwrap();
    assert_eq!(err.alert(), Some(AlertCode::DecodeError));
    let old = [FrameType::Alert as u8, 0x02, AlertCode::SuiteRefused as u8];
    let err = expect.read_server_hello(&old).err().unwrap();
    assert_eq!(err.alert(), Some(AlertCode::UnsupportedVersion));
    let unknown = [FrameType::Alert as u8, crate::msgs::VERSION, 0xee];
    assert_eq!(
        expect.read_server_hello(&unknown).err(),
        Some(HandshakeError::PeerAlert(AlertCode::InternalError))
    );
}

/// A token-kind DeviceFinish at a server without a registry (protocol.md §4.3 "Enrollment"):
/// the proof is checked, then the device is authorized as a kind 0x01 device would be.
#[test]
fn enrollment_without_a_registry_is_authorized_like_an_identified_device() {
    let (listed, dev) = server_config(Mode::Classical);
    let mut dcfg = device_config(&X25519_ONLY, Some(dev));
    dcfg.enrollment = Some(Arc::new(IdentityKey::from_seed(&[7; 32])));
    let mut any = listed.clone();
    any.authorizer = Arc::new(AllowAnyDevice);
    let mut empty = listed.clone();
    empty.authorizer = Arc::new(AuthorizedDevices::new());
    let (_, _, sizes) = handshake(&dcfg, &listed).unwrap();
    assert_eq!(sizes[2], 210);
    handshake(&dcfg, &any).unwrap();
    let err = handshake(&dcfg, &empty).unwrap_err();
    assert_eq!(err.alert(), Some(AlertCode::UnknownDevice));

    // A proof that does not verify is refused before the authorizer is asked.
    let now = Instant::now();
    let (expect, hello) = device::start(&dcfg, &mut OsRandom).unwrap();
    let (expect_finish, sh) = server::accept_hello(&any, &hello, &mut OsRandom).unwrap();
    let authed = expect.read_server_hello(&sh).unwrap();
    let th2 = authed.transcript_hash();
    let id = dcfg.identity.as_ref().unwrap();
    let forged = DeviceAuth::Enroll {
        public: id.public().0,
        signature: id.sign(DEVICE_SIGNATURE_CONTEXT, &th2),
        token: [9; 32],
        proof: [0; 64],
    };
    let (_, finish) = authed.finish_with(&forged, now).unwrap();
    let err = expect_finish
        .read_device_finish(&finish, now)
        .err()
        .unwrap();
    assert_eq!(err.alert(), Some(AlertCode::EnrollmentRefused));
}
