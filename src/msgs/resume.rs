//! Resumption messages (protocol.md §4.6, §4.7) and the NewTicket record's plaintext (§7.6).

use super::{expect_type, expect_version, FrameType, VERSION};
use crate::codec::{DecodeError, Reader};
use crate::crypto::kem::X25519_LEN;

/// Length of ResumeHello's binder.
pub const BINDER_LEN: usize = 16;
/// Length of ResumeServerHello's confirmation tag.
pub const CONFIRM_LEN: usize = 16;
/// Longest ticket a device accepts and sends. The reference server's tickets are 88 bytes
/// (protocol.md §7.6); the bound leaves room for other server implementations.
pub const MAX_TICKET_LEN: usize = 255;

fn ticket<'a>(r: &mut Reader<'a>, len: usize) -> Result<&'a [u8], DecodeError> {
    if len == 0 {
        return Err(DecodeError::Truncated {
            field: "ticket",
            needed: 1,
        });
    }
    if len > MAX_TICKET_LEN {
        return Err(DecodeError::TrailingBytes(len - MAX_TICKET_LEN));
    }
    r.take(len, "ticket")
}

/// ResumeHello (protocol.md §4.6): `type || version || x25519_d [32] || ticket [T] ||
/// binder [16]`, with T implied by the frame's length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeHello<'a> {
    /// Device ephemeral X25519 public value.
    pub x25519: [u8; X25519_LEN],
    /// The opaque ticket.
    pub ticket: &'a [u8],
    /// HMAC over the hello without the binder, keyed from the ticket's PSK.
    pub binder: [u8; BINDER_LEN],
}

impl<'a> ResumeHello<'a> {
    /// Shortest legal frame: a one-byte ticket.
    pub const MIN_LEN: usize = 2 + X25519_LEN + 1 + BINDER_LEN;

    /// Encodes everything but the binder: the bytes the binder covers.
    pub fn encode_without_binder(x25519: &[u8; X25519_LEN], ticket: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + X25519_LEN + ticket.len() + BINDER_LEN);
        out.extend_from_slice(&[FrameType::ResumeHello as u8, VERSION]);
        out.extend_from_slice(x25519);
        out.extend_from_slice(ticket);
        out
    }

    /// Decodes and length-checks a ResumeHello.
    pub fn decode(frame: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(frame);
        expect_type(&mut r, FrameType::ResumeHello)?;
        expect_version(&mut r)?;
        let x25519 = r.array("X25519 public value")?;
        let len = frame.len().saturating_sub(2 + X25519_LEN + BINDER_LEN);
        if frame.len() < Self::MIN_LEN {
            return Err(DecodeError::Truncated {
                field: "ticket and binder",
                needed: Self::MIN_LEN - frame.len(),
            });
        }
        let ticket = ticket(&mut r, len)?;
        let binder = r.array("binder")?;
        r.finish()?;
        Ok(Self {
            x25519,
            ticket,
            binder,
        })
    }

    /// Length of the part the binder covers.
    pub fn binder_offset(frame: &[u8]) -> usize {
        frame.len().saturating_sub(BINDER_LEN)
    }
}

/// ResumeServerHello (protocol.md §4.7): `type || version || x25519_s [32] || confirm [16]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeServerHello {
    /// Server ephemeral X25519 public value.
    pub x25519: [u8; X25519_LEN],
    /// The server's key confirmation over TH_r1.
    pub confirm: [u8; CONFIRM_LEN],
}

impl ResumeServerHello {
    /// Length of the frame.
    pub const LEN: usize = 2 + X25519_LEN + CONFIRM_LEN;

    /// Encodes everything but the confirmation tag: the part hashed into TH_r1.
    pub fn encode_prefix(x25519: &[u8; X25519_LEN]) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::LEN);
        out.extend_from_slice(&[FrameType::ResumeServerHello as u8, VERSION]);
        out.extend_from_slice(x25519);
        out
    }

    /// Decodes and length-checks a ResumeServerHello.
    pub fn decode(frame: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(frame);
        expect_type(&mut r, FrameType::ResumeServerHello)?;
        expect_version(&mut r)?;
        let x25519 = r.array("X25519 public value")?;
        let confirm = r.array("confirm")?;
        r.finish()?;
        Ok(Self { x25519, confirm })
    }
}

/// The plaintext of a NewTicket record (protocol.md §7.6): `lifetime [4] || ticket [T]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTicket<'a> {
    /// Seconds the ticket may be used for, from its receipt.
    pub lifetime: u32,
    /// The opaque ticket.
    pub ticket: &'a [u8],
}

impl<'a> NewTicket<'a> {
    /// Encodes the plaintext.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.ticket.len());
        out.extend_from_slice(&self.lifetime.to_be_bytes());
        out.extend_from_slice(self.ticket);
        out
    }

    /// Decodes the plaintext.
    pub fn decode(plaintext: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(plaintext);
        let lifetime = u32::from_be_bytes(r.array("ticket lifetime")?);
        let ticket = ticket(&mut r, plaintext.len().saturating_sub(4))?;
        r.finish()?;
        Ok(Self { lifetime, ticket })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_hello_round_trip_and_length_checks() {
        let ticket = [7u8; 88];
        let mut frame = ResumeHello::encode_without_binder(&[3; 32], &ticket);
        frame.extend_from_slice(&[9; BINDER_LEN]);
        assert_eq!(frame.len(), 138);
        let hello = ResumeHello::decode(&frame).unwrap();
        assert_eq!(hello.ticket, &ticket[..]);
        assert_eq!(hello.binder, [9; BINDER_LEN]);
        assert_eq!(ResumeHello::binder_offset(&frame), 122);
        assert!(matches!(
            ResumeHello::decode(&frame[..ResumeHello::MIN_LEN - 1]),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(ResumeHello::decode(&frame[..ResumeHello::MIN_LEN]).is_ok());
        let long = ResumeHello::encode_without_binder(&[3; 32], &[1; MAX_TICKET_LEN + 1]);
        let long = [&long[..], &[0; BINDER_LEN]].concat();
        assert_eq!(
            ResumeHello::decode(&long),
            Err(DecodeError::TrailingBytes(1))
        );
        let mut v1 = frame.clone();
        v1[1] = 1;
        assert_eq!(
            ResumeHello::decode(&v1),
            Err(DecodeError::UnsupportedVersion(1))
        );
    }

    #[test]
    fn resume_server_hello_round_trip_and_length_checks() {
        let mut frame = ResumeServerHello::encode_prefix(&[5; 32]);
        frame.extend_from_slice(&[6; CONFIRM_LEN]);
        assert_eq!(frame.len(), ResumeServerHello::LEN);
        assert_eq!(
            ResumeServerHello::decode(&frame).unwrap(),
            ResumeServerHello {
                x25519: [5; 32],
                confirm: [6; CONFIRM_LEN]
            }
        );
        assert!(ResumeServerHello::decode(&frame[..49]).is_err());
        frame.push(0);
        assert_eq!(
            ResumeServerHello::decode(&frame),
            Err(DecodeError::TrailingBytes(1))
        );
    }

    #[test]
    fn new_ticket_round_trip_and_bounds() {
        let t = NewTicket {
            lifetime: 86_400,
            ticket: &[1; 88],
        };
        let bytes = t.encode();
        assert_eq!(bytes.len(), 92);
        assert_eq!(NewTicket::decode(&bytes).unwrap(), t);
        assert!(NewTicket::decode(&bytes[..4]).is_err(), "empty ticket");
        assert!(NewTicket::decode(&bytes[..3]).is_err());
        let long = [&[0u8; 4][..], &[1; MAX_TICKET_LEN + 1]].concat();
        assert_eq!(NewTicket::decode(&long), Err(DecodeError::TrailingBytes(1)));
    }
}
