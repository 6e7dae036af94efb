//! Which hellos a server instance works on, and which pending handshakes it forgets, fairly
//! per broker client (docs/mqtt.md §4): sans IO, time passed in.
//!
//! Hellos are queued per `{client}` topic level and served round robin, a few at a time
//! between the records of established sessions, so one client publishing hellos as fast as
//! the broker takes them gets one turn per round like every other client. Each client's queue
//! holds its few newest hellos (a device publishes its hello again every second); a hello
//! older than the handshake timeout is dropped unserved. Pending handshakes are bounded per
//! client and in total; beyond the total, the client holding the most loses its oldest.

use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Hellos queued per client at most; a further one drops that client's oldest.
pub const HELLOS_PER_CLIENT: usize = 4;
/// Clients with queued hellos at most; a hello from a further client is dropped.
pub const MAX_QUEUED_CLIENTS: usize = 4096;
/// Pending handshakes per client at most; a further one forgets that client's oldest.
pub const PENDING_PER_CLIENT: usize = 4;

/// A hello waiting for the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The device's `{client}` level.
    pub client: String,
    /// Its session id.
    pub session: String,
    /// The DeviceHello.
    pub frame: Bytes,
    /// When it arrived.
    pub arrived: Instant,
}

/// Hellos waiting, per client, served round robin.
#[derive(Debug, Default)]
pub struct HelloQueue {
    queues: HashMap<String, VecDeque<Hello>>,
    /// Clients with queued hellos, in serving order.
    turn: VecDeque<String>,
    len: usize,
}

impl HelloQueue {
    /// Hellos queued.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues a hello. A repeat of a queued session replaces it. Returns how many hellos were
    /// dropped to keep the bounds (the client's oldest, or this one).
    pub fn push(&mut self, hello: Hello) -> u64 {
        if !self.queues.contains_key(&hello.client) {
            if self.queues.len() >= MAX_QUEUED_CLIENTS {
                return 1;
            }
            self.turn.push_back(hello.client.clone());
        }
        let queue = self.queues.entry(hello.client.clone()).or_default();
        if let Some(same) = queue.iter_mut().find(|h| h.session == hello.session) {
            *same = hello;
            return 0;
        }
        queue.push_back(hello);
        self.len += 1;
        if queue.len() > HELLOS_PER_CLIENT {
            queue.pop_front();
            self.len -= 1;
            return 1;
        }
        0
    }

    /// The next hello to serve: the oldest of the client whose turn it is, skipping (and
    /// counting in `stale`) hellos that waited longer than `max_age`.
    pub fn pop(&mut self, now: Instant, max_age: Duration, stale: &mut u64) -> Option<Hello> {
        while let Some(client) = self.turn.pop_front() {
            let Some(queue) = self.queues.get_mut(&client) else {
                continue;
            };
            let mut next = None;
            while let Some(h) = queue.pop_front() {
                self.len -= 1;
                if now.saturating_duration_since(h.arrived) <= max_age {
                    next = Some(h);
                    break;
                }
                *stale += 1;
            }
            if queue.is_empty() {
                self.queues.remove(&client);
            } else {
                self.turn.push_back(client);
            }
            if next.is_some() {
                return next;
            }
        }
        None
    }
}

/// Pending handshakes per client, oldest first, to choose which to forget.
#[derive(Debug, Default)]
pub struct PendingOrder {
    by_client: HashMap<String, VecDeque<(u64, String)>>,
    next: u64,
    len: usize,
}

impl PendingOrder {
    /// Handshakes recorded.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Records a new pending handshake of `client` under `key`; returns its order.
    pub fn add(&mut self, client: &str, key: String) -> u64 {
        let order = self.next;
        self.next += 1;
        self.by_client
            .entry(client.to_string())
            .or_default()
            .push_back((order, key));
        self.len += 1;
        order
    }

    /// Forgets a handshake that ended (established, refused, expired).
    pub fn remove(&mut self, client: &str, order: u64) {
        if let Some(q) = self.by_client.get_mut(client) {
            if let Some(i) = q.iter().position(|(o, _)| *o == order) {
                q.remove(i);
                self.len -= 1;
            }
            if q.is_empty() {
                self.by_client.remove(client);
            }
        }
    }

    /// How many `client` has pending.
    pub fn of(&self, client: &str) -> usize {
        self.by_client.get(client).map_or(0, VecDeque::len)
    }

    /// The key of the handshake to forget to make room: `client`'s oldest if `client` is
    /// given, else the oldest of the client holding the most (the oldest such on a tie). It
    /// is removed from the order.
    pub fn evict(&mut self, client: Option<&str>) -> Option<String> {
        let client = match client {
            Some(c) => c.to_string(),
            None => self
                .by_client
                .iter()
                .max_by_key(|(_, q)| (q.len(), std::cmp::Reverse(q.front().map(|e| e.0))))
                .map(|(c, _)| c.clone())?,
        };
        let q = self.by_client.get_mut(&client)?;
        let (_, key) = q.pop_front()?;
        self.len -= 1;
        if q.is_empty() {
            self.by_client.remove(&client);
        }
        Some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(client: &str, session: &str, arrived: Instant) -> Hello {
        Hello {
            client: client.into(),
            session: session.into(),
            frame: Bytes::from_static(b"\x01"),
            arrived,
        }
    }

    #[test]
    fn a_flooding_client_gets_one_turn_per_round() {
        let now = Instant::now();
        let mut q = HelloQueue::default();
        let mut dropped = 0;
        for i in 0..100 {
            dropped += q.push(hello("flood", &format!("{i}"), now));
        }
        q.push(hello("honest", "h", now));
        assert_eq!(
            dropped,
            100 - HELLOS_PER_CLIENT as u64,
            "the flood keeps its newest"
        );
        assert_eq!(q.len(), HELLOS_PER_CLIENT + 1);
        let mut stale = 0;
        let served: Vec<_> = std::iter::from_fn(|| q.pop(now, Duration::from_secs(1), &mut stale))
            .map(|h| h.client)
            .collect();
        assert_eq!(served[..2], ["flood", "honest"]);
        assert_eq!(served.len(), HELLOS_PER_CLIENT + 1);
        assert!(q.is_empty());
    }

    #[test]
    fn repeats_replace_and_stale_hellos_are_skipped() {
        let now = Instant::now();
        let mut q = HelloQueue::default();
        q.push(hello("a", "s", now));
        q.push(hello("a", "s", now + Duration::from_secs(2)));
        assert_eq!(q.len(), 1, "a repeated hello replaces the queued one");
        q.push(hello("b", "t", now));
        let mut stale = 0;
        let later = now + Duration::from_secs(3);
        let got = q.pop(later, Duration::from_secs(2), &mut stale).unwrap();
        assert_eq!((got.client.as_str(), stale), ("a", 0));
        assert_eq!(q.pop(later, Duration::from_secs(2), &mut stale), None);
        assert_eq!(stale, 1, "b's hello waited too long");
    }

    #[test]
    fn the_queue_holds_a_bounded_number_of_clients() {
        let now = Instant::now();
        let mut q = HelloQueue::default();
        for i in 0..MAX_QUEUED_CLIENTS {
            assert_eq!(q.push(hello(&format!("c{i}"), "s", now)), 0);
        }
        assert_eq!(q.push(hello("one-more", "s", now)), 1);
        assert_eq!(q.len(), MAX_QUEUED_CLIENTS);
    }

    #[test]
    fn eviction_takes_from_the_client_holding_most() {
        let mut p = PendingOrder::default();
        let honest = p.add("honest", "honest/1".into());
        for i in 0..3 {
            p.add("flood", format!("flood/{i}"));
        }
        assert_eq!(p.evict(None).as_deref(), Some("flood/0"));
        assert_eq!(p.evict(Some("flood")).as_deref(), Some("flood/1"));
        assert_eq!(p.of("flood"), 1);
        // A tie goes to the older.
        assert_eq!(p.evict(None).as_deref(), Some("honest/1"));
        p.remove("honest", honest);
        assert_eq!((p.len(), p.evict(None).as_deref()), (1, Some("flood/2")));
        assert_eq!(p.evict(None), None);
    }
}
