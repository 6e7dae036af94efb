//! Test vector for key updates on an unordered transport (protocol.md §7.5, new in version 2):
//! records in the unordered layout (`type || epoch || seq || ciphertext`) across three key
//! generations, each re-derived here from protocol.md §5.4–§5.5 with the primitive crates
//! and opened with ring; then the receiver's outcome when KeyUpdate records are lost, when
//! everything arrives reordered, and when an epoch is forged. Compared with
//! `tests/vectors/keyupdate_unordered.json`.
//!
//! Regenerate after an intentional wire change:
//! `SECCHAN_WRITE_VECTORS=1 cargo test --test vectors_keyupdate`.

use hkdf::Hkdf;
use secchan::crypto::aead::AeadId;
use secchan::msgs::FrameType;
use secchan::record::{KeyUpdatePolicy, Opener, Sealer};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::time::Instant;
use zeroize::Zeroizing;

const SECRET_0: [u8; 32] = {
    let mut s = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        s[i] = 0x30 + i as u8;
        i += 1;
    }
    s
};

fn expand(prk: &[u8], label: &str, n: usize) -> Vec<u8> {
    let hk = Hkdf::<Sha256>::from_prk(prk).unwrap();
    let mut out = vec![0u8; n];
    hk.expand(format!("secchan v1 {label}").as_bytes(), &mut out)
        .unwrap();
    out
}

/// Opens a record in the unordered layout with ring: aad = the 4 header bytes.
fn ring_open(key: &[u8], iv: &[u8], counter: u64, record: &[u8]) -> Vec<u8> {
    let mut nonce: [u8; 12] = iv.try_into().unwrap();
    for (n, c) in nonce[4..].iter_mut().zip(counter.to_be_bytes()) {
        *n ^= c;
    }
    let k = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, key).unwrap(),
    );
    let mut buf = record[4..].to_vec();
    k.open_in_place(
        ring::aead::Nonce::assume_unique_for_key(nonce),
        ring::aead::Aad::from(&record[..4]),
        &mut buf,
    )
    .expect("the record opens with the independently derived key")
    .to_vec()
}

/// The sender's records: (type, generation, plaintext).
const RECORDS: [(FrameType, u64, &[u8]); 6] = [
    (FrameType::Data, 0, b"{\"t\":0}"),
    (FrameType::KeyUpdate, 0, b""),
    (FrameType::Data, 1, b"{\"t\":2}"),
    (FrameType::KeyUpdate, 1, b""),
    (FrameType::Data, 2, b"{\"t\":4}"),
    (FrameType::Data, 2, b"{\"t\":5}"),
];

/// Delivers `order` (indices into `records`, `Some(byte)` to forge the epoch) to a fresh
/// receiver; one word per record: `c<counter>:<outcome>`.
fn receive(records: &[Vec<u8>], order: &[(usize, Option<u8>)]) -> String {
    let mut opener = Opener::new(AeadId::Aes256Gcm, Zeroizing::new(SECRET_0), 1024, false);
    let words: Vec<String> = order
        .iter()
        .map(|&(i, forged)| {
            let mut frame = records[i].clone();
            if let Some(epoch) = forged {
                frame[1] = epoch;
            }
            let outcome = match opener.open(&mut frame) {
                Ok(o) => {
                    let text = String::from_utf8(frame[o.plaintext].to_vec()).unwrap();
                    match o.ty {
                        FrameType::KeyUpdate => format!("key_update@gen{}", o.generation),
                        _ => format!("{text}@gen{}", o.generation),
                    }
                }
                Err(e) => format!("dropped({e:?})").replace(' ', ""),
            };
            format!("c{i}:{outcome}")
        })
        .collect();
    words.join(" ")
}

fn generate() -> BTreeMap<String, String> {
    let mut v = BTreeMap::new();
    v.insert("aead".into(), "AES-256-GCM".into());
    v.insert("traffic_secret_0".into(), hex::encode(SECRET_0));
    let mut secret = SECRET_0.to_vec();
    let mut keys = Vec::new();
    for g in 0..3 {
        if g > 0 {
            secret = expand(&secret, "key update", 32);
            v.insert(format!("traffic_secret_{g}"), hex::encode(&secret));
        }
        let (key, iv) = (expand(&secret, "key", 32), expand(&secret, "iv", 12));
        v.insert(format!("key_{g}"), hex::encode(&key));
        v.insert(format!("iv_{g}"), hex::encode(&iv));
        keys.push((key, iv));
    }
    let now = Instant::now();
    let policy = KeyUpdatePolicy {
        max_records: u64::MAX,
        max_bytes: u64::MAX,
        max_age: None,
    };
    let mut sealer = Sealer::new(
        AeadId::Aes256Gcm,
        Zeroizing::new(SECRET_0),
        policy,
        false,
        now,
    );
    let mut records = Vec::new();
    for (counter, (ty, generation, plaintext)) in RECORDS.iter().enumerate() {
        assert_eq!(sealer.generation(), *generation);
        let mut record = Vec::new();
        sealer.seal(*ty, plaintext, &mut record).unwrap();
        if *ty == FrameType::KeyUpdate {
            sealer.update_key(now);
        }
        // protocol.md §7.1: type, epoch (the generation's low byte), the counter's low 16 bits.
        assert_eq!(
            &record[..4],
            &[*ty as u8, *generation as u8, 0, counter as u8]
        );
        let (key, iv) = &keys[*generation as usize];
        assert_eq!(&ring_open(key, iv, counter as u64, &record), plaintext);
        v.insert(format!("record_{counter}"), hex::encode(&record));
        records.push(record);
    }
    let plain = |order: &[usize]| order.iter().map(|&i| (i, None)).collect::<Vec<_>>();
    v.insert(
        "receive_in_order".into(),
        receive(&records, &plain(&[0, 1, 2, 3, 4, 5])),
    );
    v.insert(
        "receive_key_updates_lost".into(),
        receive(&records, &plain(&[0, 2, 4, 5])),
    );
    v.insert(
        "receive_reordered".into(),
        receive(&records, &plain(&[4, 3, 0, 5, 2, 1])),
    );
    v.insert(
        "receive_forged_epoch".into(),
        receive(
            &records,
            &[(2, Some(0)), (2, Some(200)), (2, None), (0, None)],
        ),
    );
    v
}

#[test]
fn key_updates_on_an_unordered_transport() {
    let v = generate();
    for (key, want) in [
        ("receive_key_updates_lost", "c0:{\"t\":0}@gen0 c2:{\"t\":2}@gen1 c4:{\"t\":4}@gen2 c5:{\"t\":5}@gen2"),
        ("receive_reordered", "c4:{\"t\":4}@gen2 c3:key_update@gen1 c0:{\"t\":0}@gen0 c5:{\"t\":5}@gen2 c2:{\"t\":2}@gen1 c1:key_update@gen0"),
    ] {
        assert_eq!(v[key], want, "{key}");
    }
    assert!(
        v["receive_forged_epoch"].starts_with("c2:dropped(BadTag(2)) c2:dropped(UnknownGeneration")
    );
    let path = format!(
        "{}/tests/vectors/keyupdate_unordered.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let json = serde_json::to_string_pretty(&v).unwrap() + "\n";
    if std::env::var_os("SECCHAN_WRITE_VECTORS").is_some() {
        std::fs::write(&path, &json).unwrap();
    }
    let stored: BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(stored, v, "tests/vectors/keyupdate_unordered.json differs");
}
