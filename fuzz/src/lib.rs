//! Shared pieces of secchan's structure-aware fuzz targets (docs/fuzzing.md).
//!
//! A target builds honest messages with secchan's own state machines and lets the fuzzer
//! choose, through [`arbitrary`], which of them to mutate, drop, repeat or reorder. So the
//! checks a random byte string fails at once (type, version, lengths, AEAD tags) pass for most
//! inputs and the fuzzer spends its time in the states behind them.
//!
//! Each target records the stages an input reached in a [`Reach`]; with `SECCHAN_FUZZ_REACH`
//! set it prints them, one line per input, which is how `scripts/fuzz.sh` shows that the
//! corpus reaches DeviceFinish processing and the record phase.

#![forbid(unsafe_code)]

pub mod delivery;
pub mod records;

use arbitrary::Arbitrary;
use secchan::crypto::random::Random;
use secchan::crypto::CryptoError;
use std::sync::OnceLock;

/// A change the fuzzer makes to one honestly generated message.
#[derive(Debug, Clone, Arbitrary)]
pub enum Mutation {
    /// Flip one bit (the position wraps around the message).
    FlipBit { at: u16, bit: u8 },
    /// Overwrite one byte.
    SetByte { at: u16, value: u8 },
    /// Keep only the first bytes.
    Truncate { len: u16 },
    /// Append bytes.
    Extend(Vec<u8>),
    /// Replace a range with other bytes (a splice; lengths may change).
    Splice {
        at: u16,
        remove: u8,
        insert: Vec<u8>,
    },
    /// Send something else entirely.
    Replace(Vec<u8>),
}

impl Mutation {
    /// Applies the mutation to `msg`.
    pub fn apply(&self, msg: &mut Vec<u8>) {
        let pos = |at: u16, len: usize| if len == 0 { 0 } else { usize::from(at) % len };
        match self {
            Self::FlipBit { at, bit } => {
                if !msg.is_empty() {
                    let i = pos(*at, msg.len());
                    msg[i] ^= 1 << (bit % 8);
                }
            }
            Self::SetByte { at, value } => {
                if !msg.is_empty() {
                    let i = pos(*at, msg.len());
                    msg[i] = *value;
                }
            }
            Self::Truncate { len } => msg.truncate(usize::from(*len) % (msg.len() + 1)),
            Self::Extend(bytes) => msg.extend_from_slice(bytes),
            Self::Splice { at, remove, insert } => {
                let start = pos(*at, msg.len() + 1);
                let end = (start + usize::from(*remove)).min(msg.len());
                msg.splice(start..end, insert.iter().copied());
            }
            Self::Replace(bytes) => *msg = bytes.clone(),
        }
    }
}

/// Applies an optional mutation and returns the message.
pub fn mutate(mut msg: Vec<u8>, mutation: &Option<Mutation>) -> Vec<u8> {
    if let Some(m) = mutation {
        m.apply(&mut msg);
    }
    msg
}

/// Deterministic "randomness" for the state machines, so that every input replays exactly:
/// a counter-driven byte stream (never used outside fuzzing).
#[derive(Debug, Clone)]
pub struct FuzzRandom(u64);

impl FuzzRandom {
    /// A stream that starts at `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
}

impl Random for FuzzRandom {
    fn fill(&mut self, out: &mut [u8]) -> Result<(), CryptoError> {
        for b in out {
            // SplitMix64 step: distinct, well-spread bytes for keys and nonces.
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            *b = (z ^ (z >> 31)) as u8;
        }
        Ok(())
    }
}

/// The stages one input reached, printed when `SECCHAN_FUZZ_REACH` is set.
#[derive(Debug)]
pub struct Reach {
    target: &'static str,
    stages: Vec<&'static str>,
}

impl Reach {
    /// Starts recording for `target`.
    pub fn new(target: &'static str) -> Self {
        Self {
            target,
            stages: Vec::new(),
        }
    }

    /// Records that the input got to `stage` (once per stage).
    pub fn hit(&mut self, stage: &'static str) {
        if !self.stages.contains(&stage) {
            self.stages.push(stage);
        }
    }
}

impl Drop for Reach {
    fn drop(&mut self) {
        static ON: OnceLock<bool> = OnceLock::new();
        if *ON.get_or_init(|| std::env::var_os("SECCHAN_FUZZ_REACH").is_some()) {
            eprintln!("secchan-reach {} {}", self.target, self.stages.join(" "));
        }
    }
}
