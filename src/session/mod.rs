//! An established session, sans IO (protocol.md §7–§8).
//!
//! Methods follow quinn's grouping: getters; `handle_*` for input (a frame and the current
//! time); `send`/`close` queue output; `poll_transmit` hands queued frames to the transport.
//! No socket and no clock is touched here.

use crate::crypto::aead::AeadId;
use crate::crypto::identity::PublicIdentity;
use crate::crypto::kdf::Secret;
use crate::crypto::kem::Suite;
use crate::handshake::resume::Ticket;
use crate::handshake::ticket::Resumption;
use crate::msgs::{AlertCode, FrameType, NewTicket};
use crate::record::replay::DEFAULT_WINDOW;
use crate::record::{KeyUpdatePolicy, Opener, RecordError, Rejected, Sealer};
use std::collections::VecDeque;
use std::time::{Instant, SystemTime};

/// Session parameters that do not affect the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Replay window size in records (protocol.md §7.3).
    pub replay_window: usize,
    /// Whether the transport delivers frames in order (TCP). If so, any gap or repeat is fatal.
    pub ordered: bool,
    /// When this side rotates its sending key.
    pub key_update: KeyUpdatePolicy,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            replay_window: DEFAULT_WINDOW,
            ordered: true,
            key_update: KeyUpdatePolicy::default(),
        }
    }
}

/// Which end of the session this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// The connecting side.
    Device,
    /// The accepting side.
    Server,
}

/// Failures of an established session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// A record failed a check (protocol.md §7.3).
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The peer closed the session because of an error.
    #[error("peer closed the session: {0}")]
    PeerAlert(AlertCode),
    /// A handshake message or unknown frame arrived after the handshake.
    #[error("unexpected {0:?} frame in an established session")]
    UnexpectedFrame(FrameType),
    /// The session has ended: a call after our close, after the peer's close, or after this
    /// side closed it with an error code (an idle timeout, a socket error).
    #[error("the session is closed")]
    Closed,
    /// [`Session::issue_ticket`] on a device, or a second time: a server issues one ticket
    /// per session.
    #[error("this session cannot issue a ticket: only a server issues one, once per session")]
    NoTicket,
}

impl SessionError {
    /// The alert to send the peer before closing because of this error.
    pub fn alert(&self) -> AlertCode {
        match self {
            Self::Record(RecordError::HardLimit | RecordError::IntegrityLimit) => {
                AlertCode::LimitReached
            }
            Self::Record(RecordError::Decode(_)) => AlertCode::DecodeError,
            Self::Record(_) => AlertCode::BadRecord,
            Self::UnexpectedFrame(_) => AlertCode::UnexpectedMessage,
            Self::PeerAlert(_) | Self::Closed => AlertCode::CloseNotify,
            Self::NoTicket => AlertCode::InternalError,
        }
    }
}

/// What an incoming frame produced.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event<'a> {
    /// An application message, borrowed from the frame buffer.
    Message(&'a [u8]),
    /// The peer rotated its sending key.
    KeyUpdated,
    /// The server sent a resumption ticket (devices only): take it with
    /// [`Session::take_ticket`].
    Ticket,
    /// The peer closed the session normally; no more data follows.
    Closed,
}

/// Everything the two traffic directions need, as the handshake hands it over.
pub(crate) struct SessionKeys {
    pub suite: &'static Suite,
    pub aead: AeadId,
    pub send: Secret,
    pub recv: Secret,
    /// The resumption PSK (protocol.md §5.4): what a ticket issued in this session carries.
    pub psk: Secret,
    /// Whether the session came from a resumption.
    pub resumed: bool,
    /// On a device, its own identity (recorded in tickets so they are used only with it).
    pub local: Option<PublicIdentity>,
}

/// A ticket the server sent, until the transport takes it with the time it arrived.
struct PendingTicket {
    ticket: Vec<u8>,
    lifetime: u32,
}

/// Where the session is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Open,
    /// We sent Close; the peer may still send data until its Close.
    CloseSent,
    /// The peer sent Close with `close_notify`.
    CloseReceived,
    /// Both directions are closed and the peer's close was `close_notify`: everything it sent
    /// was delivered.
    Closed,
    /// The session ended with this error (ours, or the peer's error close). Every later call
    /// reports it again, so a caller that goes on after an error never mistakes the end for
    /// an orderly close.
    Failed(SessionError),
}

/// An established secchan session.
pub struct Session {
    role: Role,
    suite: &'static Suite,
    aead: AeadId,
    peer: Option<PublicIdentity>,
    local: Option<PublicIdentity>,
    sealer: Sealer,
    opener: Opener,
    state: State,
    transmit: VecDeque<Vec<u8>>,
    /// Erased on drop. On a server, taken when the session's ticket is issued.
    psk: Option<Secret>,
    resumed: bool,
    pending_ticket: Option<PendingTicket>,
    /// Records refused for their freshness or authenticity.
    rejected: Rejected,
    /// When either direction's current key was installed.
    keys_since: Instant,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("role", &self.role)
            .field("suite", &self.suite.name)
            .field("aead", &self.aead)
            .field("peer", &self.peer)
            .field("resumed", &self.resumed)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub(crate) fn new(
        role: Role,
        keys: SessionKeys,
        peer: Option<PublicIdentity>,
        config: &SessionConfig,
        now: Instant,
    ) -> Self {
        Self {
            role,
            suite: keys.suite,
            aead: keys.aead,
            peer,
            local: keys.local,
            sealer: Sealer::new(keys.aead, keys.send, config.key_update, config.ordered, now),
            opener: Opener::new(keys.aead, keys.recv, config.replay_window, config.ordered),
            state: State::Open,
            transmit: VecDeque::new(),
            psk: Some(keys.psk),
            resumed: keys.resumed,
            pending_ticket: None,
            rejected: Rejected::default(),
            keys_since: now,
        }
    }

    // ----- getters -----

    /// This end's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The negotiated key-exchange suite.
    pub fn suite(&self) -> &'static Suite {
        self.suite
    }

    /// The negotiated AEAD.
    pub fn aead(&self) -> AeadId {
        self.aead
    }

    /// The peer's authenticated identity: the server's for a device, the device's (if it
    /// presented one) for a server.
    pub fn peer_identity(&self) -> Option<&PublicIdentity> {
        self.peer.as_ref()
    }

    /// Whether the session was established by a resumption (protocol.md §6.3) rather than a
    /// full handshake.
    pub fn is_resumed(&self) -> bool {
        self.resumed
    }

    /// Whether data may still be sent.
    pub fn can_send(&self) -> bool {
        matches!(self.state, State::Open | State::CloseReceived)
    }

    /// Whether the session has ended in both directions, cleanly or with an error.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed | State::Failed(_))
    }

    /// How the session ended, once it has: `Ok(())` only if the peer's `close_notify` was
    /// received (everything it sent was delivered), else the error that ended it.
    pub fn end(&self) -> Option<Result<(), SessionError>> {
        match &self.state {
            State::Closed => Some(Ok(())),
            State::Failed(e) => Some(Err(e.clone())),
            State::Open | State::CloseSent | State::CloseReceived => None,
        }
    }

    /// The error for a call the session's state no longer allows.
    fn closed_error(&self) -> SessionError {
        match &self.state {
            State::Failed(e) => e.clone(),
            _ => SessionError::Closed,
        }
    }

    /// The counter the next outgoing record will carry.
    pub fn next_send_counter(&self) -> u64 {
        self.sealer.next_counter()
    }

    /// The records refused so far because they were replayed, too old for the replay window,
    /// out of order, forged, or of an unknown key epoch. On an ordered transport the first
    /// one ends the session; on an unordered one each is dropped and the session goes on.
    pub fn rejected(&self) -> Rejected {
        self.rejected
    }

    /// Key updates so far, both directions: this side's, and the peer's it followed.
    pub fn key_updates(&self) -> u64 {
        self.sealer.generation() + self.opener.generation()
    }

    /// When the newer of the two directions' current keys was installed: at the session's
    /// start, or at the last key update either side made.
    pub fn keys_installed(&self) -> Instant {
        self.keys_since
    }

    // ----- output -----

    /// Seals `data` as one record and queues it, preceded by a KeyUpdate record if the policy
    /// or the AEAD soft limit asks for one.
    pub fn send(&mut self, data: &[u8], now: Instant) -> Result<(), SessionError> {
        if !self.can_send() {
            return Err(self.closed_error());
        }
        if self.sealer.wants_key_update(now) {
            self.update_keys(now)?;
        }
        let mut out = Vec::new();
        self.sealer.seal(FrameType::Data, data, &mut out)?;
        self.transmit.push_back(out);
        Ok(())
    }

    /// Rotates the sending key now: queues a KeyUpdate record under the old key, then switches.
    /// Like `send`, refused once this side has sent its Close (protocol.md §7.3).
    pub fn update_keys(&mut self, now: Instant) -> Result<(), SessionError> {
        if !self.can_send() {
            return Err(self.closed_error());
        }
        let mut out = Vec::new();
        self.sealer.seal(FrameType::KeyUpdate, &[], &mut out)?;
        self.sealer.update_key(now);
        self.keys_since = now;
        self.transmit.push_back(out);
        tracing::debug!(role = ?self.role, "sending key updated");
        Ok(())
    }

    /// Queues an authenticated Close record with `code` and stops sending. Any code but
    /// `close_notify` ends the session at once, as failed ([`SessionError::Closed`]).
    pub fn close(&mut self, code: AlertCode) {
        if !self.can_send() {
            return;
        }
        let mut out = Vec::new();
        if self
            .sealer
            .seal(FrameType::Close, &[code as u8], &mut out)
            .is_ok()
        {
            self.transmit.push_back(out);
        }
        self.state = if code != AlertCode::CloseNotify {
            State::Failed(SessionError::Closed)
        } else if self.state == State::CloseReceived {
            State::Closed
        } else {
            State::CloseSent
        };
    }

    /// Server: seals a resumption ticket for this session's device (protocol.md §7.6) and
    /// queues it in a NewTicket record. `wall_now` sets its expiry and picks the ticket key.
    /// Once per session; a device gets [`SessionError::NoTicket`].
    pub fn issue_ticket(
        &mut self,
        resumption: &Resumption,
        wall_now: SystemTime,
    ) -> Result<(), SessionError> {
        if !self.can_send() {
            return Err(self.closed_error());
        }
        if self.role != Role::Server {
            return Err(SessionError::NoTicket);
        }
        let psk = self.psk.take().ok_or(SessionError::NoTicket)?;
        let ticket = resumption
            .seal(&psk, self.peer, self.suite, self.aead, wall_now)
            .map_err(|_| SessionError::NoTicket)?;
        let plaintext = zeroize::Zeroizing::new(
            NewTicket {
                lifetime: resumption.lifetime_secs(),
                ticket: &ticket,
            }
            .encode(),
        );
        let mut out = Vec::new();
        self.sealer
            .seal(FrameType::NewTicket, &plaintext, &mut out)?;
        self.transmit.push_back(out);
        Ok(())
    }

    /// Device: the ticket the server sent last (after [`Event::Ticket`]), expiring its
    /// lifetime after `received_at` (at most 7 days, protocol.md §7.6). `None` if none
    /// arrived since the last call, or if its lifetime was 0.
    pub fn take_ticket(&mut self, received_at: SystemTime) -> Option<Ticket> {
        let pending = self.pending_ticket.take()?;
        let lifetime = pending
            .lifetime
            .min(crate::handshake::ticket::MAX_LIFETIME_SECS);
        if lifetime == 0 {
            return None;
        }
        Some(Ticket {
            ticket: pending.ticket,
            psk: self.psk.clone()?,
            server: *self.peer.as_ref()?,
            device: self.local,
            suite: self.suite,
            aead: self.aead,
            expires: received_at + std::time::Duration::from_secs(u64::from(lifetime)),
        })
    }

    /// The next frame to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    // ----- input -----

    /// Processes one incoming frame. On a fatal error the session is closed and a Close record
    /// with the matching alert is queued; on an unordered transport a record that is
    /// replayed, too old or forged is reported but leaves the session open (the caller drops
    /// it and goes on). Once the peer's direction has ended, every frame is refused with the
    /// error that ended the session, or [`SessionError::Closed`] after an orderly close.
    pub fn handle_frame<'a>(
        &mut self,
        frame: &'a mut [u8],
        now: Instant,
    ) -> Result<Event<'a>, SessionError> {
        if matches!(
            self.state,
            State::CloseReceived | State::Closed | State::Failed(_)
        ) {
            return Err(self.closed_error());
        }
        let generation = self.opener.generation();
        let opened = self.open_frame(frame);
        if self.opener.generation() != generation {
            self.keys_since = now;
        }
        match opened {
            Ok(ev) => Ok(ev),
            Err(e) => {
                if let SessionError::Record(r) = &e {
                    self.rejected.count(r);
                }
                if self.is_fatal(&e) {
                    self.close(e.alert());
                    self.state = State::Failed(e.clone());
                }
                Err(e)
            }
        }
    }

    fn is_fatal(&self, e: &SessionError) -> bool {
        match e {
            SessionError::Record(
                RecordError::Replay(_)
                | RecordError::BadTag(_)
                | RecordError::UnknownGeneration { .. },
            ) => self.opener.is_ordered(),
            _ => true,
        }
    }

    fn open_frame<'a>(&mut self, frame: &'a mut [u8]) -> Result<Event<'a>, SessionError> {
        let ty = crate::msgs::FrameType::of(frame).map_err(RecordError::from)?;
        if !ty.is_record() {
            return Err(SessionError::UnexpectedFrame(ty));
        }
        let opened = self.opener.open(frame)?;
        let plaintext = frame
            .get(opened.plaintext)
            .ok_or(RecordError::PayloadTooLarge(0))?;
        match opened.ty {
            FrameType::Data => Ok(Event::Message(plaintext)),
            FrameType::KeyUpdate => {
                if !plaintext.is_empty() {
                    return Err(SessionError::Record(RecordError::Decode(
                        crate::codec::DecodeError::TrailingBytes(plaintext.len()),
                    )));
                }
                Ok(Event::KeyUpdated)
            }
            FrameType::NewTicket => {
                if self.role != Role::Device {
                    return Err(SessionError::UnexpectedFrame(FrameType::NewTicket));
                }
                let t = NewTicket::decode(plaintext).map_err(RecordError::from)?;
                self.pending_ticket = Some(PendingTicket {
                    ticket: t.ticket.to_vec(),
                    lifetime: t.lifetime,
                });
                Ok(Event::Ticket)
            }
            _ => {
                let code = match plaintext {
                    [c] => AlertCode::from_u8(*c).unwrap_or(AlertCode::InternalError),
                    [] => {
                        return Err(SessionError::Record(RecordError::Decode(
                            crate::codec::DecodeError::Truncated {
                                field: "close code",
                                needed: 1,
                            },
                        )))
                    }
                    [_, rest @ ..] => {
                        return Err(SessionError::Record(RecordError::Decode(
                            crate::codec::DecodeError::TrailingBytes(rest.len()),
                        )))
                    }
                };
                if code != AlertCode::CloseNotify {
                    // An error close is not answered: the session ends with the peer's error.
                    self.state = State::Failed(SessionError::PeerAlert(code));
                    return Err(SessionError::PeerAlert(code));
                }
                self.state = match self.state {
                    State::CloseSent => State::Closed,
                    _ => State::CloseReceived,
                };
                Ok(Event::Closed)
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
