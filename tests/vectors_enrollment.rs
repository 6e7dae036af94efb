//! Test vector for the enrollment authentication, DeviceFinish kind 0x02 (docs/registry.md
//! §5.3): the keys of the worked example of docs/registry.md §2.4 (server seed 0x51, device
//! 2, token seed 0x03) and fixed randomness in; the token text, TH2, the device signature,
//! the enrollment proof, the 193-byte plaintext and the sealed 210-byte DeviceFinish out.
//! Every value is re-derived here from the documents with the primitive crates (not through
//! secchan), and the whole run is compared with
//! `tests/vectors/enrollment_x25519_chacha20poly1305.json`.
//!
//! Regenerate after an intentional wire change (and bump the version byte):
//! `SECCHAN_WRITE_VECTORS=1 cargo test --test vectors_enrollment`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use hkdf::Hkdf;
use secchan::crypto::aead::AeadId;
use secchan::crypto::identity::{IdentityKey, PublicIdentity};
use secchan::crypto::kem::X25519_ONLY;
use secchan::crypto::random::FixedRandom;
use secchan::handshake::device::{self, DeviceConfig};
use secchan::handshake::server::{self, ServerConfig};
use secchan::handshake::Authorizer;
use secchan::msgs::AlertCode;
use secchan::registry::EnrollmentToken;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

const SERVER_SEED: [u8; 32] = [0x51; 32];
const DEVICE_SEED: [u8; 32] = [0x02; 32];
const TOKEN_SEED: [u8; 32] = [0x03; 32];

fn filled(byte: u8, n: usize) -> Vec<u8> {
    (0..n).map(|i| byte.wrapping_add(i as u8)).collect()
}

/// Records the enrollment the server's core asks for.
#[derive(Default)]
struct Recorder(Mutex<Option<(PublicIdentity, PublicIdentity)>>);

impl Authorizer for Recorder {
    fn authorize(&self, _: Option<&PublicIdentity>) -> Result<String, AlertCode> {
        Err(AlertCode::UnknownDevice)
    }

    fn enroll(&self, device: &PublicIdentity, token: &PublicIdentity) -> Result<String, AlertCode> {
        *self.0.lock().unwrap() = Some((*device, *token));
        Ok("sensor-2".into())
    }
}

fn generate() -> BTreeMap<&'static str, String> {
    let mut v = BTreeMap::new();
    let put = |v: &mut BTreeMap<&'static str, String>, k, bytes: &[u8]| {
        v.insert(k, hex::encode(bytes));
    };
    let rand_dx = filled(0x10, 32);
    let rand_sx = filled(0x80, 32);
    v.insert("suite", X25519_ONLY.name.to_string());
    v.insert("aead", AeadId::ChaCha20Poly1305.name().to_string());
    put(&mut v, "server_identity_seed", &SERVER_SEED);
    put(&mut v, "device_identity_seed", &DEVICE_SEED);
    put(&mut v, "token_seed", &TOKEN_SEED);
    put(&mut v, "random_device_x25519", &rand_dx);
    put(&mut v, "random_server_x25519", &rand_sx);

    // The keys, and the token text (docs/registry.md §5.1) the device is given.
    let server_pub = SigningKey::from_bytes(&SERVER_SEED)
        .verifying_key()
        .to_bytes();
    let device = SigningKey::from_bytes(&DEVICE_SEED);
    let device_pub = device.verifying_key().to_bytes();
    let token = SigningKey::from_bytes(&TOKEN_SEED);
    let token_pub = token.verifying_key().to_bytes();
    let token_text = format!(
        "secchan-token-v1.{}",
        URL_SAFE_NO_PAD.encode([TOKEN_SEED, server_pub].concat())
    );
    put(&mut v, "server_public", &server_pub);
    put(&mut v, "device_public", &device_pub);
    put(&mut v, "token_id", &token_pub);
    v.insert("token_text", token_text.clone());

    // The handshake, run by secchan with that token.
    let parsed = EnrollmentToken::parse(&token_text).unwrap();
    assert_eq!(parsed.id(), PublicIdentity(token_pub));
    assert_eq!(*parsed.server(), PublicIdentity(server_pub));
    let dcfg = DeviceConfig::default()
        .with_suite(&X25519_ONLY)
        .with_aeads(vec![AeadId::ChaCha20Poly1305])
        .with_identity(Arc::new(IdentityKey::from_seed(&DEVICE_SEED)))
        .with_enrollment(Arc::new(parsed.into_key()));
    let recorder = Arc::new(Recorder::default());
    let mut scfg = ServerConfig::new(
        Arc::new(IdentityKey::from_seed(&SERVER_SEED)),
        recorder.clone(),
    );
    scfg.mode = secchan::handshake::Mode::Any;
    let now = Instant::now();
    let (expect, hello) =
        device::start(&dcfg, &mut FixedRandom::new(vec![rand_dx.clone()])).unwrap();
    let (expect_finish, sh) =
        server::accept_hello(&scfg, &hello, &mut FixedRandom::new(vec![rand_sx])).unwrap();
    let (_, finish) = expect.read_server_hello(&sh).unwrap().finish(now).unwrap();
    let (_, peer) = expect_finish.read_device_finish(&finish, now).unwrap();
    assert_eq!(peer.name, "sensor-2");
    assert_eq!(
        *recorder.0.lock().unwrap(),
        Some((PublicIdentity(device_pub), PublicIdentity(token_pub)))
    );
    put(&mut v, "device_hello", &hello);
    put(&mut v, "server_hello", &sh);
    put(&mut v, "device_finish", &finish);

    // Re-derived from protocol.md §5 (classical suite: no KEM values in the combiner).
    let x_d = x25519_dalek::StaticSecret::from(<[u8; 32]>::try_from(&rand_dx[..]).unwrap());
    let x_d_pub = x25519_dalek::PublicKey::from(&x_d);
    assert_eq!(&hello[hello.len() - 32..], x_d_pub.as_bytes());
    let x_s = <[u8; 32]>::try_from(&sh[4..36]).unwrap();
    let ss = x_d.diffie_hellman(&x25519_dalek::PublicKey::from(x_s));
    let ikm = [ss.as_bytes(), x_d_pub.as_bytes(), &x_s[..]].concat();
    let th1 = Sha256::new()
        .chain_update(&hello)
        .chain_update(&sh[..36])
        .finalize();
    let th2: [u8; 32] = Sha256::new()
        .chain_update(&hello)
        .chain_update(&sh)
        .finalize()
        .into();
    let hs = Hkdf::<Sha256>::extract(Some(&th1), &ikm).0;
    let mut device_hs_key = [0u8; 32];
    Hkdf::<Sha256>::from_prk(&hs)
        .unwrap()
        .expand(b"secchan v1 device handshake key", &mut device_hs_key)
        .unwrap();
    put(&mut v, "ss_x25519", ss.as_bytes());
    put(&mut v, "th1", &th1);
    put(&mut v, "handshake_secret", &hs);
    put(&mut v, "th2", &th2);
    put(&mut v, "device_handshake_key", &device_hs_key);

    // docs/registry.md §5.3: the device signature as for kind 0x01, then the proof by the
    // token key over context || TH2 || D.
    let signature = device.sign(&[&b"secchan v1 device signature\0"[..], &th2].concat());
    let proof_input = [&b"secchan v1 enrollment proof\0"[..], &th2, &device_pub].concat();
    let proof = token.sign(&proof_input);
    put(&mut v, "device_signature", &signature.to_bytes());
    put(&mut v, "enrollment_proof_input", &proof_input);
    put(&mut v, "enrollment_proof", &proof.to_bytes());
    let auth = [
        &[0x02][..],
        &device_pub,
        &signature.to_bytes(),
        &token_pub,
        &proof.to_bytes(),
    ]
    .concat();
    assert_eq!(auth.len(), 193);
    put(&mut v, "device_auth", &auth);

    // DeviceFinish = 0x03 || ChaCha20-Poly1305(device handshake key, nonce 0, aad TH2, auth).
    let key = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &device_hs_key).unwrap(),
    );
    let mut sealed = auth.clone();
    key.seal_in_place_append_tag(
        ring::aead::Nonce::assume_unique_for_key([0; 12]),
        ring::aead::Aad::from(&th2),
        &mut sealed,
    )
    .unwrap();
    let expected = [&[0x03][..], &sealed].concat();
    assert_eq!(expected.len(), 210);
    assert_eq!(
        finish, expected,
        "secchan's DeviceFinish differs from the re-derived one"
    );
    v
}

#[test]
fn enrollment_x25519_chacha20poly1305() {
    let v = generate();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/enrollment_x25519_chacha20poly1305.json"
    );
    if std::env::var_os("SECCHAN_WRITE_VECTORS").is_some() {
        std::fs::write(path, serde_json::to_string_pretty(&v).unwrap() + "\n").unwrap();
    }
    let stored: BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for (k, want) in &stored {
        assert_eq!(v.get(k.as_str()), Some(want), "field {k} differs");
    }
    assert_eq!(stored.len(), v.len(), "field set differs");
    // The excerpt in docs/registry.md §5.3 shows these values.
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/registry.md")).unwrap();
    for k in ["device_public", "token_id", "th2", "device_handshake_key"] {
        assert!(
            doc.contains(&v[k]),
            "docs/registry.md §5.3 does not show {k}"
        );
    }
    for k in ["device_signature", "enrollment_proof", "device_finish"] {
        assert!(
            doc.contains(&v[k][..64]),
            "docs/registry.md §5.3 does not show {k}"
        );
    }
}
