//! The hub and two device ends joined as a server's sessions join them, sans IO: what the
//! relay guarantees above every transport, and what a server that tampers cannot hide.

use super::*;
use crate::crypto::identity::IdentityKey;
use crate::delivery::Envelope;
use crate::handshake::device::DeviceConfig;
use crate::service::device_end::{DeviceEnd, EndError};
use crate::service::peer::{PeerTrust, Peers};
use std::io::Write;

/// A shared buffer standing in for a device's stdout.
#[derive(Clone, Default)]
struct Out(Arc<Mutex<Vec<u8>>>);

impl Write for Out {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Out {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

struct Dev {
    name: &'static str,
    end: DeviceEnd,
    out: Out,
}

fn key(seed: u8) -> Arc<IdentityKey> {
    Arc::new(IdentityKey::from_seed(&[seed; 32]))
}

/// Device `name` (key seed `seed`) pinning `pins`, sending to `to`, attached to `hub`.
fn device(hub: &Hub, name: &'static str, seed: u8, pins: &[(&str, u8)], to: Option<&str>) -> Dev {
    let trust = PeerTrust {
        pins: pins
            .iter()
            .map(|(n, s)| (n.to_string(), key(*s).public().fingerprint()))
            .collect(),
        ..PeerTrust::default()
    };
    let peers = Peers::new(key(seed), DeviceConfig::default(), trust);
    let out = Out::default();
    let mut end = DeviceEnd::new(Some(peers), to.map(Into::into), Box::new(out.clone()));
    end.on_session("SHA256:server".into());
    let group = Some(if name == "c" { "office" } else { "greenhouse" }.to_string());
    hub.attach(name, Some(&key(seed).public()), group, Vec::new());
    Dev { name, end, out }
}

/// Moves envelopes both ways until nothing moves, passing everything the hub sends to a
/// device through `tamper`. Returns the first error a device end stopped with.
fn run(
    hub: &Hub,
    devs: &mut [&mut Dev],
    tamper: &mut dyn FnMut(&str, &mut Vec<u8>),
) -> Option<EndError> {
    let now = Instant::now();
    for _ in 0..200 {
        let mut moved = false;
        for d in devs.iter_mut() {
            for bytes in d.end.due(now) {
                moved = true;
                match hub.from_device(d.name, Envelope::decode(&bytes).unwrap()) {
                    FromDevice::Done => {}
                    FromDevice::Reply(ack) => {
                        d.end
                            .on_envelope(Envelope::decode(&ack).unwrap(), now)
                            .unwrap();
                    }
                    FromDevice::Unexpected => panic!("a device sent {bytes:?}"),
                }
            }
            for mut bytes in hub.due(d.name, now) {
                moved = true;
                tamper(d.name, &mut bytes);
                if let Err(e) = d.end.on_envelope(Envelope::decode(&bytes).unwrap(), now) {
                    return Some(e);
                }
            }
        }
        if !moved {
            return None;
        }
    }
    None
}

#[test]
fn downlink_and_relayed_messages_arrive_once_in_order() {
    let hub = Hub::new(RelayPolicy::Any);
    let mut a = device(&hub, "a", 0xa1, &[("b", 0xb2)], Some("b"));
    let mut b = device(&hub, "b", 0xb2, &[("a", 0xa1)], None);
    hub.downlink("b", b"led on".to_vec()).unwrap();
    a.end.send_to_peer(b"one".to_vec(), Instant::now()).unwrap();
    a.end.send_to_peer(b"two".to_vec(), Instant::now()).unwrap();
    assert!(run(&hub, &mut [&mut a, &mut b], &mut |_, _| {}).is_none());
    let lines: Vec<serde_json::Value> = b
        .out
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(
        (&lines[0]["from"], &lines[0]["e2e"]),
        (&"server".into(), &false.into())
    );
    assert_eq!(
        (&lines[1]["data"], &lines[1]["e2e"]),
        (&"one".into(), &true.into())
    );
    assert_eq!(lines[2]["data"], "two");
    assert!(!a.end.busy(), "b acknowledged both end to end");
    // A new session resends what the hub holds unacknowledged: nothing is left.
    hub.attach(
        "b",
        Some(&key(0xb2).public()),
        Some("greenhouse".into()),
        Vec::new(),
    );
    assert!(hub.due("b", Instant::now()).is_empty());
}

#[test]
fn a_server_that_alters_a_relayed_byte_is_detected() {
    let hub = Hub::new(RelayPolicy::Any);
    let mut a = device(&hub, "a", 0xa1, &[("b", 0xb2)], Some("b"));
    let mut b = device(&hub, "b", 0xb2, &[("a", 0xa1)], None);
    a.end
        .send_to_peer(b"open the valve".to_vec(), Instant::now())
        .unwrap();
    // Every relayed frame to b after the handshake has its last byte flipped.
    let mut relayed = 0;
    let mut flip = |to: &str, bytes: &mut Vec<u8>| {
        if to == "b" && bytes[0] == Kind::Relay as u8 {
            relayed += 1;
            if relayed > 2 {
                *bytes.last_mut().unwrap() ^= 1;
            }
        }
    };
    assert!(run(&hub, &mut [&mut a, &mut b], &mut flip).is_none());
    assert!(!b.out.text().contains("valve"), "{}", b.out.text());
    assert!(a.end.busy(), "nothing was acknowledged end to end");
    let stats = &b.end.stats()[0];
    assert_eq!(stats.rejected, 1);
    assert!(
        stats
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("tampered"),
        "{stats:?}"
    );
}

#[test]
fn groups_unknown_and_offline_peers_are_refused() {
    let hub = Hub::new(RelayPolicy::SameGroup);
    let mut c = device(&hub, "c", 0xc3, &[("b", 0xb2)], Some("b"));
    let mut b = device(&hub, "b", 0xb2, &[], None);
    c.end.send_to_peer(b"x".to_vec(), Instant::now()).unwrap();
    let e = run(&hub, &mut [&mut c, &mut b], &mut |_, _| {});
    assert!(
        matches!(
            e,
            Some(EndError::Refused {
                code: "forbidden",
                ..
            })
        ),
        "{e:?}"
    );

    let mut a = device(&hub, "a", 0xa1, &[], Some("nobody"));
    a.end.send_to_peer(b"x".to_vec(), Instant::now()).unwrap();
    let e = run(&hub, &mut [&mut a], &mut |_, _| {});
    assert!(
        matches!(
            e,
            Some(EndError::Refused {
                code: "unknown_peer",
                ..
            })
        ),
        "{e:?}"
    );

    hub.attach("anonymous", None, None, Vec::new());
    assert_eq!(
        hub.downlink("anonymous", b"x".to_vec()),
        Err(DownlinkError::Anonymous)
    );
    hub.detach("b", 2);
    assert!(matches!(
        hub.downlink("b", b"x".to_vec()),
        Err(DownlinkError::NotConnected(_))
    ));
    let mut a = device(&hub, "a", 0xa1, &[], Some("b"));
    a.end.send_to_peer(b"x".to_vec(), Instant::now()).unwrap();
    let e = run(&hub, &mut [&mut a], &mut |_, _| {});
    assert!(
        matches!(
            e,
            Some(EndError::Refused {
                code: "offline",
                ..
            })
        ),
        "{e:?}"
    );
}

#[test]
fn a_sender_whose_name_no_envelope_carries_is_refused_and_a_bad_peer_name_dropped() {
    const LONG: &str = "a-device-list-name-longer-than-the-sixty-four-bytes-a-peer-name-may-be";
    let hub = Hub::new(RelayPolicy::Any);
    let mut long = device(&hub, LONG, 0xa1, &[("b", 0xb2)], Some("b"));
    let mut b = device(&hub, "b", 0xb2, &[], None);
    long.end
        .send_to_peer(b"x".to_vec(), Instant::now())
        .unwrap();
    let e = run(&hub, &mut [&mut long, &mut b], &mut |_, _| {});
    assert!(
        matches!(
            e,
            Some(EndError::Refused {
                code: "forbidden",
                ..
            })
        ),
        "{e:?}"
    );
    // Through the API only (decoding refuses such names): acknowledged, nothing forwarded.
    let stream = [7; 8];
    for (seq, peer) in [(0, ""), (1, "bad\nname"), (2, LONG)] {
        assert_eq!(
            hub.relay("b", (stream, seq, 0), peer, true, b"\x01"),
            Some(seq + 1)
        );
    }
    assert!(hub
        .due(LONG, Instant::now())
        .iter()
        .all(|e| !matches!(Envelope::decode(e), Ok(Envelope::Relay { .. }))));
}

/// Entry 1 and the enrollment of device `seed` as `name`, signed by `signer`.
fn signed_lines(signer: &IdentityKey, seed: u8, name: &str) -> Vec<String> {
    use crate::registry::entry::{test_line, Op};
    let ops = [
        Op::Init {
            server: signer.public(),
        },
        Op::Enroll {
            device: key(seed).public().fingerprint(),
            name: name.into(),
            group: "greenhouse".into(),
            token: None,
        },
    ];
    ops.into_iter()
        .zip(1..)
        .map(|(op, seq)| test_line(seq, signer, op))
        .collect()
}

/// Devices a and b pinning the authority `authority` and no key, attached with the lines
/// `signer` signed for them; a sends b one message. Returns b's output and why a's session
/// with b failed, if it did.
fn vouched_exchange(authority: &IdentityKey, signer: &IdentityKey) -> (String, Option<String>) {
    let hub = Hub::new(RelayPolicy::Any);
    let mut devs = [("a", 0xa1, Some("b")), ("b", 0xb2, None)].map(|(name, seed, to)| {
        let trust = PeerTrust {
            authority: Some(authority.public().fingerprint()),
            ..PeerTrust::default()
        };
        let peers = Peers::new(key(seed), DeviceConfig::default(), trust);
        let out = Out::default();
        let mut end = DeviceEnd::new(Some(peers), to.map(Into::into), Box::new(out.clone()));
        end.on_session("SHA256:server".into());
        let lines = signed_lines(signer, seed, name);
        hub.attach(name, Some(&key(seed).public()), None, lines);
        Dev { name, end, out }
    });
    let [a, b] = &mut devs;
    a.end
        .send_to_peer(b"vouched".to_vec(), Instant::now())
        .unwrap();
    assert!(run(&hub, &mut [a, b], &mut |_, _| {}).is_none());
    let error = devs[0]
        .end
        .stats()
        .first()
        .and_then(|s| s.last_error.clone());
    (devs[1].out.text(), error)
}

#[test]
fn the_hub_relays_the_registry_lines_that_let_devices_trust_each_other_without_pins() {
    let authority = IdentityKey::from_seed(&[0xaa; 32]);
    let (out, error) = vouched_exchange(&authority, &authority);
    assert!(error.is_none(), "{error:?}");
    assert!(out.contains(r#""data":"vouched""#), "{out}");
    // The same lines signed by the server's key vouch for nothing.
    let server = IdentityKey::from_seed(&[0x5e; 32]);
    let (out, error) = vouched_exchange(&authority, &server);
    assert!(!out.contains("vouched"), "{out}");
    let error = error.unwrap_or_default();
    assert!(
        error.contains("signed by another key than the pinned registry authority"),
        "{error}"
    );
}

#[test]
fn a_device_sending_what_only_a_server_sends_is_told_apart() {
    let hub = Hub::new(RelayPolicy::Any);
    hub.attach("a", Some(&key(0xa1).public()), None, Vec::new());
    let message = Envelope::Message {
        stream: [1; 8],
        seq: 0,
        base: 0,
        data: b"x",
    };
    assert_eq!(hub.from_device("a", message), FromDevice::Unexpected);
    let ack = Envelope::Ack {
        stream: [2; 8],
        next: 0,
    };
    assert_eq!(hub.from_device("a", ack), FromDevice::Done);
    let relay = Envelope::Relay {
        stream: [3; 8],
        seq: 0,
        base: 0,
        peer: "nobody",
        initiator: true,
        frame: b"f",
    };
    let reply = Envelope::Ack {
        stream: [3; 8],
        next: 1,
    };
    assert_eq!(
        hub.from_device("a", relay),
        FromDevice::Reply(reply.encode())
    );
}

#[test]
fn what_a_device_left_unacknowledged_is_sent_again_once_stale() {
    let hub = Hub::new(RelayPolicy::Off);
    hub.attach("b", Some(&key(0xb2).public()), None, Vec::new());
    hub.downlink("b", b"one".to_vec()).unwrap();
    let sent = Instant::now();
    let first = hub.due("b", sent);
    assert_eq!(first.len(), 1);
    let after = Duration::from_secs(5);
    assert!(!hub.resend_stale("b", sent, after));
    assert!(hub.due("b", sent).is_empty(), "nothing is due twice");
    assert!(hub.resend_stale("b", sent + after, after));
    assert_eq!(hub.due("b", sent + after), first);
    let Envelope::Message { stream, .. } = Envelope::decode(&first[0]).unwrap() else {
        panic!("not a message");
    };
    hub.on_ack("b", stream, 1).unwrap();
    assert!(!hub.resend_stale("b", sent + after * 2, after));
}
