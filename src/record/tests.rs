//! Unit tests of the record layer: both layouts, replay, key updates, limits.

use super::opener::reconstruct_generation;
use super::*;
use crate::crypto::aead::INTEGRITY_LIMIT_FAILURES;

fn pair(aead: AeadId, ordered: bool) -> (Sealer, Opener) {
    let now = Instant::now();
    let secret = Zeroizing::new([42u8; 32]);
    (
        Sealer::new(
            aead,
            secret.clone(),
            KeyUpdatePolicy::default(),
            ordered,
            now,
        ),
        Opener::new(aead, secret, 64, ordered),
    )
}

fn seal(s: &mut Sealer, ty: FrameType, p: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    s.seal(ty, p, &mut out).unwrap();
    out
}

fn open(o: &mut Opener, mut rec: Vec<u8>) -> Result<(FrameType, Vec<u8>), RecordError> {
    let opened = o.open(&mut rec)?;
    Ok((opened.ty, rec[opened.plaintext].to_vec()))
}

#[test]
fn overhead_is_nineteen_bytes() {
    let (mut s, _) = pair(AeadId::Aes256Gcm, true);
    assert_eq!(seal(&mut s, FrameType::Data, &[0; 100]).len(), 119);
    assert_eq!(RECORD_OVERHEAD, 19);
}

#[test]
fn round_trip_both_aeads() {
    for aead in [AeadId::Aes256Gcm, AeadId::ChaCha20Poly1305] {
        let (mut s, mut o) = pair(aead, true);
        for i in 0..3u8 {
            let rec = seal(&mut s, FrameType::Data, &[i; 10]);
            assert_eq!(open(&mut o, rec).unwrap(), (FrameType::Data, vec![i; 10]));
        }
    }
}

#[test]
fn tampered_record_fails_and_does_not_move_window() {
    let (mut s, mut o) = pair(AeadId::Aes256Gcm, true);
    let mut rec = seal(&mut s, FrameType::Data, b"hello");
    rec[4] ^= 0x01;
    assert_eq!(open(&mut o, rec.clone()), Err(RecordError::BadTag(0)));
    assert_eq!(o.window().highest(), None);
    rec[4] ^= 0x01;
    assert!(open(&mut o, rec).is_ok());
}

#[test]
fn tampered_header_fails_authentication() {
    let (mut s, mut o) = pair(AeadId::ChaCha20Poly1305, true);
    let mut rec = seal(&mut s, FrameType::Data, b"hello");
    rec[0] = FrameType::Close as u8;
    assert_eq!(open(&mut o, rec), Err(RecordError::BadTag(0)));
}

#[test]
fn replay_and_reorder_on_ordered_transport() {
    let (mut s, mut o) = pair(AeadId::Aes256Gcm, true);
    let r0 = seal(&mut s, FrameType::Data, b"0");
    let r1 = seal(&mut s, FrameType::Data, b"1");
    let r2 = seal(&mut s, FrameType::Data, b"2");
    open(&mut o, r0.clone()).unwrap();
    assert_eq!(
        open(&mut o, r0),
        Err(RecordError::Replay(ReplayError::Duplicate(0)))
    );
    assert_eq!(
        open(&mut o, r2),
        Err(RecordError::OutOfOrder {
            expected: 1,
            got: 2
        })
    );
    open(&mut o, r1).unwrap();
}

#[test]
fn unordered_transport_accepts_reordering_within_window() {
    let (mut s, mut o) = pair(AeadId::Aes256Gcm, false);
    let recs: Vec<_> = (0..4u8)
        .map(|i| seal(&mut s, FrameType::Data, &[i]))
        .collect();
    for i in [0usize, 2, 1, 3] {
        assert_eq!(open(&mut o, recs[i].clone()).unwrap().1, vec![i as u8]);
    }
    assert_eq!(
        open(&mut o, recs[2].clone()),
        Err(RecordError::Replay(ReplayError::Duplicate(2)))
    );
}

#[test]
fn too_old_record_is_refused_before_decryption() {
    let (mut s, mut o) = pair(AeadId::Aes256Gcm, false);
    let first = seal(&mut s, FrameType::Data, b"old");
    for _ in 0..100 {
        let r = seal(&mut s, FrameType::Data, b"x");
        open(&mut o, r).unwrap();
    }
    assert_eq!(
        open(&mut o, first),
        Err(RecordError::Replay(ReplayError::TooOld(0)))
    );
}

#[test]
fn key_update_rotates_both_sides_and_old_key_no_longer_opens() {
    let (mut s, mut o) = pair(AeadId::Aes256Gcm, true);
    let now = Instant::now();
    let ku = seal(&mut s, FrameType::KeyUpdate, &[]);
    s.update_key(now);
    let r = seal(&mut s, FrameType::Data, b"after");
    assert_eq!(open(&mut o, ku).unwrap().0, FrameType::KeyUpdate);
    assert_eq!(open(&mut o, r).unwrap().1, b"after");
    // A record sealed under the first key at the next counter must fail.
    let (mut stale, _) = pair(AeadId::Aes256Gcm, true);
    let mut out = Vec::new();
    for _ in 0..3 {
        out.clear();
        stale.seal(FrameType::Data, b"stale", &mut out).unwrap();
    }
    assert_eq!(open(&mut o, out), Err(RecordError::BadTag(2)));
}

#[test]
fn unordered_transport_opens_late_record_from_previous_key() {
    let (mut s, mut o) = pair(AeadId::ChaCha20Poly1305, false);
    let early = seal(&mut s, FrameType::Data, b"early");
    let ku = seal(&mut s, FrameType::KeyUpdate, &[]);
    s.update_key(Instant::now());
    let late = seal(&mut s, FrameType::Data, b"late");
    open(&mut o, ku).unwrap();
    open(&mut o, late).unwrap();
    assert_eq!(open(&mut o, early).unwrap().1, b"early");
}

#[test]
fn policy_requests_key_update() {
    let now = Instant::now();
    let policy = KeyUpdatePolicy {
        max_records: 2,
        max_bytes: u64::MAX,
        max_age: Some(Duration::from_secs(10)),
    };
    let mut s = Sealer::new(
        AeadId::Aes256Gcm,
        Zeroizing::new([1; 32]),
        policy,
        true,
        now,
    );
    assert!(!s.wants_key_update(now));
    assert!(s.wants_key_update(now + Duration::from_secs(10)));
    seal(&mut s, FrameType::Data, b"a");
    seal(&mut s, FrameType::Data, b"b");
    assert!(s.wants_key_update(now));
    s.update_key(now);
    assert!(!s.wants_key_update(now));
}

#[test]
fn soft_limit_requests_update_and_hard_limit_refuses_to_seal() {
    let now = Instant::now();
    let policy = KeyUpdatePolicy {
        max_records: u64::MAX,
        max_bytes: u64::MAX,
        max_age: None,
    };
    let mut s = Sealer::new(
        AeadId::Aes256Gcm,
        Zeroizing::new([1; 32]),
        policy,
        true,
        now,
    );
    s.records_this_key = SOFT_LIMIT_RECORDS - 1;
    assert!(!s.wants_key_update(now));
    s.records_this_key = SOFT_LIMIT_RECORDS;
    assert!(s.wants_key_update(now));
    s.records_this_key = crate::crypto::aead::AES_GCM_HARD_LIMIT_RECORDS;
    let mut out = Vec::new();
    assert_eq!(
        s.seal(FrameType::Data, b"x", &mut out),
        Err(RecordError::HardLimit)
    );
    assert!(out.is_empty());
    s.update_key(now);
    s.seal(FrameType::Data, b"x", &mut out).unwrap();
}

#[test]
fn byte_limit_requests_update() {
    let now = Instant::now();
    let policy = KeyUpdatePolicy {
        max_records: u64::MAX,
        max_bytes: 10,
        max_age: None,
    };
    let mut s = Sealer::new(
        AeadId::ChaCha20Poly1305,
        Zeroizing::new([1; 32]),
        policy,
        true,
        now,
    );
    seal(&mut s, FrameType::Data, &[0; 9]);
    assert!(!s.wants_key_update(now));
    seal(&mut s, FrameType::Data, &[0; 1]);
    assert!(s.wants_key_update(now));
}

#[test]
fn counter_never_wraps() {
    let (mut s, _) = pair(AeadId::ChaCha20Poly1305, true);
    s.next = u64::MAX;
    let mut out = Vec::new();
    assert_eq!(
        s.seal(FrameType::Data, b"x", &mut out),
        Err(RecordError::HardLimit)
    );
    assert!(out.is_empty(), "no record with counter 2^64-1 was sealed");
    assert_eq!(s.next_counter(), u64::MAX);
}

#[test]
fn integrity_limit_closes_after_too_many_forgeries() {
    let (mut s, mut o) = pair(AeadId::Aes256Gcm, false);
    let mut rec = seal(&mut s, FrameType::Data, b"x");
    rec[5] ^= 1;
    assert_eq!(open(&mut o, rec.clone()), Err(RecordError::BadTag(0)));
    o.failures_this_key = INTEGRITY_LIMIT_FAILURES - 1;
    assert_eq!(open(&mut o, rec), Err(RecordError::IntegrityLimit));
}

#[test]
fn oversize_payload_and_short_records_are_refused() {
    let (mut s, mut o) = pair(AeadId::Aes256Gcm, true);
    let mut out = Vec::new();
    assert_eq!(
        s.seal(FrameType::Data, &vec![0; MAX_PAYLOAD + 1], &mut out),
        Err(RecordError::PayloadTooLarge(MAX_PAYLOAD + 1))
    );
    assert!(matches!(
        open(&mut o, vec![0x10, 0, 0, 1, 2]),
        Err(RecordError::Decode(DecodeError::Truncated { .. }))
    ));
    assert!(matches!(
        open(&mut o, vec![0x01; 40]),
        Err(RecordError::Decode(DecodeError::InvalidValue { .. }))
    ));
}

#[test]
fn counter_reconstruction_follows_the_closest_value() {
    assert_eq!(reconstruct_counter(0, 0), 0);
    assert_eq!(reconstruct_counter(5, 3), 3);
    assert_eq!(reconstruct_counter(0xffff, 0), 0x1_0000);
    assert_eq!(reconstruct_counter(0x1_0002, 0xfffe), 0xfffe);
    assert_eq!(reconstruct_counter(0x1_0000, 0x8000), 0x1_8000);
    assert_eq!(reconstruct_counter(0x1_0000, 0x8001), 0x8001);
    assert_eq!(reconstruct_counter(0x1_0000, 0x7fff), 0x1_7fff);
    assert_eq!(reconstruct_counter(u64::MAX, 0xffff), u64::MAX);
}

/// Seals a KeyUpdate record and switches the sealer to the next generation.
fn key_update(s: &mut Sealer) -> Vec<u8> {
    let ku = seal(s, FrameType::KeyUpdate, &[]);
    s.update_key(Instant::now());
    ku
}

#[test]
fn unordered_records_carry_their_key_epoch() {
    let (mut s, _) = pair(AeadId::Aes256Gcm, false);
    let r = seal(&mut s, FrameType::Data, &[0; 100]);
    assert_eq!(r.len(), 100 + UNORDERED_RECORD_OVERHEAD);
    assert_eq!(&r[..4], &[0x10, 0, 0, 0]);
    let ku = key_update(&mut s);
    assert_eq!(&ku[..4], &[0x11, 0, 0, 1]);
    let r = seal(&mut s, FrameType::Data, b"x");
    assert_eq!(&r[..4], &[0x10, 1, 0, 2]);
    assert_eq!(s.generation(), 1);
}

#[test]
fn the_epoch_is_authenticated() {
    let (mut s, mut o) = pair(AeadId::ChaCha20Poly1305, false);
    let mut r = seal(&mut s, FrameType::Data, b"x");
    r[1] = 1;
    assert_eq!(open(&mut o, r), Err(RecordError::BadTag(0)));
    assert_eq!(o.generation(), 0, "a forged epoch moves nothing");
}

#[test]
fn a_lost_key_update_does_not_desynchronise_an_unordered_receiver() {
    let (mut s, mut o) = pair(AeadId::Aes256Gcm, false);
    let first = seal(&mut s, FrameType::Data, b"gen 0");
    let _lost = key_update(&mut s);
    let second = seal(&mut s, FrameType::Data, b"gen 1");
    let _lost_too = key_update(&mut s);
    let third = seal(&mut s, FrameType::Data, b"gen 2");
    assert_eq!(open(&mut o, first).unwrap().1, b"gen 0");
    assert_eq!(open(&mut o, third).unwrap().1, b"gen 2");
    assert_eq!(o.generation(), 2);
    // The record of the generation skipped over arrives late and still opens.
    assert_eq!(open(&mut o, second).unwrap().1, b"gen 1");
    let fourth = seal(&mut s, FrameType::Data, b"gen 2 again");
    assert_eq!(open(&mut o, fourth).unwrap().1, b"gen 2 again");
}

#[test]
fn reordered_key_updates_and_records_all_open() {
    let (mut s, mut o) = pair(AeadId::ChaCha20Poly1305, false);
    let r0 = seal(&mut s, FrameType::Data, b"0");
    let ku1 = key_update(&mut s);
    let r2 = seal(&mut s, FrameType::Data, b"2");
    let ku3 = key_update(&mut s);
    let r4 = seal(&mut s, FrameType::Data, b"4");
    // The second KeyUpdate first, then everything else backwards.
    assert_eq!(open(&mut o, ku3).unwrap().0, FrameType::KeyUpdate);
    assert_eq!(o.generation(), 2);
    assert_eq!(open(&mut o, r4).unwrap().1, b"4");
    assert_eq!(open(&mut o, r2).unwrap().1, b"2");
    assert_eq!(open(&mut o, ku1).unwrap().0, FrameType::KeyUpdate);
    assert_eq!(open(&mut o, r0).unwrap().1, b"0");
    assert_eq!(o.generation(), 2);
}

#[test]
fn generations_too_far_ahead_or_forgotten_are_refused_unopened() {
    let (mut s, _) = pair(AeadId::Aes256Gcm, false);
    let mut o = Opener::new(AeadId::Aes256Gcm, Zeroizing::new([42u8; 32]), 1024, false);
    let early = seal(&mut s, FrameType::Data, b"gen 0");
    for _ in 0..MAX_GENERATIONS_AHEAD {
        key_update(&mut s);
    }
    let far = seal(&mut s, FrameType::Data, b"far");
    let far_copy = far.clone();
    key_update(&mut s);
    let too_far = seal(&mut s, FrameType::Data, b"too far");
    assert_eq!(
        open(&mut o, too_far),
        Err(RecordError::UnknownGeneration {
            counter: MAX_GENERATIONS_AHEAD + 3,
            epoch: (MAX_GENERATIONS_AHEAD + 1) as u8,
            current: 0
        })
    );
    assert_eq!(o.failures_this_key, 0, "nothing was opened");
    assert_eq!(open(&mut o, far).unwrap().1, b"far");
    assert_eq!(o.generation(), MAX_GENERATIONS_AHEAD);
    // Generation 0 is more than the older generations kept behind: a late record of it is
    // dropped (the delivery layer sends its message again).
    assert!(matches!(
        open(&mut o, early),
        Err(RecordError::UnknownGeneration { epoch: 0, .. })
    ));
    assert!(matches!(
        open(&mut o, far_copy),
        Err(RecordError::Replay(ReplayError::Duplicate(_)))
    ));
}

#[test]
fn older_generations_are_erased_once_the_window_passes_them() {
    let (mut s, mut o) = pair(AeadId::Aes256Gcm, false);
    let ku = key_update(&mut s);
    open(&mut o, ku).unwrap();
    assert_eq!(o.older.len(), 1);
    for _ in 0..64 {
        let r = seal(&mut s, FrameType::Data, b"x");
        open(&mut o, r).unwrap();
    }
    assert!(
        o.older.is_empty(),
        "generation 0 ended at counter 0, below the window"
    );
}

#[test]
fn generation_reconstruction_follows_the_closest_value() {
    assert_eq!(reconstruct_generation(0, 0), Some(0));
    assert_eq!(reconstruct_generation(0, 3), Some(3));
    assert_eq!(reconstruct_generation(0, 0xff), None);
    assert_eq!(reconstruct_generation(300, 44), Some(300));
    assert_eq!(reconstruct_generation(300, 43), Some(299));
    assert_eq!(reconstruct_generation(255, 0), Some(256));
    assert_eq!(reconstruct_generation(256, 0xff), Some(255));
    assert_eq!(
        reconstruct_generation(1000, (1000u64 + 127) as u8),
        Some(1127)
    );
    assert_eq!(
        reconstruct_generation(1000, (1000u64 - 128) as u8),
        Some(872)
    );
}

#[test]
fn ordered_transport_keeps_the_three_byte_header() {
    let (mut s, mut o) = pair(AeadId::Aes256Gcm, true);
    let ku = key_update(&mut s);
    let after = seal(&mut s, FrameType::Data, b"after");
    assert_eq!(&after[..3], &[0x10, 0, 1]);
    assert_eq!(
        open(&mut o, after.clone()),
        Err(RecordError::OutOfOrder {
            expected: 0,
            got: 1
        })
    );
    open(&mut o, ku).unwrap();
    assert_eq!(open(&mut o, after).unwrap().1, b"after");
    assert!(o.older.is_empty() && o.ahead.is_empty());
}
