//! Property tests (proptest) of what the unit tests check by example:
//!
//! - every wire message of protocol.md §4 and §7 (resumption's included) and every delivery
//!   envelope round-trips through its encoder and decoder, a decoder accepts only the canonical
//!   encoding (what it accepts re-encodes to the same bytes), and a truncated or extended message
//!   is refused where its length is fixed;
//! - the replay window (protocol.md §7.3) answers every sequence of counters as a reference
//!   model built on a `BTreeSet` does;
//! - the key schedule's labels (protocol.md §5.6, read from protocol.md itself) and the Ed25519
//!   signature contexts cannot be confused with one another.
//!
//! The strategies build messages through the public constructors only, so the file keeps
//! compiling when message types, suites or AEADs are added.

use proptest::prelude::*;
use secchan::crypto::aead::AeadId;
use secchan::crypto::kem::{Suite, ALL_SUITES};
use secchan::delivery::Envelope;
use secchan::msgs::{
    decode_alert, decode_device_finish, encode_alert, AlertCode, DeviceAuth, DeviceHello,
    FrameType, NewTicket, ResumeHello, ResumeServerHello, ServerHello, BINDER_LEN, CONFIRM_LEN,
    MAX_AEAD_OFFERS, MAX_TICKET_LEN, SEALED_SERVER_AUTH_LEN,
};
use secchan::record::replay::{ReplayError, ReplayWindow, MAX_WINDOW};
use secchan::record::{
    reconstruct_counter, KeyUpdatePolicy, Opener, Sealer, HEADER_LEN, MAX_PAYLOAD,
};
use std::collections::BTreeSet;
use std::time::Instant;

fn suite() -> impl Strategy<Value = &'static Suite> {
    prop::sample::select(ALL_SUITES.to_vec())
}

/// Every AEAD this build knows.
fn aead() -> impl Strategy<Value = AeadId> {
    prop::sample::select((0..=255).filter_map(AeadId::from_u8).collect::<Vec<_>>())
}

fn bytes(len: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), len)
}

fn array<const N: usize>() -> impl Strategy<Value = [u8; N]> {
    bytes(N).prop_map(|v| v.try_into().unwrap())
}

/// A DeviceHello's parts: suite, AEADs, X25519 value, an encapsulation key of the suite's length.
fn device_hello_parts() -> impl Strategy<Value = (&'static Suite, Vec<AeadId>, [u8; 32], Vec<u8>)> {
    suite().prop_flat_map(|s| {
        (
            Just(s),
            prop::collection::vec(aead(), 1..=MAX_AEAD_OFFERS),
            array::<32>(),
            bytes(s.pq.map_or(0, |k| k.encaps_key_len())),
        )
    })
}

fn server_hello_parts() -> impl Strategy<Value = (&'static Suite, u8, [u8; 32], Vec<u8>, Vec<u8>)> {
    suite().prop_flat_map(|s| {
        (
            Just(s),
            any::<u8>(),
            array::<32>(),
            bytes(s.pq.map_or(0, |k| k.ciphertext_len())),
            bytes(SEALED_SERVER_AUTH_LEN),
        )
    })
}

fn device_auth() -> impl Strategy<Value = DeviceAuth> {
    prop_oneof![
        Just(DeviceAuth::Anonymous),
        (array::<32>(), array::<64>())
            .prop_map(|(public, signature)| DeviceAuth::Ed25519 { public, signature }),
        (array::<32>(), array::<64>(), array::<32>(), array::<64>()).prop_map(
            |(public, signature, token, proof)| DeviceAuth::Enroll {
                public,
                signature,
                token,
                proof
            }
        ),
    ]
}

/// Every proper prefix of `frame` fails to decode, and so does `frame` with a byte appended.
fn refuses_truncation_and_extension(frame: &[u8], decodes: impl Fn(&[u8]) -> bool) {
    for n in 0..frame.len() {
        assert!(!decodes(&frame[..n]), "prefix of {n} bytes decoded");
    }
    let mut long = frame.to_vec();
    long.push(0);
    assert!(!decodes(&long), "an appended byte was accepted");
}

proptest! {
    #[test]
    fn device_hello_round_trips((suite, aeads, x25519, ek) in device_hello_parts()) {
        let hello = DeviceHello { suite, aeads, x25519, encaps_key: &ek };
        let frame = hello.encode();
        prop_assert_eq!(frame.len(), 4 + hello.aeads.len() + suite.share_len());
        prop_assert_eq!(&DeviceHello::decode(&frame).unwrap(), &hello);
        refuses_truncation_and_extension(&frame, |b| DeviceHello::decode(b).is_ok());
    }

    /// Unknown AEAD codes in the list are skipped (protocol.md §4.1), the known ones kept in
    /// order.
    #[test]
    fn device_hello_skips_unknown_aead_codes(
        (suite, _, x25519, ek) in device_hello_parts(),
        codes in prop::collection::vec(any::<u8>(), 1..=MAX_AEAD_OFFERS),
    ) {
        let mut frame = vec![FrameType::DeviceHello as u8, secchan::msgs::VERSION];
        frame.extend_from_slice(&[suite.id as u8, codes.len() as u8]);
        frame.extend_from_slice(&codes);
        frame.extend_from_slice(&x25519);
        frame.extend_from_slice(&ek);
        let hello = DeviceHello::decode(&frame).unwrap();
        let known: Vec<AeadId> = codes.iter().copied().filter_map(AeadId::from_u8).collect();
        prop_assert_eq!(hello.aeads, known);
    }

    #[test]
    fn server_hello_round_trips((suite, aead, x25519, ct, sealed) in server_hello_parts()) {
        let hello = ServerHello { suite, aead, x25519, ciphertext: &ct, sealed_auth: &sealed };
        let mut frame = hello.encode_prefix();
        prop_assert_eq!(frame.len(), hello.prefix_len());
        frame.extend_from_slice(&sealed);
        prop_assert_eq!(&ServerHello::decode(&frame).unwrap(), &hello);
        refuses_truncation_and_extension(&frame, |b| ServerHello::decode(b).is_ok());
    }

    #[test]
    fn device_auth_round_trips(auth in device_auth()) {
        let bytes = auth.encode();
        prop_assert_eq!(&DeviceAuth::decode(&bytes).unwrap(), &auth);
        refuses_truncation_and_extension(&bytes, |b| DeviceAuth::decode(b).is_ok());
    }

    /// DeviceFinish carries exactly 113 or 209 sealed bytes (protocol.md §4.3: 114- or 210-byte
    /// frames); nothing else decodes.
    #[test]
    fn device_finish_takes_exactly_the_legal_lengths(sealed in prop::collection::vec(any::<u8>(), 0..300)) {
        let legal = [113, 209].contains(&sealed.len());
        let mut frame = vec![FrameType::DeviceFinish as u8];
        frame.extend_from_slice(&sealed);
        match decode_device_finish(&frame) {
            Ok(inner) => {
                prop_assert!(legal);
                prop_assert_eq!(inner, &sealed[..]);
            }
            Err(_) => prop_assert!(!legal),
        }
    }

    /// Every alert decodes to its code; a code protocol.md §8.2 does not define reads as
    /// internal_error.
    #[test]
    fn alerts_round_trip(code in any::<u8>()) {
        let frame = [FrameType::Alert as u8, secchan::msgs::VERSION, code];
        let decoded = decode_alert(&frame).unwrap();
        match AlertCode::from_u8(code) {
            Some(c) => {
                prop_assert_eq!(decoded, c);
                prop_assert_eq!(encode_alert(c), frame.to_vec());
            }
            None => prop_assert_eq!(decoded, AlertCode::InternalError),
        }
        refuses_truncation_and_extension(&frame, |b| decode_alert(b).is_ok());
    }

    /// A frame type decodes to itself, or not at all.
    #[test]
    fn frame_types_are_their_first_byte(first in any::<u8>(), rest in bytes(3)) {
        let frame = [&[first][..], &rest].concat();
        if let Ok(t) = FrameType::of(&frame) {
            prop_assert_eq!(t as u8, first);
        }
    }

    /// Decoders accept only canonical encodings: whatever they accept re-encodes to the input.
    #[test]
    fn decoders_accept_only_canonical_encodings(
        auth in device_auth(),
        (suite, aeads, x25519, ek) in device_hello_parts(),
        flip in any::<(usize, u8)>(),
    ) {
        let hello = DeviceHello { suite, aeads, x25519, encaps_key: &ek }.encode();
        for frame in [auth.encode(), hello] {
            let mut mutated = frame.clone();
            let i = flip.0 % mutated.len();
            mutated[i] ^= flip.1;
            if let Ok(a) = DeviceAuth::decode(&mutated) {
                prop_assert_eq!(a.encode(), mutated.clone());
            }
            if let Ok(h) = DeviceHello::decode(&mutated) {
                // Only a list of known AEAD codes survives decoding unchanged.
                let n = usize::from(mutated[3]);
                if mutated[4..4 + n].iter().all(|&b| AeadId::from_u8(b).is_some()) {
                    prop_assert_eq!(h.encode(), mutated.clone());
                }
            }
        }
    }

    /// ResumeHello (protocol.md §4.6): the ticket's length is what the frame leaves between the
    /// X25519 value and the binder, 1 to MAX_TICKET_LEN bytes.
    #[test]
    fn resume_hello_round_trips(
        x25519 in array::<32>(),
        ticket in prop::collection::vec(any::<u8>(), 0..=MAX_TICKET_LEN + 8),
        binder in array::<BINDER_LEN>(),
    ) {
        let mut frame = ResumeHello::encode_without_binder(&x25519, &ticket);
        prop_assert_eq!(ResumeHello::binder_offset(&[&frame[..], &binder].concat()), frame.len());
        frame.extend_from_slice(&binder);
        match ResumeHello::decode(&frame) {
            Ok(hello) => {
                prop_assert!((1..=MAX_TICKET_LEN).contains(&ticket.len()));
                prop_assert_eq!(hello, ResumeHello { x25519, ticket: &ticket, binder });
            }
            Err(_) => prop_assert!(!(1..=MAX_TICKET_LEN).contains(&ticket.len())),
        }
    }

    #[test]
    fn resume_server_hello_round_trips(x25519 in array::<32>(), confirm in array::<CONFIRM_LEN>()) {
        let mut frame = ResumeServerHello::encode_prefix(&x25519);
        frame.extend_from_slice(&confirm);
        prop_assert_eq!(frame.len(), ResumeServerHello::LEN);
        prop_assert_eq!(ResumeServerHello::decode(&frame).unwrap(), ResumeServerHello { x25519, confirm });
        refuses_truncation_and_extension(&frame, |b| ResumeServerHello::decode(b).is_ok());
    }

    /// A NewTicket record's plaintext (protocol.md §7.6): lifetime, then a 1 to MAX_TICKET_LEN
    /// byte ticket.
    #[test]
    fn new_ticket_round_trips(
        lifetime in any::<u32>(),
        ticket in prop::collection::vec(any::<u8>(), 0..=MAX_TICKET_LEN + 8),
    ) {
        let bytes = NewTicket { lifetime, ticket: &ticket }.encode();
        match NewTicket::decode(&bytes) {
            Ok(t) => {
                prop_assert!((1..=MAX_TICKET_LEN).contains(&ticket.len()));
                prop_assert_eq!(t, NewTicket { lifetime, ticket: &ticket });
            }
            Err(_) => prop_assert!(!(1..=MAX_TICKET_LEN).contains(&ticket.len())),
        }
    }

    #[test]
    fn envelopes_round_trip(
        stream in array::<8>(),
        (seq, base) in any::<u64>().prop_flat_map(|s| (Just(s), 0..=s)),
        data in prop::collection::vec(any::<u8>(), 0..64),
        next in any::<u64>(),
    ) {
        let message = Envelope::Message { stream, seq, base, data: &data };
        let bytes = message.encode();
        prop_assert_eq!(bytes.len(), secchan::delivery::ENVELOPE_LEN + data.len());
        prop_assert_eq!(&Envelope::decode(&bytes).unwrap(), &message);
        for n in 0..secchan::delivery::ENVELOPE_LEN {
            prop_assert!(Envelope::decode(&bytes[..n]).is_err());
        }
        let ack = Envelope::Ack { stream, next };
        let bytes = ack.encode();
        prop_assert_eq!(bytes.len(), secchan::delivery::ACK_LEN);
        prop_assert_eq!(&Envelope::decode(&bytes).unwrap(), &ack);
        refuses_truncation_and_extension(&bytes, |b| Envelope::decode(b).is_ok());
    }

    /// A Message whose base is above its sequence is refused.
    #[test]
    fn envelope_base_above_sequence_is_refused(
        stream in array::<8>(),
        (seq, base) in (0..u64::MAX).prop_flat_map(|s| (Just(s), s + 1..=u64::MAX)),
    ) {
        let bytes = Envelope::Message { stream, seq, base, data: b"x" }.encode();
        prop_assert!(Envelope::decode(&bytes).is_err());
    }

    /// Records (protocol.md §7.1): type, the counter's low 16 bits, then the sealed payload; the
    /// opener gives back type, counter and payload, across key updates.
    #[test]
    fn records_round_trip(
        aead in aead(),
        secret in array::<32>(),
        records in prop::collection::vec((0u8..3, prop::collection::vec(any::<u8>(), 0..100)), 1..12),
    ) {
        let now = Instant::now();
        let secret = zeroize::Zeroizing::new(secret);
        let mut sealer = Sealer::new(aead, secret.clone(), KeyUpdatePolicy::default(), true, now);
        let mut opener = Opener::new(aead, secret, 64, true);
        for (kind, data) in records {
            let (ty, payload) = match kind {
                0 => (FrameType::Data, data),
                1 => (FrameType::KeyUpdate, Vec::new()),
                _ => (FrameType::Close, data.into_iter().take(1).collect()),
            };
            let counter = sealer.next_counter();
            let mut rec = Vec::new();
            sealer.seal(ty, &payload, &mut rec).unwrap();
            prop_assert_eq!(rec[0], ty as u8);
            prop_assert_eq!(u16::from_be_bytes([rec[1], rec[2]]), counter as u16);
            prop_assert_eq!(rec.len(), HEADER_LEN + payload.len() + 16);
            if ty == FrameType::KeyUpdate {
                sealer.update_key(now);
            }
            let opened = opener.open(&mut rec).unwrap();
            prop_assert_eq!((opened.ty, opened.counter), (ty, counter));
            prop_assert_eq!(&rec[opened.plaintext], &payload[..]);
        }
        let mut out = Vec::new();
        prop_assert!(sealer.seal(FrameType::Data, &vec![0; MAX_PAYLOAD + 1], &mut out).is_err());
        prop_assert!(out.is_empty());
    }

    /// A counter within 2^15 of the expected one is recovered from its low 16 bits (§7.2).
    #[test]
    fn counters_are_recovered_from_their_low_bits(
        expected in any::<u64>(),
        offset in -(1i64 << 15) + 1..(1i64 << 15),
    ) {
        if let Some(counter) = expected.checked_add_signed(offset) {
            prop_assert_eq!(reconstruct_counter(expected, counter as u16), counter);
        }
    }
}

/// protocol.md §7.3 as a set: the highest accepted counter, and every accepted counter.
#[derive(Default)]
struct ModelWindow {
    size: u64,
    accepted: BTreeSet<u64>,
}

impl ModelWindow {
    /// Below `highest + 1 - size`.
    fn too_old(&self, c: u64) -> bool {
        self.accepted
            .last()
            .is_some_and(|&h| u128::from(c) + u128::from(self.size) < u128::from(h) + 1)
    }

    /// Accepted and still inside the window.
    fn remembers(&self, c: u64) -> bool {
        self.accepted.contains(&c) && !self.too_old(c)
    }

    fn check(&self, c: u64) -> Result<(), ReplayError> {
        let Some(&highest) = self.accepted.last() else {
            return Ok(());
        };
        if c > highest {
            Ok(())
        } else if self.too_old(c) {
            Err(ReplayError::TooOld(c))
        } else if self.accepted.contains(&c) {
            Err(ReplayError::Duplicate(c))
        } else {
            Ok(())
        }
    }
}

/// One step: a counter relative to the highest so far (often near the window's lower edge), or
/// a jump past the whole window, and whether the record authenticates (only then is the
/// counter committed).
fn steps(size: u64) -> impl Strategy<Value = Vec<(i64, bool, bool)>> {
    let size = size as i64;
    let delta = prop_oneof![
        -2 * size..=2 * size,
        -8i64..=8,
        (-2i64..=2).prop_map(move |d| d - size),
    ];
    prop::collection::vec(
        (delta, prop::bool::weighted(0.02), prop::bool::weighted(0.9)),
        1..400,
    )
}

proptest! {
    #[test]
    fn replay_window_matches_a_set_model(
        (blocks, plan) in prop_oneof![1usize..=4, 1usize..=(MAX_WINDOW / 64)]
            .prop_flat_map(|b| (Just(b), steps(64 * b as u64))),
        base in prop_oneof![Just(0u64), Just(1 << 40), Just(u64::MAX - (1 << 20))],
    ) {
        // The window rounds its size to a multiple of 64; the model is told the result.
        let mut window = ReplayWindow::new(blocks * 64);
        prop_assert_eq!(window.size(), (blocks * 64) as u64);
        let mut model = ModelWindow { size: window.size(), ..ModelWindow::default() };
        for (delta, jump, authentic) in plan {
            let anchor = model.accepted.last().copied().unwrap_or(base);
            let c = if jump {
                anchor.saturating_add(window.size() * 3)
            } else {
                anchor.saturating_add_signed(delta)
            };
            // Counters never reach 2^64 - 1: the sealer refuses to use it (protocol.md §7.1).
            let c = c.min(u64::MAX - 1);
            let answer = window.check(c);
            prop_assert_eq!(answer, model.check(c), "counter {}", c);
            if answer.is_ok() && authentic {
                window.commit(c);
                model.accepted.insert(c);
            }
            let highest = model.accepted.last().copied();
            prop_assert_eq!(window.highest(), highest);
            prop_assert_eq!(window.next_expected(), highest.map_or(0, |h| h + 1));
            let floor = highest.map_or(0, |h| (h + 1).saturating_sub(window.size()));
            prop_assert_eq!(window.floor(), floor);
            for probe in [c.saturating_sub(1), c, c + 1, floor.saturating_sub(1), floor] {
                prop_assert_eq!(window.contains(probe), model.remembers(probe), "probe {}", probe);
            }
        }
    }
}

/// The §5.6 table's labels, read from protocol.md, and every label its `Expand(...)` lines use.
fn protocol_labels() -> (Vec<String>, BTreeSet<String>) {
    let spec = include_str!("../protocol.md");
    let section = spec
        .split("\n### 5.6 Labels")
        .nth(1)
        .expect("protocol.md has §5.6");
    let table: Vec<String> = section
        .lines()
        .skip_while(|l| !l.starts_with("| label"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.split('`').nth(1).expect("a `label` cell").to_string())
        .collect();
    let used = spec
        .split("Expand(")
        .skip(1)
        .filter_map(|call| {
            // `Expand(secret, "label", n)`; the definition of Expand itself has no such label.
            let args = call.split(')').next()?;
            let label = args.split(", ").nth(1)?;
            Some(label.strip_prefix('"')?.strip_suffix('"')?.to_string())
        })
        .collect();
    (table, used)
}

/// HKDF-Expand's first block is HMAC(secret, "secchan v1 " || label || 0x01), and every secchan
/// output is one block (at most 32 bytes). Labels that are distinct and contain no 0x01 byte
/// make those inputs distinct and none a prefix of another, so no two labels can give the same
/// key from the same secret. The labels are not prefix-free themselves: "key" is a prefix of
/// "key update". That is harmless, because HKDF appends 0x01 where the longer label goes on with
/// a space, and secchan appends no context after a label; the test lists the pair so that a new
/// one is looked at.
#[test]
fn key_schedule_labels_are_distinct_and_their_hkdf_inputs_prefix_free() {
    let (labels, used) = protocol_labels();
    assert!(labels.len() >= 7, "{labels:?}");
    let table: BTreeSet<String> = labels.iter().cloned().collect();
    assert_eq!(table.len(), labels.len(), "a label appears twice in §5.6");
    assert_eq!(
        used, table,
        "every label used in §5 is in the §5.6 table, and no other"
    );
    let prefix = std::str::from_utf8(secchan::crypto::kdf::LABEL_PREFIX).unwrap();
    assert_eq!(prefix, "secchan v1 ");
    let mut label_prefixes = Vec::new();
    let inputs: Vec<Vec<u8>> = labels
        .iter()
        .map(|l| {
            assert!(
                l.bytes().all(|b| b.is_ascii_graphic() || b == b' '),
                "{l:?}"
            );
            [prefix.as_bytes(), l.as_bytes(), &[0x01]].concat()
        })
        .collect();
    for (i, a) in labels.iter().enumerate() {
        for (j, b) in labels.iter().enumerate() {
            if i == j {
                continue;
            }
            assert!(
                !inputs[j].starts_with(&inputs[i]),
                "HKDF input of {a:?} is a prefix of that of {b:?}"
            );
            if b.starts_with(a.as_str()) {
                label_prefixes.push((a.as_str(), b.as_str()));
            }
        }
    }
    assert_eq!(label_prefixes, [("key", "key update")]);
}

/// One identity key signs handshakes and, for the server, registry entries and heads: the
/// signed message is a context string and then data, so no context may be a prefix of another.
/// Each ends with a zero byte, which none contains before its end.
#[test]
fn signature_contexts_are_prefix_free() {
    let contexts: [&[u8]; 5] = [
        secchan::handshake::SERVER_SIGNATURE_CONTEXT,
        secchan::handshake::DEVICE_SIGNATURE_CONTEXT,
        secchan::handshake::ENROLLMENT_PROOF_CONTEXT,
        secchan::registry::entry::ENTRY_SIGNATURE_CONTEXT,
        secchan::registry::verify::HEAD_SIGNATURE_CONTEXT,
    ];
    for (i, a) in contexts.iter().enumerate() {
        assert!(a.starts_with(b"secchan v1 "));
        assert_eq!(a.iter().position(|&b| b == 0), Some(a.len() - 1));
        for (j, b) in contexts.iter().enumerate() {
            assert!(
                i == j || !b.starts_with(a),
                "context {i} is a prefix of context {j}"
            );
        }
    }
}
