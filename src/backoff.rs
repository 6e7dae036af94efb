//! Exponential back-off with jitter, for everything that reconnects: a pause that doubles up
//! to a cap, each drawn at random within a band so that many clients cut off together do not
//! come back together.

use std::time::Duration;

/// A back-off schedule.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    /// The next pause before jitter.
    next: Duration,
    /// Each pause is the schedule's value times a random factor in this band.
    band: (f64, f64),
}

impl Backoff {
    /// Pauses from `first` doubling to `max`, each scaled by a random factor in
    /// `[band.0, band.1]`.
    pub fn new(first: Duration, max: Duration, band: (f64, f64)) -> Self {
        Self {
            first,
            max,
            next: first,
            band,
        }
    }

    /// The next pause; the one after it doubles (up to the cap).
    pub fn next_pause(&mut self) -> Duration {
        let pause = jitter(self.next, self.band);
        self.next = (self.next * 2).min(self.max);
        pause
    }

    /// Starts again from the first pause (after a success).
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// `d` scaled by a random factor in `[low, high]` (by `low` if no randomness is to be had).
fn jitter(d: Duration, (low, high): (f64, f64)) -> Duration {
    use crate::crypto::random::{OsRandom, Random};
    let mut b = [0u8; 2];
    let r = match OsRandom.fill(&mut b) {
        Ok(()) => f64::from(u16::from_be_bytes(b)) / f64::from(u16::MAX),
        Err(_) => 0.0,
    };
    d.mul_f64(low + (high - low) * r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_to_the_cap_within_their_band_and_reset() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(4), (0.5, 1.0));
        for want in [1, 2, 4, 4] {
            let p = b.next_pause();
            let w = Duration::from_secs(want);
            assert!(p >= w / 2 && p <= w, "{p:?} for {w:?}");
        }
        b.reset();
        assert!(b.next_pause() <= Duration::from_secs(1));
    }
}
