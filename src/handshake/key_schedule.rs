//! The key schedule (protocol.md §5): the hybrid combiner, handshake keys, traffic secrets,
//! and the resumption schedule (§5.7).

use crate::crypto::aead::{AeadId, AeadKey, KEY_LEN, NONCE_LEN};
use crate::crypto::kdf::{
    expand_label, expand_secret, extract, hmac_sha256, sha256, Secret, HASH_LEN,
};
use crate::crypto::kem::SharedSecret;
use crate::crypto::CryptoError;
use crate::msgs::{BINDER_LEN, CONFIRM_LEN};
use zeroize::Zeroizing;

/// Inputs of the combiner (protocol.md §5.1). For the classical suite the KEM fields are empty.
pub(crate) struct CombinerInput<'a> {
    pub th1: &'a [u8; HASH_LEN],
    pub ss_kem: Option<&'a SharedSecret>,
    pub ss_x25519: &'a SharedSecret,
    pub x25519_device: &'a [u8; 32],
    pub x25519_server: &'a [u8; 32],
    pub kem_ciphertext: &'a [u8],
    pub kem_encaps_key: &'a [u8],
}

/// handshake_secret = HKDF-Extract(salt = TH1,
///     IKM = ss_kem || ss_x25519 || X25519_d || X25519_s || kem_ct || kem_ek)
///
/// Both shared secrets, both X25519 public values, the ML-KEM ciphertext and encapsulation key
/// enter the IKM directly, and the transcript through the salt, so the result is secure while
/// either KEM holds (draft-connolly-cfrg-xwing-kem §2, draft-ietf-tls-hybrid-design §3.2).
pub(crate) fn handshake_secret(input: &CombinerInput<'_>) -> Secret {
    let mut ikm = Zeroizing::new(Vec::with_capacity(
        32 * 4 + input.kem_ciphertext.len() + input.kem_encaps_key.len(),
    ));
    if let Some(ss) = input.ss_kem {
        ikm.extend_from_slice(ss.as_ref());
    }
    ikm.extend_from_slice(input.ss_x25519.as_ref());
    ikm.extend_from_slice(input.x25519_device);
    ikm.extend_from_slice(input.x25519_server);
    ikm.extend_from_slice(input.kem_ciphertext);
    ikm.extend_from_slice(input.kem_encaps_key);
    extract(input.th1, &ikm)
}

/// Which handshake message a handshake key protects.
#[derive(Clone, Copy)]
pub(crate) enum HandshakeKey {
    /// ServerHello's sealed server authentication.
    Server,
    /// DeviceFinish's sealed device authentication.
    Device,
}

/// Seals `plaintext` under the handshake key for `which` with an all-zero nonce (each key
/// seals exactly one message) and `aad` = the transcript hash.
pub(crate) fn seal_handshake(
    hs: &Secret,
    which: HandshakeKey,
    aead: AeadId,
    aad: &[u8; HASH_LEN],
    plaintext: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), CryptoError> {
    let key = handshake_key(hs, which, aead)?;
    let start = out.len();
    out.extend_from_slice(plaintext);
    key.seal_in_place([0u8; NONCE_LEN], aad, out, start)
}

/// Opens a message sealed by [`seal_handshake`]; returns the plaintext.
pub(crate) fn open_handshake(
    hs: &Secret,
    which: HandshakeKey,
    aead: AeadId,
    aad: &[u8; HASH_LEN],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let key = handshake_key(hs, which, aead)?;
    let mut buf = Zeroizing::new(sealed.to_vec());
    let len = key.open_in_place([0u8; NONCE_LEN], aad, &mut buf)?;
    buf.truncate(len);
    Ok(buf)
}

fn handshake_key(hs: &Secret, which: HandshakeKey, aead: AeadId) -> Result<AeadKey, CryptoError> {
    let label = match which {
        HandshakeKey::Server => "server handshake key",
        HandshakeKey::Device => "device handshake key",
    };
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    expand_label(hs, label, key.as_mut());
    AeadKey::new(aead, &key)
}

/// What an established session takes from the key schedule (protocol.md §5.4, §5.7).
pub(crate) struct SessionSecrets {
    /// Device-to-server traffic secret, generation 0.
    pub d2s: Secret,
    /// Server-to-device traffic secret, generation 0.
    pub s2d: Secret,
    /// The PSK a ticket issued in this session carries.
    pub psk: Secret,
}

/// master = HKDF-Extract(salt = `th`, IKM = `secret`); the traffic secrets and the resumption
/// PSK expanded from it. A full handshake passes TH3 and the handshake secret, a resumption
/// TH_r2 and the resume secret.
pub(crate) fn session_secrets(secret: &Secret, th: &[u8; HASH_LEN]) -> SessionSecrets {
    let master = extract(th, secret.as_ref());
    SessionSecrets {
        d2s: expand_secret(&master, "d2s traffic"),
        s2d: expand_secret(&master, "s2d traffic"),
        psk: expand_secret(&master, "resumption psk"),
    }
}

/// binder = HMAC(Expand(HKDF-Extract(0^32, psk), "resume binder", 32),
/// H(ResumeHello without the binder)), first 16 bytes (protocol.md §5.7).
pub(crate) fn binder(psk: &Secret, hello_without_binder: &[u8]) -> [u8; BINDER_LEN] {
    let early = extract(&[0u8; HASH_LEN], psk.as_ref());
    let key = expand_secret(&early, "resume binder");
    hmac_sha256(&key, &sha256(hello_without_binder))
}

/// resume_secret = HKDF-Extract(salt = TH_r1, IKM = psk || ss_x25519 || x25519_d || x25519_s).
pub(crate) fn resume_secret(
    th_r1: &[u8; HASH_LEN],
    psk: &Secret,
    ss_x25519: &SharedSecret,
    x25519_device: &[u8; 32],
    x25519_server: &[u8; 32],
) -> Secret {
    let mut ikm = Zeroizing::new([0u8; 4 * 32]);
    for (chunk, part) in ikm.chunks_exact_mut(32).zip([
        psk.as_ref(),
        ss_x25519.as_ref(),
        x25519_device,
        x25519_server,
    ]) {
        chunk.copy_from_slice(part);
    }
    extract(th_r1, ikm.as_ref())
}

/// confirm = HMAC(Expand(resume_secret, "server resume confirm", 32), TH_r1), first 16 bytes.
pub(crate) fn server_confirm(resume_secret: &Secret, th_r1: &[u8; HASH_LEN]) -> [u8; CONFIRM_LEN] {
    let key = expand_secret(resume_secret, "server resume confirm");
    hmac_sha256(&key, th_r1)
}
