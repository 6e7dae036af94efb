//! Long-term identities: Ed25519 signing keys for servers and devices (protocol.md §4), their
//! fingerprints, and the key-file formats (protocol.md §3.4).

use super::{random::Random, CryptoError};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use base64::{engine::general_purpose::STANDARD_NO_PAD, Engine};
use ed25519_dalek::VerifyingKey;
use std::fmt;
use zeroize::Zeroizing;

/// Length of an Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

const SECRET_HEADER: &str = "secchan-ed25519-secret-v1";
const PUBLIC_HEADER: &str = "secchan-ed25519-public-v1";

/// A long-term identity secret key. Erased on drop; its Debug output shows only the
/// fingerprint.
///
/// Signing uses AWS-LC (half the time of ed25519-dalek here, docs/design.md); Ed25519
/// signatures are deterministic, so the bytes are the same either way. Verification stays with
/// ed25519-dalek's `verify_strict`, whose rules protocol.md §3.3 specifies.
pub struct IdentityKey {
    seed: Zeroizing<[u8; 32]>,
    /// AWS-LC's key pair; AWS-LC erases it when it is dropped.
    pair: Ed25519KeyPair,
    public: [u8; PUBLIC_KEY_LEN],
}

impl IdentityKey {
    /// Generates a new identity from 32 random bytes.
    pub fn generate(rng: &mut dyn Random) -> Result<Self, CryptoError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill(seed.as_mut())?;
        Ok(Self::from_seed(&seed))
    }

    /// The identity for a fixed 32-byte seed (RFC 8032 private key).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .unwrap_or_else(|_| unreachable!("every 32-byte seed is an Ed25519 private key"));
        let mut public = [0u8; PUBLIC_KEY_LEN];
        public.copy_from_slice(pair.public_key().as_ref());
        Self {
            seed: Zeroizing::new(*seed),
            pair,
            public,
        }
    }

    /// The public half.
    pub fn public(&self) -> PublicIdentity {
        PublicIdentity(self.public)
    }

    /// Ed25519 signature over `context || message`.
    pub fn sign(&self, context: &[u8], message: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut m = Vec::with_capacity(context.len() + message.len());
        m.extend_from_slice(context);
        m.extend_from_slice(message);
        let mut signature = [0u8; SIGNATURE_LEN];
        signature.copy_from_slice(self.pair.sign(&m).as_ref());
        signature
    }

    /// The secret key file's text: a header line and the base64 seed.
    pub fn to_file_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "{SECRET_HEADER}\n{}\n",
            STANDARD_NO_PAD.encode(*self.seed)
        ))
    }

    /// Parses a secret key file's text.
    pub fn from_file_text(text: &str) -> Result<Self, CryptoError> {
        let mut lines = text.lines();
        if lines.next().map(str::trim) != Some(SECRET_HEADER) {
            return Err(CryptoError::KeyFormat("not a secchan secret key file"));
        }
        let encoded = lines
            .next()
            .ok_or(CryptoError::KeyFormat("secret key line missing"))?;
        let bytes = Zeroizing::new(
            STANDARD_NO_PAD
                .decode(encoded.trim())
                .map_err(|_| CryptoError::KeyFormat("secret key is not base64"))?,
        );
        let seed: Zeroizing<[u8; 32]> = Zeroizing::new(
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| CryptoError::KeyFormat("secret key is not 32 bytes"))?,
        );
        Ok(Self::from_seed(&seed))
    }
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityKey")
            .field("public", &self.public().fingerprint())
            .finish_non_exhaustive()
    }
}

/// A long-term identity public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicIdentity(pub [u8; PUBLIC_KEY_LEN]);

impl PublicIdentity {
    /// The fingerprint users compare and pin: `SHA256:` and the unpadded base64 of SHA-256 of
    /// the 32-byte public key, as OpenSSH prints host keys.
    pub fn fingerprint(&self) -> String {
        format!(
            "SHA256:{}",
            STANDARD_NO_PAD.encode(super::kdf::sha256(&self.0))
        )
    }

    /// Verifies an Ed25519 signature over `context || message` (strict verification: no
    /// malleable or small-order encodings).
    pub fn verify(
        &self,
        context: &[u8],
        message: &[u8],
        signature: &[u8; SIGNATURE_LEN],
    ) -> Result<(), CryptoError> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| CryptoError::BadSignature)?;
        let mut m = Vec::with_capacity(context.len() + message.len());
        m.extend_from_slice(context);
        m.extend_from_slice(message);
        key.verify_strict(&m, &ed25519_dalek::Signature::from_bytes(signature))
            .map_err(|_| CryptoError::BadSignature)
    }

    /// The public key file's text: `secchan-ed25519-public-v1 <base64>`.
    pub fn to_file_text(&self) -> String {
        format!("{PUBLIC_HEADER} {}\n", STANDARD_NO_PAD.encode(self.0))
    }

    /// Parses a public key file's text.
    pub fn from_file_text(text: &str) -> Result<Self, CryptoError> {
        let rest = text
            .trim()
            .strip_prefix(PUBLIC_HEADER)
            .ok_or(CryptoError::KeyFormat("not a secchan public key file"))?;
        let bytes = STANDARD_NO_PAD
            .decode(rest.trim())
            .map_err(|_| CryptoError::KeyFormat("public key is not base64"))?;
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::KeyFormat("public key is not 32 bytes"))?;
        Ok(Self(key))
    }
}

impl fmt::Debug for PublicIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fingerprint())
    }
}

impl fmt::Display for PublicIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fingerprint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip_and_debug_hides_secret() {
        let key = IdentityKey::from_seed(&[9u8; 32]);
        let text = key.to_file_text();
        let back = IdentityKey::from_file_text(&text).unwrap();
        assert_eq!(back.public(), key.public());
        let pubtext = key.public().to_file_text();
        assert_eq!(
            PublicIdentity::from_file_text(&pubtext).unwrap(),
            key.public()
        );
        let debug = format!("{key:?}");
        assert!(!debug.contains(&STANDARD_NO_PAD.encode([9u8; 32])));
        assert!(debug.contains("SHA256:"));
    }

    #[test]
    fn signature_binds_context_and_message() {
        let key = IdentityKey::from_seed(&[1u8; 32]);
        let sig = key.sign(b"ctx", b"msg");
        key.public().verify(b"ctx", b"msg", &sig).unwrap();
        assert_eq!(
            key.public().verify(b"ctX", b"msg", &sig),
            Err(CryptoError::BadSignature)
        );
        let other = IdentityKey::from_seed(&[2u8; 32]).public();
        assert!(other.verify(b"ctx", b"msg", &sig).is_err());
    }

    #[test]
    fn malformed_key_files_are_rejected() {
        assert!(IdentityKey::from_file_text("nope").is_err());
        assert!(IdentityKey::from_file_text("secchan-ed25519-secret-v1\nAAAA\n").is_err());
        assert!(PublicIdentity::from_file_text("secchan-ed25519-public-v1 !!").is_err());
    }
}
