//! Cryptographic building blocks. Nothing here implements a primitive: each module wraps an
//! audited crate behind the small interface the protocol needs.

pub mod aead;
pub mod identity;
pub mod kdf;
pub mod kem;
pub mod random;

/// Failures of the cryptographic layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Rng,
    /// The X25519 result was all zeros: the peer sent a low-order point.
    #[error("X25519 produced an all-zero shared secret (low-order peer key)")]
    ZeroSharedSecret,
    /// The ML-KEM encapsulation key has the wrong length or fails the FIPS 203 §7.2 check.
    #[error("invalid ML-KEM encapsulation key (FIPS 203 §7.2 check failed)")]
    InvalidEncapsulationKey,
    /// The KEM ciphertext has the wrong length.
    #[error("invalid KEM ciphertext")]
    InvalidCiphertext,
    /// AEAD authentication failed, or a key could not be built.
    #[error("AEAD authentication failed")]
    Aead,
    /// An Ed25519 signature did not verify.
    #[error("signature verification failed")]
    BadSignature,
    /// A key file is malformed.
    #[error("malformed key file: {0}")]
    KeyFormat(&'static str),
}
