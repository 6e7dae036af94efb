//! Peer input never panics: random and mutated bytes through every parser and state machine
//! that reads peer data. Each input must yield a typed error (or, for a valid mutation, a
//! success), never a panic.

use secchan::crypto::identity::IdentityKey;
use secchan::crypto::kem::{X25519_MLKEM768, X25519_ONLY};
use secchan::crypto::random::OsRandom;
use secchan::handshake::device::{self, DeviceConfig};
use secchan::handshake::server::{self, ServerConfig};
use secchan::handshake::{AllowAnyDevice, Mode};
use secchan::msgs::{decode_alert, DeviceAuth, DeviceHello, ServerHello};
use std::sync::Arc;
use std::time::Instant;

/// xorshift64*: deterministic test input, not cryptography.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// Flips, truncates or extends `base`.
    fn mutate(&mut self, base: &[u8]) -> Vec<u8> {
        let mut v = base.to_vec();
        match self.below(4) {
            0 if !v.is_empty() => {
                let i = self.below(v.len());
                v[i] ^= 1 << self.below(8);
            }
            1 => v.truncate(self.below(v.len() + 1)),
            2 => {
                let n = self.below(40);
                v.extend(self.bytes(n));
            }
            _ => {
                let i = self.below(v.len().max(1));
                if let Some(b) = v.get_mut(i) {
                    *b = self.next() as u8;
                }
            }
        }
        v
    }
}

fn configs(mode: Mode) -> (DeviceConfig, ServerConfig) {
    let mut s = ServerConfig::new(
        Arc::new(IdentityKey::from_seed(&[1; 32])),
        Arc::new(AllowAnyDevice),
    );
    s.mode = mode;
    let d = DeviceConfig::default()
        .with_suite(if mode == Mode::Classical {
            &X25519_ONLY
        } else {
            &X25519_MLKEM768
        })
        .with_identity(Arc::new(IdentityKey::from_seed(&[2; 32])));
    (d, s)
}

#[test]
fn decoders_survive_random_input() {
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let len = noise.below(1400);
        let mut bytes = noise.bytes(len);
        if let Some(b) = bytes.first_mut() {
            *b = [0x01, 0x02, 0x03, 0x04, 0x10, 0x11, 0x12][noise.below(7)];
        }
        if bytes.len() > 2 {
            bytes[1] = 0x01;
        }
        let _ = DeviceHello::decode(&bytes);
        let _ = ServerHello::decode(&bytes);
        let _ = DeviceAuth::decode(&bytes);
        let _ = decode_alert(&bytes);
        let _ = secchan::msgs::decode_device_finish(&bytes);
    }
}

#[test]
fn state_machines_survive_mutated_messages() {
    let mut noise = Noise(42);
    for mode in [Mode::Hybrid, Mode::Classical] {
        let (dcfg, scfg) = configs(mode);
        for _ in 0..150 {
            let now = Instant::now();
            let (expect, hello) = device::start(&dcfg, &mut OsRandom).unwrap();
            // Server on a mutated hello.
            let _ = server::accept_hello(&scfg, &noise.mutate(&hello), &mut OsRandom);
            let (expect_finish, sh) = server::accept_hello(&scfg, &hello, &mut OsRandom).unwrap();
            // Device on a mutated server hello: consumed on failure, so start again after.
            let mutated = noise.mutate(&sh);
            let authed = match expect.read_server_hello(&mutated) {
                Ok(a) => a,
                Err(e) => {
                    assert!(e.alert().is_some() || mutated.first() == Some(&0x04));
                    continue;
                }
            };
            let (mut dsession, finish) = authed.finish(now).unwrap();
            let Ok((mut ssession, _)) =
                expect_finish.read_device_finish(&noise.mutate(&finish), now)
            else {
                continue;
            };
            // Records: mutated ones must fail cleanly (the session then closes).
            dsession.send(b"payload", now).unwrap();
            let rec = dsession.poll_transmit().unwrap();
            let mut m = noise.mutate(&rec);
            let _ = ssession.handle_frame(&mut m, now);
        }
    }
}
