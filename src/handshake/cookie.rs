//! Stateless retry under load (protocol.md §4.8, §4.9, §6.5): instead of the ML-KEM
//! encapsulation, two X25519 operations and a signature a DeviceHello costs, a server under
//! load answers a DeviceHello with a CookieReply, which costs one HMAC and keeps no state.
//! The device sends the same DeviceHello again, wrapped in a CookieHello with the cookie, and
//! the server recomputes the cookie to check it.
//!
//! The reference cookie (§6.5) is a MAC over the source address and the DeviceHello, keyed by
//! a key that changes every [`COOKIE_PERIOD`]; a cookie is accepted in its period and the
//! next. It cannot be used from another address, with another hello, or two periods later.
//!
//! - Server: [`CookieJar::reply`] answers a hello; [`open_first`] looks at a first frame and
//!   checks the cookie a CookieHello carries.
//! - Device: [`retry`] turns a CookieReply into the CookieHello to send.

use super::HandshakeError;
use crate::crypto::kdf::{hmac_sha256_parts, HmacKey, Secret, HASH_LEN};
use crate::crypto::random::Random;
use crate::crypto::CryptoError;
use crate::msgs::{CookieHello, CookieReply, FrameType, COOKIE_LEN};
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// How long one cookie key is used (the reference server's; WireGuard rotates its cookie
/// secret every 120 s too). A cookie is accepted in its period and the next: for 120 to 240 s.
pub const COOKIE_PERIOD: Duration = Duration::from_secs(120);

/// `cookie_key = HMAC(cookie_master, COOKIE_KEY_LABEL || period [8])` (protocol.md §6.5).
const COOKIE_KEY_LABEL: &[u8] = b"secchan v1 cookie key";
/// `MAC = HMAC15(cookie_key, COOKIE_LABEL || address || DeviceHello)` (protocol.md §6.5).
const COOKIE_LABEL: &[u8] = b"secchan v1 cookie\0";

/// Why a cookie was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CookieError {
    /// Its key id names neither the current period nor the previous one.
    #[error("the cookie's key has been rotated out")]
    Expired,
    /// Its MAC does not verify for this address and hello: made for another address or
    /// another hello, or forged.
    #[error("the cookie was not made for this address and hello")]
    Invalid,
}

/// The server's cookie keys: a master secret, and the periods counted from `epoch`.
pub struct CookieJar {
    master: Secret,
    epoch: Instant,
    period: Duration,
    /// The key of the period last used, made ready: a flood of hellos in one period derives
    /// its key once.
    ready: Mutex<Option<(u64, HmacKey)>>,
}

impl std::fmt::Debug for CookieJar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieJar")
            .field("period", &self.period)
            .finish_non_exhaustive()
    }
}

impl CookieJar {
    /// A jar with `master` as its secret, counting periods of `period` (at least 1 s) from
    /// `epoch`.
    pub fn new(master: Secret, epoch: Instant, period: Duration) -> Self {
        Self {
            master,
            epoch,
            period: period.max(Duration::from_secs(1)),
            ready: Mutex::new(None),
        }
    }

    /// A jar with a random master secret (held in memory only: cookies need not survive a
    /// restart) and the reference period.
    pub fn random(rng: &mut dyn Random, epoch: Instant) -> Result<Self, CryptoError> {
        let mut master = Zeroizing::new([0u8; HASH_LEN]);
        rng.fill(master.as_mut())?;
        Ok(Self::new(master, epoch, COOKIE_PERIOD))
    }

    /// The period `now` falls in.
    pub fn period_at(&self, now: Instant) -> u64 {
        let secs = now.saturating_duration_since(self.epoch).as_secs();
        secs / self.period.as_secs().max(1)
    }

    /// The key of `period`.
    pub fn key(&self, period: u64) -> Secret {
        Zeroizing::new(hmac_sha256_parts(
            &self.master,
            &[COOKIE_KEY_LABEL, &period.to_be_bytes()],
        ))
    }

    /// The key of `period`, made ready (kept for the next call in the same period).
    fn ready_key(&self, period: u64) -> HmacKey {
        let mut ready = self.ready.lock().unwrap_or_else(PoisonError::into_inner);
        match &*ready {
            Some((p, key)) if *p == period => key.clone(),
            _ => {
                let key = HmacKey::new(&self.key(period));
                *ready = Some((period, key.clone()));
                key
            }
        }
    }

    fn cookie_in(&self, period: u64, source: IpAddr, hello: &[u8]) -> [u8; COOKIE_LEN] {
        let (address, len) = encode_address(source);
        let mac: [u8; COOKIE_LEN - 1] =
            self.ready_key(period)
                .mac_parts(&[COOKIE_LABEL, &address[..len], hello]);
        let mut cookie = [0u8; COOKIE_LEN];
        cookie[0] = period as u8;
        cookie[1..].copy_from_slice(&mac);
        cookie
    }

    /// The cookie for `hello` (a DeviceHello frame) from `source` at `now`.
    pub fn cookie(&self, source: IpAddr, hello: &[u8], now: Instant) -> [u8; COOKIE_LEN] {
        self.cookie_in(self.period_at(now), source, hello)
    }

    /// The CookieReply frame answering `hello` from `source` at `now`.
    pub fn reply(&self, source: IpAddr, hello: &[u8], now: Instant) -> Vec<u8> {
        CookieReply {
            cookie: self.cookie(source, hello, now),
        }
        .encode()
    }

    /// Checks a cookie a CookieHello from `source` carried with `hello` (protocol.md §6.5):
    /// its key id must name the current or the previous period, and its MAC (compared in
    /// constant time) must be that period's for this address and hello.
    pub fn check(
        &self,
        source: IpAddr,
        cookie: &[u8; COOKIE_LEN],
        hello: &[u8],
        now: Instant,
    ) -> Result<(), CookieError> {
        let current = self.period_at(now);
        let period = [Some(current), current.checked_sub(1)]
            .into_iter()
            .flatten()
            .find(|p| *p as u8 == cookie[0])
            .ok_or(CookieError::Expired)?;
        let expected = self.cookie_in(period, source, hello);
        if bool::from(expected.ct_eq(cookie)) {
            Ok(())
        } else {
            Err(CookieError::Invalid)
        }
    }
}

/// `address` of protocol.md §6.5: `0x04 || IPv4 [4]` or `0x06 || IPv6 [16]`, an IPv4-mapped
/// IPv6 address as the IPv4 address it maps (a dual-stack listener sees those); no port, so a
/// cookie works on the new connection the device opens.
pub fn encode_address(ip: IpAddr) -> ([u8; 17], usize) {
    let mut out = [0u8; 17];
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            out[0] = 0x04;
            out[1..5].copy_from_slice(&v4.octets());
            (out, 5)
        }
        IpAddr::V6(v6) => {
            out[0] = 0x06;
            out[1..].copy_from_slice(&v6.octets());
            (out, 17)
        }
    }
}

/// What a cookie a first frame carried came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CookieCheck {
    /// A plain DeviceHello: no cookie.
    Absent,
    /// A CookieHello whose cookie verified.
    Valid,
    /// A CookieHello whose cookie did not.
    Refused(CookieError),
}

/// A server's first frame, seen by what it would cost to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum First<'a> {
    /// A DeviceHello, alone or inside a CookieHello: a full handshake, the expensive kind.
    /// `hello` is the DeviceHello frame (what the handshake reads and the transcript hashes).
    Full {
        /// The DeviceHello frame.
        hello: &'a [u8],
        /// The cookie it came with.
        cookie: CookieCheck,
    },
    /// Any other frame (a ResumeHello, or something the handshake refuses): nothing here
    /// costs more than a cookie before the peer has proved something (protocol.md §6.4).
    Other(&'a [u8]),
}

/// Looks at a device's first frame and checks the cookie a CookieHello carries against
/// `source` at `now`. A malformed CookieHello is a decode error.
pub fn open_first<'a>(
    jar: &CookieJar,
    source: IpAddr,
    frame: &'a [u8],
    now: Instant,
) -> Result<First<'a>, HandshakeError> {
    Ok(match FrameType::of(frame)? {
        FrameType::DeviceHello => First::Full {
            hello: frame,
            cookie: CookieCheck::Absent,
        },
        FrameType::CookieHello => {
            let c = CookieHello::decode(frame)?;
            let cookie = match jar.check(source, &c.cookie, c.hello, now) {
                Ok(()) => CookieCheck::Valid,
                Err(e) => CookieCheck::Refused(e),
            };
            First::Full {
                hello: c.hello,
                cookie,
            }
        }
        _ => First::Other(frame),
    })
}

/// Device: if `reply` (the server's answer to `hello`) is a CookieReply, the CookieHello to
/// send on a new connection (protocol.md §6.1 step 2); `None` for any other frame.
pub fn retry(reply: &[u8], hello: &[u8]) -> Result<Option<Vec<u8>>, HandshakeError> {
    if FrameType::of(reply)? != FrameType::CookieReply {
        return Ok(None);
    }
    let CookieReply { cookie } = CookieReply::decode(reply)?;
    Ok(Some(CookieHello { cookie, hello }.encode()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::DecodeError;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const HELLO: &[u8] = b"\x01\x02\x03\x01\x02 any DeviceHello bytes";

    fn jar(now: Instant) -> CookieJar {
        CookieJar::new(Zeroizing::new([0x42; 32]), now, COOKIE_PERIOD)
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    #[test]
    fn a_cookie_is_bound_to_its_address_and_hello() {
        let t0 = Instant::now();
        let jar = jar(t0);
        let cookie = jar.cookie(ip(1), HELLO, t0);
        assert_eq!(jar.check(ip(1), &cookie, HELLO, t0), Ok(()));
        assert_eq!(
            jar.check(ip(2), &cookie, HELLO, t0),
            Err(CookieError::Invalid),
            "another address"
        );
        let other = [HELLO, b"!"].concat();
        assert_eq!(
            jar.check(ip(1), &cookie, &other, t0),
            Err(CookieError::Invalid),
            "another hello"
        );
        let mut forged = cookie;
        forged[15] ^= 1;
        assert_eq!(
            jar.check(ip(1), &forged, HELLO, t0),
            Err(CookieError::Invalid)
        );
        // A jar with another master secret (another server, or a restart) knows nothing.
        let stranger = CookieJar::new(Zeroizing::new([0x43; 32]), t0, COOKIE_PERIOD);
        assert_eq!(
            stranger.check(ip(1), &cookie, HELLO, t0),
            Err(CookieError::Invalid)
        );
    }

    #[test]
    fn a_cookie_lives_for_its_period_and_the_next_only() {
        let t0 = Instant::now();
        let jar = jar(t0);
        let cookie = jar.cookie(ip(1), HELLO, t0 + Duration::from_secs(119));
        assert_eq!(cookie[0], 0);
        let next = t0 + COOKIE_PERIOD + Duration::from_secs(119);
        assert_eq!(jar.check(ip(1), &cookie, HELLO, next), Ok(()));
        assert_eq!(
            jar.check(ip(1), &cookie, HELLO, next + Duration::from_secs(1)),
            Err(CookieError::Expired),
            "two rotations later"
        );
        // A key id of the previous period whose MAC is this period's is refused too.
        let fresh = jar.cookie(ip(1), HELLO, next);
        let mut relabelled = fresh;
        relabelled[0] = 0;
        assert_eq!(
            jar.check(ip(1), &relabelled, HELLO, next),
            Err(CookieError::Invalid)
        );
        // Period 0 has no previous one: key id 255 is not taken for it.
        let mut wrapped = jar.cookie(ip(1), HELLO, t0);
        wrapped[0] = 255;
        assert_eq!(
            jar.check(ip(1), &wrapped, HELLO, t0),
            Err(CookieError::Expired)
        );
    }

    #[test]
    fn the_kept_key_gives_each_period_its_own_cookie() {
        let t0 = Instant::now();
        let jar = jar(t0);
        let (address, len) = encode_address(ip(1));
        for period in [0u64, 1, 1, 0, 2] {
            let mac: [u8; COOKIE_LEN - 1] =
                hmac_sha256_parts(&jar.key(period), &[COOKIE_LABEL, &address[..len], HELLO]);
            let cookie = jar.cookie_in(period, ip(1), HELLO);
            assert_eq!((cookie[0], &cookie[1..]), (period as u8, &mac[..]));
        }
    }

    #[test]
    fn ipv4_mapped_addresses_are_their_ipv4_address() {
        let t0 = Instant::now();
        let jar = jar(t0);
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        let cookie = jar.cookie(mapped, HELLO, t0);
        assert_eq!(jar.check(ip(1), &cookie, HELLO, t0), Ok(()));
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        assert_eq!(encode_address(v6).1, 17);
        assert_eq!(jar.check(v6, &cookie, HELLO, t0), Err(CookieError::Invalid));
    }

    #[test]
    fn first_frames_are_sorted_by_cost_and_the_device_retries_with_the_cookie() {
        let t0 = Instant::now();
        let jar = jar(t0);
        let hello = [0x01, 0x02, 0x03, 0x01, 0x02];
        assert_eq!(
            open_first(&jar, ip(1), &hello, t0).unwrap(),
            First::Full {
                hello: &hello,
                cookie: CookieCheck::Absent
            }
        );
        let reply = jar.reply(ip(1), &hello, t0);
        let again = retry(&reply, &hello).unwrap().expect("a CookieReply");
        assert_eq!(
            open_first(&jar, ip(1), &again, t0).unwrap(),
            First::Full {
                hello: &hello,
                cookie: CookieCheck::Valid
            }
        );
        assert_eq!(
            open_first(&jar, ip(2), &again, t0).unwrap(),
            First::Full {
                hello: &hello,
                cookie: CookieCheck::Refused(CookieError::Invalid)
            }
        );
        let resume = [0x05, 0x02, 0x00];
        assert_eq!(
            open_first(&jar, ip(1), &resume, t0).unwrap(),
            First::Other(&resume)
        );
        assert!(matches!(
            open_first(&jar, ip(1), &again[..18], t0),
            Err(HandshakeError::Decode(DecodeError::Empty))
        ));
        // Anything but a CookieReply is left to the handshake.
        assert_eq!(retry(&[0x02, 0x02], &hello).unwrap(), None);
        assert!(retry(&reply[..17], &hello).is_err());
    }
}
