//! Rate-limited warnings and saturating deadlines, for every path a peer can trigger.
//!
//! Anyone who can reach a server (a TCP port, a broker's topics) can send it garbage; a
//! warning per dropped input would turn a flood of garbage into a flood of log lines. A
//! [`Throttle`] lets one warning through per [`WARN_EVERY`] and counts the ones it holds back.

use std::time::{Duration, Instant};

/// How often at most one throttle lets a warning through.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// Rate limit for warnings about dropped input (foreign, malformed or forged frames, refused
/// connections): anyone who can reach the endpoint could otherwise turn a flood of
/// garbage into a flood of log lines. One warning per [`WARN_EVERY`]; the ones held back in
/// between are logged at debug level and counted in the next warning.
#[derive(Debug, Default)]
pub struct Throttle {
    quiet_until: Option<Instant>,
    held_back: u64,
}

impl Throttle {
    /// Whether to warn now; if so, how many warnings were held back since the last one.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.quiet_until {
            Some(until) if now < until => {
                self.held_back += 1;
                None
            }
            _ => {
                self.quiet_until = Some(later(now, WARN_EVERY));
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}

/// Logs a warning about dropped input through `throttle`, or at debug level while it is
/// quiet.
macro_rules! warn_dropped {
    ($throttle:expr, $($field:tt)*) => {
        match $throttle.allow(std::time::Instant::now()) {
            Some(held_back) => tracing::warn!(held_back, $($field)*),
            None => tracing::debug!($($field)*),
        }
    };
}
pub(crate) use warn_dropped;

/// `now + d`, or a day from now if `d` is too large to add (a huge timeout from a caller
/// must not panic).
pub fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(86_400))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_about_dropped_input_are_rate_limited() {
        let t0 = Instant::now();
        let mut t = Throttle::default();
        assert_eq!(t.allow(t0), Some(0));
        assert_eq!(t.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(t.allow(t0 + Duration::from_secs(9)), None);
        assert_eq!(t.allow(t0 + WARN_EVERY), Some(2), "the two held back");
        assert_eq!(t.allow(t0 + WARN_EVERY), None);
    }

    #[test]
    fn huge_timeouts_do_not_overflow() {
        let now = Instant::now();
        assert_eq!(
            later(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        assert!(later(now, Duration::from_secs(u64::MAX)) > now);
    }
}
