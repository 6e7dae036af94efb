//! Two devices' conversations joined by a relay of the test's own, which can alter what it
//! forwards: what a compromised server can do to a device-to-device session.

use super::*;
use crate::crypto::identity::PublicIdentity;
use crate::crypto::kdf::sha256;
use crate::crypto::kem::X25519_ONLY;
use crate::crypto::random::OsRandom;

/// What the test relay does to each frame from A to B: change, drop or repeat it.
type Tamper = Box<dyn FnMut(usize, Vec<u8>) -> Vec<Vec<u8>>>;

struct Relay {
    a: Peers,
    b: Peers,
    /// Applied to every frame from A to B: may change, drop or repeat it.
    tamper: Tamper,
    forwarded: usize,
}

fn key(seed: u8) -> Arc<IdentityKey> {
    Arc::new(IdentityKey::from_seed(&[seed; 32]))
}

fn info<'a>(peer: &'a str, you: &'a str, key: &PublicIdentity) -> PeerInfo<'a> {
    PeerInfo {
        peer,
        you,
        fingerprint: sha256(&key.0),
        entries: vec![],
    }
}

fn pinned(name: &str, key: &PublicIdentity) -> PeerTrust {
    let mut t = PeerTrust::default();
    t.pins.insert(name.into(), key.fingerprint());
    t
}

impl Relay {
    fn new(a_trust: PeerTrust, b_trust: PeerTrust, b_key: Arc<IdentityKey>) -> Self {
        let a_key = key(0xa1);
        let config = DeviceConfig::default();
        let mut a = Peers::new(a_key.clone(), config.clone(), a_trust);
        let mut b = Peers::new(b_key.clone(), config, b_trust);
        a.on_peer_info(&info("b", "a", &b_key.public()));
        b.on_peer_info(&info("a", "b", &a_key.public()));
        Self {
            a,
            b,
            tamper: Box::new(|_, f| vec![f]),
            forwarded: 0,
        }
    }

    /// Moves frames until neither side has any.
    fn run(&mut self) {
        let now = Instant::now();
        for _ in 0..100 {
            let mut moved = false;
            while let Some((to, initiator, frame)) = self.a.poll_frame() {
                assert_eq!(to, "b");
                moved = true;
                let n = self.forwarded;
                self.forwarded += 1;
                for mut f in (self.tamper)(n, frame) {
                    self.b.on_relay("a", initiator, &mut f, &mut OsRandom, now);
                }
            }
            while let Some((to, initiator, mut frame)) = self.b.poll_frame() {
                assert_eq!(to, "a");
                moved = true;
                self.a
                    .on_relay("b", initiator, &mut frame, &mut OsRandom, now);
            }
            if !moved {
                return;
            }
        }
    }

    fn events(p: &mut Peers) -> Vec<PeerEvent> {
        std::iter::from_fn(|| p.poll_event()).collect()
    }
}

fn messages(events: &[PeerEvent]) -> Vec<Vec<u8>> {
    events
        .iter()
        .filter_map(|e| match e {
            PeerEvent::Message { data, .. } => Some(data.clone()),
            _ => None,
        })
        .collect()
}

fn failures(events: &[PeerEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            PeerEvent::Failed { error, .. } => Some(error.clone()),
            _ => None,
        })
        .collect()
}

fn relay_pinned() -> Relay {
    let b_key = key(0xb2);
    let a_pub = key(0xa1).public();
    Relay::new(pinned("b", &b_key.public()), pinned("a", &a_pub), b_key)
}

#[test]
fn two_devices_exchange_messages_end_to_end_and_acknowledge_them() {
    let mut r = relay_pinned();
    let now = Instant::now();
    r.a.send("b", b"hello b".to_vec(), &mut OsRandom, now)
        .unwrap();
    r.a.send("b", b"second".to_vec(), &mut OsRandom, now)
        .unwrap();
    r.run();
    let b_events = Relay::events(&mut r.b);
    assert_eq!(
        messages(&b_events),
        [b"hello b".to_vec(), b"second".to_vec()]
    );
    assert!(
        matches!(
            &b_events[0],
            PeerEvent::Established { peer, vouched: Vouched::Pinned, .. } if peer == "a"
        ) || b_events
            .iter()
            .any(|e| matches!(e, PeerEvent::Message { .. }))
    );
    assert_eq!(r.a.undelivered(), 0, "b acknowledged both");
    // b answers in the session a opened.
    r.b.send("a", b"hi a".to_vec(), &mut OsRandom, now).unwrap();
    r.run();
    assert_eq!(messages(&Relay::events(&mut r.a)), [b"hi a".to_vec()]);
    assert_eq!(r.b.undelivered(), 0);
    let stats = r.a.stats();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].phase, Phase::Open);
    assert_eq!(stats[0].suite, Some("X25519MLKEM768"));
    assert_eq!(stats[0].fingerprint, Some(key(0xb2).public().fingerprint()));
    // DeviceHello 1,221-ish + ServerHello + DeviceFinish.
    assert!(
        stats[0].handshake_bytes > 2_400,
        "{}",
        stats[0].handshake_bytes
    );
}

/// Runs a session in which the relay alters A's frame number `victim` (0: hello, 1: finish,
/// 2..: records) with `tamper`, and returns B's failures.
fn tampered(tamper: impl FnMut(usize, Vec<u8>) -> Vec<Vec<u8>> + 'static) -> Vec<String> {
    let mut r = relay_pinned();
    r.tamper = Box::new(tamper);
    let now = Instant::now();
    for m in [&b"one"[..], b"two", b"three"] {
        r.a.send("b", m.to_vec(), &mut OsRandom, now).unwrap();
    }
    r.run();
    let events = Relay::events(&mut r.b);
    let got = messages(&events);
    assert!(got.len() < 3 || failures(&events).is_empty(), "{events:?}");
    failures(&events)
}

#[test]
fn a_relay_that_flips_a_bit_is_detected() {
    let failed = tampered(|n, mut f| {
        if n == 3 {
            let last = f.len() - 1;
            f[last] ^= 1;
        }
        vec![f]
    });
    assert!(failed.iter().any(|e| e.contains("tampered")), "{failed:?}");
}

#[test]
fn a_relay_that_replays_a_record_is_detected() {
    let failed = tampered(|n, f| if n == 2 { vec![f.clone(), f] } else { vec![f] });
    assert!(failed.iter().any(|e| e.contains("tampered")), "{failed:?}");
}

#[test]
fn a_relay_that_reorders_records_is_detected() {
    let mut held = None;
    let failed = tampered(move |n, f| match n {
        2 => {
            held = Some(f);
            vec![]
        }
        3 => vec![f, held.take().unwrap()],
        _ => vec![f],
    });
    assert!(failed.iter().any(|e| e.contains("tampered")), "{failed:?}");
}

#[test]
fn a_substituted_peer_key_is_detected_when_pinned() {
    // The relay answers A's hello with a key of its own, under b's name.
    let impostor = key(0xee);
    let b_real = key(0xb2).public();
    let mut r = Relay::new(pinned("b", &b_real), PeerTrust::default(), impostor.clone());
    // The server's own description matches the impostor: only the pin can tell.
    r.a.on_peer_info(&info("b", "a", &impostor.public()));
    let trust_any = PeerTrust {
        accept_server_word: true,
        ..PeerTrust::default()
    };
    r.b = Peers::new(impostor, DeviceConfig::default(), trust_any);
    r.b.on_peer_info(&info("a", "b", &key(0xa1).public()));
    r.a.send("b", b"secret".to_vec(), &mut OsRandom, Instant::now())
        .unwrap();
    r.run();
    let a_events = Relay::events(&mut r.a);
    assert!(
        failures(&a_events)
            .iter()
            .any(|e| e.contains("substituted")),
        "{a_events:?}"
    );
    assert!(
        messages(&Relay::events(&mut r.b)).is_empty(),
        "nothing was sent"
    );
}

#[test]
fn a_handshake_spliced_between_other_names_fails() {
    let mut r = relay_pinned();
    // The server tells b that the initiator is someone else (or a that it is someone else).
    r.b.on_peer_info(&info("a", "c", &key(0xa1).public()));
    r.a.send("b", b"x".to_vec(), &mut OsRandom, Instant::now())
        .unwrap();
    r.run();
    let failed = failures(&Relay::events(&mut r.a));
    assert!(
        failed
            .iter()
            .any(|e| e.contains("server authentication failed")),
        "{failed:?}"
    );
}

#[test]
fn a_classical_initiator_is_refused_by_a_hybrid_responder() {
    let b_key = key(0xb2);
    let mut r = Relay::new(
        pinned("b", &b_key.public()),
        pinned("a", &key(0xa1).public()),
        b_key,
    );
    let classical = DeviceConfig {
        suite: &X25519_ONLY,
        ..DeviceConfig::default()
    };
    r.a = Peers::new(key(0xa1), classical, pinned("b", &key(0xb2).public()));
    r.a.on_peer_info(&info("b", "a", &key(0xb2).public()));
    r.a.send("b", b"x".to_vec(), &mut OsRandom, Instant::now())
        .unwrap();
    r.run();
    let failed = failures(&Relay::events(&mut r.a));
    assert!(failed.iter().any(|e| e.contains("suite")), "{failed:?}");
}

#[test]
fn a_responder_that_lost_the_session_makes_the_initiator_start_a_new_one() {
    let mut r = relay_pinned();
    let now = Instant::now();
    r.a.send("b", b"before".to_vec(), &mut OsRandom, now)
        .unwrap();
    r.run();
    assert_eq!(messages(&Relay::events(&mut r.b)), [b"before".to_vec()]);
    // b restarts: a fresh device end with the same key holds no session with a.
    let a_pub = key(0xa1).public();
    r.b = Peers::new(key(0xb2), DeviceConfig::default(), pinned("a", &a_pub));
    r.b.on_peer_info(&info("a", "b", &a_pub));
    r.a.send("b", b"after".to_vec(), &mut OsRandom, now)
        .unwrap();
    r.run();
    assert_eq!(
        r.a.undelivered(),
        1,
        "b could not take it in the old session"
    );
    let failed = failures(&Relay::events(&mut r.a));
    assert!(
        failed.iter().any(|e| e.contains("holds no session")),
        "{failed:?}"
    );
    // The restart, a second later: a new session, and what b did not acknowledge again.
    r.a.tick(&mut OsRandom, Instant::now() + Duration::from_secs(2));
    r.run();
    assert_eq!(messages(&Relay::events(&mut r.b)), [b"after".to_vec()]);
    assert_eq!(r.a.undelivered(), 0);
}
