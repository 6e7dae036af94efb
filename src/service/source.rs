//! Where a connection comes from, for per-source limits (protocol.md §2.3): its address with
//! the host bits cleared, an IPv4 address as its /32 and an IPv6 address as its /64 by default
//! (one IPv6 subscriber usually holds a whole /64), and the address ranges exempt from
//! per-source limits (a fleet behind one NAT).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// A range of addresses: an address and a prefix length, as `10.0.0.0/8` or `2001:db8::/32`
/// (a bare address is its own /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix {
    addr: IpAddr,
    bits: u8,
}

/// Why a prefix could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PrefixError {
    /// Not an address.
    #[error("{0:?} is not an IP address (give e.g. 192.0.2.0/24 or 2001:db8::/48)")]
    Address(String),
    /// A prefix length out of range for the address family.
    #[error("prefix length {bits} is more than the {max} bits of the address")]
    Length {
        /// As given.
        bits: u8,
        /// 32 or 128.
        max: u8,
    },
}

impl Prefix {
    /// The range of `addr`'s first `bits` bits (the rest cleared).
    pub fn new(addr: IpAddr, bits: u8) -> Result<Self, PrefixError> {
        let addr = addr.to_canonical();
        let max = max_bits(addr);
        if bits > max {
            return Err(PrefixError::Length { bits, max });
        }
        Ok(Self {
            addr: mask(addr, bits),
            bits,
        })
    }

    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        max_bits(ip) == max_bits(self.addr) && mask(ip, self.bits) == self.addr
    }
}

impl FromStr for Prefix {
    type Err = PrefixError;

    fn from_str(s: &str) -> Result<Self, PrefixError> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| PrefixError::Address(s.to_string()))?;
        let bits = match bits {
            Some(b) => b
                .parse::<u8>()
                .map_err(|_| PrefixError::Address(s.to_string()))?,
            None => max_bits(addr.to_canonical()),
        };
        Self::new(addr, bits)
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.bits)
    }
}

/// A source of connections: a network address (the host bits cleared).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source(IpAddr);

impl Source {
    /// The source `ip` belongs to when IPv4 sources are `v4_bits` long and IPv6 ones
    /// `v6_bits` (longer values are clamped to the address).
    pub fn of(ip: IpAddr, v4_bits: u8, v6_bits: u8) -> Self {
        let ip = ip.to_canonical();
        let bits = match ip {
            IpAddr::V4(_) => v4_bits.min(32),
            IpAddr::V6(_) => v6_bits.min(128),
        };
        Self(mask(ip, bits))
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

fn max_bits(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// `ip` with all but its first `bits` bits cleared.
fn mask(ip: IpAddr, bits: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let keep = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & keep))
        }
        IpAddr::V6(v6) => {
            let keep = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & keep))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_64s() {
        let s = |a| Source::of(ip(a), 32, 64);
        assert_ne!(s("192.0.2.1"), s("192.0.2.2"));
        assert_eq!(s("2001:db8:1:2::1"), s("2001:db8:1:2:ffff::9"));
        assert_ne!(s("2001:db8:1:2::1"), s("2001:db8:1:3::1"));
        assert_eq!(s("::ffff:192.0.2.1"), s("192.0.2.1"), "IPv4-mapped");
        assert_eq!(
            Source::of(ip("192.0.2.77"), 24, 64),
            Source::of(ip("192.0.2.1"), 24, 64)
        );
        assert_eq!(Source::of(ip("192.0.2.77"), 0, 0).to_string(), "0.0.0.0");
    }

    #[test]
    fn prefixes_parse_and_contain() {
        let nat: Prefix = "192.0.2.0/24".parse().unwrap();
        assert!(nat.contains(ip("192.0.2.200")));
        assert!(nat.contains(ip("::ffff:192.0.2.9")));
        assert!(!nat.contains(ip("192.0.3.1")));
        assert!(!nat.contains(ip("2001:db8::1")));
        let one: Prefix = "2001:db8::7".parse().unwrap();
        assert_eq!(one.to_string(), "2001:db8::7/128");
        assert!(one.contains(ip("2001:db8::7")) && !one.contains(ip("2001:db8::8")));
        assert_eq!(
            "10.1.2.3/8".parse::<Prefix>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert!(matches!(
            "10.0.0.0/33".parse::<Prefix>(),
            Err(PrefixError::Length { bits: 33, max: 32 })
        ));
        assert!(matches!(
            "example.com/8".parse::<Prefix>(),
            Err(PrefixError::Address(_))
        ));
        assert!("10.0.0.0/x".parse::<Prefix>().is_err());
    }
}
