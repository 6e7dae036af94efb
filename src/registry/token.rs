//! Enrollment tokens (docs/registry.md §5).
//!
//! A token is a fresh Ed25519 seed plus the server's public key:
//! `secchan-token-v1.` followed by the unpadded base64url of `seed (32) || server key (32)`.
//! The registry records only the token's public key, so reading the registry never yields a
//! usable token. The device proves possession by signing the handshake's TH2 and its own key
//! with the token key; the server key in the token lets a new device pin its server.

use super::RegistryError;
use crate::crypto::identity::{IdentityKey, PublicIdentity, PUBLIC_KEY_LEN};
use crate::crypto::random::Random;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use zeroize::Zeroizing;

const PREFIX: &str = "secchan-token-v1.";

/// An enrollment token as the device holds it. Its Debug output shows only public parts.
pub struct EnrollmentToken {
    key: IdentityKey,
    seed: Zeroizing<[u8; 32]>,
    server: PublicIdentity,
}

impl std::fmt::Debug for EnrollmentToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollmentToken")
            .field("id", &self.id().fingerprint())
            .field("server", &self.server.fingerprint())
            .finish_non_exhaustive()
    }
}

impl EnrollmentToken {
    /// A new token for the server `server`.
    pub fn generate(rng: &mut dyn Random, server: PublicIdentity) -> Result<Self, RegistryError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill(seed.as_mut())
            .map_err(|_| RegistryError::TokenFormat("the random generator failed"))?;
        Ok(Self::from_parts(seed, server))
    }

    fn from_parts(seed: Zeroizing<[u8; 32]>, server: PublicIdentity) -> Self {
        Self {
            key: IdentityKey::from_seed(&seed),
            seed,
            server,
        }
    }

    /// Parses the token text a device is given.
    pub fn parse(text: &str) -> Result<Self, RegistryError> {
        let body = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(RegistryError::TokenFormat(
                "it does not start with secchan-token-v1.",
            ))?;
        let bytes = Zeroizing::new(
            URL_SAFE_NO_PAD
                .decode(body)
                .map_err(|_| RegistryError::TokenFormat("it is not base64url"))?,
        );
        let (seed, server) = match bytes.split_at_checked(32) {
            Some((s, k)) if k.len() == PUBLIC_KEY_LEN => (s, k),
            _ => return Err(RegistryError::TokenFormat("it is not 64 bytes long")),
        };
        let mut s = Zeroizing::new([0u8; 32]);
        s.copy_from_slice(seed);
        let mut k = [0u8; PUBLIC_KEY_LEN];
        k.copy_from_slice(server);
        Ok(Self::from_parts(s, PublicIdentity(k)))
    }

    /// The token text to hand to a device. Secret: print it once, never log it.
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut bytes = Zeroizing::new(Vec::with_capacity(64));
        bytes.extend_from_slice(self.seed.as_ref());
        bytes.extend_from_slice(&self.server.0);
        Zeroizing::new(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(&bytes)))
    }

    /// The token's public key: its identifier in the registry.
    pub fn id(&self) -> PublicIdentity {
        self.key.public()
    }

    /// The server the token was issued by.
    pub fn server(&self) -> &PublicIdentity {
        &self.server
    }

    /// The signing key a device configures as
    /// [`DeviceConfig::enrollment`](crate::handshake::device::DeviceConfig::enrollment).
    pub fn into_key(self) -> IdentityKey {
        self.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::random::OsRandom;

    #[test]
    fn token_text_round_trips_and_debug_hides_the_seed() {
        let server = IdentityKey::from_seed(&[1; 32]).public();
        let t = EnrollmentToken::generate(&mut OsRandom, server).unwrap();
        let text = t.to_text();
        assert!(text.starts_with(PREFIX));
        let back = EnrollmentToken::parse(&text).unwrap();
        assert_eq!(back.id(), t.id());
        assert_eq!(*back.server(), server);
        let body = text.strip_prefix(PREFIX).unwrap();
        assert!(!format!("{t:?}").contains(&body[..20]));
        for bad in ["", "secchan-token-v1.", "secchan-token-v1.!!", "token"] {
            assert!(matches!(
                EnrollmentToken::parse(bad),
                Err(RegistryError::TokenFormat(_))
            ));
        }
    }
}
