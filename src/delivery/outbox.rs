//! The sender's outbox: every message in sequence order until the receiver acknowledges it,
//! in memory or, with a [`Spool`], on disk as well.

use super::envelope::{sequenced, Kind};
use super::spool::{Recovered, Spool, SpoolError};
use super::{StreamId, MAX_IN_FLIGHT};
use std::collections::VecDeque;
use std::path::Path;
use std::time::Instant;

/// Default limit on the bytes of data an outbox holds.
pub const DEFAULT_BUFFER_BYTES: usize = 64 * 1024 * 1024;

/// What a full outbox does with a new message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WhenFull {
    /// Refuse it: the source waits until acknowledgements make room (nothing is lost).
    #[default]
    Block,
    /// Drop the oldest unacknowledged message to make room, and count it.
    DropOldest,
}

/// How much an outbox holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most messages held.
    pub messages: usize,
    /// Most bytes of message data held.
    pub bytes: usize,
    /// What happens when either limit is reached.
    pub when_full: WhenFull,
}

impl Limits {
    /// At most `messages` messages and [`DEFAULT_BUFFER_BYTES`], blocking when full.
    pub fn messages(messages: usize) -> Self {
        Self {
            messages: messages.max(1),
            bytes: DEFAULT_BUFFER_BYTES,
            when_full: WhenFull::Block,
        }
    }
}

/// One buffered message.
#[derive(Debug)]
struct Pending {
    seq: u64,
    /// The envelope kind it is sent as (a Message, or a relay envelope).
    kind: Kind,
    data: Vec<u8>,
    /// When it was last sent, if it was since the last [`Outbox::resend_all`].
    sent_at: Option<Instant>,
}

/// The sender's buffer: messages in sequence order until the receiver acknowledges them.
/// Messages are sent in order, so the ones sent since the last [`Outbox::resend_all`] are a
/// prefix of the buffer.
#[derive(Debug)]
pub struct Outbox {
    stream: StreamId,
    next_seq: u64,
    limits: Limits,
    pending: VecDeque<Pending>,
    /// Bytes of data in `pending`.
    bytes: usize,
    /// How many of `pending` (a prefix) were sent and are awaiting acknowledgement.
    sent: usize,
    /// Messages dropped by [`WhenFull::DropOldest`].
    dropped: u64,
    spool: Option<Spool>,
}

/// Why an acknowledgement was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
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

/// An outbox operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// The acknowledgement does not fit what was sent: it is ignored.
    #[error(transparent)]
    Ack(#[from] AckError),
    /// The spool could not be written: messages are no longer kept safely.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The outbox is full ([`WhenFull::Block`]): the message is handed back.
    #[error("the outbox is full")]
    Full(Vec<u8>),
    /// A spool keeps Message envelopes only: this outbox cannot take another kind.
    #[error("a spooled outbox holds messages only")]
    Unspoolable,
}

impl Outbox {
    /// An empty in-memory buffer for `stream` holding at most `capacity` messages.
    pub fn new(stream: StreamId, capacity: usize) -> Self {
        Self::with_limits(stream, Limits::messages(capacity))
    }

    /// An empty in-memory buffer for `stream` within `limits`.
    pub fn with_limits(stream: StreamId, limits: Limits) -> Self {
        Self {
            stream,
            next_seq: 0,
            limits,
            pending: VecDeque::new(),
            bytes: 0,
            sent: 0,
            dropped: 0,
            spool: None,
        }
    }

    /// An outbox kept in the spool at `dir` as well: what an earlier run left unacknowledged
    /// is loaded (and sent again first), and new messages continue its stream. A fresh spool
    /// starts the stream `new_stream` returns. Returns the outbox and how many bytes of a torn
    /// write were discarded.
    pub fn open_spool(
        dir: &Path,
        limits: Limits,
        new_stream: impl FnOnce() -> StreamId,
    ) -> Result<(Self, u64), SpoolError> {
        let (spool, recovered) = Spool::open(dir, new_stream)?;
        let Recovered {
            stream,
            next_seq,
            messages,
            discarded_bytes,
            ..
        } = recovered;
        let mut outbox = Self::with_limits(stream, limits);
        outbox.next_seq = next_seq;
        for (seq, data) in messages {
            outbox.bytes += data.len();
            outbox.pending.push_back(Pending {
                seq,
                kind: Kind::Message,
                data,
                sent_at: None,
            });
        }
        outbox.spool = Some(spool);
        Ok((outbox, discarded_bytes))
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

    /// Whether the buffer is at one of its limits: with [`WhenFull::Block`] the source must
    /// wait.
    pub fn is_full(&self) -> bool {
        self.pending.len() >= self.limits.messages || self.bytes >= self.limits.bytes
    }

    /// The message limit.
    pub fn capacity(&self) -> usize {
        self.limits.messages
    }

    /// What a full outbox does.
    pub fn when_full(&self) -> WhenFull {
        self.limits.when_full
    }

    /// Messages dropped to make room ([`WhenFull::DropOldest`]).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The sequence number the next message gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Buffers a message (and writes it to the spool) and returns its sequence number. A
    /// full outbox hands it back ([`WhenFull::Block`]) or first drops its oldest messages
    /// ([`WhenFull::DropOldest`]).
    pub fn push(&mut self, data: Vec<u8>) -> Result<u64, OutboxError> {
        self.push_kind(Kind::Message, data)
    }

    /// Like [`push`](Self::push), for an envelope of another sequenced kind whose body
    /// (everything after the sequence header) is `body`. Not on a spooled outbox.
    pub fn push_kind(&mut self, kind: Kind, data: Vec<u8>) -> Result<u64, OutboxError> {
        if kind != Kind::Message && self.spool.is_some() {
            return Err(OutboxError::Unspoolable);
        }
        if kind == Kind::Ack {
            return Err(OutboxError::Unspoolable);
        }
        if self.is_full() {
            match self.limits.when_full {
                WhenFull::Block => return Err(OutboxError::Full(data)),
                WhenFull::DropOldest => self.drop_oldest(data.len())?,
            }
        }
        let seq = self.next_seq;
        if let Some(spool) = &mut self.spool {
            spool.append(seq, &data)?;
        }
        self.next_seq += 1;
        self.bytes += data.len();
        self.pending.push_back(Pending {
            seq,
            kind,
            data,
            sent_at: None,
        });
        Ok(seq)
    }

    /// Drops the oldest messages until one of `incoming` bytes fits.
    fn drop_oldest(&mut self, incoming: usize) -> Result<(), SpoolError> {
        let mut freed = 0;
        while !self.pending.is_empty()
            && (self.pending.len() >= self.limits.messages
                || self.bytes + incoming > self.limits.bytes)
        {
            freed += self.pop_front();
            self.dropped += 1;
        }
        let next = self.pending.front().map_or(self.next_seq, |p| p.seq);
        self.record_done(next, freed)
    }

    /// Removes the oldest message; returns the spool bytes it took.
    fn pop_front(&mut self) -> u64 {
        let Some(p) = self.pending.pop_front() else {
            return 0;
        };
        self.bytes -= p.data.len();
        self.sent = self.sent.saturating_sub(1);
        Spool::record_len(p.data.len())
    }

    /// Tells the spool that every message below `next` is done with.
    fn record_done(&mut self, next: u64, freed: u64) -> Result<(), SpoolError> {
        let Some(spool) = &mut self.spool else {
            return Ok(());
        };
        spool.ack(next, freed)?;
        if spool.wants_compaction() {
            let pending: Vec<(u64, &[u8])> = self
                .pending
                .iter()
                .map(|p| (p.seq, p.data.as_slice()))
                .collect();
            spool.compact(next, &pending)?;
        }
        Ok(())
    }

    /// Drops every message the receiver acknowledged; returns how many.
    pub fn ack(&mut self, stream: StreamId, next: u64) -> Result<usize, OutboxError> {
        if stream != self.stream {
            return Err(AckError::OtherStream.into());
        }
        if next > self.next_seq {
            return Err(AckError::Beyond {
                next,
                sent: self.next_seq,
            }
            .into());
        }
        let mut removed = 0;
        let mut freed = 0;
        while self.pending.front().is_some_and(|p| p.seq < next) {
            freed += self.pop_front();
            removed += 1;
        }
        if removed > 0 {
            self.record_done(next, freed)?;
        }
        Ok(removed)
    }

    /// Marks every buffered message as due again (after a reconnect or a new session).
    pub fn resend_all(&mut self) {
        for p in &mut self.pending {
            p.sent_at = None;
        }
        self.sent = 0;
    }

    /// The messages to send now, as envelopes, oldest first, keeping at most
    /// [`MAX_IN_FLIGHT`] sent and unacknowledged; marks them sent at `now`. With a spool,
    /// they are made durable (fsync) first.
    pub fn due(&mut self, now: Instant) -> Result<Vec<Vec<u8>>, SpoolError> {
        let room = MAX_IN_FLIGHT.saturating_sub(self.sent);
        let end = (self.sent + room).min(self.pending.len());
        if end == self.sent {
            return Ok(Vec::new());
        }
        if let Some(spool) = &mut self.spool {
            spool.sync()?;
        }
        let stream = self.stream;
        let base = self.pending.front().map_or(self.next_seq, |p| p.seq);
        let out = self
            .pending
            .range_mut(self.sent..end)
            .map(|p| {
                p.sent_at = Some(now);
                sequenced(p.kind, stream, p.seq, base, &p.data)
            })
            .collect();
        self.sent = end;
        Ok(out)
    }

    /// When the oldest unacknowledged message was sent, if it was.
    pub fn oldest_sent(&self) -> Option<Instant> {
        self.pending.front().and_then(|p| p.sent_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::Envelope;

    const A: StreamId = [1; 8];

    fn seqs(envelopes: &[Vec<u8>]) -> Vec<u64> {
        envelopes
            .iter()
            .map(|e| match Envelope::decode(e).unwrap() {
                Envelope::Message { seq, .. } => seq,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn outbox_keeps_messages_until_acknowledged() {
        let now = Instant::now();
        let mut o = Outbox::new(A, 3);
        assert_eq!(o.push(b"a".to_vec()).unwrap(), 0);
        assert_eq!(o.push(b"b".to_vec()).unwrap(), 1);
        assert_eq!(o.push(b"c".to_vec()).unwrap(), 2);
        assert!(o.is_full());
        assert!(matches!(o.push(b"d".to_vec()), Err(OutboxError::Full(d)) if d == b"d"));
        assert_eq!(o.due(now).unwrap().len(), 3);
        assert!(
            o.due(now).unwrap().is_empty(),
            "nothing is sent twice without a resend"
        );
        assert_eq!(o.oldest_sent(), Some(now));
        assert!(matches!(
            o.ack([2; 8], 2),
            Err(OutboxError::Ack(AckError::OtherStream))
        ));
        assert!(matches!(
            o.ack(A, 4),
            Err(OutboxError::Ack(AckError::Beyond { next: 4, sent: 3 }))
        ));
        assert_eq!(o.ack(A, 2).unwrap(), 2);
        assert_eq!(
            o.ack(A, 1).unwrap(),
            0,
            "an old acknowledgement changes nothing"
        );
        assert_eq!(o.len(), 1);
        o.resend_all();
        let again = o.due(now).unwrap();
        assert_eq!(
            Envelope::decode(&again[0]).unwrap(),
            Envelope::Message {
                stream: A,
                seq: 2,
                base: 2,
                data: b"c"
            }
        );
        assert_eq!(o.ack(A, 3).unwrap(), 1);
        assert!(o.is_empty());
        assert_eq!(o.oldest_sent(), None);
    }

    #[test]
    fn outbox_limits_messages_in_flight() {
        let now = Instant::now();
        let mut o = Outbox::new(A, 10_000);
        for i in 0..(MAX_IN_FLIGHT + 10) {
            o.push(vec![i as u8]).unwrap();
        }
        assert_eq!(o.due(now).unwrap().len(), MAX_IN_FLIGHT);
        assert!(o.due(now).unwrap().is_empty());
        o.ack(A, 5).unwrap();
        assert_eq!(seqs(&o.due(now).unwrap()), (512..517).collect::<Vec<_>>());
    }

    #[test]
    fn a_full_outbox_that_drops_the_oldest_counts_them_and_moves_its_base() {
        let now = Instant::now();
        let mut o = Outbox::with_limits(
            A,
            Limits {
                messages: 3,
                bytes: 1 << 20,
                when_full: WhenFull::DropOldest,
            },
        );
        for i in 0..5u8 {
            o.push(vec![i]).unwrap();
        }
        assert_eq!((o.len(), o.dropped()), (3, 2));
        let due = o.due(now).unwrap();
        assert_eq!(seqs(&due), [2, 3, 4]);
        assert!(
            matches!(
                Envelope::decode(&due[0]).unwrap(),
                Envelope::Message { base: 2, .. }
            ),
            "the receiver learns it need not wait for 0 and 1"
        );
    }

    #[test]
    fn the_byte_limit_applies_too() {
        let mut o = Outbox::with_limits(
            A,
            Limits {
                messages: 100,
                bytes: 10,
                when_full: WhenFull::Block,
            },
        );
        o.push(vec![0; 10]).unwrap();
        assert!(o.is_full());
        assert!(matches!(o.push(vec![1]), Err(OutboxError::Full(_))));
    }

    #[test]
    fn a_spooled_outbox_resumes_its_stream_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits::messages(100);
        {
            let (mut o, _) = Outbox::open_spool(dir.path(), limits, || A).unwrap();
            for i in 0..4u8 {
                o.push(vec![i]).unwrap();
            }
            o.due(Instant::now()).unwrap();
            o.ack(A, 1).unwrap();
            // Dropped without any shutdown, as by kill -9.
        }
        let (mut o, discarded) = Outbox::open_spool(dir.path(), limits, || [9; 8]).unwrap();
        assert_eq!((o.stream(), o.len(), o.next_seq(), discarded), (A, 3, 4, 0));
        assert_eq!(seqs(&o.due(Instant::now()).unwrap()), [1, 2, 3]);
        assert_eq!(o.push(vec![4]).unwrap(), 4, "numbering goes on");
    }
}
