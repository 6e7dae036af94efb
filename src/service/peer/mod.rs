//! A device's end-to-end sessions with other devices, relayed by the server (protocol.md
//! §11.6–§11.7), sans IO: frames in and out as bytes, time passed in.
//!
//! Each conversation is an ordinary secchan handshake and [`Session`](crate::session::Session) between two devices:
//! the initiator runs the device side, the responder the server side, each with its own
//! device identity key, and the handshake is bound to both names (§11.7). The relay forwards
//! the frames in order, exactly once, or not at all, so the inner session runs in ordered
//! mode: a relay that alters, replays, reorders or drops a record ends the session with the
//! record layer's error. Inside it, the peers' messages are numbered and acknowledged end to
//! end (the delivery envelopes of §11.1), so that a message survives a new inner session.

mod conversation;
mod trust;

pub use conversation::{PeerStats, Phase};
pub use trust::{PeerTrust, PeerTrustError, Vouched};

use crate::crypto::identity::IdentityKey;
use crate::crypto::random::Random;
use crate::delivery::{PeerInfo, Refusal, ENVELOPE_LEN, MAX_PEER_NAME};
use crate::handshake::device::DeviceConfig;
use conversation::Conversation;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest message a device sends to a peer: what fits one inner record inside one relay
/// envelope inside one outer record.
pub const MAX_PEER_MESSAGE: usize = crate::record::MAX_PAYLOAD
    - ENVELOPE_LEN
    - 2
    - MAX_PEER_NAME
    - crate::record::RECORD_OVERHEAD
    - ENVELOPE_LEN;
/// Conversations a device holds at once; a further peer is refused until one ends.
pub const MAX_CONVERSATIONS: usize = 64;
/// Messages to one peer held until it acknowledges them.
pub const PEER_BUFFER: usize = 1024;
/// An inner handshake not complete after this long fails.
pub const PEER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// New inner sessions the initiator starts after failures in a row before it gives up.
pub const MAX_RESTARTS: u32 = 3;

/// The transcript context that binds an inner handshake to both names (protocol.md §11.7).
pub fn context(initiator: &str, responder: &str) -> Vec<u8> {
    let mut c = RELAY_CONTEXT.to_vec();
    for name in [initiator, responder] {
        c.push(name.len().min(MAX_PEER_NAME) as u8);
        c.extend_from_slice(&name.as_bytes()[..name.len().min(MAX_PEER_NAME)]);
    }
    c
}

/// The label that starts every relay context.
pub const RELAY_CONTEXT: &[u8] = b"secchan v3 relay\0";

/// What happened in the device's conversations, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerEvent {
    /// A session with a peer is up.
    Established {
        /// The peer's name.
        peer: String,
        /// Its fingerprint.
        fingerprint: String,
        /// What vouched for its key.
        vouched: Vouched,
    },
    /// A message from a peer, end to end.
    Message {
        /// The peer's name.
        peer: String,
        /// Its fingerprint.
        fingerprint: String,
        /// The message.
        data: Vec<u8>,
    },
    /// The peer acknowledged messages end to end.
    Delivered {
        /// The peer's name.
        peer: String,
        /// How many.
        count: usize,
    },
    /// A session failed (the relay tampered, the key is not trusted, a timeout).
    Failed {
        /// The peer's name.
        peer: String,
        /// Why.
        error: String,
        /// Whether the device gave up on the peer (no new session follows).
        final_: bool,
    },
    /// The server refuses to relay to the peer.
    Refused {
        /// The peer's name.
        peer: String,
        /// Why.
        reason: Refusal,
    },
}

/// Why a message could not be queued for a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The name cannot be relayed to.
    #[error("{0:?} is not a peer name (1 to 64 bytes, no control characters)")]
    BadName(String),
    /// The message is too long.
    #[error("a message to a peer is at most {MAX_PEER_MESSAGE} bytes; this one is {0}")]
    TooLarge(usize),
    /// The buffer for the peer is full.
    #[error("{0} messages to {1} are waiting for its acknowledgement")]
    Full(usize, String),
    /// Too many conversations.
    #[error("already {MAX_CONVERSATIONS} conversations")]
    TooMany,
    /// The device gave up on this peer.
    #[error("the session with {0} failed for good")]
    GaveUp(String),
    /// An anonymous device has no key to prove to a peer.
    #[error("an anonymous device cannot open end-to-end sessions: give it a key (--key)")]
    Anonymous,
}

/// A device's conversations. Frames for the relay come out of [`poll_frame`](Self::poll_frame);
/// frames the server relayed go in through [`on_relay`](Self::on_relay).
pub struct Peers {
    identity: Arc<IdentityKey>,
    config: DeviceConfig,
    trust: PeerTrust,
    /// What the server said of each peer.
    infos: HashMap<String, OwnedInfo>,
    /// By (peer, whether this device initiated).
    conversations: HashMap<(String, bool), Conversation>,
    /// (peer, from the initiator, frame) for the relay.
    out: VecDeque<(String, bool, Vec<u8>)>,
    events: VecDeque<PeerEvent>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("conversations", &self.conversations.len())
            .finish_non_exhaustive()
    }
}

/// A [`PeerInfo`] kept.
#[derive(Debug, Clone)]
struct OwnedInfo {
    you: String,
    fingerprint: [u8; 32],
    entries: Vec<String>,
}

impl OwnedInfo {
    fn view<'a>(&'a self, peer: &'a str) -> PeerInfo<'a> {
        PeerInfo {
            peer,
            you: &self.you,
            fingerprint: self.fingerprint,
            entries: self.entries.iter().map(String::as_str).collect(),
        }
    }
}

impl Peers {
    /// Conversations as `identity`, offering what `config` offers (its suite and AEADs; its
    /// identity is replaced by `identity`), trusting peers' keys through `trust`.
    pub fn new(identity: Arc<IdentityKey>, mut config: DeviceConfig, trust: PeerTrust) -> Self {
        config.identity = Some(identity.clone());
        config.enrollment = None;
        config.session.ordered = true;
        Self {
            identity,
            config,
            trust,
            infos: HashMap::new(),
            conversations: HashMap::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// This device's own fingerprint.
    pub fn fingerprint(&self) -> String {
        self.identity.public().fingerprint()
    }

    /// Queues `data` for `peer`, starting a session with it if none is up.
    pub fn send(
        &mut self,
        peer: &str,
        data: Vec<u8>,
        rng: &mut dyn Random,
        now: Instant,
    ) -> Result<(), PeerError> {
        if !crate::delivery::valid_peer_name(peer) {
            return Err(PeerError::BadName(peer.into()));
        }
        if data.len() > MAX_PEER_MESSAGE {
            return Err(PeerError::TooLarge(data.len()));
        }
        // Answer within a session the peer opened, if one is up; else in our own.
        let key = match self.conversations.get(&(peer.to_string(), false)) {
            Some(c) if c.is_open() && !self.conversations.contains_key(&(peer.into(), true)) => {
                (peer.to_string(), false)
            }
            _ => (peer.to_string(), true),
        };
        if !self.conversations.contains_key(&key) {
            if self.conversations.len() >= MAX_CONVERSATIONS {
                return Err(PeerError::TooMany);
            }
            let mut c = Conversation::new(peer, true)?;
            c.start(&self.config, rng, now, &mut self.out)?;
            self.conversations.insert(key.clone(), c);
        }
        let c = self.conversations.get_mut(&key).ok_or(PeerError::TooMany)?;
        if c.gave_up() {
            return Err(PeerError::GaveUp(peer.into()));
        }
        c.push(data, now, &mut self.out)
    }

    /// What the server said of a peer: kept for checking its key.
    pub fn on_peer_info(&mut self, info: &PeerInfo<'_>) {
        if self.infos.len() >= MAX_CONVERSATIONS * 2 && !self.infos.contains_key(info.peer) {
            self.infos.clear();
        }
        self.infos.insert(
            info.peer.to_string(),
            OwnedInfo {
                you: info.you.to_string(),
                fingerprint: info.fingerprint,
                entries: info.entries.iter().map(|e| e.to_string()).collect(),
            },
        );
    }

    /// The server refuses to relay to `peer`: the conversation this device started with it
    /// ends (what it holds cannot be delivered). One the peer started is kept, with what it
    /// took: the peer, back after a restart, sends again what was not acknowledged, and a
    /// message already taken is acknowledged again, not taken twice (protocol.md §11.7).
    pub fn on_refused(&mut self, peer: &str, reason: Refusal) {
        if let Some(mut c) = self.conversations.remove(&(peer.to_string(), true)) {
            c.give_up();
        }
        self.events.push_back(PeerEvent::Refused {
            peer: peer.into(),
            reason,
        });
    }

    /// A frame the server relayed from `peer` (`initiator`: from the side that started the
    /// session).
    pub fn on_relay(
        &mut self,
        peer: &str,
        initiator: bool,
        frame: &mut [u8],
        rng: &mut dyn Random,
        now: Instant,
    ) {
        // A frame from the initiator belongs to the conversation the peer started.
        let key = (peer.to_string(), !initiator);
        let info = self.infos.get(peer).cloned();
        let view = info.as_ref().map(|i| i.view(peer));
        if !self.conversations.contains_key(&key) {
            if initiator && self.conversations.len() < MAX_CONVERSATIONS {
                match Conversation::new(peer, false) {
                    Ok(c) => {
                        self.conversations.insert(key.clone(), c);
                    }
                    Err(_) => return,
                }
            } else {
                tracing::debug!(peer, "relayed frame for no conversation: dropped");
                return;
            }
        }
        let Some(c) = self.conversations.get_mut(&key) else {
            return;
        };
        let ctx = conversation::Ctx {
            identity: &self.identity,
            config: &self.config,
            trust: &self.trust,
            info: view.as_ref(),
            out: &mut self.out,
            events: &mut self.events,
        };
        c.on_frame(frame, ctx, rng, now);
    }

    /// Fails inner handshakes that took too long; restarts failed sessions that still have
    /// messages to deliver.
    pub fn tick(&mut self, rng: &mut dyn Random, now: Instant) {
        for c in self.conversations.values_mut() {
            c.tick(&self.config, rng, now, &mut self.out, &mut self.events);
        }
    }

    /// The next frame for the relay: `(peer, from_initiator, frame)`.
    pub fn poll_frame(&mut self) -> Option<(String, bool, Vec<u8>)> {
        self.out.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<PeerEvent> {
        self.events.pop_front()
    }

    /// Messages not yet acknowledged by their peers (those given up on excluded).
    pub fn undelivered(&self) -> usize {
        self.conversations
            .values()
            .filter(|c| !c.gave_up())
            .map(Conversation::undelivered)
            .sum()
    }

    /// Whether `peer` was given up on in every conversation with it.
    pub fn gave_up_on(&self, peer: &str) -> bool {
        [true, false].iter().all(|i| {
            self.conversations
                .get(&(peer.to_string(), *i))
                .is_none_or(Conversation::gave_up)
        }) && self.conversations.keys().any(|(p, _)| p == peer)
    }

    /// The counters of every conversation, for display.
    pub fn stats(&self) -> Vec<PeerStats> {
        let mut v: Vec<PeerStats> = self.conversations.values().map(|c| c.stats()).collect();
        v.sort_by(|a, b| a.peer.cmp(&b.peer).then(b.initiator.cmp(&a.initiator)));
        v
    }

    /// Closes every open session (`close_notify`).
    pub fn close_all(&mut self) {
        for c in self.conversations.values_mut() {
            c.close(&mut self.out);
        }
    }
}

#[cfg(test)]
mod tests;
