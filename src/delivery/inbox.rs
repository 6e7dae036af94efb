//! A receiver that takes each stream strictly in order: what a device does with the server's
//! downlink stream (messages, relayed frames, peer information), and what both ends of a
//! device-to-device session do with each other's messages (protocol.md §11.2, §11.6).
//!
//! Unlike the server's [`Streams`](super::Streams), nothing ahead of a gap is kept: the sender
//! sends it again (after a new session, or its ack timeout), so the receiver holds one counter
//! per stream and what it hands out is in the sender's order.

use super::StreamId;

/// Streams an inbox remembers at once; a further one forgets the least recently used.
pub const MAX_INBOX_STREAMS: usize = 8;

/// What the receiver does with a sequenced envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Take {
    /// The next one in order: hand it out, then acknowledge.
    New,
    /// Taken before: drop it, acknowledge again.
    Duplicate,
    /// Ahead of a gap: drop it unacknowledged; the sender sends it again.
    Ahead,
}

#[derive(Debug, Clone, Copy)]
struct State {
    stream: StreamId,
    next: u64,
    used: u64,
}

/// Per stream, the next sequence number expected.
#[derive(Debug, Default)]
pub struct Inbox {
    streams: Vec<State>,
    clock: u64,
    /// Envelopes given up by their sender (below a base that jumped over them).
    skipped: u64,
}

impl Inbox {
    /// An inbox that knows no stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decides about envelope `seq` of `stream`, whose sender holds nothing below `base`.
    pub fn take(&mut self, stream: StreamId, seq: u64, base: u64) -> Take {
        self.clock += 1;
        let clock = self.clock;
        let i = match self.streams.iter().position(|s| s.stream == stream) {
            Some(i) => i,
            None => {
                if self.streams.len() >= MAX_INBOX_STREAMS {
                    if let Some(lru) = (0..self.streams.len()).min_by_key(|&i| self.streams[i].used)
                    {
                        self.streams.swap_remove(lru);
                    }
                }
                self.streams.push(State {
                    stream,
                    next: 0,
                    used: clock,
                });
                self.streams.len() - 1
            }
        };
        let s = &mut self.streams[i];
        s.used = clock;
        if base > s.next {
            self.skipped += base - s.next;
            s.next = base;
        }
        if seq < s.next {
            Take::Duplicate
        } else if seq == s.next {
            s.next += 1;
            Take::New
        } else {
            Take::Ahead
        }
    }

    /// The cumulative acknowledgement for `stream`: every envelope below it was taken.
    pub fn ack(&self, stream: StreamId) -> u64 {
        self.streams
            .iter()
            .find(|s| s.stream == stream)
            .map_or(0, |s| s.next)
    }

    /// Envelopes their senders gave up before this inbox took them.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inbox_takes_each_stream_in_order_once() {
        let mut inbox = Inbox::new();
        let a = [1; 8];
        assert_eq!(inbox.take(a, 1, 0), Take::Ahead);
        assert_eq!(inbox.ack(a), 0);
        assert_eq!(inbox.take(a, 0, 0), Take::New);
        assert_eq!(inbox.take(a, 0, 0), Take::Duplicate);
        assert_eq!(inbox.take(a, 1, 0), Take::New);
        assert_eq!(inbox.ack(a), 2);
        // The sender gave up 2..5: its base says so.
        assert_eq!(inbox.take(a, 5, 5), Take::New);
        assert_eq!((inbox.ack(a), inbox.skipped()), (6, 3));
    }

    #[test]
    fn an_inbox_remembers_a_bounded_number_of_streams() {
        let mut inbox = Inbox::new();
        for i in 0..(MAX_INBOX_STREAMS as u8 + 3) {
            assert_eq!(inbox.take([i; 8], 0, 0), Take::New);
        }
        assert_eq!(inbox.streams.len(), MAX_INBOX_STREAMS);
        assert_eq!(
            inbox.ack([0; 8]),
            0,
            "the least recently used was forgotten"
        );
        assert_eq!(inbox.ack([MAX_INBOX_STREAMS as u8 + 2; 8]), 1);
    }
}
