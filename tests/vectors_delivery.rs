//! protocol.md §11.5: the delivery envelopes' encodings, checked against the text.

use secchan::delivery::Envelope;
use secchan::msgs::AlertCode;

const STREAM: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

fn spaced(parts: &[&[u8]]) -> String {
    parts.iter().map(hex::encode).collect::<Vec<_>>().join(" ")
}

#[test]
fn envelopes_encode_as_protocol_md_says() {
    let message = Envelope::Message {
        stream: STREAM,
        seq: 5,
        base: 3,
        data: b"hi",
    };
    let bytes = message.encode();
    let want = spaced(&[
        &[1],
        &STREAM,
        &5u64.to_be_bytes(),
        &3u64.to_be_bytes(),
        b"hi",
    ]);
    assert_eq!(hex::encode(&bytes), want.replace(' ', ""));
    assert_eq!(Envelope::decode(&bytes).unwrap(), message);
    let ack = Envelope::Ack {
        stream: STREAM,
        next: 6,
    };
    let ack_hex = spaced(&[&[2], &STREAM, &6u64.to_be_bytes()]);
    assert_eq!(hex::encode(ack.encode()), ack_hex.replace(' ', ""));
    let spec =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/protocol.md")).unwrap();
    let section = &spec[spec.find("### 11.5 Vectors").expect("protocol.md §11.5")..];
    for line in [want.as_str(), ack_hex.as_str()] {
        assert!(section.contains(line), "protocol.md §11.5 lacks {line}");
    }
    assert_eq!(AlertCode::GoingAway as u8, 0x14);
    assert!(section.contains("going_away\n  14"));
}

#[test]
fn malformed_envelopes_are_rejected() {
    let mut bad_base = Envelope::Message {
        stream: STREAM,
        seq: 5,
        base: 3,
        data: b"",
    }
    .encode();
    bad_base[17..25].copy_from_slice(&6u64.to_be_bytes());
    assert!(Envelope::decode(&bad_base).is_err(), "base above seq");
    let mut long_ack = Envelope::Ack {
        stream: STREAM,
        next: 6,
    }
    .encode();
    long_ack.push(0);
    assert!(Envelope::decode(&long_ack).is_err(), "trailing bytes");
    assert!(Envelope::decode(&[3; 17]).is_err(), "unknown kind");
    assert!(Envelope::decode(&[1; 10]).is_err(), "short");
}

/// protocol.md §11.9: the relay envelopes and the relay context.
#[test]
fn relay_envelopes_encode_as_protocol_md_says() {
    use secchan::delivery::{PeerInfo, Refusal};
    let fixed = |kind: u8, seq: u64, base: u64, rest: &[&[u8]]| {
        let head = spaced(&[&[kind], &STREAM, &seq.to_be_bytes(), &base.to_be_bytes()]);
        format!("{head} {}", spaced(rest))
    };
    let relay = Envelope::Relay {
        stream: STREAM,
        seq: 2,
        base: 1,
        peer: "b",
        initiator: true,
        frame: &[0x01, 0x02],
    };
    let relay_hex = fixed(3, 2, 1, &[&[1], &[1, b'b'], &[1, 2]]);
    let info = Envelope::PeerInfo {
        stream: STREAM,
        seq: 0,
        base: 0,
        info: PeerInfo {
            peer: "b",
            you: "a",
            fingerprint: [7; 32],
            entries: vec!["1 2 3"],
        },
    };
    let info_hex = fixed(
        4,
        0,
        0,
        &[&[1, b'b'], &[1, b'a'], &[7; 32], &[1], &[0, 5], b"1 2 3"],
    );
    let refused = Envelope::RelayRefused {
        stream: STREAM,
        seq: 1,
        base: 0,
        peer: "b",
        reason: Refusal::Forbidden,
    };
    let refused_hex = fixed(5, 1, 0, &[&[1, b'b'], &[2]]);
    for (envelope, want) in [
        (&relay, &relay_hex),
        (&info, &info_hex),
        (&refused, &refused_hex),
    ] {
        let bytes = envelope.encode();
        assert_eq!(hex::encode(&bytes), want.replace(' ', ""));
        assert_eq!(&Envelope::decode(&bytes).unwrap(), envelope);
    }
    let context = secchan::service::peer::context("a", "b");
    let context_hex = spaced(&[b"secchan v3 relay\0", &[1, b'a'], &[1, b'b']]);
    assert_eq!(hex::encode(&context), context_hex.replace(' ', ""));
    let spec =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/protocol.md")).unwrap();
    let section = &spec[spec
        .find("### 11.9 Relay vectors")
        .expect("protocol.md §11.9")..];
    for line in [&relay_hex, &info_hex, &refused_hex, &context_hex] {
        assert!(
            section.contains(line.as_str()),
            "protocol.md §11.9 lacks\n  {line}"
        );
    }
}
