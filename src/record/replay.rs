//! Sliding-window replay protection (RFC 6479 style), protocol.md §7.3.
//!
//! The window remembers which of the last `size` counters below and including the highest
//! authenticated counter were received. [`ReplayWindow::check`] runs before decryption and
//! changes nothing; [`ReplayWindow::commit`] runs only after the record's tag verified, so a
//! forged record can never move the window.

/// Default window size in records: at least 1024, as protocol.md §7.3 requires.
pub const DEFAULT_WINDOW: usize = 1024;
/// Largest allowed window: half the 16-bit on-wire sequence space less margin, so counter
/// reconstruction (protocol.md §7.2) is never ambiguous inside the window.
pub const MAX_WINDOW: usize = 16384;

/// Why a counter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The counter is inside the window and was already received.
    #[error("record {0} was already received (replay or duplicate delivery)")]
    Duplicate(u64),
    /// The counter is older than the window can remember.
    #[error("record {0} is older than the replay window")]
    TooOld(u64),
}

/// A bitmap of recently received counters.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    /// Bit `c % size` is set if counter `c` (within the window) was received.
    blocks: Vec<u64>,
    size: u64,
    highest: Option<u64>,
}

impl ReplayWindow {
    /// A window remembering `size` counters. `size` is rounded up to a multiple of 64 and
    /// clamped to 64..=[`MAX_WINDOW`].
    pub fn new(size: usize) -> Self {
        let size = size.clamp(64, MAX_WINDOW).div_ceil(64) * 64;
        Self {
            blocks: vec![0; size / 64],
            size: size as u64,
            highest: None,
        }
    }

    /// The number of counters remembered.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The highest committed counter, if any.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }

    /// The counter expected next on an in-order transport: one past the highest.
    pub fn next_expected(&self) -> u64 {
        self.highest.map_or(0, |h| h.saturating_add(1))
    }

    /// Lowest counter the window can still accept.
    pub fn floor(&self) -> u64 {
        self.highest
            .map_or(0, |h| h.saturating_add(1).saturating_sub(self.size))
    }

    fn slot(&self, counter: u64) -> (usize, u64) {
        let bit = counter % self.size;
        ((bit / 64) as usize, 1u64 << (bit % 64))
    }

    /// Whether `counter` was committed and is still inside the window.
    pub fn contains(&self, counter: u64) -> bool {
        match self.highest {
            Some(h) if counter <= h && counter >= self.floor() => {
                let (i, mask) = self.slot(counter);
                self.blocks.get(i).is_some_and(|b| b & mask != 0)
            }
            _ => false,
        }
    }

    /// Checks `counter` without changing the window.
    pub fn check(&self, counter: u64) -> Result<(), ReplayError> {
        let Some(h) = self.highest else { return Ok(()) };
        if counter > h {
            return Ok(());
        }
        if counter < self.floor() {
            return Err(ReplayError::TooOld(counter));
        }
        if self.contains(counter) {
            return Err(ReplayError::Duplicate(counter));
        }
        Ok(())
    }

    /// Records `counter` as received. Call only after [`check`](Self::check) passed and the
    /// record authenticated.
    pub fn commit(&mut self, counter: u64) {
        match self.highest {
            Some(h) if counter <= h => {}
            Some(h) if counter - h < self.size => {
                // Clear the slots of the counters skipped over, which now enter the window.
                for c in h + 1..counter {
                    let (i, mask) = self.slot(c);
                    if let Some(b) = self.blocks.get_mut(i) {
                        *b &= !mask;
                    }
                }
                self.highest = Some(counter);
            }
            _ => {
                self.blocks.iter_mut().for_each(|b| *b = 0);
                self.highest = Some(counter);
            }
        }
        let (i, mask) = self.slot(counter);
        if let Some(b) = self.blocks.get_mut(i) {
            *b |= mask;
        }
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new(DEFAULT_WINDOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The window's bits for counters `from..=to`, oldest first, as '1'/'0'.
    fn pattern(w: &ReplayWindow, from: u64, to: u64) -> String {
        (from..=to)
            .map(|c| if w.contains(c) { '1' } else { '0' })
            .collect()
    }

    fn accept(w: &mut ReplayWindow, c: u64) {
        w.check(c).unwrap();
        w.commit(c);
    }

    #[test]
    fn in_order_then_duplicate() {
        let mut w = ReplayWindow::new(64);
        for c in 0..5 {
            accept(&mut w, c);
        }
        assert_eq!(pattern(&w, 0, 7), "11111000");
        assert_eq!(w.check(3), Err(ReplayError::Duplicate(3)));
        assert_eq!(w.check(5), Ok(()));
        assert_eq!(w.next_expected(), 5);
    }

    #[test]
    fn out_of_order_within_window_fills_holes() {
        let mut w = ReplayWindow::new(64);
        accept(&mut w, 0);
        accept(&mut w, 4);
        assert_eq!(pattern(&w, 0, 4), "10001");
        accept(&mut w, 2);
        assert_eq!(pattern(&w, 0, 4), "10101");
        assert_eq!(w.check(2), Err(ReplayError::Duplicate(2)));
        accept(&mut w, 1);
        accept(&mut w, 3);
        assert_eq!(pattern(&w, 0, 4), "11111");
        assert_eq!(w.highest(), Some(4));
    }

    #[test]
    fn too_old_is_distinct_from_duplicate() {
        let mut w = ReplayWindow::new(64);
        accept(&mut w, 100);
        assert_eq!(w.floor(), 37);
        assert_eq!(w.check(36), Err(ReplayError::TooOld(36)));
        assert_eq!(w.check(37), Ok(()));
        accept(&mut w, 37);
        assert_eq!(w.check(37), Err(ReplayError::Duplicate(37)));
        assert_eq!(pattern(&w, 36, 40), "01000");
    }

    #[test]
    fn jump_beyond_window_clears_everything() {
        let mut w = ReplayWindow::new(64);
        for c in 0..64 {
            accept(&mut w, c);
        }
        accept(&mut w, 1000);
        assert_eq!(pattern(&w, 937, 1000), format!("{}1", "0".repeat(63)));
        assert_eq!(w.check(936), Err(ReplayError::TooOld(936)));
        assert_eq!(w.check(999), Ok(()));
    }

    #[test]
    fn jump_inside_window_clears_only_skipped_slots() {
        let mut w = ReplayWindow::new(64);
        for c in 0..64 {
            accept(&mut w, c);
        }
        // Slots of 64..=69 reuse those of 0..=5; 64 and 70 set, 65..=69 cleared.
        accept(&mut w, 64);
        accept(&mut w, 70);
        assert_eq!(pattern(&w, 62, 71), "1110000010");
        assert_eq!(w.check(66), Ok(()));
        assert_eq!(w.check(6), Err(ReplayError::TooOld(6)));
        assert_eq!(w.check(7), Err(ReplayError::Duplicate(7)));
    }

    #[test]
    fn wraps_around_the_bitmap_many_times() {
        let mut w = ReplayWindow::new(128);
        for c in 0..10_000u64 {
            if c % 3 != 0 {
                accept(&mut w, c);
            }
        }
        // 9999 = 3 * 3333, so it is missing; 9997 and 9998 were accepted.
        assert_eq!(pattern(&w, 9990, 9999), "0110110110");
        assert_eq!(w.highest(), Some(9998));
        assert_eq!(w.check(9993), Ok(()));
        assert_eq!(w.check(9994), Err(ReplayError::Duplicate(9994)));
        assert_eq!(w.check(9998 - 128), Err(ReplayError::TooOld(9870)));
    }

    #[test]
    fn check_does_not_change_state() {
        let mut w = ReplayWindow::new(64);
        accept(&mut w, 10);
        w.check(20).unwrap();
        assert_eq!(w.highest(), Some(10));
        assert_eq!(w.check(20), Ok(()));
    }

    #[test]
    fn size_is_rounded_and_clamped() {
        assert_eq!(ReplayWindow::new(1).size(), 64);
        assert_eq!(ReplayWindow::new(1000).size(), 1024);
        assert_eq!(ReplayWindow::new(usize::MAX).size(), MAX_WINDOW as u64);
        assert_eq!(ReplayWindow::default().size(), 1024);
    }

    #[test]
    fn counter_near_u64_max_does_not_overflow() {
        let mut w = ReplayWindow::new(64);
        accept(&mut w, u64::MAX - 1);
        assert_eq!(
            w.check(u64::MAX - 1),
            Err(ReplayError::Duplicate(u64::MAX - 1))
        );
        assert_eq!(w.next_expected(), u64::MAX);
    }
}
