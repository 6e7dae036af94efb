//! End-to-end delivery over MQTT (docs/mqtt.md §4), sans IO.
//!
//! MQTT QoS 1 is at-least-once between a client and the broker, and a broker restart can lose
//! what it held. So each telemetry message carries, inside the encrypted record, the device's
//! stream id and a sequence number; the server outputs each (stream, sequence) once and
//! acknowledges, cumulatively, what it has output; the device keeps every message until it
//! is acknowledged and sends it again after a reconnect or a re-handshake.

use crate::codec::{DecodeError, Reader};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Identifies one run of a device's message numbering: 8 random bytes drawn at start.
pub type StreamId = [u8; 8];

/// Largest device buffer, and how far past the acknowledged point a server accepts a
/// sequence number: bounds the server's memory per stream.
pub const MAX_BUFFER: usize = 16 * 1024;
/// Default device buffer, in messages.
pub const DEFAULT_BUFFER: usize = 10_000;
/// Messages sent but not yet acknowledged at most, so a reconnect does not burst the whole
/// buffer and reordering stays well inside the default 1024-record replay window.
pub const MAX_IN_FLIGHT: usize = 512;

/// Kinds of delivery messages (the first byte of a record's plaintext).
const KIND_MESSAGE: u8 = 0x01;
const KIND_ACK: u8 = 0x02;
/// Bytes before the data of a Message: kind, stream, sequence, base.
pub const ENVELOPE_LEN: usize = 1 + 8 + 8 + 8;
/// Length of an Ack: kind, stream, next.
pub const ACK_LEN: usize = 1 + 8 + 8;

/// A record's plaintext on the MQTT transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Envelope<'a> {
    /// Device -> server: one telemetry message.
    Message {
        /// The device's stream.
        stream: StreamId,
        /// Position in the stream, from 0.
        seq: u64,
        /// Every message below this sequence was acknowledged to the device (by whichever
        /// server instance), so a server that never saw them need not wait for them.
        base: u64,
        /// The application data.
        data: &'a [u8],
    },
    /// Server -> device: every message of `stream` with a sequence below `next` was output.
    Ack {
        /// The stream acknowledged.
        stream: StreamId,
        /// One past the last contiguously output sequence number.
        next: u64,
    },
}

impl<'a> Envelope<'a> {
    /// Encodes the envelope.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Self::Message {
                stream,
                seq,
                base,
                data,
            } => {
                out.reserve(ENVELOPE_LEN + data.len());
                out.push(KIND_MESSAGE);
                out.extend_from_slice(stream);
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&base.to_be_bytes());
                out.extend_from_slice(data);
            }
            Self::Ack { stream, next } => {
                out.push(KIND_ACK);
                out.extend_from_slice(stream);
                out.extend_from_slice(&next.to_be_bytes());
            }
        }
        out
    }

    /// Decodes an envelope. A Message's base must not exceed its sequence; an Ack must have
    /// nothing after its counter.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let kind = r.u8("delivery kind")?;
        let stream: StreamId = r.array("stream id")?;
        let n = u64::from_be_bytes(r.array("sequence")?);
        match kind {
            KIND_MESSAGE => {
                let base = u64::from_be_bytes(r.array("base")?);
                if base > n {
                    return Err(DecodeError::InvalidValue {
                        field: "base above sequence",
                        value: 0,
                    });
                }
                Ok(Self::Message {
                    stream,
                    seq: n,
                    base,
                    data: r.rest(),
                })
            }
            KIND_ACK => {
                r.finish()?;
                Ok(Self::Ack { stream, next: n })
            }
            value => Err(DecodeError::InvalidValue {
                field: "delivery kind",
                value,
            }),
        }
    }
}

/// One buffered message.
#[derive(Debug)]
struct Pending {
    seq: u64,
    data: Vec<u8>,
    /// When it was last sent; `None` if it is due to be sent.
    sent_at: Option<Instant>,
}

/// The device's buffer: messages in sequence order until the server acknowledges them.
#[derive(Debug)]
pub struct Outbox {
    stream: StreamId,
    next_seq: u64,
    capacity: usize,
    pending: VecDeque<Pending>,
}

/// Why an acknowledgement was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// It names another stream.
    #[error("acknowledgement for another stream")]
    OtherStream,
    /// It acknowledges messages never sent.
    #[error("acknowledgement of message {next} beyond the {sent} messages sent")]
    Beyond {
        /// What was acknowledged.
        next: u64,
        /// How many messages exist.
        sent: u64,
    },
}

impl Outbox {
    /// An empty buffer for `stream` holding at most `capacity` messages (1..=[`MAX_BUFFER`]).
    pub fn new(stream: StreamId, capacity: usize) -> Self {
        Self {
            stream,
            next_seq: 0,
            capacity: capacity.clamp(1, MAX_BUFFER),
            pending: VecDeque::new(),
        }
    }

    /// The stream id.
    pub fn stream(&self) -> StreamId {
        self.stream
    }

    /// Messages buffered (sent or not) and not yet acknowledged.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether every message was acknowledged.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Whether the buffer is full: the source must wait.
    pub fn is_full(&self) -> bool {
        self.pending.len() >= self.capacity
    }

    /// The capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Buffers a message and returns its sequence number, or gives it back if full.
    pub fn push(&mut self, data: Vec<u8>) -> Result<u64, Vec<u8>> {
        if self.is_full() {
            return Err(data);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.push_back(Pending {
            seq,
            data,
            sent_at: None,
        });
        Ok(seq)
    }

    /// Drops every message the server acknowledged; returns how many.
    pub fn ack(&mut self, stream: StreamId, next: u64) -> Result<usize, AckError> {
        if stream != self.stream {
            return Err(AckError::OtherStream);
        }
        if next > self.next_seq {
            return Err(AckError::Beyond {
                next,
                sent: self.next_seq,
            });
        }
        let before = self.pending.len();
        while self.pending.front().is_some_and(|p| p.seq < next) {
            self.pending.pop_front();
        }
        Ok(before - self.pending.len())
    }

    /// Marks every buffered message as due again (after a reconnect or a new session).
    pub fn resend_all(&mut self) {
        for p in &mut self.pending {
            p.sent_at = None;
        }
    }

    /// The messages to send now, as envelopes, oldest first, keeping at most
    /// [`MAX_IN_FLIGHT`] sent and unacknowledged; marks them sent at `now`.
    pub fn due(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let stream = self.stream;
        let base = self.pending.front().map_or(self.next_seq, |p| p.seq);
        let in_flight = self.pending.iter().filter(|p| p.sent_at.is_some()).count();
        let room = MAX_IN_FLIGHT.saturating_sub(in_flight);
        self.pending
            .iter_mut()
            .filter(|p| p.sent_at.is_none())
            .take(room)
            .map(|p| {
                p.sent_at = Some(now);
                Envelope::Message {
                    stream,
                    seq: p.seq,
                    base,
                    data: &p.data,
                }
                .encode()
            })
            .collect()
    }

    /// When the oldest unacknowledged message was sent, if it was.
    pub fn oldest_sent(&self) -> Option<Instant> {
        self.pending.front().and_then(|p| p.sent_at)
    }
}

/// What the server does with an incoming message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
/// 20 MiB at worst. An honest device has at most [`MAX_IN_FLIGHT`] messages ahead of its
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
    throttle: super::Throttle,
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
            throttle: super::Throttle::default(),
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

    /// Decides about message `seq` of `key` and records it as output if it is new. Every
    /// message below `base` counts as output already: the device had it acknowledged.
    pub fn accept(&mut self, key: &StreamKey, seq: u64, base: u64, now: Instant) -> Verdict {
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
        let before = s.ahead.len();
        let others = self.out_of_order.saturating_sub(before);
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
            || (seq > s.next && others + s.ahead.len() >= self.max_out_of_order)
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
                    super::warn_dropped!(self.throttle, device = %device, max = MAX_STREAMS_PER_DEVICE, "device started too many streams: forgetting its least recently active one");
                    self.remove(&k);
                }
            }
        }
        if self.streams.len() >= self.max_streams {
            if let Some((_, k)) = self.by_activity.first_key_value() {
                let k = k.clone();
                super::warn_dropped!(
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
    fn envelopes_round_trip_and_reject_malformed() {
        let m = Envelope::Message {
            stream: A,
            seq: 7,
            base: 3,
            data: b"hi",
        };
        assert_eq!(m.encode().len(), ENVELOPE_LEN + 2);
        assert_eq!(Envelope::decode(&m.encode()).unwrap(), m);
        let a = Envelope::Ack { stream: A, next: 9 };
        assert_eq!(a.encode().len(), ACK_LEN);
        assert_eq!(Envelope::decode(&a.encode()).unwrap(), a);
        let mut above = m.encode();
        above[17..25].copy_from_slice(&8u64.to_be_bytes());
        assert!(matches!(
            Envelope::decode(&above),
            Err(DecodeError::InvalidValue { .. })
        ));
        let mut long = a.encode();
        long.push(0);
        assert_eq!(Envelope::decode(&long), Err(DecodeError::TrailingBytes(1)));
        assert!(matches!(
            Envelope::decode(&[KIND_MESSAGE, 1, 2]),
            Err(DecodeError::Truncated { .. })
        ));
        let mut bad = a.encode();
        bad[0] = 9;
        assert!(matches!(
            Envelope::decode(&bad),
            Err(DecodeError::InvalidValue { value: 9, .. })
        ));
    }

    #[test]
    fn outbox_keeps_messages_until_acknowledged() {
        let now = Instant::now();
        let mut o = Outbox::new(A, 3);
        assert_eq!(o.push(b"a".to_vec()), Ok(0));
        assert_eq!(o.push(b"b".to_vec()), Ok(1));
        assert_eq!(o.push(b"c".to_vec()), Ok(2));
        assert!(o.is_full());
        assert_eq!(o.push(b"d".to_vec()), Err(b"d".to_vec()));
        assert_eq!(o.due(now).len(), 3);
        assert!(
            o.due(now).is_empty(),
            "nothing is sent twice without a resend"
        );
        assert_eq!(o.oldest_sent(), Some(now));
        assert_eq!(o.ack([2; 8], 2), Err(AckError::OtherStream));
        assert_eq!(o.ack(A, 4), Err(AckError::Beyond { next: 4, sent: 3 }));
        assert_eq!(o.ack(A, 2), Ok(2));
        assert_eq!(o.ack(A, 1), Ok(0), "an old acknowledgement changes nothing");
        assert_eq!(o.len(), 1);
        o.resend_all();
        let again = o.due(now);
        assert_eq!(
            Envelope::decode(&again[0]).unwrap(),
            Envelope::Message {
                stream: A,
                seq: 2,
                base: 2,
                data: b"c"
            }
        );
        assert_eq!(o.ack(A, 3), Ok(1));
        assert!(o.is_empty());
        assert_eq!(o.oldest_sent(), None);
    }

    #[test]
    fn outbox_limits_messages_in_flight() {
        let now = Instant::now();
        let mut o = Outbox::new(A, MAX_BUFFER);
        for i in 0..(MAX_IN_FLIGHT + 10) {
            o.push(vec![i as u8]).unwrap();
        }
        assert_eq!(o.due(now).len(), MAX_IN_FLIGHT);
        assert!(o.due(now).is_empty());
        o.ack(A, 5).unwrap();
        assert_eq!(o.due(now).len(), 5);
    }

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
