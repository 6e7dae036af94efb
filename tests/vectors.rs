//! Test vectors (protocol.md §9): fixed randomness and identity keys in, every message,
//! intermediate secret and the first records out. Intermediate values are re-derived here
//! from protocol.md with the primitive crates directly (not through secchan's key schedule),
//! and every sealed value secchan produced is opened, and every signature verified, with them:
//! both handshake authentications, the first record each way, a KeyUpdate record and the
//! record after it; for resumption, the ticket (opened with a second AES-256-GCM-SIV), the
//! binder, the confirmation and the resumed session's records. The whole run is compared with
//! `tests/vectors/*.json`.
//!
//! Regenerate after an intentional wire change (and bump the version byte):
//! `SECCHAN_WRITE_VECTORS=1 cargo test --test vectors`.

use hkdf::Hkdf;
use secchan::crypto::aead::AeadId;
use secchan::crypto::identity::IdentityKey;
use secchan::crypto::kem::{Suite, X25519_MLKEM768, X25519_ONLY};
use secchan::crypto::random::FixedRandom;
use secchan::handshake::device::{self, DeviceConfig};
use secchan::handshake::resume;
use secchan::handshake::server::FirstReply;
use secchan::handshake::server::{self, ServerConfig};
use secchan::handshake::ticket::{Resumption, TicketKeys};
use secchan::handshake::{AllowAnyDevice, Mode};
use secchan::session::Event;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn filled(byte: u8, n: usize) -> Vec<u8> {
    (0..n).map(|i| byte.wrapping_add(i as u8)).collect()
}

fn expand(prk: &[u8], label: &str, n: usize) -> Vec<u8> {
    let hk = Hkdf::<Sha256>::from_prk(prk).unwrap();
    let mut out = vec![0u8; n];
    hk.expand(format!("secchan v1 {label}").as_bytes(), &mut out)
        .unwrap();
    out
}

fn extract(salt: &[u8], ikm: &[u8]) -> Vec<u8> {
    Hkdf::<Sha256>::extract(Some(salt), ikm).0.to_vec()
}

/// Opens `ciphertext || tag` with ring under `key` (protocol.md §3.2).
fn open(aead: AeadId, key: &[u8], nonce: [u8; 12], aad: &[u8], sealed: &[u8]) -> Vec<u8> {
    let alg = match aead {
        AeadId::Aes256Gcm => &ring::aead::AES_256_GCM,
        AeadId::ChaCha20Poly1305 => &ring::aead::CHACHA20_POLY1305,
        other => panic!("no independent implementation of {other:?} here"),
    };
    let k = ring::aead::LessSafeKey::new(ring::aead::UnboundKey::new(alg, key).unwrap());
    let mut buf = sealed.to_vec();
    let plain = k
        .open_in_place(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::from(aad),
            &mut buf,
        )
        .expect("sealed value opens with the independently derived key");
    plain.to_vec()
}

/// Opens a record (protocol.md §7.1): nonce = iv XOR counter, aad = the 3 header bytes.
fn open_record(aead: AeadId, key: &[u8], iv: &[u8], counter: u64, record: &[u8]) -> Vec<u8> {
    let mut nonce: [u8; 12] = iv.try_into().unwrap();
    for (n, c) in nonce[4..].iter_mut().zip(counter.to_be_bytes()) {
        *n ^= c;
    }
    assert_eq!(&record[1..3], &(counter as u16).to_be_bytes());
    open(aead, key, nonce, &record[..3], &record[3..])
}

/// Verifies an Ed25519 signature over `context || 0x00 || transcript hash` (protocol.md §5.2,
/// §5.3) with ed25519-dalek.
fn verify(public: &[u8], context: &str, th: &[u8], signature: &[u8]) {
    let key = ed25519_dalek::VerifyingKey::from_bytes(public.try_into().unwrap()).unwrap();
    let message = [context.as_bytes(), &[0], th].concat();
    key.verify_strict(
        &message,
        &ed25519_dalek::Signature::from_bytes(signature.try_into().unwrap()),
    )
    .expect("signature verifies over the transcript as protocol.md specifies");
}

fn ed25519_public(seed: &[u8; 32]) -> [u8; 32] {
    ed25519_dalek::SigningKey::from_bytes(seed)
        .verifying_key()
        .to_bytes()
}

fn generate(
    suite: &'static Suite,
    aead: AeadId,
    device_identity: Option<[u8; 32]>,
) -> BTreeMap<&'static str, String> {
    let mut v = BTreeMap::new();
    let put = |v: &mut BTreeMap<&'static str, String>, k, bytes: &[u8]| {
        v.insert(k, hex::encode(bytes));
    };
    let server_seed = [0x5e; 32];
    let rand_dx = filled(0x10, 32);
    let rand_dkem = filled(0x40, 64);
    let rand_sx = filled(0x80, 32);
    let rand_skem = filled(0xc0, 32);
    v.insert("suite", suite.name.to_string());
    v.insert("aead", aead.name().to_string());
    put(&mut v, "server_identity_seed", &server_seed);
    if let Some(seed) = device_identity {
        put(&mut v, "device_identity_seed", &seed);
    }
    put(&mut v, "random_device_x25519", &rand_dx);
    put(&mut v, "random_server_x25519", &rand_sx);
    let (mut drand, mut srand) = (vec![rand_dx.clone()], vec![rand_sx.clone()]);
    if suite.is_hybrid() {
        put(&mut v, "random_device_mlkem_keygen", &rand_dkem);
        put(&mut v, "random_server_mlkem_encaps", &rand_skem);
        drand.push(rand_dkem.clone());
        srand.push(rand_skem.clone());
    }

    let dcfg = DeviceConfig::default()
        .with_suite(suite)
        .with_aeads(vec![aead])
        .with_identity(device_identity.map(|s| Arc::new(IdentityKey::from_seed(&s))));
    let mut scfg = ServerConfig::new(
        Arc::new(IdentityKey::from_seed(&server_seed)),
        Arc::new(AllowAnyDevice),
    );
    scfg.mode = Mode::Any;
    let now = Instant::now();
    let (expect, hello) = device::start(&dcfg, &mut FixedRandom::new(drand)).unwrap();
    let (expect_finish, sh) =
        server::accept_hello(&scfg, &hello, &mut FixedRandom::new(srand)).unwrap();
    let (mut dsession, finish) = expect.read_server_hello(&sh).unwrap().finish(now).unwrap();
    let (mut ssession, _) = expect_finish.read_device_finish(&finish, now).unwrap();
    put(&mut v, "device_hello", &hello);
    put(&mut v, "server_hello", &sh);
    put(&mut v, "device_finish", &finish);

    // Re-derive everything from protocol.md §5 with the primitive crates.
    let x_d = x25519_dalek::StaticSecret::from(<[u8; 32]>::try_from(&rand_dx[..]).unwrap());
    let ss_x = x_d.diffie_hellman(&x25519_dalek::PublicKey::from(
        <[u8; 32]>::try_from(&sh[4..36]).unwrap(),
    ));
    let pq_len = suite.pq.map_or(0, |k| k.ciphertext_len());
    let ek = &hello[hello.len() - suite.pq.map_or(0, |k| k.encaps_key_len())..];
    let ct = &sh[36..36 + pq_len];
    let mut ikm = Vec::new();
    if suite.is_hybrid() {
        let pair =
            libcrux_ml_kem::mlkem768::generate_key_pair(rand_dkem.clone().try_into().unwrap());
        let ss_kem = libcrux_ml_kem::mlkem768::decapsulate(
            pair.private_key(),
            &libcrux_ml_kem::mlkem768::MlKem768Ciphertext::try_from(ct).unwrap(),
        );
        put(&mut v, "ss_mlkem", &ss_kem);
        ikm.extend_from_slice(&ss_kem);
    }
    put(&mut v, "ss_x25519", ss_x.as_bytes());
    ikm.extend_from_slice(ss_x.as_bytes());
    ikm.extend_from_slice(&hello[hello.len() - ek.len() - 32..hello.len() - ek.len()]);
    ikm.extend_from_slice(&sh[4..36]);
    ikm.extend_from_slice(ct);
    ikm.extend_from_slice(ek);
    let prefix = &sh[..36 + pq_len];
    let th1 = Sha256::new()
        .chain_update(&hello)
        .chain_update(prefix)
        .finalize();
    let th2 = Sha256::new()
        .chain_update(&hello)
        .chain_update(&sh)
        .finalize();
    let th3 = Sha256::new()
        .chain_update(&hello)
        .chain_update(&sh)
        .chain_update(&finish)
        .finalize();
    put(&mut v, "th1", &th1);
    put(&mut v, "th2", &th2);
    put(&mut v, "th3", &th3);
    let hs = extract(&th1, &ikm);
    put(&mut v, "handshake_secret", &hs);
    let server_hs_key = expand(&hs, "server handshake key", 32);
    let device_hs_key = expand(&hs, "device handshake key", 32);
    put(&mut v, "server_handshake_key", &server_hs_key);
    put(&mut v, "device_handshake_key", &device_hs_key);

    // ServerHello's sealed_auth opens with the server handshake key (nonce 0, aad TH1) to the
    // server's public key and its signature over TH1 (protocol.md §4.2, §5.2).
    let server_auth = open(aead, &server_hs_key, [0; 12], &th1, &sh[36 + pq_len..]);
    put(&mut v, "server_auth_plaintext", &server_auth);
    assert_eq!(&server_auth[..32], &ed25519_public(&server_seed));
    verify(
        &server_auth[..32],
        "secchan v1 server signature",
        &th1,
        &server_auth[32..],
    );
    // DeviceFinish opens with the device handshake key (nonce 0, aad TH2) to device_auth
    // (protocol.md §4.3, §5.3).
    let device_auth = open(aead, &device_hs_key, [0; 12], &th2, &finish[1..]);
    put(&mut v, "device_auth_plaintext", &device_auth);
    match device_identity {
        Some(seed) => {
            assert_eq!(device_auth.len(), 97);
            assert_eq!(device_auth[0], 0x01);
            assert_eq!(&device_auth[1..33], &ed25519_public(&seed));
            verify(
                &device_auth[1..33],
                "secchan v1 device signature",
                &th2,
                &device_auth[33..],
            );
        }
        None => assert_eq!(device_auth, [0x00]),
    }
    let master = extract(&th3, &hs);
    put(&mut v, "master_secret", &master);
    let d2s = expand(&master, "d2s traffic", 32);
    let s2d = expand(&master, "s2d traffic", 32);
    put(&mut v, "d2s_traffic_secret", &d2s);
    put(&mut v, "s2d_traffic_secret", &s2d);
    let key = expand(&d2s, "key", 32);
    let iv = expand(&d2s, "iv", 12);
    put(&mut v, "d2s_key", &key);
    put(&mut v, "d2s_iv", &iv);
    let d2s_1 = expand(&d2s, "key update", 32);
    put(&mut v, "d2s_key_update_1", &d2s_1);
    let s2d_key = expand(&s2d, "key", 32);
    let s2d_iv = expand(&s2d, "iv", 12);
    put(&mut v, "s2d_key", &s2d_key);
    put(&mut v, "s2d_iv", &s2d_iv);

    // The device's first record (counter 0), opened with the derived d2s key and IV.
    let plaintext = b"{\"temperature_c\":21.5}";
    dsession.send(plaintext, now).unwrap();
    let record = dsession.poll_transmit().unwrap();
    put(&mut v, "first_record_plaintext", plaintext);
    put(&mut v, "first_record", &record);
    assert_eq!(record[0], 0x10);
    assert_eq!(open_record(aead, &key, &iv, 0, &record), plaintext);
    let mut frame = record.clone();
    assert_eq!(
        ssession.handle_frame(&mut frame, now).unwrap(),
        Event::Message(plaintext)
    );

    // The server's first record (counter 0), opened with the derived s2d key and IV.
    let reply = b"{\"ack\":1}";
    ssession.send(reply, now).unwrap();
    let record = ssession.poll_transmit().unwrap();
    put(&mut v, "s2d_first_record_plaintext", reply);
    put(&mut v, "s2d_first_record", &record);
    assert_eq!(open_record(aead, &s2d_key, &s2d_iv, 0, &record), reply);
    let mut frame = record.clone();
    assert_eq!(
        dsession.handle_frame(&mut frame, now).unwrap(),
        Event::Message(reply)
    );

    // A device key update: the KeyUpdate record (counter 1) under generation 0, then the next
    // record (counter 2) under generation 1, derived with "key update" (protocol.md §5.5).
    dsession.update_keys(now).unwrap();
    let update = dsession.poll_transmit().unwrap();
    put(&mut v, "d2s_key_update_record", &update);
    assert_eq!(update[0], 0x11);
    assert_eq!(open_record(aead, &key, &iv, 1, &update), b"");
    let key_1 = expand(&d2s_1, "key", 32);
    let iv_1 = expand(&d2s_1, "iv", 12);
    put(&mut v, "d2s_key_1", &key_1);
    put(&mut v, "d2s_iv_1", &iv_1);
    let after = b"{\"temperature_c\":21.6}";
    dsession.send(after, now).unwrap();
    let record = dsession.poll_transmit().unwrap();
    put(&mut v, "d2s_record_after_key_update_plaintext", after);
    put(&mut v, "d2s_record_after_key_update", &record);
    assert_eq!(open_record(aead, &key_1, &iv_1, 2, &record), after);
    let mut frame = update.clone();
    assert_eq!(
        ssession.handle_frame(&mut frame, now).unwrap(),
        Event::KeyUpdated
    );
    let mut frame = record.clone();
    assert_eq!(
        ssession.handle_frame(&mut frame, now).unwrap(),
        Event::Message(after)
    );
    v
}

fn check(name: &str, v: BTreeMap<&'static str, String>) {
    let path = format!("{}/tests/vectors/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let json = serde_json::to_string_pretty(&v).unwrap() + "\n";
    if std::env::var_os("SECCHAN_WRITE_VECTORS").is_some() {
        std::fs::write(&path, &json).unwrap();
    }
    let stored: BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for (k, want) in &stored {
        assert_eq!(v.get(k.as_str()), Some(want), "{name}: field {k} differs");
    }
    assert_eq!(stored.len(), v.len(), "{name}: field set differs");
}

#[test]
fn hybrid_mlkem768_aes256gcm_mutual() {
    check(
        "hybrid_mlkem768_aes256gcm",
        generate(&X25519_MLKEM768, AeadId::Aes256Gcm, Some([0xde; 32])),
    );
}

#[test]
fn classical_x25519_chacha20poly1305_anonymous() {
    check(
        "classical_x25519_chacha20poly1305",
        generate(&X25519_ONLY, AeadId::ChaCha20Poly1305, None),
    );
}

/// Every hex value protocol.md §9 quotes (whole, or a prefix ending in "...") in the excerpt
/// that follows `marker` must be the file's. Returns how many were checked.
fn check_excerpt(marker: &str, file: &str) -> usize {
    let root = env!("CARGO_MANIFEST_DIR");
    let spec = std::fs::read_to_string(format!("{root}/protocol.md")).unwrap();
    let stored: BTreeMap<String, String> = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/tests/vectors/{file}.json")).unwrap(),
    )
    .unwrap();
    let excerpt = spec
        .split(marker)
        .nth(1)
        .and_then(|rest| rest.split("```").nth(1))
        .expect("protocol.md §9 has the excerpt");
    let mut checked = 0;
    for line in excerpt.lines() {
        let mut words = line.split_whitespace();
        let (Some(name), Some(value)) = (words.next(), words.next()) else {
            continue;
        };
        let hex = value.trim_end_matches("...");
        if value.contains("...") && !value.ends_with("...") || hex.len() < 16 {
            continue; // abbreviated inputs such as 5e5e...5e
        }
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let want = stored
            .get(name)
            .unwrap_or_else(|| panic!("protocol.md §9 quotes {name}, which {file} lacks"));
        assert!(want.starts_with(hex), "protocol.md §9: {name} differs");
        checked += 1;
    }
    checked
}

#[test]
fn protocol_md_excerpt_matches_the_vector_file() {
    let checked = check_excerpt(
        "Excerpt of `hybrid_mlkem768_aes256gcm.json`",
        "hybrid_mlkem768_aes256gcm",
    );
    assert!(checked >= 25, "only {checked} values checked");
}

#[test]
fn protocol_md_resumption_excerpt_matches_the_vector_file() {
    let checked = check_excerpt(
        "Excerpt of `resumption_x25519mlkem768_aes256gcm.json`",
        "resumption_x25519mlkem768_aes256gcm",
    );
    assert!(checked >= 15, "only {checked} values checked");
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn hmac16(key: &[u8], message: &[u8]) -> Vec<u8> {
    use hmac::Mac;
    let mut mac = <hmac::Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
    mac.update(message);
    mac.finalize().into_bytes()[..16].to_vec()
}

/// Opens a ticket with RustCrypto's AES-256-GCM-SIV (protocol.md §7.6).
fn open_ticket(key: &[u8], ticket: &[u8]) -> Vec<u8> {
    use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
    let cipher = aes_gcm_siv::Aes256GcmSiv::new_from_slice(key).unwrap();
    cipher
        .decrypt(
            &[0u8; 12].into(),
            Payload {
                msg: &ticket[1..],
                aad: &ticket[..1],
            },
        )
        .expect("the ticket opens with the ticket key")
}

/// The resumption vector (protocol.md §9): the full hybrid handshake of
/// `hybrid_mlkem768_aes256gcm.json` (same inputs), its NewTicket, and a resumption from it.
fn generate_resumption() -> BTreeMap<&'static str, String> {
    let mut v = BTreeMap::new();
    let put = |v: &mut BTreeMap<&'static str, String>, k, bytes: &[u8]| {
        v.insert(k, hex::encode(bytes));
    };
    let lifetime = 86_400u64;
    let issued = 1_750_000_000u64;
    let resumed = issued + 60;
    let period = issued / lifetime;
    let ticket_key = filled(0x60, 32);
    let rand_dx = filled(0x20, 32);
    let rand_sx = filled(0xa0, 32);
    let device_seed = [0xde; 32];
    v.insert("ticket_lifetime", lifetime.to_string());
    v.insert("wall_time_issued", issued.to_string());
    v.insert("wall_time_resumed", resumed.to_string());
    v.insert("ticket_key_period", period.to_string());
    put(&mut v, "ticket_key", &ticket_key);
    put(&mut v, "random_device_x25519_resume", &rand_dx);
    put(&mut v, "random_server_x25519_resume", &rand_sx);

    // The full handshake, exactly as in the hybrid vector.
    let full: BTreeMap<String, String> = serde_json::from_str(
        &std::fs::read_to_string(format!(
            "{}/tests/vectors/hybrid_mlkem768_aes256gcm.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    )
    .unwrap();
    let dcfg = DeviceConfig::default()
        .with_suite(&X25519_MLKEM768)
        .with_aeads(vec![AeadId::Aes256Gcm])
        .with_identity(Arc::new(IdentityKey::from_seed(&device_seed)));
    let mut scfg = ServerConfig::new(
        Arc::new(IdentityKey::from_seed(&[0x5e; 32])),
        Arc::new(AllowAnyDevice),
    );
    scfg.mode = Mode::Any;
    let keys = TicketKeys::from_key(period, &ticket_key.clone().try_into().unwrap());
    let resumption = Arc::new(Resumption::new(keys, Duration::from_secs(lifetime)).unwrap());
    scfg.resumption = Some(resumption.clone());
    let now = Instant::now();
    let drand = vec![filled(0x10, 32), filled(0x40, 64)];
    let srand = vec![filled(0x80, 32), filled(0xc0, 32)];
    let (expect, hello) = device::start(&dcfg, &mut FixedRandom::new(drand)).unwrap();
    let (ef, sh) = server::accept_hello(&scfg, &hello, &mut FixedRandom::new(srand)).unwrap();
    let (mut dsession, finish) = expect.read_server_hello(&sh).unwrap().finish(now).unwrap();
    let (mut ssession, _) = ef.read_device_finish(&finish, now).unwrap();
    assert_eq!(hex::encode(&finish), full["device_finish"]);

    // psk = Expand(master_secret, "resumption psk", 32), master from the hybrid vector.
    let master = hex::decode(&full["master_secret"]).unwrap();
    let psk = expand(&master, "resumption psk", 32);
    put(&mut v, "full_master_secret", &master);
    put(&mut v, "psk", &psk);

    // The NewTicket record: the server's first record (counter 0) under the s2d key.
    ssession.issue_ticket(&resumption, at(issued)).unwrap();
    let record = ssession.poll_transmit().unwrap();
    put(&mut v, "new_ticket_record", &record);
    assert_eq!(record[0], 0x13);
    let s2d = expand(&master, "s2d traffic", 32);
    let plain = open_record(
        AeadId::Aes256Gcm,
        &expand(&s2d, "key", 32),
        &expand(&s2d, "iv", 12),
        0,
        &record,
    );
    put(&mut v, "new_ticket_plaintext", &plain);
    assert_eq!(&plain[..4], &(lifetime as u32).to_be_bytes());
    let ticket = &plain[4..];
    put(&mut v, "ticket", ticket);
    assert_eq!(ticket.len(), 88);
    assert_eq!(ticket[0], period as u8);
    let contents = open_ticket(&ticket_key, ticket);
    put(&mut v, "ticket_plaintext", &contents);
    let expires = (issued + lifetime) as u32;
    let want = [
        &psk[..],
        &[0x01],
        &ed25519_public(&device_seed),
        &[0x01, 0x01],
        &expires.to_be_bytes(),
    ]
    .concat();
    assert_eq!(contents, want);
    let mut frame = record.clone();
    assert_eq!(dsession.handle_frame(&mut frame, now), Ok(Event::Ticket));
    let device_ticket = dsession.take_ticket(at(issued)).unwrap();

    // The resumption.
    let (expect, rh) = resume::start(
        &dcfg,
        &device_ticket,
        &mut FixedRandom::new(vec![rand_dx.clone()]),
    )
    .unwrap();
    let FirstReply::Resumed(established, rsh) = server::accept_first(
        &scfg,
        &rh,
        &mut FixedRandom::new(vec![rand_sx.clone()]),
        now,
        at(resumed),
    )
    .unwrap() else {
        panic!("the ticket resumes");
    };
    let (mut s2, _) = *established;
    let mut d2 = expect.read_reply(&rsh, now).unwrap();
    put(&mut v, "resume_hello", &rh);
    put(&mut v, "resume_server_hello", &rsh);
    assert_eq!((rh.len(), rsh.len()), (138, 50));
    assert_eq!(&rh[..2], &[0x05, secchan::msgs::VERSION]);
    assert_eq!(&rh[34..122], ticket);
    let x_d = x25519_dalek::StaticSecret::from(<[u8; 32]>::try_from(&rand_dx[..]).unwrap());
    assert_eq!(&rh[2..34], x25519_dalek::PublicKey::from(&x_d).as_bytes());
    let early = extract(&[0; 32], &psk);
    let binder_key = expand(&early, "resume binder", 32);
    let binder = hmac16(&binder_key, &Sha256::digest(&rh[..122]));
    put(&mut v, "early_secret", &early);
    put(&mut v, "binder_key", &binder_key);
    put(&mut v, "binder", &binder);
    assert_eq!(&rh[122..], &binder[..]);
    let ss = x_d.diffie_hellman(&x25519_dalek::PublicKey::from(
        <[u8; 32]>::try_from(&rsh[2..34]).unwrap(),
    ));
    put(&mut v, "ss_x25519_resume", ss.as_bytes());
    let th_r1 = Sha256::new()
        .chain_update(&rh)
        .chain_update(&rsh[..34])
        .finalize();
    let th_r2 = Sha256::new()
        .chain_update(&rh)
        .chain_update(&rsh)
        .finalize();
    put(&mut v, "th_r1", &th_r1);
    put(&mut v, "th_r2", &th_r2);
    let ikm = [&psk[..], ss.as_bytes(), &rh[2..34], &rsh[2..34]].concat();
    let resume_secret = extract(&th_r1, &ikm);
    put(&mut v, "resume_secret", &resume_secret);
    let confirm_key = expand(&resume_secret, "server resume confirm", 32);
    put(&mut v, "server_confirm_key", &confirm_key);
    let confirm = hmac16(&confirm_key, &th_r1);
    put(&mut v, "confirm", &confirm);
    assert_eq!(&rsh[34..], &confirm[..]);
    let master2 = extract(&th_r2, &resume_secret);
    put(&mut v, "master_secret", &master2);
    let d2s = expand(&master2, "d2s traffic", 32);
    let s2d = expand(&master2, "s2d traffic", 32);
    let (d2s_key, d2s_iv) = (expand(&d2s, "key", 32), expand(&d2s, "iv", 12));
    let (s2d_key, s2d_iv) = (expand(&s2d, "key", 32), expand(&s2d, "iv", 12));
    put(&mut v, "d2s_traffic_secret", &d2s);
    put(&mut v, "s2d_traffic_secret", &s2d);
    put(&mut v, "d2s_key", &d2s_key);
    put(&mut v, "d2s_iv", &d2s_iv);
    put(&mut v, "s2d_key", &s2d_key);
    put(&mut v, "s2d_iv", &s2d_iv);
    put(&mut v, "next_psk", &expand(&master2, "resumption psk", 32));

    let plaintext = b"{\"temperature_c\":21.7}";
    d2.send(plaintext, now).unwrap();
    let record = d2.poll_transmit().unwrap();
    put(&mut v, "first_record_plaintext", plaintext);
    put(&mut v, "first_record", &record);
    assert_eq!(
        open_record(AeadId::Aes256Gcm, &d2s_key, &d2s_iv, 0, &record),
        plaintext
    );
    let mut frame = record.clone();
    assert_eq!(
        s2.handle_frame(&mut frame, now),
        Ok(Event::Message(plaintext))
    );
    let reply = b"{\"ack\":2}";
    s2.send(reply, now).unwrap();
    let record = s2.poll_transmit().unwrap();
    put(&mut v, "s2d_first_record_plaintext", reply);
    put(&mut v, "s2d_first_record", &record);
    assert_eq!(
        open_record(AeadId::Aes256Gcm, &s2d_key, &s2d_iv, 0, &record),
        reply
    );
    let mut frame = record.clone();
    assert_eq!(d2.handle_frame(&mut frame, now), Ok(Event::Message(reply)));
    v
}

#[test]
fn resumption_x25519mlkem768_aes256gcm() {
    check("resumption_x25519mlkem768_aes256gcm", generate_resumption());
}
