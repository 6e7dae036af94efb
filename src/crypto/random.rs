//! Sources of randomness.
//!
//! Every random value the handshake draws comes through [`Random`], so tests can replay the
//! exact randomness of a test vector (protocol.md §9) while production code uses the OS.

use super::CryptoError;

/// A source of random bytes.
pub trait Random: Send {
    /// Fills `out` with random bytes.
    fn fill(&mut self, out: &mut [u8]) -> Result<(), CryptoError>;
}

/// The operating system's CSPRNG (`getrandom`).
#[derive(Debug, Default, Clone, Copy)]
pub struct OsRandom;

impl Random for OsRandom {
    fn fill(&mut self, out: &mut [u8]) -> Result<(), CryptoError> {
        getrandom::getrandom(out).map_err(|_| CryptoError::Rng)
    }
}

/// Replays fixed byte strings in order; for test vectors only.
///
/// Each call to [`Random::fill`] takes the next string, which must have exactly the requested
/// length; anything else is [`CryptoError::Rng`].
#[derive(Debug, Clone)]
pub struct FixedRandom {
    values: std::collections::VecDeque<Vec<u8>>,
}

impl FixedRandom {
    /// Random values to hand out, in draw order.
    pub fn new(values: Vec<Vec<u8>>) -> Self {
        Self {
            values: values.into(),
        }
    }
}

impl Random for FixedRandom {
    fn fill(&mut self, out: &mut [u8]) -> Result<(), CryptoError> {
        match self.values.pop_front() {
            Some(v) if v.len() == out.len() => {
                out.copy_from_slice(&v);
                Ok(())
            }
            _ => Err(CryptoError::Rng),
        }
    }
}
