//! One in-memory operation repeated N times, for counting instructions under emulation
//! (scripts/aarch64.sh runs each at N = 0 and N = 50 and divides the difference by 50).
//!
//! The handshake's random values come from [`CountingRandom`], a fixed stream, not from the
//! OS: signature verification and ML-KEM's sampling take paths that depend on their inputs, so
//! with fresh randomness two counts of the same build differed by up to 0.8%; with the stream
//! every run does the same work and counts the same.

use super::BenchError;
use crate::crypto::aead::{cpu_has_aes, AeadId};
use crate::crypto::identity::IdentityKey;
use crate::crypto::kem::Suite;
use crate::crypto::random::Random;
use crate::crypto::CryptoError;
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

/// A fixed stream of bytes standing in for the OS's randomness (SplitMix64 from a constant
/// seed): the same values in the same order on every run, at a few instructions a byte. For
/// counting only: everything it yields is predictable.
struct CountingRandom(u64);

impl Random for CountingRandom {
    fn fill(&mut self, out: &mut [u8]) -> Result<(), CryptoError> {
        for chunk in out.chunks_mut(8) {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
        Ok(())
    }
}

fn configs(suite: &'static Suite, aead: AeadId) -> (DeviceConfig, ServerConfig) {
    let mut server = ServerConfig::new(
        Arc::new(IdentityKey::from_seed(&[1; 32])),
        Arc::new(AllowAnyDevice),
    );
    server.mode = Mode::Any;
    let device = DeviceConfig::default()
        .with_suite(suite)
        .with_aeads(vec![aead])
        .with_identity(Arc::new(IdentityKey::from_seed(&[2; 32])));
    (device, server)
}

fn handshake(
    d: &DeviceConfig,
    s: &ServerConfig,
    to_finish: bool,
    rng: &mut CountingRandom,
) -> Result<(), HandshakeError> {
    let now = Instant::now();
    let (expect, hello) = device::start(d, rng)?;
    let (expect_finish, reply) = server::accept_hello(s, &hello, rng)?;
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
    let mut rng = CountingRandom(0);
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
                handshake(&d, &s, op == Op::HandshakeToFinish, &mut rng)?;
            }
        }
        Op::ServerAccept => {
            let (_, hello) = device::start(&d, &mut rng)?;
            for _ in 0..n {
                black_box(server::accept_hello(&s, &hello, &mut rng)?);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counting_random_gives_every_run_the_same_bytes() {
        let draw = || {
            let mut rng = CountingRandom(0);
            let (mut a, mut b) = ([0u8; 32], [0u8; 33]);
            rng.fill(&mut a).unwrap();
            rng.fill(&mut b).unwrap();
            (a, b)
        };
        let (a, b) = draw();
        assert_eq!((a, b), draw());
        assert_ne!(a[..], b[..32], "each draw continues the stream");
        assert_ne!(a, [0; 32]);
    }
}
