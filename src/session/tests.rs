//! Unit tests of the established session.

use super::*;
use crate::codec::DecodeError;
use crate::crypto::kem::X25519_MLKEM768;
use zeroize::Zeroizing;

/// A server session and a sealer for the device's direction of it.
fn session_and_peer() -> (Session, Sealer) {
    let now = Instant::now();
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
    let session = Session::new(Role::Server, keys, None, &SessionConfig::default(), now);
    let peer = Sealer::new(
        aead,
        Zeroizing::new([7; 32]),
        KeyUpdatePolicy::default(),
        true,
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
