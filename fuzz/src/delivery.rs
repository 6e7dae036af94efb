//! Both ends of the delivery protocol (protocol.md §11) with a model of what the server wrote:
//! no (stream, seq) may be written twice while the server remembers its stream, and on an
//! untampered run every message pushed must end up written and acknowledged.

use crate::Reach;
use secchan::delivery::{Envelope, Outbox, StreamId, Streams, Verdict};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The device's stream in every target.
pub const STREAM: StreamId = *b"fuzzstrm";
const DEVICE: &str = "SHA256:device";

/// A device's outbox, a server's stream filter, and what the server wrote.
pub struct Ends {
    /// The device's outbox.
    pub outbox: Outbox,
    /// The server's duplicate filter.
    pub streams: Streams,
    /// Written since the server last forgot the stream (a repeat is a bug).
    written: BTreeSet<(StreamId, u64)>,
    /// Written at all (for the final check that nothing was lost).
    ever: BTreeSet<(StreamId, u64)>,
    pushed: u64,
    /// Whether any envelope was altered on the way (then nothing is promised).
    pub tampered: bool,
}

impl Default for Ends {
    fn default() -> Self {
        Self {
            outbox: Outbox::new(STREAM, 64),
            streams: Streams::new(16, 1 << 16, Duration::from_secs(7 * 24 * 3600)),
            written: BTreeSet::new(),
            ever: BTreeSet::new(),
            pushed: 0,
            tampered: false,
        }
    }
}

impl Ends {
    /// The device queues a message.
    pub fn push(&mut self, data: &[u8]) {
        if self.outbox.push(data.to_vec()).is_ok() {
            self.pushed += 1;
        }
    }

    /// The server receives a Data record's plaintext; returns the Ack to send, if any.
    pub fn server_receives(
        &mut self,
        bytes: &[u8],
        now: Instant,
        r: &mut Reach,
    ) -> Option<Vec<u8>> {
        let Ok(Envelope::Message {
            stream, seq, base, ..
        }) = Envelope::decode(bytes)
        else {
            r.hit("envelope_refused");
            return None;
        };
        r.hit("envelope");
        let key = (Some(DEVICE.to_string()), stream);
        let verdict = self.streams.accept(&key, seq, base, now);
        self.forget(r);
        if verdict == Verdict::New {
            assert!(
                self.written.insert((stream, seq)),
                "message {seq} written twice"
            );
            self.ever.insert((stream, seq));
            r.hit("written");
        }
        let next = self.streams.ack(&key);
        Some(Envelope::Ack { stream, next }.encode())
    }

    /// The device receives a Data record's plaintext.
    pub fn device_receives(&mut self, bytes: &[u8], r: &mut Reach) {
        if let Ok(Envelope::Ack { stream, next }) = Envelope::decode(bytes) {
            r.hit("ack");
            if self.outbox.ack(stream, next).is_err() {
                r.hit("ack_ignored");
            }
        }
    }

    /// Time passes on the server: idle streams are forgotten.
    pub fn expire(&mut self, now: Instant, r: &mut Reach) {
        self.streams.expire(now);
        self.forget(r);
    }

    /// A stream the server forgot (expired, or evicted for a newer one of the device) may be
    /// written again (protocol.md §11.3 item 3): its messages no longer count as repeats.
    fn forget(&mut self, r: &mut Reach) {
        let before = self.written.len();
        let streams = &self.streams;
        self.written
            .retain(|(id, _)| streams.state(&(Some(DEVICE.into()), *id)).is_some());
        if self.written.len() < before {
            r.hit("forgotten");
        }
    }

    /// Unless something was tampered with or given up: every message pushed was written and
    /// acknowledged.
    pub fn check_all_delivered(&self, r: &mut Reach) {
        if self.tampered || self.outbox.dropped() > 0 {
            return;
        }
        assert!(self.outbox.is_empty(), "messages left unacknowledged");
        assert_eq!(self.outbox.next_seq(), self.pushed);
        for seq in 0..self.pushed {
            assert!(self.ever.contains(&(STREAM, seq)), "message {seq} lost");
        }
        r.hit("all_delivered");
    }
}
