//! The device's outbox: every message in sequence order until the server acknowledges it.

use super::{Envelope, StreamId, MAX_BUFFER, MAX_IN_FLIGHT};
use std::collections::VecDeque;
use std::time::Instant;

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

#[cfg(test)]
mod tests {
    use super::*;

    const A: StreamId = [1; 8];

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
}
