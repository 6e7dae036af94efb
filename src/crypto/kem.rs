//! Key exchange: X25519 in every suite, plus an optional post-quantum KEM (protocol.md §3).
//!
//! A suite is a value ([`Suite`]) naming its wire code and, for hybrid suites, a [`PqKem`]. The
//! handshake state machines only see these traits, so adding a KEM means adding one impl and one
//! `Suite` constant.

use super::{random::Random, CryptoError};
use aws_lc_rs::agreement;
#[cfg(feature = "kyber-r3")]
use pqcrypto_traits::kem::{Ciphertext as _, PublicKey as _, SecretKey as _, SharedSecret as _};
use std::fmt;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

/// Length of an X25519 public value and of its shared secret.
pub const X25519_LEN: usize = 32;

/// A 32-byte KEM or Diffie-Hellman shared secret, erased on drop.
pub type SharedSecret = Zeroizing<[u8; 32]>;

/// An ephemeral X25519 key pair (protocol.md §3.1), from AWS-LC: its X25519 takes half the
/// time of x25519-dalek's here (docs/design.md), and it erases the private key when dropped.
pub struct X25519Ephemeral {
    secret: agreement::PrivateKey,
    public: [u8; X25519_LEN],
}

impl X25519Ephemeral {
    /// Draws 32 random bytes and derives the key pair (RFC 7748 clamping is applied inside
    /// the scalar multiplication).
    pub fn generate(rng: &mut dyn Random) -> Result<Self, CryptoError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill(seed.as_mut())?;
        let secret = agreement::PrivateKey::from_private_key(&agreement::X25519, seed.as_ref())
            .unwrap_or_else(|_| unreachable!("every 32-byte string is an X25519 private key"));
        let mut public = [0u8; X25519_LEN];
        match secret.compute_public_key() {
            Ok(p) if p.as_ref().len() == X25519_LEN => public.copy_from_slice(p.as_ref()),
            _ => unreachable!("an X25519 public key is 32 bytes"),
        }
        Ok(Self { secret, public })
    }

    /// The public value sent on the wire.
    pub fn public(&self) -> &[u8; X25519_LEN] {
        &self.public
    }

    /// X25519(secret, peer). An all-zero result (a low-order peer point) is refused, as RFC 7748
    /// §6.1 allows and protocol.md §6 requires.
    pub fn agree(&self, peer: &[u8; X25519_LEN]) -> Result<SharedSecret, CryptoError> {
        // AWS-LC refuses the all-zero result itself; the check below states the rule here.
        let out = agreement::agree(
            &self.secret,
            agreement::UnparsedPublicKey::new(&agreement::X25519, peer),
            CryptoError::ZeroSharedSecret,
            |shared| {
                let mut out = Zeroizing::new([0u8; 32]);
                if shared.len() != out.len() {
                    return Err(CryptoError::ZeroSharedSecret);
                }
                out.copy_from_slice(shared);
                Ok(out)
            },
        )?;
        if bool::from(out.ct_eq(&[0u8; 32])) {
            return Err(CryptoError::ZeroSharedSecret);
        }
        Ok(out)
    }
}

impl fmt::Debug for X25519Ephemeral {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X25519Ephemeral")
            .field("public", &hex::encode(self.public))
            .finish_non_exhaustive()
    }
}

/// A post-quantum KEM as the handshake uses it.
pub trait PqKem: Send + Sync {
    /// Length of the encapsulation (public) key on the wire.
    fn encaps_key_len(&self) -> usize;
    /// Length of the ciphertext on the wire.
    fn ciphertext_len(&self) -> usize;
    /// Generates a key pair; returns the decapsulation key and the encoded encapsulation key.
    fn generate(
        &self,
        rng: &mut dyn Random,
    ) -> Result<(Box<dyn PqDecapsKey>, Vec<u8>), CryptoError>;
    /// Checks `ek` (length, and for ML-KEM the FIPS 203 §7.2 modulus check) and encapsulates
    /// to it. Returns the ciphertext and the shared secret.
    fn encapsulate(
        &self,
        ek: &[u8],
        rng: &mut dyn Random,
    ) -> Result<(Vec<u8>, SharedSecret), CryptoError>;
}

/// The secret half of a [`PqKem`] key pair; erased on drop.
pub trait PqDecapsKey: Send + Sync {
    /// Decapsulates `ct` (whose length the caller has checked).
    fn decapsulate(&self, ct: &[u8]) -> Result<SharedSecret, CryptoError>;
}

/// ML-KEM-768 (FIPS 203) from `libcrux-ml-kem`, a formally verified implementation with a
/// portable path (used on aarch64) and an AVX2 path chosen at run time on x86_64.
#[derive(Debug, Clone, Copy)]
pub struct MlKem768;

/// ML-KEM-768 encapsulation key length (FIPS 203 Table 3).
pub const MLKEM768_EK_LEN: usize = 1184;
/// ML-KEM-768 ciphertext length (FIPS 203 Table 3).
pub const MLKEM768_CT_LEN: usize = 1088;

/// libcrux's key type has no erasure of its own; it is erased in place, through its byte
/// view, with `zeroize`'s volatile writes (a plain store into memory about to be freed may be
/// optimised away). It is kept in libcrux's type so decapsulation needs no copy of it.
struct MlKem768Decaps(libcrux_ml_kem::mlkem768::MlKem768PrivateKey);

impl MlKem768Decaps {
    fn erase(&mut self) {
        self.0[0..].zeroize();
    }
}

impl Drop for MlKem768Decaps {
    fn drop(&mut self) {
        self.erase();
    }
}

impl PqKem for MlKem768 {
    fn encaps_key_len(&self) -> usize {
        MLKEM768_EK_LEN
    }
    fn ciphertext_len(&self) -> usize {
        MLKEM768_CT_LEN
    }
    fn generate(
        &self,
        rng: &mut dyn Random,
    ) -> Result<(Box<dyn PqDecapsKey>, Vec<u8>), CryptoError> {
        // FIPS 203 ML-KEM.KeyGen_internal(d, z): 64 random bytes d || z.
        let mut seed = Zeroizing::new([0u8; 64]);
        rng.fill(seed.as_mut())?;
        let pair = libcrux_ml_kem::mlkem768::generate_key_pair(*seed);
        let ek = pair.pk().to_vec();
        let (sk, _pk) = pair.into_parts();
        Ok((Box::new(MlKem768Decaps(sk)), ek))
    }
    fn encapsulate(
        &self,
        ek: &[u8],
        rng: &mut dyn Random,
    ) -> Result<(Vec<u8>, SharedSecret), CryptoError> {
        let ek = libcrux_ml_kem::mlkem768::MlKem768PublicKey::try_from(ek)
            .map_err(|_| CryptoError::InvalidEncapsulationKey)?;
        // FIPS 203 §7.2: the encapsulation key must pass the modulus check.
        if !libcrux_ml_kem::mlkem768::validate_public_key(&ek) {
            return Err(CryptoError::InvalidEncapsulationKey);
        }
        let mut m = Zeroizing::new([0u8; 32]);
        rng.fill(m.as_mut())?;
        let (ct, ss) = libcrux_ml_kem::mlkem768::encapsulate(&ek, *m);
        Ok((ct.as_slice().to_vec(), Zeroizing::new(ss)))
    }
}

impl PqDecapsKey for MlKem768Decaps {
    fn decapsulate(&self, ct: &[u8]) -> Result<SharedSecret, CryptoError> {
        let ct = libcrux_ml_kem::mlkem768::MlKem768Ciphertext::try_from(ct)
            .map_err(|_| CryptoError::InvalidCiphertext)?;
        Ok(Zeroizing::new(libcrux_ml_kem::mlkem768::decapsulate(
            &self.0, &ct,
        )))
    }
}

/// Kyber768 as submitted to NIST's third round, from `pqcrypto-kyber` (PQClean). Kept only so
/// benchmarks can set the pre-standard Kyber beside ML-KEM; it is not interoperable with
/// ML-KEM and draws its randomness from the OS itself, so it has no test vectors. Built only
/// with the `kyber-r3` feature: `pqcrypto-kyber` is unmaintained (RUSTSEC-2024-0381).
#[cfg(feature = "kyber-r3")]
#[derive(Debug, Clone, Copy)]
pub struct Kyber768R3;

/// pqcrypto's `SecretKey` is a `Copy` type with no erasure and no mutable access, so the key is
/// kept as bytes that zeroize on drop and parsed for each decapsulation (that short-lived copy,
/// and the one key generation returns, are not erased: threat_model.md, memory erasure).
#[cfg(feature = "kyber-r3")]
struct Kyber768Decaps(Zeroizing<Vec<u8>>);

#[cfg(feature = "kyber-r3")]
impl PqKem for Kyber768R3 {
    fn encaps_key_len(&self) -> usize {
        pqcrypto_kyber::kyber768::public_key_bytes()
    }
    fn ciphertext_len(&self) -> usize {
        pqcrypto_kyber::kyber768::ciphertext_bytes()
    }
    fn generate(
        &self,
        _rng: &mut dyn Random,
    ) -> Result<(Box<dyn PqDecapsKey>, Vec<u8>), CryptoError> {
        let (pk, sk) = pqcrypto_kyber::kyber768::keypair();
        let sk = Zeroizing::new(sk.as_bytes().to_vec());
        Ok((Box::new(Kyber768Decaps(sk)), pk.as_bytes().to_vec()))
    }
    fn encapsulate(
        &self,
        ek: &[u8],
        _rng: &mut dyn Random,
    ) -> Result<(Vec<u8>, SharedSecret), CryptoError> {
        let pk = pqcrypto_kyber::kyber768::PublicKey::from_bytes(ek)
            .map_err(|_| CryptoError::InvalidEncapsulationKey)?;
        let (ss, ct) = pqcrypto_kyber::kyber768::encapsulate(&pk);
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(ss.as_bytes());
        Ok((ct.as_bytes().to_vec(), out))
    }
}

#[cfg(feature = "kyber-r3")]
impl PqDecapsKey for Kyber768Decaps {
    fn decapsulate(&self, ct: &[u8]) -> Result<SharedSecret, CryptoError> {
        let ct = pqcrypto_kyber::kyber768::Ciphertext::from_bytes(ct)
            .map_err(|_| CryptoError::InvalidCiphertext)?;
        let sk = pqcrypto_kyber::kyber768::SecretKey::from_bytes(&self.0).map_err(|_| {
            CryptoError::KeyFormat("Kyber768 decapsulation key of the wrong length")
        })?;
        let ss = pqcrypto_kyber::kyber768::decapsulate(&ct, &sk);
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(ss.as_bytes());
        Ok(out)
    }
}

/// Wire code of a key-exchange suite (protocol.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum SuiteId {
    /// X25519 + ML-KEM-768, the default.
    X25519MlKem768 = 0x01,
    /// X25519 + Kyber768 round 3 (pre-standard; benchmarks only). The code is reserved in every
    /// build; the suite exists only in builds with the `kyber-r3` feature.
    X25519Kyber768R3 = 0x02,
    /// X25519 alone: classical, not safe against a quantum attacker.
    X25519 = 0x03,
}

impl SuiteId {
    /// Every suite protocol.md §3.1 defines, whether or not this build has it.
    pub const ALL: [SuiteId; 3] = [Self::X25519MlKem768, Self::X25519Kyber768R3, Self::X25519];

    /// Decodes a wire code.
    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| *s as u8 == v)
    }

    /// The suite's name as protocol.md §3.1 gives it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::X25519MlKem768 => "X25519MLKEM768",
            Self::X25519Kyber768R3 => "X25519Kyber768R3",
            Self::X25519 => "X25519",
        }
    }

    /// The cargo feature a build needs for this suite, if it is optional.
    pub fn feature(self) -> Option<&'static str> {
        match self {
            Self::X25519Kyber768R3 => Some("kyber-r3"),
            Self::X25519MlKem768 | Self::X25519 => None,
        }
    }

    /// Looks a suite up by its name (case-insensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
    }

    /// The suite, if this build has it.
    pub fn suite(self) -> Option<&'static Suite> {
        Suite::from_id(self as u8)
    }
}

/// A key-exchange suite: X25519, optionally combined with a post-quantum KEM.
pub struct Suite {
    /// Wire code.
    pub id: SuiteId,
    /// Name as shown to users and in the server's JSON output.
    pub name: &'static str,
    /// The post-quantum half; `None` for the classical suite.
    pub pq: Option<&'static dyn PqKem>,
    /// Whether every algorithm in the suite is a published standard. A server in the default
    /// `hybrid` mode accepts only standard hybrid suites (protocol.md §3.1).
    pub standard: bool,
}

impl fmt::Debug for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl PartialEq for Suite {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}
impl Eq for Suite {}

impl Suite {
    /// Whether the suite resists a quantum attacker (has a post-quantum KEM).
    pub fn is_hybrid(&self) -> bool {
        self.pq.is_some()
    }

    /// Length of the device's key share: X25519 public value plus encapsulation key.
    pub fn share_len(&self) -> usize {
        X25519_LEN + self.pq.map_or(0, |k| k.encaps_key_len())
    }

    /// Length of the server's key share: X25519 public value plus ciphertext.
    pub fn response_len(&self) -> usize {
        X25519_LEN + self.pq.map_or(0, |k| k.ciphertext_len())
    }

    /// Looks a suite up by wire code.
    pub fn from_id(id: u8) -> Option<&'static Suite> {
        ALL_SUITES.iter().copied().find(|s| s.id as u8 == id)
    }

    /// Looks a suite this build has up by its user-facing name (case-insensitive).
    pub fn from_name(name: &str) -> Option<&'static Suite> {
        SuiteId::from_name(name).and_then(SuiteId::suite)
    }
}

/// Hybrid X25519 + ML-KEM-768: the default suite.
pub static X25519_MLKEM768: Suite = Suite {
    id: SuiteId::X25519MlKem768,
    name: SuiteId::X25519MlKem768.name(),
    pq: Some(&MlKem768),
    standard: true,
};

/// Hybrid X25519 + Kyber768 round 3: pre-standard, for benchmarks; only a server in `any`
/// mode accepts it.
#[cfg(feature = "kyber-r3")]
pub static X25519_KYBER768R3: Suite = Suite {
    id: SuiteId::X25519Kyber768R3,
    name: SuiteId::X25519Kyber768R3.name(),
    pq: Some(&Kyber768R3),
    standard: false,
};

/// Classical X25519 alone.
pub static X25519_ONLY: Suite = Suite {
    id: SuiteId::X25519,
    name: SuiteId::X25519.name(),
    pq: None,
    standard: true,
};

/// Every suite this build has, default first (X25519Kyber768R3 only with the `kyber-r3`
/// feature).
pub static ALL_SUITES: &[&Suite] = &[
    &X25519_MLKEM768,
    #[cfg(feature = "kyber-r3")]
    &X25519_KYBER768R3,
    &X25519_ONLY,
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::random::OsRandom;

    fn roundtrip(kem: &dyn PqKem) {
        let (dk, ek) = kem.generate(&mut OsRandom).unwrap();
        assert_eq!(ek.len(), kem.encaps_key_len());
        let (ct, ss) = kem.encapsulate(&ek, &mut OsRandom).unwrap();
        assert_eq!(ct.len(), kem.ciphertext_len());
        assert_eq!(*dk.decapsulate(&ct).unwrap(), *ss);
    }

    #[test]
    fn mlkem768_round_trip() {
        roundtrip(&MlKem768);
    }

    #[cfg(feature = "kyber-r3")]
    #[test]
    fn kyber768r3_round_trip() {
        roundtrip(&Kyber768R3);
    }

    #[test]
    fn mlkem768_decapsulation_key_is_erased_in_place() {
        let pair = libcrux_ml_kem::mlkem768::generate_key_pair([7; 64]);
        let (sk, _) = pair.into_parts();
        let mut dk = MlKem768Decaps(sk);
        assert!(dk.0.as_slice().iter().any(|&b| b != 0));
        dk.erase();
        assert!(dk.0.as_slice().iter().all(|&b| b == 0));
    }

    #[test]
    fn mlkem768_rejects_encaps_key_failing_modulus_check() {
        let (_dk, mut ek) = MlKem768.generate(&mut OsRandom).unwrap();
        // Set the first 12-bit coefficient to 0xFFF >= q = 3329.
        ek[0] = 0xff;
        ek[1] |= 0x0f;
        assert_eq!(
            MlKem768.encapsulate(&ek, &mut OsRandom).unwrap_err(),
            CryptoError::InvalidEncapsulationKey
        );
        assert_eq!(
            MlKem768.encapsulate(&ek[1..], &mut OsRandom).unwrap_err(),
            CryptoError::InvalidEncapsulationKey
        );
    }

    #[test]
    fn x25519_rejects_low_order_point() {
        let e = X25519Ephemeral::generate(&mut OsRandom).unwrap();
        assert_eq!(
            e.agree(&[0u8; 32]).unwrap_err(),
            CryptoError::ZeroSharedSecret
        );
    }
}
