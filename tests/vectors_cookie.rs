//! protocol.md §6.5 and §9: the reference cookie, CookieReply and CookieHello for the hybrid
//! vector's DeviceHello, re-derived here with the `hmac` crate directly (not through secchan's
//! key schedule) and compared with what the server computes and with
//! `tests/vectors/cookie_x25519mlkem768.json`.
//!
//! Regenerate after an intentional wire change:
//! `SECCHAN_WRITE_VECTORS=1 cargo test --test vectors_cookie`.

use hmac::{Hmac, Mac};
use secchan::handshake::cookie::{open_first, retry, CookieCheck, CookieError, CookieJar, First};
use secchan::msgs::{CookieHello, CookieReply};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

const PERIOD: u64 = 5;

fn hmac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

fn vector_field(file: &str, field: &str) -> Vec<u8> {
    let path = format!("{}/tests/vectors/{file}", env!("CARGO_MANIFEST_DIR"));
    let v: BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    hex::decode(&v[field]).unwrap()
}

/// The reference cookie (protocol.md §6.5), from the primitives.
fn cookie(master: &[u8], period: u64, address: &[u8], hello: &[u8]) -> Vec<u8> {
    let key = hmac(master, &[b"secchan v1 cookie key", &period.to_be_bytes()]);
    let mac = hmac(&key, &[b"secchan v1 cookie\0", address, hello]);
    [&[period as u8][..], &mac[..15]].concat()
}

fn generate() -> BTreeMap<&'static str, String> {
    let mut v = BTreeMap::new();
    let put = |v: &mut BTreeMap<&'static str, String>, k, bytes: &[u8]| {
        v.insert(k, hex::encode(bytes));
    };
    let master: [u8; 32] = std::array::from_fn(|i| 0x70 + i as u8);
    let hello = vector_field("hybrid_mlkem768_aes256gcm.json", "device_hello");
    let (v4, v6): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap());
    let address_v4 = [&[0x04][..], &[192, 0, 2, 1]].concat();
    let address_v6 = [&[0x06][..], &[0x20, 0x01, 0x0d, 0xb8], &[0; 11], &[1]].concat();
    put(&mut v, "cookie_master", &master);
    v.insert("period", PERIOD.to_string());
    put(&mut v, "device_hello", &hello);
    put(&mut v, "address_ipv4", &address_v4);
    put(&mut v, "address_ipv6", &address_v6);
    let key = hmac(&master, &[b"secchan v1 cookie key", &PERIOD.to_be_bytes()]);
    put(&mut v, "cookie_key", &key);
    let c4 = cookie(&master, PERIOD, &address_v4, &hello);
    let c6 = cookie(&master, PERIOD, &address_v6, &hello);
    put(&mut v, "cookie_ipv4", &c4);
    put(&mut v, "cookie_ipv6", &c6);
    let reply = [&[0x07, secchan::msgs::VERSION][..], &c4].concat();
    let again = [&[0x08, secchan::msgs::VERSION][..], &c4, &hello].concat();
    put(&mut v, "cookie_reply", &reply);
    put(&mut v, "cookie_hello", &again);

    // What the server and the device compute: the same bytes.
    let epoch = Instant::now();
    let now = epoch + Duration::from_secs(PERIOD * 120 + 7);
    let jar = CookieJar::new(
        Zeroizing::new(master),
        epoch,
        secchan::handshake::cookie::COOKIE_PERIOD,
    );
    assert_eq!(jar.key(PERIOD).to_vec(), key);
    assert_eq!(jar.cookie(v4, &hello, now).to_vec(), c4);
    assert_eq!(jar.cookie(v6, &hello, now).to_vec(), c6);
    let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
    assert_eq!(jar.cookie(mapped, &hello, now).to_vec(), c4);
    assert_eq!(jar.reply(v4, &hello, now), reply);
    assert_eq!(retry(&reply, &hello).unwrap(), Some(again.clone()));
    assert_eq!(CookieReply::decode(&reply).unwrap().cookie.to_vec(), c4);
    assert_eq!(CookieHello::decode(&again).unwrap().hello, &hello[..]);
    // The server takes the DeviceHello inside, byte for byte: the transcript is unchanged.
    assert_eq!(
        open_first(&jar, v4, &again, now).unwrap(),
        First::Full {
            hello: &hello,
            cookie: CookieCheck::Valid
        }
    );
    // From another address, and two periods on, the cookie is refused.
    let stranger: IpAddr = "192.0.2.2".parse().unwrap();
    let cookie: [u8; 16] = c4.clone().try_into().unwrap();
    assert_eq!(
        jar.check(stranger, &cookie, &hello, now),
        Err(CookieError::Invalid)
    );
    let next = now + Duration::from_secs(120);
    assert_eq!(jar.check(v4, &cookie, &hello, next), Ok(()));
    assert_eq!(
        jar.check(v4, &cookie, &hello, next + Duration::from_secs(120)),
        Err(CookieError::Expired)
    );
    v
}

#[test]
fn cookie_x25519mlkem768() {
    let v = generate();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/cookie_x25519mlkem768.json"
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
}
