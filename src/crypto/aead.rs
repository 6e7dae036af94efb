//! Record protection: AES-256-GCM and ChaCha20-Poly1305 from `aws-lc-rs` (AWS-LC), with their
//! usage limits (protocol.md §7.4).
//!
//! The record layer and the handshake see an AEAD only as an [`AeadId`] (wire code, name,
//! limits) and an [`AeadCipher`] built from it. A new AEAD is one `AeadId` variant and, if it
//! comes from another crate than `aws-lc-rs`, one `AeadCipher` impl; neither the handshake state
//! machines nor the record layer change.
//!
//! The backend was chosen by measurement (docs/design.md): AWS-LC seals 16 KiB AES-256-GCM
//! records 1.5× faster than `ring` and 8× faster than RustCrypto's `aes-gcm` 0.10 here, picks
//! AES/PMULL or NEON code at run time on aarch64 (one binary suits a Pi 4 without AES
//! instructions and a Pi 5), and erases a key's expanded schedule when the key is dropped.

use super::CryptoError;
use aws_lc_rs::aead::{self, LessSafeKey, Nonce, UnboundKey};
use std::fmt;

/// AEAD key length for both AEADs.
pub const KEY_LEN: usize = 32;
/// AEAD nonce length for both AEADs.
pub const NONCE_LEN: usize = 12;
/// Authentication tag length for both AEADs.
pub const TAG_LEN: usize = 16;

/// Records sealed under one key after which a sender rotates it (protocol.md §7.4): 2^23,
/// comfortably below the AES-GCM confidentiality limit below, for both AEADs alike so rotation
/// is uniform.
pub const SOFT_LIMIT_RECORDS: u64 = 1 << 23;

/// RFC 8446 §5.5 and draft-irtf-cfrg-aead-limits §5.1: at most 2^24.5 full-size records under
/// one AES-GCM key keep the confidentiality advantage below 2^-60. Reaching it closes the
/// session.
pub const AES_GCM_HARD_LIMIT_RECORDS: u64 = 23_726_566;

/// draft-irtf-cfrg-aead-limits §5.2: ChaCha20-Poly1305's confidentiality bound is beyond any
/// practical record count, so the hard limit only keeps the 64-bit counter far from wrapping.
pub const CHACHA20_POLY1305_HARD_LIMIT_RECORDS: u64 = 1 << 62;

/// RFC 9147 §4.5.3 and draft-irtf-cfrg-aead-limits: at most 2^36 records that fail
/// authentication under one key, for both AEADs. Only reachable on lossy transports (MQTT),
/// where a failed record is dropped rather than fatal.
pub const INTEGRITY_LIMIT_FAILURES: u64 = 1 << 36;

/// Wire code of an AEAD (protocol.md §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum AeadId {
    /// AES-256-GCM (NIST SP 800-38D).
    Aes256Gcm = 0x01,
    /// ChaCha20-Poly1305 (RFC 8439).
    ChaCha20Poly1305 = 0x02,
}

impl AeadId {
    /// Decodes a wire code.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0x01 => Some(Self::Aes256Gcm),
            0x02 => Some(Self::ChaCha20Poly1305),
            _ => None,
        }
    }

    /// Looks an AEAD up by its user-facing name (case-insensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Aes256Gcm, Self::ChaCha20Poly1305]
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(name))
    }

    /// Name as shown to users.
    pub fn name(self) -> &'static str {
        match self {
            Self::Aes256Gcm => "AES-256-GCM",
            Self::ChaCha20Poly1305 => "ChaCha20-Poly1305",
        }
    }

    /// Records under one key after which the session must close.
    pub fn hard_limit_records(self) -> u64 {
        match self {
            Self::Aes256Gcm => AES_GCM_HARD_LIMIT_RECORDS,
            Self::ChaCha20Poly1305 => CHACHA20_POLY1305_HARD_LIMIT_RECORDS,
        }
    }

    /// The implementation, keyed with `key`.
    fn cipher(self, key: &[u8; KEY_LEN]) -> Result<Box<dyn AeadCipher>, CryptoError> {
        let algorithm = match self {
            Self::Aes256Gcm => &aead::AES_256_GCM,
            Self::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        };
        Ok(Box::new(AwsLcCipher::new(algorithm, key)?))
    }

    /// The device's default preference: AES-256-GCM first where the CPU has AES and carry-less
    /// multiply instructions, ChaCha20-Poly1305 first where it does not (a Raspberry Pi 4).
    pub fn default_preference() -> Vec<AeadId> {
        if cpu_has_aes() {
            vec![Self::Aes256Gcm, Self::ChaCha20Poly1305]
        } else {
            vec![Self::ChaCha20Poly1305, Self::Aes256Gcm]
        }
    }
}

impl fmt::Display for AeadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether this CPU has hardware AES and GHASH support.
pub fn cpu_has_aes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// A keyed AEAD: what an implementation provides (32-byte keys, 12-byte nonces, 16-byte tags,
/// protocol.md §3.2). The tag comparison in `open_in_place` must be constant-time.
pub trait AeadCipher: Send + Sync {
    /// Encrypts `buf[start..]` in place and appends the tag.
    fn seal_in_place(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut Vec<u8>,
        start: usize,
    ) -> Result<(), CryptoError>;

    /// Verifies and decrypts `ciphertext || tag` in place; returns the plaintext's length.
    fn open_in_place(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<usize, CryptoError>;
}

/// Both AEADs from `aws-lc-rs`. AWS-LC keeps the expanded key schedule in memory it allocated
/// and overwrites it when the key is dropped (its `OPENSSL_free` erases what it frees).
struct AwsLcCipher(LessSafeKey);

impl AwsLcCipher {
    fn new(algorithm: &'static aead::Algorithm, key: &[u8; KEY_LEN]) -> Result<Self, CryptoError> {
        let unbound = UnboundKey::new(algorithm, key).map_err(|_| CryptoError::Aead)?;
        Ok(Self(LessSafeKey::new(unbound)))
    }
}

impl AeadCipher for AwsLcCipher {
    fn seal_in_place(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut Vec<u8>,
        start: usize,
    ) -> Result<(), CryptoError> {
        let plaintext = buf.get_mut(start..).ok_or(CryptoError::Aead)?;
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad),
                plaintext,
            )
            .map_err(|_| CryptoError::Aead)?;
        buf.extend_from_slice(tag.as_ref());
        Ok(())
    }

    fn open_in_place(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<usize, CryptoError> {
        self.0
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad),
                buf,
            )
            .map(|p| p.len())
            .map_err(|_| CryptoError::Aead)
    }
}

/// One direction's AEAD key, or a handshake key. The raw key bytes are derived by the caller
/// (the record layer, the key schedule) into a `Zeroizing` buffer that is erased as soon as
/// this key is built.
pub struct AeadKey {
    id: AeadId,
    cipher: Box<dyn AeadCipher>,
}

impl fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AeadKey")
            .field("aead", &self.id)
            .finish_non_exhaustive()
    }
}

impl AeadKey {
    /// Builds a key for `id` from 32 bytes.
    pub fn new(id: AeadId, key: &[u8; KEY_LEN]) -> Result<Self, CryptoError> {
        Ok(Self {
            id,
            cipher: id.cipher(key)?,
        })
    }

    /// Which AEAD this key is for.
    pub fn id(&self) -> AeadId {
        self.id
    }

    /// Encrypts `buf[start..]` in place and appends the tag.
    pub fn seal_in_place(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut Vec<u8>,
        start: usize,
    ) -> Result<(), CryptoError> {
        self.cipher.seal_in_place(nonce, aad, buf, start)
    }

    /// Verifies and decrypts `ciphertext || tag` in place; returns the plaintext's length.
    pub fn open_in_place(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<usize, CryptoError> {
        self.cipher.open_in_place(nonce, aad, buf)
    }
}

/// An AES-256-GCM-SIV key (RFC 8452) for sealing resumption tickets (protocol.md §7.6).
///
/// GCM-SIV is nonce-misuse resistant: its IV is derived from the plaintext, so sealing
/// distinct plaintexts under one key with the same nonce is safe, and sealing the same
/// plaintext twice gives the same ciphertext (which only reveals that equality). Every ticket
/// carries a fresh pseudorandom PSK, so secchan seals tickets with the all-zero nonce and no
/// nonce travels (protocol.md §10.7).
pub struct SivKey(LessSafeKey);

impl fmt::Debug for SivKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SivKey(AES-256-GCM-SIV)")
    }
}

impl SivKey {
    /// Builds a key from 32 bytes.
    pub fn new(key: &[u8; KEY_LEN]) -> Result<Self, CryptoError> {
        let unbound =
            UnboundKey::new(&aead::AES_256_GCM_SIV, key).map_err(|_| CryptoError::Aead)?;
        Ok(Self(LessSafeKey::new(unbound)))
    }

    /// Appends `AES-256-GCM-SIV(nonce = 0^12, aad, plaintext) || tag` to `out`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
        self.seal_with_nonce([0; NONCE_LEN], aad, plaintext, out)
    }

    /// [`seal`](Self::seal) under another nonce. secchan never uses one; this lets
    /// tests/wycheproof.rs run known-answer vectors, whose nonces vary, through this type.
    #[doc(hidden)]
    pub fn seal_with_nonce(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let start = out.len();
        out.extend_from_slice(plaintext);
        let body = out.get_mut(start..).ok_or(CryptoError::Aead)?;
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad),
                body,
            )
            .map_err(|_| CryptoError::Aead)?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Verifies and decrypts `ciphertext || tag` sealed by [`seal`](Self::seal).
    pub fn open(
        &self,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, CryptoError> {
        self.open_with_nonce([0; NONCE_LEN], aad, sealed)
    }

    /// [`open`](Self::open) under another nonce, for the same known-answer tests as
    /// [`seal_with_nonce`](Self::seal_with_nonce).
    #[doc(hidden)]
    pub fn open_with_nonce(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, CryptoError> {
        let mut buf = zeroize::Zeroizing::new(sealed.to_vec());
        let len = self
            .0
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| CryptoError::Aead)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper() {
        for id in [AeadId::Aes256Gcm, AeadId::ChaCha20Poly1305] {
            let key = AeadKey::new(id, &[7u8; 32]).unwrap();
            let mut buf = b"hdrhello".to_vec();
            key.seal_in_place([1; 12], b"aad", &mut buf, 3).unwrap();
            assert_eq!(buf.len(), 3 + 5 + TAG_LEN);
            let mut ct = buf[3..].to_vec();
            let n = key.open_in_place([1; 12], b"aad", &mut ct).unwrap();
            assert_eq!(&ct[..n], b"hello");
            let mut bad = buf[3..].to_vec();
            bad[0] ^= 1;
            assert_eq!(
                key.open_in_place([1; 12], b"aad", &mut bad),
                Err(CryptoError::Aead)
            );
            let mut wrong_aad = buf[3..].to_vec();
            assert!(key.open_in_place([1; 12], b"aaD", &mut wrong_aad).is_err());
        }
    }

    #[test]
    fn siv_is_deterministic_and_authenticated() {
        let key = SivKey::new(&[3u8; 32]).unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        key.seal(b"k", b"ticket", &mut a).unwrap();
        key.seal(b"k", b"ticket", &mut b).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 6 + TAG_LEN);
        assert_eq!(&key.open(b"k", &a).unwrap()[..], b"ticket");
        assert_eq!(key.open(b"K", &a).unwrap_err(), CryptoError::Aead);
        a[0] ^= 1;
        assert_eq!(key.open(b"k", &a).unwrap_err(), CryptoError::Aead);
        let mut c = Vec::new();
        key.seal(b"k", b"tickeT", &mut c).unwrap();
        assert_ne!(c[..6], b[..6]);
    }
}
