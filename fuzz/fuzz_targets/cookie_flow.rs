//! The stateless retry under load (protocol.md §4.8, §4.9, §6.5): a DeviceHello answered with
//! a CookieReply (mutated as the fuzzer chooses), the device's CookieHello (mutated), checked
//! by the server from a source and at a time the fuzzer picks; a hello with a valid cookie
//! then runs the full handshake and the record phase. Checks that a cookie verifies only for
//! the address and the DeviceHello it was made for, within its two periods.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use secchan::crypto::identity::IdentityKey;
use secchan::crypto::kem::X25519_ONLY;
use secchan::handshake::cookie::{self, CookieCheck, CookieJar, First};
use secchan::handshake::device::{self, DeviceConfig};
use secchan::handshake::server::{self, ServerConfig};
use secchan::handshake::{AllowAnyDevice, Mode};
use secchan_fuzz::records::{Pair, Step};
use secchan_fuzz::{mutate, FuzzRandom, Mutation, Reach};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Arbitrary)]
struct Input {
    seed: u64,
    reply: Option<Mutation>,
    cookie_hello: Option<Mutation>,
    /// Where the CookieHello comes from: the address the cookie was made for, or another.
    other_source: Option<u8>,
    /// Seconds between the CookieReply and the CookieHello.
    later: u16,
    steps: Vec<Step>,
}

fn address(i: u8) -> IpAddr {
    match i % 3 {
        0 => IpAddr::V4(Ipv4Addr::new(198, 51, 100, i)),
        1 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, u16::from(i), 0, 0, 0, 1)),
        // The IPv4-mapped form of the device's own address: the same source.
        _ => IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped()),
    }
}

fuzz_target!(|input: Input| {
    let mut r = Reach::new("cookie_flow");
    let device_ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
    let start = Instant::now();
    let jar = CookieJar::new(
        zeroize::Zeroizing::new([0x42; 32]),
        start,
        Duration::from_secs(60),
    );
    let mut scfg = ServerConfig::new(
        Arc::new(IdentityKey::from_seed(&[0x5e; 32])),
        Arc::new(AllowAnyDevice),
    );
    scfg.mode = Mode::Classical;
    let dcfg = DeviceConfig::default().with_suite(&X25519_ONLY);
    let mut rng = FuzzRandom::new(input.seed);
    let Ok((expect, hello)) = device::start(&dcfg, &mut rng) else {
        return;
    };
    let reply = mutate(jar.reply(device_ip, &hello, start), &input.reply);
    let Ok(Some(retry)) = cookie::retry(&reply, &hello) else {
        r.hit("reply_refused");
        return;
    };
    r.hit("cookie_hello");
    let retry = mutate(retry, &input.cookie_hello);
    let source = input.other_source.map_or(device_ip, address);
    let now = start + Duration::from_secs(u64::from(input.later));
    let Ok(First::Full {
        hello: carried,
        cookie,
    }) = cookie::open_first(&jar, source, &retry, now)
    else {
        r.hit("first_refused");
        return;
    };
    if cookie != CookieCheck::Valid {
        r.hit("cookie_refused");
        return;
    }
    r.hit("cookie_valid");
    // A valid cookie was made for this address and this very DeviceHello.
    assert_eq!(
        carried,
        &hello[..],
        "a cookie verified for another DeviceHello"
    );
    assert_eq!(
        cookie::encode_address(source),
        cookie::encode_address(device_ip),
        "a cookie verified for another address"
    );
    assert!(input.later < 120, "a cookie verified after its two periods");
    let Ok((ef, sh)) = server::accept_hello(&scfg, carried, &mut rng) else {
        return;
    };
    let Ok(Ok((dsession, finish))) = expect.read_server_hello(&sh).map(|a| a.finish(now)) else {
        return;
    };
    r.hit("device_finish");
    let Ok((ssession, _)) = ef.read_device_finish(&finish, now) else {
        return;
    };
    r.hit("established");
    Pair::new(dsession, ssession).run(&input.steps, now, &mut r);
});
