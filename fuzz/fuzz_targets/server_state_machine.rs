//! The responder: arbitrary DeviceHello, then (if accepted) arbitrary DeviceFinish.
#![no_main]

use libfuzzer_sys::fuzz_target;
use secchan::crypto::identity::IdentityKey;
use secchan::crypto::random::OsRandom;
use secchan::handshake::server::{accept_hello, ServerConfig};
use secchan::handshake::{AllowAnyDevice, Mode};
use std::sync::Arc;
use std::time::Instant;

fuzz_target!(|data: &[u8]| {
    let mut config = ServerConfig::new(
        Arc::new(IdentityKey::from_seed(&[1; 32])),
        Arc::new(AllowAnyDevice),
    );
    config.mode = Mode::Any;
    let split = data.first().map_or(0, |b| usize::from(*b) * 8).min(data.len());
    let (hello, finish) = data.split_at(split);
    if let Ok((expect, _)) = accept_hello(&config, hello, &mut OsRandom) {
        let _ = expect.read_device_finish(finish, Instant::now());
    }
});
