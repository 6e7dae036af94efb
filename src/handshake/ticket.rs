//! Server-side resumption tickets (protocol.md §7.6): the ticket keys, one per period, sealing
//! and opening tickets, and the replay cache of tickets already used. Stateless apart from the
//! replay cache: the ticket carries everything the server needs, sealed under a key only the
//! server holds. Time is passed in (`SystemTime`); nothing here reads a clock.

use crate::crypto::aead::{AeadId, SivKey, TAG_LEN};
use crate::crypto::identity::{PublicIdentity, PUBLIC_KEY_LEN};
use crate::crypto::kdf::{expand_secret, Secret, HASH_LEN};
use crate::crypto::kem::Suite;
use crate::crypto::random::Random;
use crate::crypto::CryptoError;
use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use zeroize::Zeroizing;

/// Longest ticket lifetime: 7 days, as in TLS 1.3 (RFC 8446 §4.6.1).
pub const MAX_LIFETIME_SECS: u32 = 7 * 24 * 3600;
/// Default ticket lifetime (and ticket-key period): 24 hours.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Default bound on the replay cache: tickets used and not yet expired.
pub const DEFAULT_REPLAY_CAPACITY: usize = 100_000;

/// Plaintext of a ticket: psk, device kind, device key, suite, AEAD, expiry.
const CONTENTS_LEN: usize = HASH_LEN + 1 + PUBLIC_KEY_LEN + 1 + 1 + 4;
/// A reference ticket: key id and the sealed contents (protocol.md §7.6).
pub const TICKET_LEN: usize = 1 + CONTENTS_LEN + TAG_LEN;

/// Why the server refused a ticket (alert `ticket_rejected`, protocol.md §6.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TicketRejection {
    /// The server issues no tickets (no [`Resumption`] configured).
    #[error("this server does not resume sessions")]
    NotOffered,
    /// The key id is neither the current period's nor the previous one's.
    #[error("ticket key {0} is unknown (older than two periods, or from another server)")]
    UnknownKey(u8),
    /// The ticket does not open under its key: forged, altered, or of another length.
    #[error("ticket does not authenticate (forged or altered)")]
    Forged,
    /// The ticket's expiry has passed.
    #[error("ticket expired")]
    Expired,
    /// The server's mode no longer accepts the ticket's suite.
    #[error("the ticket's suite {0} is no longer accepted by this server")]
    Suite(&'static str),
    /// The server no longer supports the ticket's AEAD.
    #[error("the ticket's AEAD {0} is no longer supported by this server")]
    Aead(AeadId),
    /// The binder does not verify: the sender does not hold the ticket's PSK, or the hello
    /// was altered.
    #[error("resumption binder does not verify")]
    Binder,
    /// The ticket was used before.
    #[error("ticket already used (replayed)")]
    Replayed,
    /// The replay cache is full of unexpired tickets; refusing is the safe answer.
    #[error("replay cache full ({0} unexpired tickets): resumption refused until tickets expire")]
    CacheFull(usize),
}

/// Seconds since the Unix epoch, saturating into `u32` (tickets expire before 2106).
fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// key_{p+1} = Expand(key_p, "ticket key ratchet", 32) (protocol.md §7.6).
pub(crate) fn ratchet(key: &Secret) -> Secret {
    expand_secret(key, "ticket key ratchet")
}

/// The ticket keys: the current period's and, once it exists, the previous period's. A
/// ticket sealed in period p opens in p and p + 1.
pub struct TicketKeys {
    period: u64,
    previous: Option<Secret>,
    current: Secret,
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKeys")
            .field("period", &self.period)
            .finish_non_exhaustive()
    }
}

impl TicketKeys {
    /// Keys starting with 32 random bytes for `period` (tickets do not survive a restart).
    pub fn random(period: u64, rng: &mut dyn Random) -> Result<Self, CryptoError> {
        let mut key = Zeroizing::new([0u8; HASH_LEN]);
        rng.fill(key.as_mut())?;
        Ok(Self::from_key(period, &key))
    }

    /// Keys with `key` as `period`'s key and no previous one (test vectors use this).
    pub fn from_key(period: u64, key: &[u8; HASH_LEN]) -> Self {
        Self {
            period,
            previous: None,
            current: Zeroizing::new(*key),
        }
    }

    /// Keys for `period` and the one before it.
    pub(crate) fn from_pair(period: u64, previous: Secret, current: Secret) -> Self {
        Self {
            period,
            previous: Some(previous),
            current,
        }
    }

    /// The current period.
    pub fn period(&self) -> u64 {
        self.period
    }

    pub(crate) fn previous(&self) -> Option<&Secret> {
        self.previous.as_ref()
    }

    pub(crate) fn current(&self) -> &Secret {
        &self.current
    }

    /// Ratchets forward to `period` (nothing if it is not later): keys of earlier periods
    /// are erased.
    pub fn advance_to(&mut self, period: u64) {
        while self.period < period {
            let next = ratchet(&self.current);
            self.previous = Some(std::mem::replace(&mut self.current, next));
            self.period += 1;
        }
    }

    /// The key whose id is `key_id`: the current period's or the previous one's.
    fn key(&self, key_id: u8) -> Option<&Secret> {
        if self.period as u8 == key_id {
            return Some(&self.current);
        }
        let previous = self.period.checked_sub(1)?;
        self.previous.as_ref().filter(|_| previous as u8 == key_id)
    }
}

/// What a ticket says about the session that issued it.
pub(crate) struct TicketContents {
    pub psk: Secret,
    pub device: Option<PublicIdentity>,
    pub suite: &'static Suite,
    pub aead: AeadId,
    /// Seconds since the Unix epoch.
    pub expires: u32,
}

impl TicketContents {
    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(CONTENTS_LEN));
        out.extend_from_slice(self.psk.as_ref());
        out.push(u8::from(self.device.is_some()));
        out.extend_from_slice(&self.device.map_or([0; PUBLIC_KEY_LEN], |d| d.0));
        out.push(self.suite.id as u8);
        out.push(self.aead as u8);
        out.extend_from_slice(&self.expires.to_be_bytes());
        out
    }

    /// Decodes authenticated contents; anything unexpected is a ticket we did not make.
    fn decode(bytes: &[u8]) -> Result<Self, TicketRejection> {
        let mut r = crate::codec::Reader::new(bytes);
        let f = |_| TicketRejection::Forged;
        let psk = Zeroizing::new(r.array::<HASH_LEN>("psk").map_err(f)?);
        let kind = r.u8("device kind").map_err(f)?;
        let public = r.array::<PUBLIC_KEY_LEN>("device").map_err(f)?;
        let suite = Suite::from_id(r.u8("suite").map_err(f)?).ok_or(TicketRejection::Forged)?;
        let aead = AeadId::from_u8(r.u8("aead").map_err(f)?).ok_or(TicketRejection::Forged)?;
        let expires = u32::from_be_bytes(r.array("expires").map_err(f)?);
        r.finish().map_err(f)?;
        let device = match kind {
            0 => None,
            1 => Some(PublicIdentity(public)),
            _ => return Err(TicketRejection::Forged),
        };
        Ok(Self {
            psk,
            device,
            suite,
            aead,
            expires,
        })
    }
}

/// Tickets already used, until they expire: each is accepted once. Keyed by the ticket's
/// tag, which is unique per ticket.
#[derive(Debug, Default)]
struct ReplayCache {
    seen: HashSet<[u8; TAG_LEN]>,
    by_expiry: BTreeSet<(u32, [u8; TAG_LEN])>,
}

impl ReplayCache {
    /// Records `tag` as used; refuses it if it was, or if `capacity` unexpired tickets are
    /// held (after dropping the expired ones).
    fn insert(
        &mut self,
        tag: [u8; TAG_LEN],
        expires: u32,
        now: u64,
        capacity: usize,
    ) -> Result<(), TicketRejection> {
        if self.seen.contains(&tag) {
            return Err(TicketRejection::Replayed);
        }
        while let Some(&(e, t)) = self.by_expiry.first() {
            if u64::from(e) > now {
                break;
            }
            self.by_expiry.pop_first();
            self.seen.remove(&t);
        }
        if self.seen.len() >= capacity {
            return Err(TicketRejection::CacheFull(self.seen.len()));
        }
        self.seen.insert(tag);
        self.by_expiry.insert((expires, tag));
        Ok(())
    }
}

/// A server's resumption state: ticket keys, lifetime and replay cache. Shared by every
/// connection (`Arc`); its locks are held only for a hash-table update or a key ratchet.
pub struct Resumption {
    lifetime: u32,
    keys: Mutex<TicketKeys>,
    replay: Mutex<ReplayCache>,
    capacity: usize,
}

impl std::fmt::Debug for Resumption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resumption")
            .field("lifetime", &self.lifetime)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// A ticket lifetime out of range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("ticket lifetime must be 1 to {MAX_LIFETIME_SECS} seconds, not {0}")]
pub struct LifetimeError(pub u64);

/// Why resumption state could not be set up: a lifetime out of range, the random generator,
/// or the ticket key file (`ticket_file`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TicketKeyError {
    /// The lifetime is out of range.
    #[error(transparent)]
    Lifetime(#[from] LifetimeError),
    /// The random generator failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The key file could not be read or written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The key file can be read by group or others.
    #[error("ticket key file is readable by other users (mode {mode:o}): chmod 600 it")]
    Permissions {
        /// Its permission bits.
        mode: u32,
    },
    /// The key file is malformed.
    #[error("not a secchan ticket key file: {0}")]
    Format(&'static str),
    /// The key file was made for another ticket lifetime (its periods would mean other times).
    #[error("ticket key file was made for a {file} s ticket lifetime, not {configured} s: pass that lifetime, or delete the file to start new keys")]
    LifetimeMismatch {
        /// The file's lifetime.
        file: u32,
        /// The configured one.
        configured: u32,
    },
}

/// Checks a lifetime and returns it in seconds.
pub fn lifetime_secs(lifetime: Duration) -> Result<u32, LifetimeError> {
    let secs = lifetime.as_secs();
    u32::try_from(secs)
        .ok()
        .filter(|s| (1..=MAX_LIFETIME_SECS).contains(s))
        .ok_or(LifetimeError(secs))
}

impl Resumption {
    /// Resumption with `keys`; the ticket lifetime is also the key period.
    pub fn new(keys: TicketKeys, lifetime: Duration) -> Result<Self, LifetimeError> {
        Ok(Self {
            lifetime: lifetime_secs(lifetime)?,
            keys: Mutex::new(keys),
            replay: Mutex::new(ReplayCache::default()),
            capacity: DEFAULT_REPLAY_CAPACITY,
        })
    }

    /// Resumption with random keys held only in memory: tickets do not survive a restart.
    pub fn random(
        lifetime: Duration,
        wall_now: SystemTime,
        rng: &mut dyn Random,
    ) -> Result<Self, TicketKeyError> {
        let keys = TicketKeys::random(period_of(wall_now, lifetime_secs(lifetime)?), rng)?;
        Ok(Self::new(keys, lifetime)?)
    }

    /// Bounds the replay cache at `capacity` unexpired tickets (default 100,000). When it is
    /// full, resumption is refused (the device falls back to a full handshake).
    pub fn with_replay_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// The ticket lifetime, in seconds.
    pub fn lifetime_secs(&self) -> u32 {
        self.lifetime
    }

    fn keys_at(&self, wall_now: SystemTime) -> std::sync::MutexGuard<'_, TicketKeys> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.advance_to(period_of(wall_now, self.lifetime));
        keys
    }

    /// Seals a ticket for a session: `key_id || AES-256-GCM-SIV(key, nonce 0, aad key_id,
    /// contents)`.
    pub(crate) fn seal(
        &self,
        psk: &Secret,
        device: Option<PublicIdentity>,
        suite: &'static Suite,
        aead: AeadId,
        wall_now: SystemTime,
    ) -> Result<Vec<u8>, CryptoError> {
        let expires = unix_secs(wall_now).saturating_add(u64::from(self.lifetime));
        let contents = TicketContents {
            psk: psk.clone(),
            device,
            suite,
            aead,
            expires: u32::try_from(expires).unwrap_or(u32::MAX),
        };
        let keys = self.keys_at(wall_now);
        let key_id = keys.period as u8;
        let mut ticket = Vec::with_capacity(TICKET_LEN);
        ticket.push(key_id);
        SivKey::new(keys.current())?.seal(&[key_id], &contents.encode(), &mut ticket)?;
        Ok(ticket)
    }

    /// protocol.md §6.4 steps 2–4: the key id is known, the ticket opens, it has not expired.
    pub(crate) fn open(
        &self,
        ticket: &[u8],
        wall_now: SystemTime,
    ) -> Result<TicketContents, TicketRejection> {
        let (&key_id, sealed) = ticket.split_first().ok_or(TicketRejection::Forged)?;
        let plain = {
            let keys = self.keys_at(wall_now);
            let key = keys
                .key(key_id)
                .ok_or(TicketRejection::UnknownKey(key_id))?;
            if ticket.len() != TICKET_LEN {
                return Err(TicketRejection::Forged);
            }
            SivKey::new(key)
                .and_then(|k| k.open(&[key_id], sealed))
                .map_err(|_| TicketRejection::Forged)?
        };
        let contents = TicketContents::decode(&plain)?;
        if unix_secs(wall_now) >= u64::from(contents.expires) {
            return Err(TicketRejection::Expired);
        }
        Ok(contents)
    }

    /// protocol.md §6.4 step 7: records the ticket as used; refuses a replay.
    pub(crate) fn mark_used(
        &self,
        ticket: &[u8],
        expires: u32,
        wall_now: SystemTime,
    ) -> Result<(), TicketRejection> {
        let mut tag = [0u8; TAG_LEN];
        let start = ticket
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(TicketRejection::Forged)?;
        tag.copy_from_slice(ticket.get(start..).ok_or(TicketRejection::Forged)?);
        self.replay
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tag, expires, unix_secs(wall_now), self.capacity)
    }
}

/// The key period `wall_now` falls in: whole lifetimes since the Unix epoch.
pub fn period_of(wall_now: SystemTime, lifetime_secs: u32) -> u64 {
    unix_secs(wall_now) / u64::from(lifetime_secs.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::kem::{X25519_MLKEM768, X25519_ONLY};

    const DAY: u64 = 86_400;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn resumption(period: u64) -> Resumption {
        Resumption::new(TicketKeys::from_key(period, &[4; 32]), DEFAULT_LIFETIME).unwrap()
    }

    fn seal(r: &Resumption, now: SystemTime) -> Vec<u8> {
        let device = Some(PublicIdentity([9; 32]));
        r.seal(
            &Zeroizing::new([1; 32]),
            device,
            &X25519_MLKEM768,
            AeadId::Aes256Gcm,
            now,
        )
        .unwrap()
    }

    #[test]
    fn ticket_round_trip_carries_the_session() {
        let r = resumption(100);
        let now = at(100 * DAY + 5);
        let t = seal(&r, now);
        assert_eq!(seal(&r, now), t, "deterministic: no nonce travels");
        assert_eq!(t.len(), TICKET_LEN);
        assert_eq!(t[0], 100);
        let c = r.open(&t, now).unwrap();
        assert_eq!(*c.psk, [1; 32]);
        assert_eq!(c.device, Some(PublicIdentity([9; 32])));
        assert_eq!(c.suite.name, "X25519MLKEM768");
        assert_eq!(c.aead, AeadId::Aes256Gcm);
        assert_eq!(u64::from(c.expires), 101 * DAY + 5);
        let anon = r
            .seal(
                &Zeroizing::new([2; 32]),
                None,
                &X25519_ONLY,
                AeadId::ChaCha20Poly1305,
                now,
            )
            .unwrap();
        assert_eq!(anon.len(), TICKET_LEN, "anonymous tickets look alike");
        assert_eq!(r.open(&anon, now).unwrap().device, None);
    }

    #[test]
    fn forged_tickets_are_refused() {
        let r = resumption(100);
        let now = at(100 * DAY);
        let t = seal(&r, now);
        for i in 1..t.len() {
            let mut f = t.clone();
            f[i] ^= 0x20;
            assert_eq!(
                r.open(&f, now).err(),
                Some(TicketRejection::Forged),
                "byte {i}"
            );
        }
        assert_eq!(
            r.open(&t[..t.len() - 1], now).err(),
            Some(TicketRejection::Forged)
        );
        assert_eq!(r.open(&[], now).err(), Some(TicketRejection::Forged));
        // Another server's keys: same period, different key.
        let other = Resumption::new(TicketKeys::from_key(100, &[5; 32]), DEFAULT_LIFETIME).unwrap();
        assert_eq!(other.open(&t, now).err(), Some(TicketRejection::Forged));
    }

    #[test]
    fn key_id_must_be_current_or_previous_period() {
        let r = resumption(100);
        let t = seal(&r, at(100 * DAY + 10));
        let mut unknown = t.clone();
        unknown[0] = 42;
        assert_eq!(
            r.open(&unknown, at(100 * DAY)).err(),
            Some(TicketRejection::UnknownKey(42))
        );
        // Period 101: the ticket (period 100, expiring at 101 days + 10 s) still opens.
        assert!(r.open(&t, at(101 * DAY + 9)).is_ok());
        assert_eq!(
            r.open(&t, at(101 * DAY + 10)).err(),
            Some(TicketRejection::Expired)
        );
        // Two periods later its key is gone, whatever the expiry says.
        assert_eq!(
            r.open(&t, at(102 * DAY)).err(),
            Some(TicketRejection::UnknownKey(100))
        );
    }

    #[test]
    fn expiry_is_checked_with_the_time_passed_in() {
        let r = resumption(100);
        let t = seal(&r, at(100 * DAY));
        assert!(r.open(&t, at(101 * DAY - 1)).is_ok());
        assert_eq!(
            r.open(&t, at(101 * DAY)).err(),
            Some(TicketRejection::Expired)
        );
    }

    #[test]
    fn ratchet_is_deterministic_and_forward_only() {
        let mut a = TicketKeys::from_key(7, &[1; 32]);
        let mut b = TicketKeys::from_key(7, &[1; 32]);
        a.advance_to(9);
        b.advance_to(8);
        b.advance_to(9);
        b.advance_to(3);
        assert_eq!(b.period(), 9);
        assert_eq!(*a.current(), *b.current());
        // key_8 = ratchet(key_7), key_9 = ratchet(key_8).
        assert_eq!(**a.previous().unwrap(), *ratchet(&Zeroizing::new([1; 32])));
        assert_eq!(**a.current(), *ratchet(&ratchet(&Zeroizing::new([1; 32]))));
        assert_eq!(a.key(9), Some(a.current()));
        assert!(a.key(8).is_some());
        assert!(a.key(7).is_none());
        // Period 0 has no previous period.
        assert!(TicketKeys::from_key(0, &[1; 32]).key(255).is_none());
    }

    #[test]
    fn replay_cache_accepts_each_ticket_once_and_forgets_expired_ones() {
        let r = resumption(0).with_replay_capacity(2);
        let (a, b, c) = (seal(&r, at(10)), seal(&r, at(11)), seal(&r, at(12)));
        let exp = |t: &[u8]| r.open(t, at(20)).unwrap().expires;
        r.mark_used(&a, exp(&a), at(20)).unwrap();
        assert_eq!(
            r.mark_used(&a, exp(&a), at(21)),
            Err(TicketRejection::Replayed)
        );
        r.mark_used(&b, exp(&b), at(20)).unwrap();
        assert_eq!(
            r.mark_used(&c, exp(&c), at(20)),
            Err(TicketRejection::CacheFull(2))
        );
        // Once `a` has expired its entry is dropped, making room.
        r.mark_used(&c, exp(&c), at(DAY + 10)).unwrap();
    }

    #[test]
    fn lifetimes_are_bounded() {
        assert!(lifetime_secs(Duration::ZERO).is_err());
        assert!(lifetime_secs(Duration::from_secs(u64::from(MAX_LIFETIME_SECS) + 1)).is_err());
        assert_eq!(lifetime_secs(Duration::from_secs(60)), Ok(60));
    }
}
