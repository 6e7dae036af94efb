//! Stateless retry under load (protocol.md §4.8, §4.9, §6.5): the server's CookieReply and the
//! device's CookieHello, which carries the cookie and the DeviceHello it answered.

use super::{expect_type, expect_version, DeviceHello, FrameType, VERSION};
use crate::codec::{DecodeError, Reader};

/// Length of a cookie. Opaque to the device; the reference server's is a key id and a
/// 15-byte MAC (protocol.md §6.5).
pub const COOKIE_LEN: usize = 16;

/// CookieReply (protocol.md §4.8): `type || version || cookie [16]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookieReply {
    /// The cookie to send back with the same DeviceHello.
    pub cookie: [u8; COOKIE_LEN],
}

impl CookieReply {
    /// Length of the frame.
    pub const LEN: usize = 2 + COOKIE_LEN;

    /// Encodes the frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::LEN);
        out.extend_from_slice(&[FrameType::CookieReply as u8, VERSION]);
        out.extend_from_slice(&self.cookie);
        out
    }

    /// Decodes and length-checks a CookieReply.
    pub fn decode(frame: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(frame);
        expect_type(&mut r, FrameType::CookieReply)?;
        expect_version(&mut r)?;
        let cookie = r.array("cookie")?;
        r.finish()?;
        Ok(Self { cookie })
    }
}

/// CookieHello (protocol.md §4.9): `type || version || cookie [16] || DeviceHello`, the
/// DeviceHello byte for byte as first sent (its own type byte included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookieHello<'a> {
    /// The cookie from the server's CookieReply.
    pub cookie: [u8; COOKIE_LEN],
    /// The DeviceHello frame it answered: what the transcript hashes (protocol.md §5.1).
    pub hello: &'a [u8],
}

impl<'a> CookieHello<'a> {
    /// Bytes before the DeviceHello.
    pub const HEADER_LEN: usize = 2 + COOKIE_LEN;
    /// Longest legal frame: the header and the longest DeviceHello.
    pub const MAX_LEN: usize = Self::HEADER_LEN + DeviceHello::MAX_LEN;

    /// Encodes the frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::HEADER_LEN + self.hello.len());
        out.extend_from_slice(&[FrameType::CookieHello as u8, VERSION]);
        out.extend_from_slice(&self.cookie);
        out.extend_from_slice(self.hello);
        out
    }

    /// Splits a CookieHello into its cookie and DeviceHello. Checks the header and that a
    /// DeviceHello's type byte follows; the DeviceHello itself is decoded by the handshake
    /// (protocol.md §6.2), with its own checks.
    pub fn decode(frame: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(frame);
        expect_type(&mut r, FrameType::CookieHello)?;
        expect_version(&mut r)?;
        let cookie = r.array("cookie")?;
        let hello = r.rest();
        match FrameType::of(hello)? {
            FrameType::DeviceHello => Ok(Self { cookie, hello }),
            other => Err(DecodeError::InvalidValue {
                field: "frame type inside CookieHello",
                value: other as u8,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_reply_round_trip_and_length_checks() {
        let reply = CookieReply { cookie: [7; 16] };
        let frame = reply.encode();
        assert_eq!(frame.len(), 18);
        assert_eq!(&frame[..2], &[0x07, VERSION]);
        assert_eq!(CookieReply::decode(&frame), Ok(reply));
        assert!(matches!(
            CookieReply::decode(&frame[..17]),
            Err(DecodeError::Truncated { .. })
        ));
        let long = [&frame[..], &[0]].concat();
        assert_eq!(
            CookieReply::decode(&long),
            Err(DecodeError::TrailingBytes(1))
        );
        let mut v1 = frame;
        v1[1] = 1;
        assert_eq!(
            CookieReply::decode(&v1),
            Err(DecodeError::UnsupportedVersion(1))
        );
    }

    #[test]
    fn cookie_hello_carries_a_device_hello_and_nothing_else() {
        let hello = [0x01, VERSION, 0x03, 0x01, 0x02];
        let frame = CookieHello {
            cookie: [9; 16],
            hello: &hello,
        }
        .encode();
        assert_eq!(frame.len(), 18 + hello.len());
        let got = CookieHello::decode(&frame).unwrap();
        assert_eq!((got.cookie, got.hello), ([9; 16], &hello[..]));
        // No hello at all, and a ResumeHello in its place.
        assert_eq!(CookieHello::decode(&frame[..18]), Err(DecodeError::Empty));
        let mut resume = frame.clone();
        resume[18] = FrameType::ResumeHello as u8;
        assert!(matches!(
            CookieHello::decode(&resume),
            Err(DecodeError::InvalidValue { value: 0x05, .. })
        ));
        assert!(CookieHello::decode(&frame[..10]).is_err());
        assert_eq!(CookieHello::MAX_LEN, 1246);
    }
}
