//! DeviceFinish (protocol.md §4.3): the device's sealed authentication, of one of three kinds,
//! the anonymous kind padded to an identified device's length.

use super::{expect_type, FrameType};
use crate::codec::{DecodeError, Reader};
use crate::crypto::aead::TAG_LEN;
use crate::crypto::identity::{PUBLIC_KEY_LEN, SIGNATURE_LEN};

/// Device authentication kinds inside DeviceFinish (protocol.md §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
#[non_exhaustive]
pub enum DeviceAuthKind {
    /// No device identity.
    Anonymous = 0x00,
    /// Ed25519 public key and signature.
    Ed25519 = 0x01,
    /// Ed25519 public key and signature, plus an enrollment-token proof (docs/registry.md §5).
    Enroll = 0x02,
}

/// Length of an identified device's `device_auth`: kind, public key and signature. The
/// anonymous kind is padded with zeros to this length, so that a DeviceFinish does not tell an
/// observer whether the device presented an identity (protocol.md §4.3).
pub const DEVICE_AUTH_LEN: usize = 1 + PUBLIC_KEY_LEN + SIGNATURE_LEN;
/// Length of an enrollment's `device_auth`: an identity plus the token's key and proof.
pub const ENROLL_AUTH_LEN: usize = DEVICE_AUTH_LEN + PUBLIC_KEY_LEN + SIGNATURE_LEN;

/// Plaintext of DeviceFinish's sealed payload.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeviceAuth {
    /// The device presents no identity.
    Anonymous,
    /// The device's identity key and its signature over TH2.
    Ed25519 {
        /// Public key.
        public: [u8; PUBLIC_KEY_LEN],
        /// Signature.
        signature: [u8; SIGNATURE_LEN],
    },
    /// A device joining with an enrollment token: its identity and signature over TH2, the
    /// token's public key, and the token's signature over TH2 and the device key
    /// (docs/registry.md §5).
    Enroll {
        /// Device public key.
        public: [u8; PUBLIC_KEY_LEN],
        /// Device signature.
        signature: [u8; SIGNATURE_LEN],
        /// The token's public key (its identifier in the registry).
        token: [u8; PUBLIC_KEY_LEN],
        /// The token's proof.
        proof: [u8; SIGNATURE_LEN],
    },
}

impl DeviceAuth {
    /// Encodes the plaintext.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Anonymous => {
                let mut out = vec![0; DEVICE_AUTH_LEN];
                out[0] = DeviceAuthKind::Anonymous as u8;
                out
            }
            Self::Ed25519 { public, signature } => {
                let mut out = Vec::with_capacity(DEVICE_AUTH_LEN);
                out.push(DeviceAuthKind::Ed25519 as u8);
                out.extend_from_slice(public);
                out.extend_from_slice(signature);
                out
            }
            Self::Enroll {
                public,
                signature,
                token,
                proof,
            } => {
                let mut out = Vec::with_capacity(ENROLL_AUTH_LEN);
                out.push(DeviceAuthKind::Enroll as u8);
                for part in [&public[..], signature, token, proof] {
                    out.extend_from_slice(part);
                }
                out
            }
        }
    }

    /// Decodes the plaintext.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let auth = match r.u8("device auth kind")? {
            0x00 => {
                let padding = r.take(DEVICE_AUTH_LEN - 1, "anonymous padding")?;
                if let Some(&value) = padding.iter().find(|&&b| b != 0) {
                    return Err(DecodeError::InvalidValue {
                        field: "anonymous padding",
                        value,
                    });
                }
                Self::Anonymous
            }
            0x01 => Self::Ed25519 {
                public: r.array("device public key")?,
                signature: r.array("device signature")?,
            },
            0x02 => Self::Enroll {
                public: r.array("device public key")?,
                signature: r.array("device signature")?,
                token: r.array("enrollment token key")?,
                proof: r.array("enrollment proof")?,
            },
            value => {
                return Err(DecodeError::InvalidValue {
                    field: "device auth kind",
                    value,
                })
            }
        };
        r.finish()?;
        Ok(auth)
    }
}

/// The DeviceFinish frame of an anonymous or identified device: 114 bytes.
pub const DEVICE_FINISH_LEN: usize = 1 + DEVICE_AUTH_LEN + TAG_LEN;
/// The DeviceFinish frame of an enrollment (kind 0x02): 210 bytes.
pub const ENROLL_FINISH_LEN: usize = 1 + ENROLL_AUTH_LEN + TAG_LEN;

/// Splits a DeviceFinish frame into its sealed payload. The frame is exactly
/// [`DEVICE_FINISH_LEN`] or [`ENROLL_FINISH_LEN`] bytes; any other length is refused before
/// anything is decrypted.
pub fn decode_device_finish(frame: &[u8]) -> Result<&[u8], DecodeError> {
    let mut r = Reader::new(frame);
    expect_type(&mut r, FrameType::DeviceFinish)?;
    match frame.len() {
        DEVICE_FINISH_LEN | ENROLL_FINISH_LEN => Ok(r.rest()),
        len if len < DEVICE_FINISH_LEN => Err(DecodeError::Truncated {
            field: "sealed device auth",
            needed: DEVICE_FINISH_LEN - len,
        }),
        len if len < ENROLL_FINISH_LEN => Err(DecodeError::TrailingBytes(len - DEVICE_FINISH_LEN)),
        len => Err(DecodeError::TrailingBytes(len - ENROLL_FINISH_LEN)),
    }
}
