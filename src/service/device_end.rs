//! A device's receiving side and its end-to-end sessions, for every transport (protocol.md
//! §11.6–§11.8): it takes the server's stream strictly in order, prints downlink and peer
//! messages as JSON lines, acknowledges each after writing it, and carries the frames of its
//! [`Peers`] in Relay envelopes of a relay stream of its own.

use super::chat_log::{Entry, SharedLog};
use super::peer::{PeerError, PeerEvent, Peers};
use crate::crypto::random::{OsRandom, Random};
use crate::delivery::{Envelope, Inbox, Kind, Outbox, Take};
use base64::Engine as _;
use std::io::Write;
use std::time::Instant;

/// Relay envelopes held until the server acknowledges them.
pub const RELAY_BUFFER: usize = 4096;

/// One line a device prints: `data` if it is UTF-8, `data_base64` otherwise.
#[derive(serde::Serialize)]
struct Line<'a> {
    from: &'a str,
    fingerprint: &'a str,
    e2e: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_base64: Option<String>,
}

/// Renders a received message as the JSON line a device prints (without the newline).
pub fn json_line(from: &str, fingerprint: &str, e2e: bool, data: &[u8]) -> String {
    let text = std::str::from_utf8(data).ok();
    let line = Line {
        from,
        fingerprint,
        e2e,
        data: text,
        data_base64: text
            .is_none()
            .then(|| base64::engine::general_purpose::STANDARD.encode(data)),
    };
    serde_json::to_string(&line).unwrap_or_default()
}

/// Why the device end stops.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndError {
    /// The output could not be written.
    #[error("cannot write a received message to the output: {0}")]
    Output(#[from] std::io::Error),
    /// The server refused to relay to a peer the device sends to.
    #[error("the server does not relay to {peer}: {reason} ({code})")]
    Refused {
        /// The peer.
        peer: String,
        /// Why, in words.
        reason: String,
        /// Why, as a code.
        code: &'static str,
    },
    /// The end-to-end session with a peer failed for good.
    #[error("the end-to-end session with {peer} failed: {error}")]
    PeerFailed {
        /// The peer.
        peer: String,
        /// Why.
        error: String,
    },
    /// A message could not be queued for the peer.
    #[error(transparent)]
    Peer(#[from] PeerError),
}

/// See the module documentation.
pub struct DeviceEnd {
    inbox: Inbox,
    /// Acks for the server's stream not yet sent.
    acks: Vec<Vec<u8>>,
    relay: Outbox,
    /// `None` for an anonymous device, which takes no part in the relay.
    peers: Option<Peers>,
    /// The server's fingerprint, as the device verified it.
    server: String,
    /// The peer the device's input goes to (`--to`), whose failure ends the device.
    to: Option<String>,
    /// `secchan chat`: input lines are `@NAME message` or commands, output plain text.
    chat: bool,
    /// `secchan chat`'s terminal UI: the conversation goes there instead of `out`.
    log: Option<SharedLog>,
    out: Box<dyn Write + Send>,
    fatal: Option<EndError>,
    /// Messages peers acknowledged end to end.
    delivered: u64,
    /// Randomness for the end-to-end handshakes.
    rng: Box<dyn Random + Send>,
}

impl std::fmt::Debug for DeviceEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceEnd")
            .field("to", &self.to)
            .finish_non_exhaustive()
    }
}

impl DeviceEnd {
    /// A device end writing to `out`, with its conversations `peers` (none for an anonymous
    /// device), sending its input to `to` if given.
    pub fn new(peers: Option<Peers>, to: Option<String>, out: Box<dyn Write + Send>) -> Self {
        Self {
            inbox: Inbox::new(),
            acks: Vec::new(),
            relay: Outbox::new(super::random_stream(), RELAY_BUFFER),
            peers,
            server: String::new(),
            to,
            chat: false,
            log: None,
            out,
            fatal: None,
            delivered: 0,
            rng: Box::new(OsRandom),
        }
    }

    /// Draws the end-to-end handshakes' randomness from `rng` instead of the operating
    /// system's generator (deterministic runs: tests and fuzzing).
    pub fn with_random(mut self, rng: Box<dyn Random + Send>) -> Self {
        self.rng = rng;
        self
    }

    /// In chat line mode ([`super::chat`]).
    pub fn chat(mut self) -> Self {
        self.chat = true;
        self
    }

    /// In chat with a display ([`super::chat_log`]): what line mode prints goes to `log`.
    pub fn chat_log(mut self, log: SharedLog) -> Self {
        self.chat = true;
        self.log = Some(log);
        self.publish();
        self
    }

    /// Copies every session's counters to the log, if there is one.
    fn publish(&self) {
        if let Some(log) = &self.log {
            let mut log = log.lock();
            log.stats = self.stats();
            log.me = self
                .peers
                .as_ref()
                .map(Peers::fingerprint)
                .unwrap_or_default();
        }
    }

    /// Whether the input goes to peers (`--to`, or chat) rather than to the server.
    pub fn takes_input(&self) -> bool {
        self.to.is_some() || self.chat
    }

    /// One input line: to the `--to` peer, or a chat line.
    pub fn on_input(&mut self, line: Vec<u8>, now: Instant) -> Result<(), EndError> {
        if !self.chat {
            return self.send_to_peer(line, now);
        }
        match super::chat::parse(&line) {
            super::chat::Typed::Send(peer, data) => {
                let peers = self.peers.as_mut().ok_or(PeerError::Anonymous)?;
                match peers.send(peer, data.to_vec(), self.rng.as_mut(), now) {
                    Err(e) => self.say(&format!("* not sent: {e}"))?,
                    Ok(()) => {
                        if let Some(log) = &self.log {
                            log.lock().push(Entry::To {
                                peer: peer.to_string(),
                                text: String::from_utf8_lossy(data).into_owned(),
                            });
                        }
                    }
                }
                self.pump();
                self.publish();
            }
            super::chat::Typed::Crypto => {
                let me = self
                    .peers
                    .as_ref()
                    .map(Peers::fingerprint)
                    .unwrap_or_default();
                let lines: Vec<String> = self
                    .stats()
                    .iter()
                    .map(|s| super::chat::crypto_line(&me, s))
                    .collect();
                if lines.is_empty() {
                    self.say("* no end-to-end session yet")?;
                }
                for l in lines {
                    self.say(&l)?;
                }
            }
            super::chat::Typed::Help => self.say(super::chat::HELP)?,
        }
        Ok(())
    }

    fn say(&mut self, line: &str) -> Result<(), EndError> {
        if let Some(log) = &self.log {
            log.lock().push(Entry::System(line.to_string()));
            return Ok(());
        }
        writeln!(self.out, "{line}")?;
        Ok(self.out.flush()?)
    }

    /// Prints a received message: a JSON line, or in chat a text line.
    fn print(
        &mut self,
        from: &str,
        fingerprint: &str,
        e2e: bool,
        data: &[u8],
    ) -> Result<(), EndError> {
        if let Some(log) = &self.log {
            log.lock().push(Entry::From {
                peer: from.to_string(),
                fingerprint: fingerprint.to_string(),
                e2e,
                text: String::from_utf8_lossy(data).into_owned(),
            });
            return Ok(());
        }
        let line = if self.chat {
            super::chat::message_line(from, fingerprint, e2e, data)
        } else {
            json_line(from, fingerprint, e2e, data)
        };
        self.say(&line)
    }

    /// A new session with the server whose key has `fingerprint`: what the server did not
    /// acknowledge is sent again.
    pub fn on_session(&mut self, fingerprint: String) {
        if let Some(log) = &self.log {
            log.lock().push(Entry::System(format!(
                "* connected to the server ({fingerprint})"
            )));
        }
        self.server = fingerprint;
        self.resend_all();
    }

    /// What the server did not acknowledge is sent again (the transport may have lost it).
    pub fn resend_all(&mut self) {
        self.relay.resend_all();
    }

    /// Sends one input line to the `--to` peer.
    pub fn send_to_peer(&mut self, data: Vec<u8>, now: Instant) -> Result<(), EndError> {
        let to = self.to.clone().unwrap_or_default();
        let peers = self.peers.as_mut().ok_or(PeerError::Anonymous)?;
        peers.send(&to, data, self.rng.as_mut(), now)?;
        self.pump();
        Ok(())
    }

    /// Whether the input may be read: the relay and the peer have room.
    pub fn has_room(&self) -> bool {
        !self.relay.is_full() && self.undelivered() < super::peer::PEER_BUFFER
    }

    fn undelivered(&self) -> usize {
        self.peers.as_ref().map_or(0, Peers::undelivered)
    }

    /// Whether something sent to a peer is not yet acknowledged by it.
    pub fn busy(&self) -> bool {
        self.undelivered() > 0
    }

    /// Handles an envelope from the server other than an Ack of the device's own telemetry
    /// stream. Returns the envelope back if it is not for this end (an Ack of another stream).
    pub fn on_envelope<'a>(
        &mut self,
        envelope: Envelope<'a>,
        now: Instant,
    ) -> Result<Option<Envelope<'a>>, EndError> {
        let Some((stream, seq, base)) = envelope.sequence() else {
            if let Envelope::Ack { stream, next } = envelope {
                if stream == self.relay.stream() {
                    if let Err(e) = self.relay.ack(stream, next) {
                        tracing::warn!(error = %e, "relay acknowledgement ignored");
                    }
                    return Ok(None);
                }
            }
            return Ok(Some(envelope));
        };
        match self.inbox.take(stream, seq, base) {
            Take::Ahead => return Ok(None),
            Take::Duplicate => {}
            Take::New => self.handle(envelope, now)?,
        }
        let next = self.inbox.ack(stream);
        self.acks.push(Envelope::Ack { stream, next }.encode());
        Ok(None)
    }

    fn handle(&mut self, envelope: Envelope<'_>, now: Instant) -> Result<(), EndError> {
        if let Envelope::Message { data, .. } = envelope {
            let server = self.server.clone();
            return self.print("server", &server, false, data);
        }
        let Some(peers) = self.peers.as_mut() else {
            tracing::warn!("the server relays to an anonymous device: dropped");
            return Ok(());
        };
        match envelope {
            Envelope::Relay {
                peer,
                initiator,
                frame,
                ..
            } => {
                let mut frame = frame.to_vec();
                peers.on_relay(peer, initiator, &mut frame, self.rng.as_mut(), now);
            }
            Envelope::PeerInfo { info, .. } => peers.on_peer_info(&info),
            Envelope::RelayRefused { peer, reason, .. } => peers.on_refused(peer, reason),
            Envelope::Ack { .. } | Envelope::Message { .. } => {}
        }
        self.pump();
        self.events()
    }

    /// Moves the conversations' frames into the relay stream.
    fn pump(&mut self) {
        let Some(peers) = self.peers.as_mut() else {
            return;
        };
        while let Some((peer, initiator, frame)) = peers.poll_frame() {
            let body = crate::delivery::relay_body(&peer, initiator, &frame);
            if self.relay.push_kind(Kind::Relay, body).is_err() {
                tracing::warn!(peer, "the relay buffer is full: frame dropped");
            }
        }
    }

    /// Prints peer messages; fails with what ends the device (the `--to` peer refused or given
    /// up on).
    fn events(&mut self) -> Result<(), EndError> {
        self.publish();
        while let Some(event) = self.peers.as_mut().and_then(Peers::poll_event) {
            match event {
                PeerEvent::Message {
                    peer,
                    fingerprint,
                    data,
                } => self.print(&peer, &fingerprint, true, &data)?,
                PeerEvent::Established {
                    peer,
                    fingerprint,
                    vouched,
                } => {
                    tracing::info!(peer, fingerprint, %vouched, "end-to-end session established");
                    if self.chat {
                        self.say(&format!(
                            "* end-to-end session with {peer} ({fingerprint}, {vouched})"
                        ))?;
                    }
                }
                PeerEvent::Delivered { peer, count } => {
                    self.delivered += count as u64;
                    tracing::debug!(peer, count, "acknowledged end to end")
                }
                PeerEvent::Failed {
                    peer,
                    error,
                    final_,
                } => {
                    if self.chat {
                        self.say(&format!("* session with {peer} failed: {error}"))?;
                    } else if final_ && self.to.as_deref() == Some(&peer) {
                        self.fatal = Some(EndError::PeerFailed { peer, error });
                    }
                }
                PeerEvent::Refused { peer, reason } => {
                    tracing::warn!(
                        peer,
                        reason = reason.name(),
                        "the server does not relay to the peer"
                    );
                    if self.chat {
                        self.say(&format!(
                            "* the server does not relay to {peer}: {reason} ({})",
                            reason.name()
                        ))?;
                    } else if self.to.as_deref() == Some(&peer) {
                        self.fatal = Some(EndError::Refused {
                            peer,
                            reason: reason.to_string(),
                            code: reason.name(),
                        });
                    }
                }
            }
        }
        self.fatal.take().map_or(Ok(()), Err)
    }

    /// Handshake timeouts and restarts of the conversations.
    pub fn tick(&mut self, now: Instant) -> Result<(), EndError> {
        if let Some(peers) = self.peers.as_mut() {
            peers.tick(self.rng.as_mut(), now);
        }
        self.pump();
        self.events()
    }

    /// What to send the server now: acknowledgements, then relay envelopes.
    pub fn due(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let mut out = std::mem::take(&mut self.acks);
        out.extend(self.relay.due(now).unwrap_or_default());
        out
    }

    /// Messages peers acknowledged end to end.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// The counters of every end-to-end session, for display.
    pub fn stats(&self) -> Vec<super::peer::PeerStats> {
        self.peers.as_ref().map(Peers::stats).unwrap_or_default()
    }

    /// When the oldest unacknowledged relay envelope was sent.
    pub fn oldest_sent(&self) -> Option<Instant> {
        self.relay.oldest_sent()
    }
}
