//! An established session (ordered and unordered) on arbitrary frames.
#![no_main]

use libfuzzer_sys::fuzz_target;
use secchan::crypto::identity::IdentityKey;
use secchan::crypto::kem::X25519_ONLY;
use secchan::crypto::random::OsRandom;
use secchan::handshake::device::{self, DeviceConfig};
use secchan::handshake::server::{self, ServerConfig};
use secchan::handshake::{AllowAnyDevice, Mode};
use std::sync::Arc;
use std::time::Instant;

fuzz_target!(|data: &[u8]| {
    let ordered = data.first().is_some_and(|b| b & 1 == 0);
    let mut scfg = ServerConfig::new(
        Arc::new(IdentityKey::from_seed(&[1; 32])),
        Arc::new(AllowAnyDevice),
    );
    scfg.mode = Mode::Classical;
    scfg.session.ordered = ordered;
    let dcfg = DeviceConfig::default().with_suite(&X25519_ONLY);
    let now = Instant::now();
    let (expect, hello) = device::start(&dcfg, &mut OsRandom).unwrap();
    let (ef, sh) = server::accept_hello(&scfg, &hello, &mut OsRandom).unwrap();
    let (_d, finish) = expect.read_server_hello(&sh).unwrap().finish(now).unwrap();
    let (mut session, _) = ef.read_device_finish(&finish, now).unwrap();
    for chunk in data.chunks(64) {
        let mut frame = chunk.to_vec();
        let _ = session.handle_frame(&mut frame, now);
    }
});
