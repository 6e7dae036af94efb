//! Unit tests of the established session.

use super::*;
use crate::codec::DecodeError;
use crate::crypto::kem::X25519_MLKEM768;
use zeroize::Zeroizing;

/// A server session and a sealer for the device's direction of it, over TCP.
fn session_and_peer() -> (Session, Sealer) {
    session_over(true, Instant::now())
}

/// A server session and the device's sealer, over an `ordered` transport or not, from `now`.
pub(crate) fn session_over(ordered: bool, now: Instant) -> (Session, Sealer) {
    let config = SessionConfig {
        ordered,
        ..SessionConfig::default()
    };
    let aead = AeadId::Aes256Gcm;
    let keys = SessionKeys {
        suite: &X25519_MLKEM768,
        aead,
        send: Zeroizing::new([8; 32]),
        recv: Zeroizing::new([7; 32]),
        psk: Zeroizing::new([6; 32]),
        resumed: false,
        local: None,
    };
    let session = Session::new(Role::Server, keys, None, &config, now);
    let peer = Sealer::new(
        aead,
        Zeroizing::new([7; 32]),
        KeyUpdatePolicy::default(),
        ordered,
        now,
    );
    (session, peer)
}

#[test]
fn a_server_refuses_a_new_ticket_record() {
    let (mut session, mut peer) = session_and_peer();
    let mut frame = Vec::new();
    peer.seal(FrameType::NewTicket, &[0, 0, 0, 1, 7], &mut frame)
        .unwrap();
    assert_eq!(
        session.handle_frame(&mut frame, Instant::now()),
        Err(SessionError::UnexpectedFrame(FrameType::NewTicket))
    );
    assert!(session.is_closed());
}

#[test]
fn close_record_must_carry_exactly_one_code() {
    for (payload, want) in [
        (
            &[][..],
            DecodeError::Truncated {
                field: "close code",
                needed: 1,
            },
        ),
        (&[0, 0, 0][..], DecodeError::TrailingBytes(2)),
    ] {
        let (mut session, mut peer) = session_and_peer();
        let mut frame = Vec::new();
        peer.seal(FrameType::Close, payload, &mut frame).unwrap();
        assert_eq!(
            session.handle_frame(&mut frame, Instant::now()),
            Err(SessionError::Record(RecordError::Decode(want)))
        );
        assert!(session.is_closed());
    }
}

/// The device's next Data record.
pub(crate) fn data(peer: &mut Sealer, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    peer.seal(FrameType::Data, payload, &mut frame).unwrap();
    frame
}

#[test]
fn over_tcp_a_replayed_record_is_counted_and_ends_the_session() {
    let (mut session, mut peer) = session_and_peer();
    let first = data(&mut peer, b"one");
    assert_eq!(
        session.handle_frame(&mut first.clone(), Instant::now()),
        Ok(Event::Message(b"one"))
    );
    assert_eq!(session.rejected(), Rejected::default());
    assert_eq!(
        session.handle_frame(&mut first.clone(), Instant::now()),
        Err(SessionError::Record(RecordError::Replay(
            crate::record::replay::ReplayError::Duplicate(0)
        )))
    );
    assert!(session.is_closed());
    assert_eq!(
        session.rejected(),
        Rejected {
            replayed: 1,
            ..Rejected::default()
        }
    );
    // A frame after the end is refused for the closed session, not counted again.
    assert!(session
        .handle_frame(&mut first.clone(), Instant::now())
        .is_err());
    assert_eq!(session.rejected().total(), 1);
}

#[test]
fn over_mqtt_replayed_too_old_and_forged_records_are_counted_and_dropped() {
    let (mut session, mut peer) = session_over(false, Instant::now());
    let first = data(&mut peer, b"first");
    let mut forged = data(&mut peer, b"second");
    *forged.last_mut().unwrap() ^= 1;
    assert!(session
        .handle_frame(&mut first.clone(), Instant::now())
        .is_ok());
    assert!(session
        .handle_frame(&mut first.clone(), Instant::now())
        .is_err());
    assert!(session.handle_frame(&mut forged, Instant::now()).is_err());
    // Move the window past the first record.
    for _ in 0..DEFAULT_WINDOW + 1 {
        let mut next = data(&mut peer, b"x");
        session.handle_frame(&mut next, Instant::now()).unwrap();
    }
    assert!(session
        .handle_frame(&mut first.clone(), Instant::now())
        .is_err());
    assert!(
        !session.is_closed(),
        "each was dropped, the session goes on"
    );
    assert_eq!(
        session.rejected(),
        Rejected {
            replayed: 1,
            too_old: 1,
            forged: 1,
            ..Rejected::default()
        }
    );
}

#[test]
fn key_updates_of_both_directions_are_counted_with_when_the_keys_changed() {
    let start = Instant::now();
    let (mut session, mut peer) = session_over(true, start);
    assert_eq!(
        (session.key_updates(), session.keys_installed()),
        (0, start)
    );
    let later = start + std::time::Duration::from_secs(5);
    let mut update = Vec::new();
    peer.seal(FrameType::KeyUpdate, &[], &mut update).unwrap();
    peer.update_key(later);
    assert_eq!(
        session.handle_frame(&mut update, later),
        Ok(Event::KeyUpdated)
    );
    assert_eq!(
        (session.key_updates(), session.keys_installed()),
        (1, later)
    );
    // A message under the new key changes neither.
    let mut next = data(&mut peer, b"after");
    let after = later + std::time::Duration::from_secs(1);
    session.handle_frame(&mut next, after).unwrap();
    assert_eq!(
        (session.key_updates(), session.keys_installed()),
        (1, later)
    );
    session.update_keys(after).unwrap();
    assert_eq!(
        (session.key_updates(), session.keys_installed()),
        (2, after)
    );
}
