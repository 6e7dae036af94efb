//! The server's duplicate filter: which (device, stream, sequence) were output.

use super::{StreamId, MAX_BUFFER};
use crate::throttle::{warn_dropped, Throttle};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// What the server does with an incoming message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// First time seen: output it.
    New,
    /// Already output: drop it (and acknowledge again).
    Duplicate,
    /// Too far ahead of what was acknowledged: drop it; the device sends it again later.
    TooFarAhead,
}

/// Which device a stream belongs to: its key's fingerprint (or `None` if anonymous) and the
/// stream id. A device cannot touch another device's streams.
pub type StreamKey = (Option<String>, StreamId);

/// Streams one identified device may have remembered at once. A device that starts more (a
/// process restarted, or a device inventing stream ids) forgets its own least recently
/// active stream, never another device's. A device process uses one stream.
pub const MAX_STREAMS_PER_DEVICE: usize = 4;
/// Default bound on the out-of-order sequence numbers remembered over all streams: about
/// 20 MiB at worst. An honest device has at most [`MAX_IN_FLIGHT`](super::MAX_IN_FLIGHT) messages ahead of its
/// acknowledged point.
pub const DEFAULT_MAX_OUT_OF_ORDER: usize = 1 << 20;

#[derive(Debug)]
struct StreamState {
    /// Every sequence below this was output.
    next: u64,
    /// Sequences at or above `next` that were output.
    ahead: BTreeSet<u64>,
    last_seen: Instant,
    /// Position in [`Streams::by_activity`].
    touched: u64,
}

/// The server's record of what each stream has output, for dropping duplicates across
/// redeliveries, reconnects and re-handshakes. Its memory is bounded: at most `max_streams`
/// streams, [`MAX_STREAMS_PER_DEVICE`] per identified device, and `max_out_of_order`
/// sequence numbers ahead of the streams' acknowledged points in total.
#[derive(Debug)]
pub struct Streams {
    streams: HashMap<StreamKey, StreamState>,
    /// Every stream by its last message, least recent first (keys from a counter).
    by_activity: BTreeMap<u64, StreamKey>,
    /// The streams of each identified device.
    per_device: HashMap<String, Vec<StreamId>>,
    /// Entries in all `ahead` sets.
    out_of_order: usize,
    activity: u64,
    max_streams: usize,
    max_out_of_order: usize,
    ttl: Duration,
    throttle: Throttle,
}

impl Streams {
    /// Remembers at most `max_streams` streams, each for `ttl` after its last message, and
    /// at most `max_out_of_order` sequence numbers received ahead of a gap, over all streams.
    pub fn new(max_streams: usize, max_out_of_order: usize, ttl: Duration) -> Self {
        Self {
            streams: HashMap::new(),
            by_activity: BTreeMap::new(),
            per_device: HashMap::new(),
            out_of_order: 0,
            activity: 0,
            max_streams: max_streams.max(1),
            max_out_of_order,
            ttl,
            throttle: Throttle::default(),
        }
    }

    /// Number of streams remembered.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// Whether no stream is remembered.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// The state of `key`, created (making room for it) if new, marked as active at `now`.
    fn touch(&mut self, key: &StreamKey, now: Instant) -> &mut StreamState {
        if !self.streams.contains_key(key) {
            self.make_room(key);
            if let Some(device) = &key.0 {
                self.per_device
                    .entry(device.clone())
                    .or_default()
                    .push(key.1);
            }
        }
        self.activity += 1;
        let s = self.streams.entry(key.clone()).or_insert(StreamState {
            next: 0,
            ahead: BTreeSet::new(),
            last_seen: now,
            touched: 0,
        });
        self.by_activity.remove(&s.touched);
        self.by_activity.insert(self.activity, key.clone());
        s.touched = self.activity;
        s.last_seen = now;
        s
    }

    /// Restores what a state directory recorded of `key` (at start): every sequence below
    /// `next` and those in `ahead` were output.
    pub fn restore(&mut self, key: &StreamKey, next: u64, ahead: &[u64], now: Instant) {
        let s = self.touch(key, now);
        let before = s.ahead.len();
        s.next = next;
        s.ahead = ahead.iter().copied().filter(|a| *a > next).collect();
        let after = s.ahead.len();
        self.out_of_order = self.out_of_order.saturating_sub(before) + after;
    }

    /// What was output of `key`: every sequence below the first value, and the ones listed.
    pub fn state(&self, key: &StreamKey) -> Option<(u64, Vec<u64>)> {
        self.streams
            .get(key)
            .map(|s| (s.next, s.ahead.iter().copied().collect()))
    }

    /// Every stream remembered, with [`state`](Self::state).
    pub fn states(&self) -> impl Iterator<Item = (&StreamKey, u64, Vec<u64>)> + '_ {
        self.streams
            .iter()
            .map(|(k, s)| (k, s.next, s.ahead.iter().copied().collect()))
    }

    /// Decides about message `seq` of `key` and records it as output if it is new. Every
    /// message below `base` counts as output already: the device had it acknowledged (or
    /// gave it up).
    pub fn accept(&mut self, key: &StreamKey, seq: u64, base: u64, now: Instant) -> Verdict {
        self.touch(key, now);
        let others_total = self.out_of_order;
        let max_out_of_order = self.max_out_of_order;
        let Some(s) = self.streams.get_mut(key) else {
            unreachable!("touch inserted the stream")
        };
        let before = s.ahead.len();
        let others = others_total.saturating_sub(before);
        if base > s.next {
            s.next = base;
            s.ahead = s.ahead.split_off(&base);
            while s.ahead.remove(&s.next) {
                s.next += 1;
            }
        }
        let verdict = if seq < s.next || s.ahead.contains(&seq) {
            Verdict::Duplicate
        } else if seq - s.next >= MAX_BUFFER as u64
            || (seq > s.next && others + s.ahead.len() >= max_out_of_order)
        {
            Verdict::TooFarAhead
        } else {
            s.ahead.insert(seq);
            while s.ahead.remove(&s.next) {
                s.next += 1;
            }
            Verdict::New
        };
        self.out_of_order = others + s.ahead.len();
        verdict
    }

    /// The cumulative acknowledgement for `key`.
    pub fn ack(&self, key: &StreamKey) -> u64 {
        self.streams.get(key).map_or(0, |s| s.next)
    }

    /// Forgets streams idle for longer than the ttl (`now` does not go back between calls).
    pub fn expire(&mut self, now: Instant) {
        while let Some((_, key)) = self.by_activity.first_key_value() {
            let idle = self.streams.get(key).map_or(Duration::MAX, |s| {
                now.saturating_duration_since(s.last_seen)
            });
            if idle < self.ttl {
                return;
            }
            let key = key.clone();
            self.remove(&key);
        }
    }

    /// Makes room for a new stream of `key`'s device: forgets that device's least recently
    /// active stream if it has its quota, and the least recently active of all if full.
    fn make_room(&mut self, key: &StreamKey) {
        if let Some(device) = &key.0 {
            let own = self.per_device.get(device).map_or(&[][..], Vec::as_slice);
            if own.len() >= MAX_STREAMS_PER_DEVICE {
                let oldest = own
                    .iter()
                    .map(|id| (Some(device.clone()), *id))
                    .min_by_key(|k| self.streams.get(k).map_or(0, |s| s.touched));
                if let Some(k) = oldest {
                    warn_dropped!(self.throttle, device = %device, max = MAX_STREAMS_PER_DEVICE, "device started too many streams: forgetting its least recently active one");
                    self.remove(&k);
                }
            }
        }
        if self.streams.len() >= self.max_streams {
            if let Some((_, k)) = self.by_activity.first_key_value() {
                let k = k.clone();
                warn_dropped!(
                    self.throttle,
                    max = self.max_streams,
                    "duplicate filter full: forgetting the least recently active stream"
                );
                self.remove(&k);
            }
        }
    }

    fn remove(&mut self, key: &StreamKey) {
        let Some(s) = self.streams.remove(key) else {
            return;
        };
        self.by_activity.remove(&s.touched);
        self.out_of_order = self.out_of_order.saturating_sub(s.ahead.len());
        if let Some(device) = &key.0 {
            if let Some(own) = self.per_device.get_mut(device) {
                own.retain(|id| *id != key.1);
                if own.is_empty() {
                    self.per_device.remove(device);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: StreamId = [1; 8];

    #[test]
    fn streams_output_each_message_once_in_any_order() {
        let now = Instant::now();
        let mut s = Streams::new(10, DEFAULT_MAX_OUT_OF_ORDER, Duration::from_secs(60));
        let key = (Some("SHA256:dev".to_string()), A);
        assert_eq!(s.accept(&key, 1, 0, now), Verdict::New);
        assert_eq!(s.ack(&key), 0, "a gap holds the acknowledgement back");
        assert_eq!(s.accept(&key, 1, 0, now), Verdict::Duplicate);
        assert_eq!(s.accept(&key, 0, 0, now), Verdict::New);
        assert_eq!(s.ack(&key), 2);
        assert_eq!(s.accept(&key, 0, 0, now), Verdict::Duplicate);
        assert_eq!(
            s.accept(&key, 2 + MAX_BUFFER as u64, 0, now),
            Verdict::TooFarAhead
        );
        // A base says the messages below it were output elsewhere.
        let moved = (None, [9; 8]);
        assert_eq!(s.accept(&moved, 10, 10, now), Verdict::New);
        assert_eq!(s.ack(&moved), 11);
        assert_eq!(s.accept(&moved, 3, 0, now), Verdict::Duplicate);
        s.remove(&moved);
        let other_device = (Some("SHA256:other".to_string()), A);
        assert_eq!(s.accept(&other_device, 0, 0, now), Verdict::New);
        assert_eq!(s.len(), 2);
        s.expire(now + Duration::from_secs(61));
        assert!(s.is_empty());
    }

    #[test]
    fn streams_evict_the_least_recent_when_full() {
        let now = Instant::now();
        let mut s = Streams::new(2, DEFAULT_MAX_OUT_OF_ORDER, Duration::from_secs(60));
        let k = |b: u8| (None, [b; 8]);
        s.accept(&k(1), 0, 0, now);
        s.accept(&k(2), 0, 0, now + Duration::from_secs(1));
        s.accept(&k(3), 0, 0, now + Duration::from_secs(2));
        assert_eq!(s.len(), 2);
        assert_eq!(s.ack(&k(1)), 0);
        assert_eq!(s.ack(&k(2)), 1);
    }

    #[test]
    fn a_device_that_starts_many_streams_forgets_only_its_own() {
        let now = Instant::now();
        let mut s = Streams::new(100, DEFAULT_MAX_OUT_OF_ORDER, Duration::from_secs(60));
        let honest = (Some("SHA256:honest".to_string()), A);
        s.accept(&honest, 0, 0, now);
        s.accept(&honest, 2, 0, now);
        let flooder = |i: u64| (Some("SHA256:flooder".to_string()), i.to_be_bytes());
        for i in 0..1_000 {
            s.accept(&flooder(i), 0, 0, now);
        }
        assert_eq!(s.len(), 1 + MAX_STREAMS_PER_DEVICE);
        assert_eq!(s.ack(&flooder(999)), 1, "its newest streams are kept");
        assert_eq!(s.ack(&flooder(0)), 0, "its oldest was forgotten");
        assert_eq!(
            s.accept(&honest, 2, 0, now),
            Verdict::Duplicate,
            "untouched"
        );
        assert_eq!(s.out_of_order, 1);
        // Expiry follows activity, and keeps the counts right.
        s.accept(&honest, 1, 0, now + Duration::from_secs(30));
        s.expire(now + Duration::from_secs(61));
        assert_eq!(s.len(), 1);
        assert_eq!((s.ack(&honest), s.out_of_order), (3, 0));
        assert_eq!(s.per_device.len(), 1);
    }

    #[test]
    fn out_of_order_entries_are_bounded_over_all_streams() {
        let now = Instant::now();
        let mut s = Streams::new(100, 3, Duration::from_secs(60));
        let k = |b: u8| (None, [b; 8]);
        assert_eq!(s.accept(&k(1), 5, 0, now), Verdict::New);
        assert_eq!(s.accept(&k(1), 6, 0, now), Verdict::New);
        assert_eq!(s.accept(&k(2), 9, 0, now), Verdict::New);
        assert_eq!(
            s.accept(&k(2), 8, 0, now),
            Verdict::TooFarAhead,
            "bound reached"
        );
        // In-order messages still pass, and closing a gap frees room.
        for seq in 0..5 {
            assert_eq!(s.accept(&k(1), seq, 0, now), Verdict::New);
        }
        assert_eq!((s.ack(&k(1)), s.out_of_order), (7, 1));
        assert_eq!(s.accept(&k(2), 8, 0, now), Verdict::New);
        // A base moves a stream past its gap and forgets what it had ahead.
        assert_eq!(s.accept(&k(2), 20, 20, now), Verdict::New);
        assert_eq!((s.ack(&k(2)), s.out_of_order), (21, 0));
    }
}
