//! The record layer (protocol.md §7): one [`Sealer`] and one [`Opener`] per session, each
//! owning one direction's traffic secret, counter and key-update state.
//!
//! Two layouts: on ordered transports (TCP) a record is `type || seq[2] || ciphertext`; on
//! unordered ones (MQTT, new in version 2) `type || epoch || seq[2] || ciphertext`, where the
//! epoch is the low byte of the sender's key generation, so a receiver picks the right key
//! even when KeyUpdate records are lost or reordered (protocol.md §7.5).

mod opener;
mod rejected;
pub mod replay;

pub use opener::{reconstruct_counter, Opened, Opener, MAX_GENERATIONS_AHEAD};
pub use rejected::Rejected;

use crate::codec::DecodeError;
use crate::crypto::aead::{AeadId, AeadKey, KEY_LEN, NONCE_LEN, SOFT_LIMIT_RECORDS, TAG_LEN};
use crate::crypto::kdf::{expand_label, expand_secret, Secret};
use crate::msgs::FrameType;
use replay::ReplayError;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Largest application payload in one record: 2^14 bytes, as in TLS 1.3.
pub const MAX_PAYLOAD: usize = 16 * 1024;
/// Bytes a record adds in front of the ciphertext on an ordered transport: frame type (1)
/// and sequence (2).
pub const HEADER_LEN: usize = 3;
/// Bytes a record adds to its payload on an ordered transport, before transport framing:
/// header and tag.
pub const RECORD_OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Largest record on an ordered transport: header, payload, tag.
pub const MAX_RECORD_LEN: usize = HEADER_LEN + MAX_PAYLOAD + TAG_LEN;
/// Header of a record on an unordered transport: frame type (1), key epoch (1), sequence (2).
pub const UNORDERED_HEADER_LEN: usize = HEADER_LEN + 1;
/// Bytes a record adds to its payload on an unordered transport: header and tag.
pub const UNORDERED_RECORD_OVERHEAD: usize = UNORDERED_HEADER_LEN + TAG_LEN;
/// Largest record on an unordered transport.
pub const MAX_UNORDERED_RECORD_LEN: usize = UNORDERED_HEADER_LEN + MAX_PAYLOAD + TAG_LEN;

/// The record header length for a transport that is `ordered` or not.
pub const fn header_len(ordered: bool) -> usize {
    if ordered {
        HEADER_LEN
    } else {
        UNORDERED_HEADER_LEN
    }
}

/// Why a record could not be sealed or opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
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
    /// On an unordered transport, a record whose key epoch names a generation this receiver
    /// no longer keeps, or one more than [`MAX_GENERATIONS_AHEAD`] ahead (protocol.md §7.5).
    #[error("record {counter} names key epoch {epoch}, a generation this receiver does not hold (its current one is {current})")]
    UnknownGeneration {
        /// The record's counter.
        counter: u64,
        /// The record's epoch byte.
        epoch: u8,
        /// The receiver's current generation.
        current: u64,
    },
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
    /// Key generation of `keys`: 0 after the handshake, one more per key update.
    generation: u64,
    ordered: bool,
    next: u64,
    records_this_key: u64,
    bytes_this_key: u64,
    key_since: Instant,
    policy: KeyUpdatePolicy,
}

impl Sealer {
    /// A sealer for `aead` starting at counter 0 with the given traffic secret, writing the
    /// record layout of an `ordered` transport or of an unordered one.
    pub fn new(
        aead: AeadId,
        secret: Secret,
        policy: KeyUpdatePolicy,
        ordered: bool,
        now: Instant,
    ) -> Self {
        Self {
            keys: TrafficKeys::new(aead, secret),
            generation: 0,
            ordered,
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

    /// The key generation the next record is sealed under.
    pub fn generation(&self) -> u64 {
        self.generation
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
        // The wire carries the low 16 bits; the nonce binds all 64 (protocol.md §7.1). On an
        // unordered transport the epoch (the generation's low byte) comes first.
        let seq = (counter as u16).to_be_bytes();
        let epoch = self.generation as u8;
        let header: &[u8] = if self.ordered {
            &[ty as u8, seq[0], seq[1]]
        } else {
            &[ty as u8, epoch, seq[0], seq[1]]
        };
        let start = out.len();
        out.reserve(header.len() + TAG_LEN + payload.len());
        out.extend_from_slice(header);
        out.extend_from_slice(payload);
        if self
            .keys
            .key
            .seal_in_place(self.keys.nonce(counter), header, out, start + header.len())
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
        self.generation += 1;
        self.records_this_key = 0;
        self.bytes_this_key = 0;
        self.key_since = now;
    }
}

#[cfg(test)]
mod tests;
