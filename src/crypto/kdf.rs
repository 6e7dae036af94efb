//! HKDF-SHA256 (RFC 5869) and the transcript hash, as protocol.md §5 uses them.
//!
//! Every secret this module returns zeroizes on drop. The `hkdf`, `hmac` and `sha2` crates have
//! no zeroize support, so the keyed HMAC state they build from a secret inside `extract` and
//! `expand_label` is dropped without erasure (threat_model.md lists this gap).

use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

/// Output length of SHA-256, the transcript hash and every HKDF secret.
pub const HASH_LEN: usize = 32;

/// A 32-byte secret that is erased when dropped.
pub type Secret = Zeroizing<[u8; HASH_LEN]>;

/// HKDF-Extract(salt, ikm).
pub fn extract(salt: &[u8], ikm: &[u8]) -> Secret {
    let (mut prk, _) = Hkdf::<Sha256>::extract(Some(salt), ikm);
    let mut out = Zeroizing::new([0u8; HASH_LEN]);
    out.copy_from_slice(&prk);
    prk.as_mut_slice().zeroize();
    out
}

/// HKDF-Expand(prk, "secchan v1 " || label, out.len()).
///
/// `out` is at most 255 * 32 bytes in every use here (32 or 12), so expansion cannot fail.
pub fn expand_label(prk: &[u8; HASH_LEN], label: &str, out: &mut [u8]) {
    let hk = Hkdf::<Sha256>::from_prk(prk).unwrap_or_else(|_| unreachable!("PRK is 32 bytes"));
    hk.expand_multi_info(&[LABEL_PREFIX, label.as_bytes()], out)
        .unwrap_or_else(|_| unreachable!("output length is at most 32 bytes"));
}

/// HKDF-Expand to a fresh 32-byte secret.
pub fn expand_secret(prk: &[u8; HASH_LEN], label: &str) -> Secret {
    let mut out = Zeroizing::new([0u8; HASH_LEN]);
    expand_label(prk, label, out.as_mut());
    out
}

/// Every HKDF info string starts with this prefix (protocol.md §5).
pub const LABEL_PREFIX: &[u8] = b"secchan v1 ";

/// A running SHA-256 over the handshake messages.
#[derive(Clone, Default)]
pub struct Transcript(Sha256);

impl Transcript {
    /// Appends a message's bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The hash of everything appended so far.
    pub fn current(&self) -> [u8; HASH_LEN] {
        self.0.clone().finalize().into()
    }
}

/// HMAC-SHA256(key, message) (RFC 2104), truncated to its first `N` bytes.
pub fn hmac_sha256<const N: usize>(key: &[u8; HASH_LEN], message: &[u8]) -> [u8; N] {
    hmac_sha256_parts(key, &[message])
}

/// HMAC-SHA256(key, the concatenation of `parts`), truncated to its first `N` bytes, without
/// copying the parts together.
pub fn hmac_sha256_parts<const N: usize>(key: &[u8; HASH_LEN], parts: &[&[u8]]) -> [u8; N] {
    HmacKey::new(key).mac_parts(parts)
}

/// An HMAC-SHA256 key made ready once (its inner and outer pads hashed), for a key that
/// computes many MACs: each [`mac_parts`](Self::mac_parts) then costs only its message's
/// blocks. The ready state is key material; like the `hmac` crate's own, it is not erased
/// on drop (module documentation).
#[derive(Clone)]
pub struct HmacKey(hmac::Hmac<Sha256>);

impl HmacKey {
    /// `key`, made ready.
    pub fn new(key: &[u8; HASH_LEN]) -> Self {
        use hmac::Mac;
        Self(
            <hmac::Hmac<Sha256> as Mac>::new_from_slice(key)
                .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length")),
        )
    }

    /// HMAC-SHA256(key, the concatenation of `parts`), truncated to its first `N` bytes.
    pub fn mac_parts<const N: usize>(&self, parts: &[&[u8]]) -> [u8; N] {
        use hmac::Mac;
        const { assert!(N <= HASH_LEN) };
        let mut mac = self.0.clone();
        for part in parts {
            mac.update(part);
        }
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; N];
        out.copy_from_slice(&full[..N]);
        out
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; HASH_LEN] {
    Sha256::digest(bytes).into()
}
