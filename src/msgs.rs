//! Wire messages (protocol.md §2–§4): their byte layouts, encoders and decoders.
//!
//! Decoding is the only place peer bytes are interpreted: it checks every length against the
//! negotiated suite and rejects trailing bytes, and inner code receives typed values.

use crate::codec::{DecodeError, Reader};
use crate::crypto::aead::{AeadId, TAG_LEN};
use crate::crypto::identity::{PUBLIC_KEY_LEN, SIGNATURE_LEN};
use crate::crypto::kem::{Suite, X25519_LEN};

mod cookie;
mod finish;
mod resume;

pub use cookie::{CookieHello, CookieReply, COOKIE_LEN};
pub use finish::{
    decode_device_finish, DeviceAuth, DeviceAuthKind, DEVICE_AUTH_LEN, DEVICE_FINISH_LEN,
    ENROLL_AUTH_LEN, ENROLL_FINISH_LEN,
};
pub use resume::{
    NewTicket, ResumeHello, ResumeServerHello, BINDER_LEN, CONFIRM_LEN, MAX_TICKET_LEN,
};

/// Protocol version byte carried by every handshake message and alert (protocol.md §2):
/// version 2 added resumption, version 3 padded the anonymous DeviceFinish and added downlink
/// and the relay.
pub const VERSION: u8 = 0x03;

/// The first byte of every frame (protocol.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
#[non_exhaustive]
pub enum FrameType {
    /// Device -> server, first handshake message.
    DeviceHello = 0x01,
    /// Server -> device, second handshake message.
    ServerHello = 0x02,
    /// Device -> server, last handshake message.
    DeviceFinish = 0x03,
    /// Plaintext alert, sent only before traffic keys exist.
    Alert = 0x04,
    /// Device -> server, first message of a resumption (protocol.md §4.6).
    ResumeHello = 0x05,
    /// Server -> device, answer to a resumption (protocol.md §4.7).
    ResumeServerHello = 0x06,
    /// Server -> device, under load: come back with this cookie (protocol.md §4.8).
    CookieReply = 0x07,
    /// Device -> server, a DeviceHello again with the server's cookie (protocol.md §4.9).
    CookieHello = 0x08,
    /// Record carrying application data.
    Data = 0x10,
    /// Record announcing the sender's key update.
    KeyUpdate = 0x11,
    /// Record closing the session, with a reason code.
    Close = 0x12,
    /// Record carrying a resumption ticket, server -> device (protocol.md §7.6).
    NewTicket = 0x13,
}

impl FrameType {
    /// Decodes the first byte of a frame.
    pub fn of(frame: &[u8]) -> Result<Self, DecodeError> {
        let b = *frame.first().ok_or(DecodeError::Empty)?;
        Ok(match b {
            0x01 => Self::DeviceHello,
            0x02 => Self::ServerHello,
            0x03 => Self::DeviceFinish,
            0x04 => Self::Alert,
            0x05 => Self::ResumeHello,
            0x06 => Self::ResumeServerHello,
            0x07 => Self::CookieReply,
            0x08 => Self::CookieHello,
            0x10 => Self::Data,
            0x11 => Self::KeyUpdate,
            0x12 => Self::Close,
            0x13 => Self::NewTicket,
            value => {
                return Err(DecodeError::InvalidValue {
                    field: "frame type",
                    value,
                })
            }
        })
    }

    /// Whether frames of this type are sealed records (protocol.md §7).
    pub fn is_record(self) -> bool {
        matches!(
            self,
            Self::Data | Self::KeyUpdate | Self::Close | Self::NewTicket
        )
    }
}

/// Most AEADs a device may list in its hello.
pub const MAX_AEAD_OFFERS: usize = 8;

pub(crate) fn expect_type(r: &mut Reader<'_>, t: FrameType) -> Result<(), DecodeError> {
    let value = r.u8("frame type")?;
    if value != t as u8 {
        return Err(DecodeError::InvalidValue {
            field: "frame type",
            value,
        });
    }
    Ok(())
}

pub(crate) fn expect_version(r: &mut Reader<'_>) -> Result<(), DecodeError> {
    let v = r.u8("version")?;
    if v != VERSION {
        return Err(DecodeError::UnsupportedVersion(v));
    }
    Ok(())
}

fn suite(r: &mut Reader<'_>) -> Result<&'static Suite, DecodeError> {
    let id = r.u8("suite")?;
    Suite::from_id(id).ok_or(DecodeError::UnknownSuite(id))
}

/// DeviceHello (protocol.md §4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceHello<'a> {
    /// The one suite the device offers.
    pub suite: &'static Suite,
    /// AEADs the device accepts, most preferred first; unknown codes are skipped.
    pub aeads: Vec<AeadId>,
    /// Device ephemeral X25519 public value.
    pub x25519: [u8; X25519_LEN],
    /// ML-KEM/Kyber encapsulation key; empty for the classical suite.
    pub encaps_key: &'a [u8],
}

impl<'a> DeviceHello<'a> {
    /// Longest legal hello: eight AEADs offered and the largest encapsulation key (ML-KEM-768
    /// and Kyber768 round 3 alike).
    pub const MAX_LEN: usize =
        4 + MAX_AEAD_OFFERS + X25519_LEN + crate::crypto::kem::MLKEM768_EK_LEN;

    /// Encodes the hello.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(6 + self.aeads.len() + self.suite.share_len());
        out.extend_from_slice(&[
            FrameType::DeviceHello as u8,
            VERSION,
            self.suite.id as u8,
            self.aeads.len() as u8,
        ]);
        out.extend(self.aeads.iter().map(|a| *a as u8));
        out.extend_from_slice(&self.x25519);
        out.extend_from_slice(self.encaps_key);
        out
    }

    /// Decodes and length-checks a hello.
    pub fn decode(frame: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(frame);
        expect_type(&mut r, FrameType::DeviceHello)?;
        expect_version(&mut r)?;
        let suite = suite(&mut r)?;
        let n = r.u8("AEAD count")?;
        if n == 0 || usize::from(n) > MAX_AEAD_OFFERS {
            return Err(DecodeError::InvalidValue {
                field: "AEAD count",
                value: n,
            });
        }
        let aeads = r
            .take(usize::from(n), "AEAD list")?
            .iter()
            .filter_map(|&b| AeadId::from_u8(b))
            .collect();
        let x25519 = r.array("X25519 public value")?;
        let encaps_key = r.take(suite.pq.map_or(0, |k| k.encaps_key_len()), "KEM key")?;
        r.finish()?;
        Ok(Self {
            suite,
            aeads,
            x25519,
            encaps_key,
        })
    }
}

/// Length of the sealed server authentication: public key, signature, tag.
pub const SEALED_SERVER_AUTH_LEN: usize = PUBLIC_KEY_LEN + SIGNATURE_LEN + TAG_LEN;

/// ServerHello (protocol.md §4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHello<'a> {
    /// Wire code of the suite the server selected.
    pub suite: &'static Suite,
    /// Wire code of the AEAD the server selected (may be unknown to us: checked by the
    /// handshake).
    pub aead: u8,
    /// Server ephemeral X25519 public value.
    pub x25519: [u8; X25519_LEN],
    /// KEM ciphertext; empty for the classical suite.
    pub ciphertext: &'a [u8],
    /// AEAD-sealed server identity and signature.
    pub sealed_auth: &'a [u8],
}

impl<'a> ServerHello<'a> {
    /// Encodes everything but the sealed authentication: the part hashed into TH1.
    pub fn encode_prefix(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.suite.response_len() + SEALED_SERVER_AUTH_LEN);
        out.extend_from_slice(&[
            FrameType::ServerHello as u8,
            VERSION,
            self.suite.id as u8,
            self.aead,
        ]);
        out.extend_from_slice(&self.x25519);
        out.extend_from_slice(self.ciphertext);
        out
    }

    /// Decodes and length-checks a server hello; lengths follow the suite it names.
    pub fn decode(frame: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(frame);
        expect_type(&mut r, FrameType::ServerHello)?;
        expect_version(&mut r)?;
        let suite = suite(&mut r)?;
        let aead = r.u8("AEAD")?;
        let x25519 = r.array("X25519 public value")?;
        let ciphertext = r.take(suite.pq.map_or(0, |k| k.ciphertext_len()), "KEM ciphertext")?;
        let sealed_auth = r.take(SEALED_SERVER_AUTH_LEN, "sealed server auth")?;
        r.finish()?;
        Ok(Self {
            suite,
            aead,
            x25519,
            ciphertext,
            sealed_auth,
        })
    }

    /// Length of the prefix (everything before `sealed_auth`) of an encoded hello.
    pub fn prefix_len(&self) -> usize {
        4 + X25519_LEN + self.ciphertext.len()
    }
}

/// Why a peer ended the handshake or the session (protocol.md §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum AlertCode {
    /// Orderly close: all data was delivered.
    CloseNotify = 0x00,
    /// A message arrived that the state machine did not expect.
    UnexpectedMessage = 0x01,
    /// A message could not be decoded.
    DecodeError = 0x02,
    /// The protocol version is not supported.
    UnsupportedVersion = 0x03,
    /// The server's mode does not allow the offered suite.
    SuiteRefused = 0x04,
    /// No AEAD in common.
    NoCommonAead = 0x05,
    /// Key exchange or authentication failed.
    HandshakeFailure = 0x06,
    /// The device's identity is not on the server's authorized list.
    UnknownDevice = 0x07,
    /// The server requires a device identity and none was presented.
    DeviceAuthRequired = 0x08,
    /// A record failed authentication, was replayed or arrived out of order.
    BadRecord = 0x09,
    /// A usage limit (AEAD hard limit) was reached.
    LimitReached = 0x0a,
    /// The peer was idle or too slow.
    Timeout = 0x0b,
    /// The device refused the server's identity.
    ServerRejected = 0x0c,
    /// An internal failure.
    InternalError = 0x0d,
    /// The device's identity was revoked in the server's registry (docs/registry.md).
    Revoked = 0x0e,
    /// The device (or its enrollment token) belongs to a group this server does not serve.
    WrongGroup = 0x0f,
    /// The enrollment token is unknown to the server or its proof did not verify.
    EnrollmentRefused = 0x10,
    /// The enrollment token was already used by another device.
    TokenUsed = 0x11,
    /// The enrollment token has expired.
    TokenExpired = 0x12,
    /// The resumption ticket was refused: unknown key, forged, expired, replayed, or no
    /// longer acceptable to the server (protocol.md §6.4). The device falls back to a full
    /// handshake.
    TicketRejected = 0x13,
    /// Close record only: the server is shutting down (or the session is being moved). Every
    /// message it had acknowledged is written; anything not acknowledged is not, and the
    /// device sends it again in its next session (protocol.md §11.4).
    GoingAway = 0x14,
    /// The server is at a limit (its sessions, or this source's handshakes while it is under
    /// load): try again later, with back-off (protocol.md §6.5).
    Busy = 0x15,
}

impl AlertCode {
    /// Decodes a code; unknown codes map to `None`.
    pub fn from_u8(v: u8) -> Option<Self> {
        use AlertCode::*;
        [
            CloseNotify,
            UnexpectedMessage,
            DecodeError,
            UnsupportedVersion,
            SuiteRefused,
            NoCommonAead,
            HandshakeFailure,
            UnknownDevice,
            DeviceAuthRequired,
            BadRecord,
            LimitReached,
            Timeout,
            ServerRejected,
            InternalError,
            Revoked,
            WrongGroup,
            EnrollmentRefused,
            TokenUsed,
            TokenExpired,
            TicketRejected,
            GoingAway,
            Busy,
        ]
        .into_iter()
        .find(|c| *c as u8 == v)
    }

    /// What the code means, in words for an error message.
    pub fn describe(self) -> &'static str {
        match self {
            Self::CloseNotify => "closed normally",
            Self::UnexpectedMessage => "unexpected message",
            Self::DecodeError => "malformed message",
            Self::UnsupportedVersion => "unsupported protocol version",
            Self::SuiteRefused => "key-exchange suite not allowed by the server's mode",
            Self::NoCommonAead => "no AEAD in common",
            Self::HandshakeFailure => "handshake failed (key exchange or authentication)",
            Self::UnknownDevice => "device not on the server's authorized list",
            Self::DeviceAuthRequired => "server requires a device identity key",
            Self::BadRecord => "a record failed authentication, was replayed or reordered",
            Self::LimitReached => "AEAD usage limit reached",
            Self::Timeout => "timed out",
            Self::ServerRejected => "device refused the server's identity",
            Self::InternalError => "internal error",
            Self::Revoked => "device identity revoked by the server's registry",
            Self::WrongGroup => "device or token belongs to a group this server does not serve",
            Self::EnrollmentRefused => {
                "enrollment token unknown to the server or its proof is invalid"
            }
            Self::TokenUsed => "enrollment token already used",
            Self::TokenExpired => "enrollment token expired",
            Self::TicketRejected => "resumption ticket refused",
            Self::GoingAway => "server going away",
            Self::Busy => "server busy: try again later",
        }
    }
}

impl std::fmt::Display for AlertCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

/// Encodes a plaintext Alert frame (protocol.md §8.1).
pub fn encode_alert(code: AlertCode) -> Vec<u8> {
    vec![FrameType::Alert as u8, VERSION, code as u8]
}

/// Decodes a plaintext Alert frame. An unknown code reads as `InternalError`.
pub fn decode_alert(frame: &[u8]) -> Result<AlertCode, DecodeError> {
    let mut r = Reader::new(frame);
    expect_type(&mut r, FrameType::Alert)?;
    expect_version(&mut r)?;
    let code = r.u8("alert code")?;
    r.finish()?;
    Ok(AlertCode::from_u8(code).unwrap_or(AlertCode::InternalError))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::kem::{X25519_MLKEM768, X25519_ONLY};

    #[test]
    fn device_hello_round_trip_and_length_checks() {
        let ek = vec![5u8; 1184];
        let hello = DeviceHello {
            suite: &X25519_MLKEM768,
            aeads: vec![AeadId::Aes256Gcm, AeadId::ChaCha20Poly1305],
            x25519: [3; 32],
            encaps_key: &ek,
        };
        let bytes = hello.encode();
        assert_eq!(bytes.len(), 4 + 2 + 32 + 1184);
        assert_eq!(DeviceHello::decode(&bytes).unwrap(), hello);
        assert!(matches!(
            DeviceHello::decode(&bytes[..bytes.len() - 1]),
            Err(DecodeError::Truncated { .. })
        ));
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            DeviceHello::decode(&long),
            Err(DecodeError::TrailingBytes(1))
        );
        // Version 1 (before resumption) is no longer spoken.
        let mut v1 = bytes.clone();
        v1[1] = 1;
        assert_eq!(
            DeviceHello::decode(&v1),
            Err(DecodeError::UnsupportedVersion(1))
        );
        let mut unknown = bytes;
        unknown[2] = 0x7f;
        assert_eq!(
            DeviceHello::decode(&unknown),
            Err(DecodeError::UnknownSuite(0x7f))
        );
    }

    #[test]
    fn classical_hello_has_no_kem_key() {
        let hello = DeviceHello {
            suite: &X25519_ONLY,
            aeads: vec![AeadId::ChaCha20Poly1305],
            x25519: [3; 32],
            encaps_key: &[],
        };
        assert_eq!(hello.encode().len(), 37);
        assert_eq!(DeviceHello::decode(&hello.encode()).unwrap(), hello);
    }

    #[test]
    fn device_auth_round_trip() {
        let a = DeviceAuth::Ed25519 {
            public: [1; 32],
            signature: [2; 64],
        };
        assert_eq!(DeviceAuth::decode(&a.encode()).unwrap(), a);
        let anonymous = DeviceAuth::Anonymous.encode();
        assert_eq!(anonymous.len(), a.encode().len());
        assert_eq!(
            DeviceAuth::decode(&anonymous).unwrap(),
            DeviceAuth::Anonymous
        );
        let e = DeviceAuth::Enroll {
            public: [1; 32],
            signature: [2; 64],
            token: [3; 32],
            proof: [4; 64],
        };
        assert_eq!(e.encode().len(), 193);
        assert_eq!(DeviceAuth::decode(&e.encode()).unwrap(), e);
        assert!(DeviceAuth::decode(&e.encode()[..192]).is_err());
        assert!(DeviceAuth::decode(&[9]).is_err());
        assert!(DeviceAuth::decode(&[1, 2]).is_err());
    }

    #[test]
    fn anonymous_auth_padding_is_checked() {
        // The unpadded form of protocol versions 1 and 2 is refused.
        assert!(DeviceAuth::decode(&[0]).is_err());
        let mut padded = DeviceAuth::Anonymous.encode();
        padded[96] = 1;
        assert_eq!(
            DeviceAuth::decode(&padded),
            Err(DecodeError::InvalidValue {
                field: "anonymous padding",
                value: 1
            })
        );
        padded.pop();
        assert!(DeviceAuth::decode(&padded).is_err());
    }

    #[test]
    fn device_finish_length_is_checked_both_ways() {
        assert_eq!((DEVICE_FINISH_LEN, ENROLL_FINISH_LEN), (114, 210));
        let mut frame = vec![FrameType::DeviceFinish as u8; DEVICE_FINISH_LEN - 1];
        assert_eq!(
            decode_device_finish(&frame),
            Err(DecodeError::Truncated {
                field: "sealed device auth",
                needed: 1
            })
        );
        frame.resize(DEVICE_FINISH_LEN, 0);
        assert_eq!(decode_device_finish(&frame).unwrap().len(), 113);
        frame.push(0);
        assert_eq!(
            decode_device_finish(&frame),
            Err(DecodeError::TrailingBytes(1))
        );
        frame.resize(ENROLL_FINISH_LEN, 0);
        assert_eq!(decode_device_finish(&frame).unwrap().len(), 209);
        frame.push(0);
        assert_eq!(
            decode_device_finish(&frame),
            Err(DecodeError::TrailingBytes(1))
        );
    }

    #[test]
    fn alert_round_trip() {
        for code in 0..=0x15 {
            let c = AlertCode::from_u8(code).unwrap();
            assert_eq!(decode_alert(&encode_alert(c)).unwrap(), c);
        }
        assert!(FrameType::of(&[0x99]).is_err());
        assert_eq!(FrameType::of(&[]), Err(DecodeError::Empty));
    }
}
