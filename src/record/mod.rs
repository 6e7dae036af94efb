//! The record layer (protocol.md §7): one [`Sealer`] and one [`Opener`] per session, each
//! owning one direction's traffic secret, counter and key-update state.

pub mod replay;

use crate::codec::{DecodeError, Reader};
use crate::crypto::aead::{
    AeadId, AeadKey, INTEGRITY_LIMIT_FAILURES, KEY_LEN, NONCE_LEN, SOFT_LIMIT_RECORDS, TAG_LEN,
};
use crate::crypto::kdf::{expand_label, expand_secret, Secret};
use crate::msgs::FrameType;
use replay::{ReplayError, ReplayWindow};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Largest application payload in one record: 2^14 bytes, as in TLS 1.3.
pub const MAX_PAYLOAD: usize = 16 * 1024;
/// Bytes a record adds in front of the ciphertext: frame type (1) and sequence (2).
pub const HEADER_LEN: usize = 3;
/// Bytes a record adds to its payload, before transport framing: header and tag.
pub const RECORD_OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Largest record: header, payload, tag.
pub const MAX_RECORD_LEN: usize = HEADER_LEN + MAX_PAYLOAD + TAG_LEN;

/// Why a record could not be sealed or opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The record's framing was malformed.
    #[error("malformed record: {0}")]
    Decode(#[from] DecodeError),
    /// A counter the window has already seen, or one too old for it.
    #[error(transparent)]
    Replay(#[from] ReplayError),
    /// On an in-order transport, a record arrived with a counter other than the next one.
    #[error("record {got} arrived where {expected} was due: records were dropped or reordered")]
    OutOfOrder {
        /// The counter due next.
        expected: u64,
        /// The counter received.
        got: u64,
    },
    /// The tag did not verify: the record was forged, altered or sealed under another key.
    #[error("record {0} failed authentication (tampered, or sealed under another key)")]
    BadTag(u64),
    /// A payload above [`MAX_PAYLOAD`].
    #[error("payload of {0} bytes exceeds the {max} byte record limit", max = MAX_PAYLOAD)]
    PayloadTooLarge(usize),
    /// The sender reached its AEAD hard limit without a key update (protocol.md §7.4).
    #[error("AEAD hard limit reached under one key: the session must close")]
    HardLimit,
    /// Too many records failed authentication under one key (protocol.md §7.4).
    #[error("too many forged records under one key: the session must close")]
    IntegrityLimit,
}

/// When a sender rotates its traffic key (protocol.md §7.5). The AEAD soft limit applies
/// regardless.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyUpdatePolicy {
    /// Rotate after this many records under one key.
    pub max_records: u64,
    /// Rotate after this many payload bytes under one key.
    pub max_bytes: u64,
    /// Rotate after a key has been in use this long.
    pub max_age: Option<Duration>,
}

impl Default for KeyUpdatePolicy {
    /// 2^23 records (the AEAD soft limit), 1 GiB, or one hour, whichever comes first.
    fn default() -> Self {
        Self {
            max_records: SOFT_LIMIT_RECORDS,
            max_bytes: 1 << 30,
            max_age: Some(Duration::from_secs(3600)),
        }
    }
}

/// One direction's keys, derived from its traffic secret (protocol.md §5.4).
struct TrafficKeys {
    secret: Secret,
    key: AeadKey,
    iv: Zeroizing<[u8; NONCE_LEN]>,
}

impl TrafficKeys {
    fn new(aead: AeadId, secret: Secret) -> Self {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        expand_label(&secret, "key", key.as_mut());
        let mut iv = Zeroizing::new([0u8; NONCE_LEN]);
        expand_label(&secret, "iv", iv.as_mut());
        let key = AeadKey::new(aead, &key)
            .unwrap_or_else(|_| unreachable!("both AEADs take 32-byte keys"));
        Self { secret, key, iv }
    }

    /// The next generation: secret' = HKDF-Expand(secret, "secchan v1 key update", 32). The
    /// old secret is erased when `self` drops.
    fn next(&self) -> Self {
        Self::new(self.key.id(), expand_secret(&self.secret, "key update"))
    }

    /// nonce = iv XOR (0^32 || counter as 64-bit big-endian).
    fn nonce(&self, counter: u64) -> [u8; NONCE_LEN] {
        let mut n = *self.iv;
        for (b, c) in n[4..].iter_mut().zip(counter.to_be_bytes()) {
            *b ^= c;
        }
        n
    }
}

/// Seals outgoing records for one direction.
pub struct Sealer {
    keys: TrafficKeys,
    next: u64,
    records_this_key: u64,
    bytes_this_key: u64,
    key_since: Instant,
    policy: KeyUpdatePolicy,
}

impl Sealer {
    /// A sealer for `aead` starting at counter 0 with the given traffic secret.
    pub fn new(aead: AeadId, secret: Secret, policy: KeyUpdatePolicy, now: Instant) -> Self {
        Self {
            keys: TrafficKeys::new(aead, secret),
            next: 0,
            records_this_key: 0,
            bytes_this_key: 0,
            key_since: now,
            policy,
        }
    }

    /// The counter the next record will carry.
    pub fn next_counter(&self) -> u64 {
        self.next
    }

    /// Whether the policy or the AEAD soft limit asks for a key update before the next record.
    pub fn wants_key_update(&self, now: Instant) -> bool {
        self.records_this_key >= self.policy.max_records.min(SOFT_LIMIT_RECORDS)
            || self.bytes_this_key >= self.policy.max_bytes
            || self
                .policy
                .max_age
                .is_some_and(|age| now.saturating_duration_since(self.key_since) >= age)
    }

    /// Appends one sealed record of type `ty` carrying `payload` to `out`.
    pub fn seal(
        &mut self,
        ty: FrameType,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(RecordError::PayloadTooLarge(payload.len()));
        }
        if self.records_this_key >= self.keys.key.id().hard_limit_records() {
            return Err(RecordError::HardLimit);
        }
        let counter = self.next;
        // Checked before anything is written: on any error `out` is left as it was.
        let next = counter.checked_add(1).ok_or(RecordError::HardLimit)?;
        // The wire carries the low 16 bits; the nonce binds all 64 (protocol.md §7.1).
        let seq = (counter as u16).to_be_bytes();
        let header = [ty as u8, seq[0], seq[1]];
        let start = out.len();
        out.reserve(RECORD_OVERHEAD + payload.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(payload);
        if self
            .keys
            .key
            .seal_in_place(self.keys.nonce(counter), &header, out, start + HEADER_LEN)
            .is_err()
        {
            out.truncate(start);
            return Err(RecordError::HardLimit);
        }
        self.next = next;
        self.records_this_key += 1;
        self.bytes_this_key = self.bytes_this_key.saturating_add(payload.len() as u64);
        Ok(())
    }

    /// Switches to the next key generation. Call right after sealing a KeyUpdate record.
    pub fn update_key(&mut self, now: Instant) {
        self.keys = self.keys.next();
        self.records_this_key = 0;
        self.bytes_this_key = 0;
        self.key_since = now;
    }
}

/// The previous key generation, kept on unordered transports for records sealed before a key
/// update that arrive after it.
struct PreviousKeys {
    keys: TrafficKeys,
    /// Counter of the KeyUpdate record: the last one sealed under these keys.
    last: u64,
}

/// Opens incoming records for one direction.
pub struct Opener {
    keys: TrafficKeys,
    /// First counter sealed under `keys`.
    keys_from: u64,
    previous: Option<PreviousKeys>,
    /// On unordered transports, the generation after `keys`, derived when first needed: for
    /// records sealed under it that arrive before the KeyUpdate record starting it.
    next: Option<TrafficKeys>,
    /// Whether a record has been opened with `next` (its KeyUpdate record is still missing).
    next_in_use: bool,
    window: ReplayWindow,
    ordered: bool,
    failures_this_key: u64,
}

/// An opened record: its type and where its plaintext lies in the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// Record type.
    pub ty: FrameType,
    /// The record's 64-bit counter.
    pub counter: u64,
    /// Plaintext range within the frame passed to [`Opener::open`].
    pub plaintext: std::ops::Range<usize>,
}

/// Recovers the 64-bit counter closest to `expected` whose low 16 bits are `seq`
/// (protocol.md §7.2, after RFC 9147 §4.2.2).
pub fn reconstruct_counter(expected: u64, seq: u16) -> u64 {
    const SPAN: u64 = 1 << 16;
    const HALF: u64 = 1 << 15;
    let candidate = (expected & !(SPAN - 1)) | u64::from(seq);
    if candidate.saturating_add(HALF) <= expected && candidate <= u64::MAX - SPAN {
        candidate + SPAN
    } else if candidate > expected.saturating_add(HALF) && candidate >= SPAN {
        candidate - SPAN
    } else {
        candidate
    }
}

impl Opener {
    /// An opener for `aead` with the given traffic secret. `ordered` is true on TCP, where any
    /// gap or repeat is fatal; false on MQTT, where the window absorbs reordering.
    pub fn new(aead: AeadId, secret: Secret, window: usize, ordered: bool) -> Self {
        Self {
            keys: TrafficKeys::new(aead, secret),
            keys_from: 0,
            previous: None,
            next: None,
            next_in_use: false,
            window: ReplayWindow::new(window),
            ordered,
            failures_this_key: 0,
        }
    }

    /// Whether any gap or repeat is fatal (an in-order transport).
    pub fn is_ordered(&self) -> bool {
        self.ordered
    }

    /// The replay window (for inspection and tests).
    pub fn window(&self) -> &ReplayWindow {
        &self.window
    }

    /// Verifies and decrypts one record in place (protocol.md §7.3 lists the checks in order).
    /// On error nothing changes, except the count of failed authentications.
    pub fn open(&mut self, frame: &mut [u8]) -> Result<Opened, RecordError> {
        let (ty, seq) = {
            let mut r = Reader::new(frame);
            let ty = FrameType::of(r.take(1, "record type")?)?;
            if !ty.is_record() {
                return Err(DecodeError::InvalidValue {
                    field: "record type",
                    value: ty as u8,
                }
                .into());
            }
            let seq = r.u16("record sequence")?;
            if r.rest().len() < TAG_LEN {
                return Err(DecodeError::Truncated {
                    field: "record tag",
                    needed: TAG_LEN,
                }
                .into());
            }
            (ty, seq)
        };
        let expected = self.window.next_expected();
        let counter = reconstruct_counter(expected, seq);
        self.window.check(counter)?;
        if self.ordered && counter != expected {
            return Err(RecordError::OutOfOrder {
                expected,
                got: counter,
            });
        }
        let keys = match &self.previous {
            Some(p) if counter < self.keys_from && counter <= p.last => &p.keys,
            _ => &self.keys,
        };
        // protocol.md §7.5: on an unordered transport, a data or close record above the last
        // KeyUpdate seen may be sealed under the next generation if its KeyUpdate was
        // delayed. That can only be so after a gap, or once such a record has been seen: only
        // then is the ciphertext kept, since a failed open overwrites it.
        let may_be_next = !self.ordered
            && ty != FrameType::KeyUpdate
            && counter >= self.keys_from
            && (counter > expected || self.next_in_use);
        let (header, body) = frame
            .split_at_mut_checked(HEADER_LEN)
            .ok_or(DecodeError::Empty)?;
        let sealed = may_be_next.then(|| body.to_vec());
        let mut opened = keys
            .key
            .open_in_place(keys.nonce(counter), header, body)
            .ok();
        if let (None, Some(sealed)) = (opened, sealed) {
            body.copy_from_slice(&sealed);
            let next = self.next.get_or_insert_with(|| self.keys.next());
            opened = next
                .key
                .open_in_place(next.nonce(counter), header, body)
                .ok();
            self.next_in_use |= opened.is_some();
        }
        let Some(len) = opened else {
            self.failures_this_key += 1;
            if self.failures_this_key >= INTEGRITY_LIMIT_FAILURES {
                return Err(RecordError::IntegrityLimit);
            }
            return Err(RecordError::BadTag(counter));
        };
        if len > MAX_PAYLOAD {
            return Err(RecordError::PayloadTooLarge(len));
        }
        self.window.commit(counter);
        if ty == FrameType::KeyUpdate && counter >= self.keys_from {
            let next = self.next.take().unwrap_or_else(|| self.keys.next());
            let old = std::mem::replace(&mut self.keys, next);
            self.previous = (!self.ordered).then_some(PreviousKeys {
                keys: old,
                last: counter,
            });
            self.keys_from = counter + 1;
            self.next_in_use = false;
            self.failures_this_key = 0;
        }
        if self
            .previous
            .as_ref()
            .is_some_and(|p| p.last < self.window.floor())
        {
            self.previous = None;
        }
        Ok(Opened {
            ty,
            counter,
            plaintext: HEADER_LEN..HEADER_LEN + len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(aead: AeadId, ordered: bool) -> (Sealer, Opener) {
        let now = Instant::now();
        let secret = Zeroizing::new([42u8; 32]);
        (
            Sealer::new(aead, secret.clone(), KeyUpdatePolicy::default(), now),
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
    fn unordered_transport_opens_record_sealed_under_next_key_before_its_key_update() {
        let (mut s, mut o) = pair(AeadId::ChaCha20Poly1305, false);
        let early = seal(&mut s, FrameType::Data, b"early");
        let ku = seal(&mut s, FrameType::KeyUpdate, &[]);
        s.update_key(Instant::now());
        let first = seal(&mut s, FrameType::Data, b"first");
        let second = seal(&mut s, FrameType::Data, b"second");
        // Counters 2 and 3 (next generation) arrive before 0 and the KeyUpdate at 1.
        assert_eq!(open(&mut o, first).unwrap().1, b"first");
        assert_eq!(open(&mut o, second).unwrap().1, b"second");
        assert_eq!(open(&mut o, ku).unwrap().0, FrameType::KeyUpdate);
        assert_eq!(open(&mut o, early).unwrap().1, b"early");
        let third = seal(&mut s, FrameType::Data, b"third");
        assert_eq!(open(&mut o, third).unwrap().1, b"third");
        // A forgery after a gap fails under both generations: counted once, nothing moves.
        let _skipped = seal(&mut s, FrameType::Data, b"x");
        let mut forged = seal(&mut s, FrameType::Data, b"y");
        forged[4] ^= 1;
        assert_eq!(open(&mut o, forged), Err(RecordError::BadTag(6)));
        assert_eq!(o.failures_this_key, 1);
        assert_eq!(o.window().highest(), Some(4));
    }

    #[test]
    fn unordered_key_update_under_the_next_key_waits_for_its_predecessor() {
        // protocol.md §7.5: a KeyUpdate record is opened only with the generation it ends.
        let now = Instant::now();
        let (mut s, mut o) = pair(AeadId::Aes256Gcm, false);
        let ku1 = seal(&mut s, FrameType::KeyUpdate, &[]);
        s.update_key(now);
        let ku2 = seal(&mut s, FrameType::KeyUpdate, &[]);
        s.update_key(now);
        let data = seal(&mut s, FrameType::Data, b"gen 2");
        assert_eq!(open(&mut o, ku2.clone()), Err(RecordError::BadTag(1)));
        assert_eq!(open(&mut o, ku1).unwrap().0, FrameType::KeyUpdate);
        // A copy delivered after its predecessor (a broker's duplicate) opens and starts
        // generation 2.
        assert_eq!(open(&mut o, ku2).unwrap().0, FrameType::KeyUpdate);
        assert_eq!(open(&mut o, data).unwrap().1, b"gen 2");
    }

    #[test]
    fn ordered_transport_never_tries_the_next_key() {
        let (mut s, mut o) = pair(AeadId::Aes256Gcm, true);
        let _ku = seal(&mut s, FrameType::KeyUpdate, &[]);
        s.update_key(Instant::now());
        let after = seal(&mut s, FrameType::Data, b"after");
        assert_eq!(
            open(&mut o, after),
            Err(RecordError::OutOfOrder {
                expected: 0,
                got: 1
            })
        );
        assert!(o.next.is_none());
    }

    #[test]
    fn policy_requests_key_update() {
        let now = Instant::now();
        let policy = KeyUpdatePolicy {
            max_records: 2,
            max_bytes: u64::MAX,
            max_age: Some(Duration::from_secs(10)),
        };
        let mut s = Sealer::new(AeadId::Aes256Gcm, Zeroizing::new([1; 32]), policy, now);
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
        let mut s = Sealer::new(AeadId::Aes256Gcm, Zeroizing::new([1; 32]), policy, now);
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
}
