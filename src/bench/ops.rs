//! One in-memory operation repeated N times, for counting instructions under emulation
//! (scripts/aarch64.sh runs each at N = 0 and N = 20 and divides the difference by 20).

use super::BenchError;
use crate::crypto::aead::{cpu_has_aes, AeadId};
use crate::crypto::identity::IdentityKey;
use crate::crypto::kem::Suite;
use crate::crypto::random::OsRandom;
use crate::handshake::device::{self, DeviceConfig};
use crate::handshake::server::{self, ServerConfig};
use crate::handshake::{AllowAnyDevice, HandshakeError, Mode};
use crate::msgs::FrameType;
use crate::record::{KeyUpdatePolicy, Opener, Sealer};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

/// What `secchan bench --ops` repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Op {
    /// Print the architecture, whether the CPU has AES instructions and the AEAD preference.
    Info,
    /// A complete mutual-auth handshake, both sides.
    Handshake,
    /// A handshake up to the device's DeviceFinish (everything but the server's last step).
    HandshakeToFinish,
    /// The server's accept_hello alone, on one DeviceHello made beforehand.
    ServerAccept,
    /// Sealing one 1 KiB record.
    #[value(name = "seal-1k")]
    Seal1k,
    /// Sealing and opening one 1 KiB record.
    #[value(name = "seal-open-1k")]
    SealOpen1k,
}

fn configs(suite: &'static Suite, aead: AeadId) -> (DeviceConfig, ServerConfig) {
    let mut server = ServerConfig::new(
        Arc::new(IdentityKey::from_seed(&[1; 32])),
        Arc::new(AllowAnyDevice),
    );
    server.mode = Mode::Any;
    let device = DeviceConfig {
        suite,
        aeads: vec![aead],
        identity: Some(Arc::new(IdentityKey::from_seed(&[2; 32]))),
        ..DeviceConfig::default()
    };
    (device, server)
}

fn handshake(d: &DeviceConfig, s: &ServerConfig, to_finish: bool) -> Result<(), HandshakeError> {
    let now = Instant::now();
    let (expect, hello) = device::start(d, &mut OsRandom)?;
    let (expect_finish, reply) = server::accept_hello(s, &hello, &mut OsRandom)?;
    let (session, finish) = expect.read_server_hello(&reply)?.finish(now)?;
    black_box(session);
    if !to_finish {
        black_box(expect_finish.read_device_finish(&finish, now)?);
    }
    Ok(())
}

/// Runs `op` `n` times; returns what to print.
pub fn run(op: Op, suite: &'static Suite, aead: AeadId, n: usize) -> Result<String, BenchError> {
    let (d, s) = configs(suite, aead);
    let payload = [b'x'; 1024];
    let secret = zeroize::Zeroizing::new([7u8; 32]);
    let mut sealer = Sealer::new(
        aead,
        secret.clone(),
        KeyUpdatePolicy::default(),
        true,
        Instant::now(),
    );
    let mut opener = Opener::new(aead, secret, 64, true);
    let mut out = Vec::with_capacity(2048);
    match op {
        Op::Info => {
            return Ok(format!(
                "arch {}; AES instructions: {}; AEAD preference: {:?}",
                std::env::consts::ARCH,
                if cpu_has_aes() { "yes" } else { "no" },
                AeadId::default_preference()
            ))
        }
        Op::Handshake | Op::HandshakeToFinish => {
            for _ in 0..n {
                handshake(&d, &s, op == Op::HandshakeToFinish)?;
            }
        }
        Op::ServerAccept => {
            let (_, hello) = device::start(&d, &mut OsRandom)?;
            for _ in 0..n {
                black_box(server::accept_hello(&s, &hello, &mut OsRandom)?);
            }
        }
        Op::Seal1k | Op::SealOpen1k => {
            for _ in 0..n {
                out.clear();
                sealer.seal(FrameType::Data, &payload, &mut out)?;
                if op == Op::SealOpen1k {
                    black_box(opener.open(&mut out)?);
                }
            }
        }
    }
    Ok(format!("{op:?} x {n} ({}, {aead})", suite.name))
}
