//! The records a receiver refused for their freshness or authenticity (protocol.md §7.3), by
//! reason: what an operator watches to see replays and forgeries.

use super::replay::ReplayError;
use super::RecordError;

/// Records refused in one session (or summed over many), by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Rejected {
    /// A counter already received: a replay, or a duplicate the network delivered.
    pub replayed: u64,
    /// A counter older than the replay window.
    pub too_old: u64,
    /// On an ordered transport (TCP), a counter other than the next one: records dropped,
    /// reordered or injected.
    pub out_of_order: u64,
    /// A tag that did not verify: forged, altered, or sealed under another key.
    pub forged: u64,
    /// On an unordered transport (MQTT), a key epoch the receiver does not hold.
    pub unknown_epoch: u64,
}

impl Rejected {
    /// Counts `e` if it refused a record for its freshness or authenticity; other errors (a
    /// malformed record, a limit of this side's own) are not counted. Returns whether it was.
    pub fn count(&mut self, e: &RecordError) -> bool {
        let slot = match e {
            RecordError::Replay(ReplayError::Duplicate(_)) => &mut self.replayed,
            RecordError::Replay(ReplayError::TooOld(_)) => &mut self.too_old,
            RecordError::OutOfOrder { .. } => &mut self.out_of_order,
            RecordError::BadTag(_) | RecordError::IntegrityLimit => &mut self.forged,
            RecordError::UnknownGeneration { .. } => &mut self.unknown_epoch,
            RecordError::Decode(_) | RecordError::PayloadTooLarge(_) | RecordError::HardLimit => {
                return false
            }
        };
        *slot += 1;
        true
    }

    /// Every reason with its count, named as in the metrics' `reason` label.
    pub fn by_reason(&self) -> [(&'static str, u64); 5] {
        [
            ("replayed", self.replayed),
            ("too_old", self.too_old),
            ("out_of_order", self.out_of_order),
            ("forged", self.forged),
            ("unknown_epoch", self.unknown_epoch),
        ]
    }

    /// All of them.
    pub fn total(&self) -> u64 {
        self.by_reason().iter().map(|(_, n)| n).sum()
    }
}

impl std::ops::AddAssign for Rejected {
    fn add_assign(&mut self, o: Self) {
        self.replayed += o.replayed;
        self.too_old += o.too_old;
        self.out_of_order += o.out_of_order;
        self.forged += o.forged;
        self.unknown_epoch += o.unknown_epoch;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::DecodeError;

    #[test]
    fn each_refusal_counts_under_its_reason_and_malformed_records_do_not() {
        let mut r = Rejected::default();
        for e in [
            RecordError::Replay(ReplayError::Duplicate(3)),
            RecordError::Replay(ReplayError::Duplicate(4)),
            RecordError::Replay(ReplayError::TooOld(1)),
            RecordError::OutOfOrder {
                expected: 5,
                got: 9,
            },
            RecordError::BadTag(5),
            RecordError::IntegrityLimit,
            RecordError::UnknownGeneration {
                counter: 6,
                epoch: 200,
                current: 0,
            },
        ] {
            assert!(r.count(&e), "{e}");
        }
        assert!(!r.count(&RecordError::Decode(DecodeError::Empty)));
        assert!(!r.count(&RecordError::HardLimit));
        assert_eq!(
            r.by_reason(),
            [
                ("replayed", 2),
                ("too_old", 1),
                ("out_of_order", 1),
                ("forged", 2),
                ("unknown_epoch", 1)
            ]
        );
        let mut sum = r;
        sum += r;
        assert_eq!((sum.total(), sum.forged), (14, 4));
    }
}
