//! The server's side of everything it sends devices (protocol.md §11.8), for every transport:
//! per device name, one server -> device stream of downlink messages and relayed frames, kept
//! until the device acknowledges them; and the relay decision for each frame a device sends
//! to a peer.
//!
//! A session registers its device with [`Hub::attach`], sends what [`Hub::due`] gives it
//! whenever its [`Attached::wake`] fires, and hands the device's Acks and Relay envelopes to
//! [`Hub::on_ack`] and [`Hub::relay`] (both through [`Hub::from_device`]).

use super::live::Live;
use crate::crypto::identity::PublicIdentity;
use crate::crypto::kdf::sha256;
use crate::delivery::{
    peer_info_body, refusal_body, relay_body, valid_peer_name, Envelope, Inbox, Kind, Limits,
    Outbox, OutboxError, PeerInfo, Refusal, StreamId, Take, WhenFull,
};
use crate::handshake::server::PeerDevice;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Envelopes held for one device until it acknowledges them.
pub const DEVICE_BUFFER: usize = 1024;
/// Bytes held for one device until it acknowledges them.
pub const DEVICE_BUFFER_BYTES: usize = 1024 * 1024;
/// Device names the hub remembers; beyond it, a name without a session is forgotten (with
/// what it held) when a new one comes.
pub const MAX_DEVICES: usize = 100_000;
/// Largest downlink message: a record's payload less the envelope.
pub const MAX_DOWNLINK: usize = crate::record::MAX_PAYLOAD - crate::delivery::ENVELOPE_LEN;

/// Who may reach whom through the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayPolicy {
    /// The server relays nothing (every Relay is refused with `no_relay`).
    Off,
    /// Any two authenticated devices of the server.
    Any,
    /// Only devices of the same registry group.
    SameGroup,
}

/// Why a downlink message was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DownlinkError {
    /// No device of that name has a session.
    #[error("no device named {0:?} has a session with this server: not delivered, not stored (send it again once the device is connected)")]
    NotConnected(String),
    /// The device's buffer is full.
    #[error("{0} holds {DEVICE_BUFFER} messages or {DEVICE_BUFFER_BYTES} bytes it has not acknowledged: not delivered")]
    Full(String),
    /// Too long.
    #[error("a downlink message is at most {MAX_DOWNLINK} bytes; this one is {0}")]
    TooLarge(usize),
    /// Anonymous devices share one name: none of them can be addressed.
    #[error("anonymous devices cannot be addressed: give the device a key and authorize it")]
    Anonymous,
}

/// What [`Hub::from_device`] made of an envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FromDevice {
    /// Handled; nothing to send.
    Done,
    /// Handled; send this envelope to the device.
    Reply(Vec<u8>),
    /// An envelope only a server sends: the device breaks the protocol.
    Unexpected,
}

/// A session's registration.
#[derive(Debug, Clone)]
pub struct Attached {
    /// Identifies the session among the device's sessions.
    pub id: u64,
    /// Fires whenever there is something new for the device.
    pub wake: Arc<Notify>,
}

struct Device {
    /// SHA-256 of its public key; `None` for an anonymous device.
    key_hash: Option<[u8; 32]>,
    group: Option<String>,
    /// The signed registry lines that vouch for its key, sent to its peers (§11.7).
    entries: Vec<String>,
    outbox: Outbox,
    /// The device's relay streams (§11.6).
    relay_in: Inbox,
    session: Option<Attached>,
}

#[derive(Default)]
struct State {
    devices: HashMap<String, Device>,
    next_id: u64,
}

/// See the module documentation.
pub struct Hub {
    state: Mutex<State>,
    policy: RelayPolicy,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

fn new_outbox() -> Outbox {
    Outbox::with_limits(
        super::random_stream(),
        Limits {
            messages: DEVICE_BUFFER,
            bytes: DEVICE_BUFFER_BYTES,
            when_full: WhenFull::Block,
        },
    )
}

impl Hub {
    /// A hub relaying by `policy`.
    pub fn new(policy: RelayPolicy) -> Self {
        Self {
            state: Mutex::new(State::default()),
            policy,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`attach`](Self::attach) for an authenticated `peer`, with the registry group and
    /// the signed lines vouching for its key that `live` gives it (if any).
    pub fn attach_peer(&self, peer: &PeerDevice, live: Option<&Arc<dyn Live>>) -> Attached {
        let (group, entries) = match (live, &peer.identity) {
            (Some(l), Some(id)) => (l.group_of(id), l.vouching_lines(id)),
            _ => (None, Vec::new()),
        };
        self.attach(&peer.name, peer.identity.as_ref(), group, entries)
    }

    /// Registers the session of device `name` (replacing an earlier one of the same name):
    /// what it held unacknowledged is sent again. `entries` are the signed registry lines
    /// that vouch for its key (at most `MAX_PEER_ENTRIES`
    /// are sent), given to its peers in PeerInfo.
    pub fn attach(
        &self,
        name: &str,
        identity: Option<&PublicIdentity>,
        group: Option<String>,
        entries: Vec<String>,
    ) -> Attached {
        let mut state = self.lock();
        state.next_id += 1;
        let attached = Attached {
            id: state.next_id,
            wake: Arc::new(Notify::new()),
        };
        let key_hash = identity.map(|k| sha256(&k.0));
        if !state.devices.contains_key(name) && state.devices.len() >= MAX_DEVICES {
            let idle = state
                .devices
                .iter()
                .find(|(_, d)| d.session.is_none())
                .map(|(n, _)| n.clone());
            if let Some(idle) = idle {
                state.devices.remove(&idle);
            }
        }
        let device = state
            .devices
            .entry(name.to_string())
            .or_insert_with(|| Device {
                key_hash,
                group: group.clone(),
                entries: Vec::new(),
                outbox: new_outbox(),
                relay_in: Inbox::new(),
                session: None,
            });
        if device.key_hash != key_hash {
            // Another key under the same name: nothing held for the old one goes to it.
            device.outbox = new_outbox();
            device.relay_in = Inbox::new();
            device.key_hash = key_hash;
        }
        device.group = group;
        device.entries = entries;
        device.outbox.resend_all();
        device.session = Some(attached.clone());
        attached.wake.notify_one();
        tracing::debug!(
            device = %name,
            "session attached: downlink and relayed frames go to it"
        );
        attached
    }

    /// The session `id` of `name` ended; what it held stays for the device's next session.
    pub fn detach(&self, name: &str, id: u64) {
        if let Some(d) = self.lock().devices.get_mut(name) {
            if d.session.as_ref().is_some_and(|s| s.id == id) {
                d.session = None;
            }
        }
    }

    /// Queues a downlink message for `to`; returns its sequence number.
    pub fn downlink(&self, to: &str, data: Vec<u8>) -> Result<u64, DownlinkError> {
        if data.len() > MAX_DOWNLINK {
            return Err(DownlinkError::TooLarge(data.len()));
        }
        let mut state = self.lock();
        let device = state
            .devices
            .get_mut(to)
            .filter(|d| d.session.is_some())
            .ok_or_else(|| DownlinkError::NotConnected(to.to_string()))?;
        if device.key_hash.is_none() {
            return Err(DownlinkError::Anonymous);
        }
        push(device, Kind::Message, data).map_err(|_| DownlinkError::Full(to.to_string()))
    }

    /// What device `name`'s session should send now: encoded envelopes, in order.
    pub fn due(&self, name: &str, now: Instant) -> Vec<Vec<u8>> {
        let mut state = self.lock();
        match state.devices.get_mut(name) {
            Some(d) => d.outbox.due(now).unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// Sends device `name` again everything it has not acknowledged, if the oldest of it was
    /// sent `after` ago or longer: for a transport that may lose an envelope inside a session
    /// (MQTT, where the device drops what arrives after a gap). Returns whether it did.
    pub fn resend_stale(&self, name: &str, now: Instant, after: Duration) -> bool {
        let mut state = self.lock();
        let Some(d) = state.devices.get_mut(name) else {
            return false;
        };
        let stale = d
            .outbox
            .oldest_sent()
            .is_some_and(|t| now.saturating_duration_since(t) >= after);
        if stale {
            d.outbox.resend_all();
            if let Some(s) = &d.session {
                s.wake.notify_one();
            }
        }
        stale
    }

    /// The device acknowledged its server stream up to `next`; returns how many envelopes
    /// this released.
    pub fn on_ack(&self, name: &str, stream: StreamId, next: u64) -> Result<usize, OutboxError> {
        let mut state = self.lock();
        let Some(d) = state.devices.get_mut(name) else {
            return Ok(0);
        };
        let released = d.outbox.ack(stream, next)?;
        if released > 0 {
            if let Some(s) = &d.session {
                s.wake.notify_one();
            }
        }
        Ok(released)
    }

    /// What a session of `name` does with an envelope from its device other than a Message,
    /// for every transport: an Ack goes to [`on_ack`](Self::on_ack), a Relay to
    /// [`relay`](Self::relay), whose Ack for the device's relay stream is the reply to send.
    pub fn from_device(&self, name: &str, envelope: Envelope<'_>) -> FromDevice {
        match envelope {
            Envelope::Ack { stream, next } => {
                match self.on_ack(name, stream, next) {
                    Ok(n) if n > 0 => {
                        tracing::debug!(device = %name, next, "downlink acknowledged")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(device = %name, error = %e, "acknowledgement ignored"),
                }
                FromDevice::Done
            }
            Envelope::Relay {
                stream,
                seq,
                base,
                peer,
                initiator,
                frame,
            } => match self.relay(name, (stream, seq, base), peer, initiator, frame) {
                Some(next) => FromDevice::Reply(Envelope::Ack { stream, next }.encode()),
                None => FromDevice::Done,
            },
            _ => FromDevice::Unexpected,
        }
    }

    /// A Relay envelope from `from` (§11.8): forwarded to `peer`, or refused back to `from`.
    /// Returns the Ack `next` for the sender's relay stream, or `None` for an envelope ahead of
    /// a gap (dropped unacknowledged).
    pub fn relay(
        &self,
        from: &str,
        sequence: (StreamId, u64, u64),
        peer: &str,
        initiator: bool,
        frame: &[u8],
    ) -> Option<u64> {
        let (stream, seq, base) = sequence;
        let mut state = self.lock();
        let sender = state.devices.get_mut(from)?;
        match sender.relay_in.take(stream, seq, base) {
            Take::Ahead => return None,
            Take::Duplicate => return Some(sender.relay_in.ack(stream)),
            Take::New => {}
        }
        let next = sender.relay_in.ack(stream);
        if !valid_peer_name(peer) {
            // Only a caller of this API can name one: a decoded envelope's name is valid.
            tracing::debug!("relay to a name that cannot be a peer's: dropped");
            return Some(next);
        }
        if let Err(reason) = self.decide(&state, from, peer) {
            tracing::info!(from, peer, reason = reason.name(), "relay refused");
            if let Some(sender) = state.devices.get_mut(from) {
                let _ = push(sender, Kind::RelayRefused, refusal_body(peer, reason));
            }
            return Some(next);
        }
        if initiator && frame.first() == Some(&(crate::msgs::FrameType::DeviceHello as u8)) {
            // A new inner session: each side learns who the other is first (§11.7).
            for (to, about) in [(peer, from), (from, peer)] {
                let Some(about_device) = state.devices.get(about) else {
                    continue;
                };
                let Some(hash) = about_device.key_hash else {
                    continue;
                };
                let body = peer_info_body(&PeerInfo {
                    peer: about,
                    you: to,
                    fingerprint: hash,
                    entries: about_device.entries.iter().map(String::as_str).collect(),
                });
                if let Some(d) = state.devices.get_mut(to) {
                    let _ = push(d, Kind::PeerInfo, body);
                }
            }
        }
        let full = state
            .devices
            .get_mut(peer)
            .map(|d| push(d, Kind::Relay, relay_body(from, initiator, frame)).is_err());
        if full == Some(true) {
            tracing::warn!(
                from,
                peer,
                "the peer's buffer is full: relayed frame dropped"
            );
        }
        Some(next)
    }

    /// Whether `from` may reach `peer` now.
    fn decide(&self, state: &State, from: &str, peer: &str) -> Result<(), Refusal> {
        if self.policy == RelayPolicy::Off {
            return Err(Refusal::NoRelay);
        }
        let sender = state.devices.get(from).ok_or(Refusal::Forbidden)?;
        // A sender whose name no envelope can carry (e.g. a long name in the device list).
        if sender.key_hash.is_none() || !valid_peer_name(from) {
            return Err(Refusal::Forbidden);
        }
        let target = state.devices.get(peer).ok_or(Refusal::UnknownPeer)?;
        if target.key_hash.is_none() || peer == from {
            return Err(Refusal::Forbidden);
        }
        if self.policy == RelayPolicy::SameGroup
            && (sender.group.is_none() || sender.group != target.group)
        {
            return Err(Refusal::Forbidden);
        }
        if target.session.is_none() {
            return Err(Refusal::Offline);
        }
        Ok(())
    }
}

/// Appends an envelope to `device`'s stream and wakes its session.
fn push(device: &mut Device, kind: Kind, body: Vec<u8>) -> Result<u64, OutboxError> {
    let seq = device.outbox.push_kind(kind, body)?;
    if let Some(s) = &device.session {
        s.wake.notify_one();
    }
    Ok(seq)
}

#[cfg(test)]
mod tests;
