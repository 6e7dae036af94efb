//! Both handshake state machines and the record phase: DeviceHello -> ServerHello ->
//! DeviceFinish -> records -> KeyUpdate -> Close. Every message is generated honestly and then
//! mutated as the fuzzer chooses; a device tries mutated ServerHellos before the real one and
//! a server mutated DeviceFinishes before the real one (a refused one leaves both states as
//! they were), so inputs get past the first checks and into the states behind them.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use secchan::crypto::aead::AeadId;
use secchan::crypto::identity::IdentityKey;
use secchan::crypto::kem::{X25519_MLKEM768, X25519_ONLY};
use secchan::handshake::device::{self, DeviceConfig};
use secchan::handshake::server::{self, ServerConfig};
use secchan::handshake::{AllowAnyDevice, AuthorizedDevices, Authorizer, Mode};
use secchan::msgs::AlertCode;
use secchan_fuzz::records::{Pair, Step};
use secchan_fuzz::{mutate, FuzzRandom, Mutation, Reach};
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Arbitrary)]
struct Input {
    hybrid: bool,
    server_mode: u8,
    chacha_first: bool,
    device_identity: bool,
    enrollment: bool,
    authorizer: u8,
    ordered: bool,
    seed: u64,
    hello: Option<Mutation>,
    server_hello: Vec<Mutation>,
    finish: Vec<Mutation>,
    steps: Vec<Step>,
}

fn authorizer(choice: u8, device: &IdentityKey) -> Arc<dyn Authorizer> {
    match choice % 3 {
        0 => Arc::new(AllowAnyDevice),
        1 => {
            let mut list = AuthorizedDevices::new();
            list.insert(device.public().fingerprint(), "device".into());
            Arc::new(list)
        }
        _ => Arc::new(AuthorizedDevices::new()),
    }
}

fuzz_target!(|input: Input| {
    let mut reach = Reach::new("handshake_flow");
    let device_key = Arc::new(IdentityKey::from_seed(&[0xde; 32]));
    let mut scfg = ServerConfig::new(
        Arc::new(IdentityKey::from_seed(&[0x5e; 32])),
        authorizer(input.authorizer, &device_key),
    );
    scfg.mode = [Mode::Hybrid, Mode::Classical, Mode::Any][usize::from(input.server_mode % 3)];
    scfg.session.ordered = input.ordered;
    let mut aeads = vec![AeadId::Aes256Gcm, AeadId::ChaCha20Poly1305];
    if input.chacha_first {
        aeads.reverse();
    }
    let suite = if input.hybrid {
        &X25519_MLKEM768
    } else {
        &X25519_ONLY
    };
    let mut dcfg = DeviceConfig::default()
        .with_suite(suite)
        .with_aeads(aeads)
        .with_identity(input.device_identity.then(|| device_key.clone()));
    if input.enrollment && input.device_identity {
        dcfg = dcfg.with_enrollment(Arc::new(IdentityKey::from_seed(&[0x70; 32])));
    }
    dcfg.session.ordered = input.ordered;
    let now = Instant::now();
    let mut rng = FuzzRandom::new(input.seed);

    let Ok((expect_sh, hello)) = device::start(&dcfg, &mut rng) else {
        return;
    };
    let hello = mutate(hello, &input.hello);
    let Ok((expect_df, server_hello)) = server::accept_hello(&scfg, &hello, &mut rng) else {
        return;
    };
    reach.hit("server_hello_sent");
    for m in &input.server_hello {
        let mut frame = server_hello.clone();
        m.apply(&mut frame);
        if let Ok(authenticated) = expect_sh.read_server_hello(&frame) {
            reach.hit("server_hello_read");
            drop(authenticated);
        }
    }
    let Ok(authenticated) = expect_sh.read_server_hello(&server_hello) else {
        return;
    };
    reach.hit("server_hello_read");
    let Ok((device, finish)) = authenticated.finish(now) else {
        return;
    };
    for m in &input.finish {
        let mut frame = finish.clone();
        m.apply(&mut frame);
        reach.hit("device_finish");
        let _ = expect_df.read_device_finish_keyed(&frame, now);
    }
    reach.hit("device_finish");
    let Ok((mut server, authorized)) = expect_df.read_device_finish_keyed(&finish, now) else {
        return;
    };
    match authorized {
        Ok(_) => reach.hit("established"),
        // The server refuses in an authenticated Close record (docs/mqtt.md §4).
        Err(e) => {
            reach.hit("refused_after_finish");
            server.close(e.alert().unwrap_or(AlertCode::InternalError));
        }
    }
    let mut pair = Pair::new(device, server);
    pair.run(&input.steps, now, &mut reach);
});
