//! One conversation: the inner handshake, the inner session, and the peers' messages inside
//! it, numbered and acknowledged end to end.

use super::trust::{PeerTrust, Vouched};
use super::{context, PeerError, PeerEvent, MAX_RESTARTS, PEER_BUFFER, PEER_HANDSHAKE_TIMEOUT};
use crate::crypto::identity::{IdentityKey, PublicIdentity};
use crate::crypto::random::Random;
use crate::delivery::{Envelope, Inbox, Outbox, OutboxError, PeerInfo, Take};
use crate::handshake::device::{self, DeviceConfig, ExpectServerHello};
use crate::handshake::server::{accept_hello_bound, ExpectDeviceFinish, ServerConfig};
use crate::handshake::{Authorizer, HandshakeError, Mode};
use crate::msgs::{encode_alert, AlertCode, FrameType};
use crate::session::{Event, Session};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a conversation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// The inner handshake is under way (or awaited, on the responder).
    Handshaking,
    /// The inner session is up.
    Open,
    /// The inner session failed; the initiator starts a new one while it has messages.
    Failed,
    /// Closed normally.
    Closed,
}

impl Phase {
    /// In words: `handshaking`, `open`, `failed`, `closed`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Handshaking => "handshaking",
            Self::Open => "open",
            Self::Failed => "failed",
            Self::Closed => "closed",
        }
    }
}

/// A conversation's counters, for display (`secchan chat`'s cryptography pane).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    /// The peer's name.
    pub peer: String,
    /// Whether this device started the session.
    pub initiator: bool,
    /// Where it is.
    pub phase: Phase,
    /// The peer's fingerprint, once its key is proven.
    pub fingerprint: Option<String>,
    /// What vouched for the key.
    pub vouched: Option<Vouched>,
    /// Key-exchange suite of the inner session.
    pub suite: Option<&'static str>,
    /// AEAD of the inner session.
    pub aead: Option<&'static str>,
    /// Inner records sent (handshake frames not included).
    pub records_sent: u64,
    /// Inner records received and authenticated.
    pub records_received: u64,
    /// Key updates the peer made (KeyUpdate records received).
    pub key_updates_received: u64,
    /// Records refused by the inner record layer (tampered, replayed, reordered).
    pub rejected: u64,
    /// The last failure.
    pub last_error: Option<String>,
    /// Bytes of the last inner handshake, both ways.
    pub handshake_bytes: u64,
    /// Time of the last inner handshake, from the first frame to the session.
    pub handshake_time: Option<Duration>,
    /// Inner sessions started.
    pub sessions: u64,
    /// Messages to the peer not yet acknowledged by it.
    pub undelivered: usize,
}

enum State {
    /// The responder before the peer's hello.
    Idle,
    AwaitServerHello(Box<ExpectServerHello>, Instant),
    AwaitFinish(Box<ExpectDeviceFinish>, Instant),
    Open(Box<Session>),
    Failed {
        restart_at: Option<Instant>,
    },
    Closed,
}

/// What a frame's handling needs from [`Peers`](super::Peers).
pub(super) struct Ctx<'a> {
    pub identity: &'a Arc<IdentityKey>,
    pub config: &'a DeviceConfig,
    pub trust: &'a PeerTrust,
    pub info: Option<&'a PeerInfo<'a>>,
    pub out: &'a mut VecDeque<(String, bool, Vec<u8>)>,
    pub events: &'a mut VecDeque<PeerEvent>,
}

/// The inner responder accepts any authenticated key; the conversation then checks it
/// against the peer's name ([`PeerTrust`]).
struct AnyIdentified;

impl Authorizer for AnyIdentified {
    fn authorize(&self, device: Option<&PublicIdentity>) -> Result<String, AlertCode> {
        device
            .map(PublicIdentity::fingerprint)
            .ok_or(AlertCode::DeviceAuthRequired)
    }
}

pub(super) struct Conversation {
    peer: String,
    initiator: bool,
    state: State,
    outbox: Outbox,
    inbox: Inbox,
    stats: PeerStats,
    restarts: u32,
    gave_up: bool,
}

impl Conversation {
    pub(super) fn new(peer: &str, initiator: bool) -> Result<Self, PeerError> {
        let stream = crate::service::random_stream();
        Ok(Self {
            peer: peer.into(),
            initiator,
            state: State::Idle,
            outbox: Outbox::new(stream, PEER_BUFFER),
            inbox: Inbox::new(),
            stats: PeerStats {
                peer: peer.into(),
                initiator,
                phase: Phase::Handshaking,
                fingerprint: None,
                vouched: None,
                suite: None,
                aead: None,
                records_sent: 0,
                records_received: 0,
                key_updates_received: 0,
                rejected: 0,
                last_error: None,
                handshake_bytes: 0,
                handshake_time: None,
                sessions: 0,
                undelivered: 0,
            },
            restarts: 0,
            gave_up: false,
        })
    }

    pub(super) fn is_open(&self) -> bool {
        matches!(self.state, State::Open(_))
    }

    pub(super) fn gave_up(&self) -> bool {
        self.gave_up
    }

    pub(super) fn give_up(&mut self) {
        self.gave_up = true;
        self.state = State::Failed { restart_at: None };
    }

    pub(super) fn undelivered(&self) -> usize {
        self.outbox.len()
    }

    pub(super) fn stats(&self) -> PeerStats {
        let mut s = self.stats.clone();
        s.phase = match self.state {
            State::Idle | State::AwaitServerHello(..) | State::AwaitFinish(..) => {
                Phase::Handshaking
            }
            State::Open(_) => Phase::Open,
            State::Failed { .. } => Phase::Failed,
            State::Closed => Phase::Closed,
        };
        s.undelivered = self.outbox.len();
        s
    }

    /// Initiator: sends a DeviceHello.
    pub(super) fn start(
        &mut self,
        config: &DeviceConfig,
        rng: &mut dyn Random,
        now: Instant,
        out: &mut VecDeque<(String, bool, Vec<u8>)>,
    ) -> Result<(), PeerError> {
        let (expect, hello) =
            device::start(config, rng).map_err(|_| PeerError::GaveUp(self.peer.clone()))?;
        self.stats.sessions += 1;
        self.stats.handshake_bytes = hello.len() as u64;
        out.push_back((self.peer.clone(), true, hello));
        self.state = State::AwaitServerHello(Box::new(expect), now);
        Ok(())
    }

    /// Queues a message; sends it at once if the session is up.
    pub(super) fn push(
        &mut self,
        data: Vec<u8>,
        now: Instant,
        out: &mut VecDeque<(String, bool, Vec<u8>)>,
    ) -> Result<(), PeerError> {
        match self.outbox.push(data) {
            Ok(_) => {}
            Err(OutboxError::Full(_)) => {
                return Err(PeerError::Full(self.outbox.len(), self.peer.clone()))
            }
            Err(_) => return Err(PeerError::GaveUp(self.peer.clone())),
        }
        self.pump(now, out);
        Ok(())
    }

    /// Sends what the outbox has due, if the session is up.
    fn pump(&mut self, now: Instant, out: &mut VecDeque<(String, bool, Vec<u8>)>) {
        let State::Open(session) = &mut self.state else {
            return;
        };
        let Ok(due) = self.outbox.due(now) else {
            return;
        };
        for envelope in due {
            if session.send(&envelope, now).is_err() {
                break;
            }
        }
        Self::transmit(&self.peer, self.initiator, session, &mut self.stats, out);
    }

    fn transmit(
        peer: &str,
        initiator: bool,
        session: &mut Session,
        stats: &mut PeerStats,
        out: &mut VecDeque<(String, bool, Vec<u8>)>,
    ) {
        while let Some(frame) = session.poll_transmit() {
            stats.records_sent += 1;
            out.push_back((peer.to_string(), initiator, frame));
        }
    }

    fn fail(&mut self, error: String, now: Instant, events: &mut VecDeque<PeerEvent>) {
        tracing::warn!(peer = %self.peer, %error, "end-to-end session failed");
        self.stats.last_error = Some(error.clone());
        let restart = self.initiator && !self.gave_up && self.restarts < MAX_RESTARTS;
        if self.initiator && !restart {
            self.gave_up = true;
        }
        self.state = State::Failed {
            restart_at: restart.then(|| now + Duration::from_secs(1)),
        };
        events.push_back(PeerEvent::Failed {
            peer: self.peer.clone(),
            error,
            final_: self.gave_up,
        });
    }

    /// Handshake timeouts and restarts.
    pub(super) fn tick(
        &mut self,
        config: &DeviceConfig,
        rng: &mut dyn Random,
        now: Instant,
        out: &mut VecDeque<(String, bool, Vec<u8>)>,
        events: &mut VecDeque<PeerEvent>,
    ) {
        match self.state {
            State::AwaitServerHello(_, started) | State::AwaitFinish(_, started)
                if now.saturating_duration_since(started) >= PEER_HANDSHAKE_TIMEOUT =>
            {
                self.fail(
                    "the peer did not complete the handshake in time".into(),
                    now,
                    events,
                )
            }
            State::Failed {
                restart_at: Some(at),
            } if now >= at => {
                self.restarts += 1;
                self.outbox.resend_all();
                if self.start(config, rng, now, out).is_err() {
                    self.give_up();
                }
            }
            _ => {}
        }
    }

    pub(super) fn close(&mut self, out: &mut VecDeque<(String, bool, Vec<u8>)>) {
        if let State::Open(session) = &mut self.state {
            session.close(AlertCode::CloseNotify);
            Self::transmit(&self.peer, self.initiator, session, &mut self.stats, out);
        }
    }

    /// One frame the relay delivered.
    pub(super) fn on_frame(
        &mut self,
        frame: &mut [u8],
        mut ctx: Ctx<'_>,
        rng: &mut dyn Random,
        now: Instant,
    ) {
        let Ok(ty) = FrameType::of(frame) else {
            return self.fail(
                "the relay delivered a malformed frame".into(),
                now,
                ctx.events,
            );
        };
        let result = match (ty, &self.state) {
            (FrameType::DeviceHello, _) if !self.initiator => {
                self.on_hello(frame, &mut ctx, rng, now)
            }
            (FrameType::ServerHello | FrameType::Alert, State::AwaitServerHello(..)) => {
                self.on_server_hello(frame, &mut ctx, now)
            }
            (FrameType::DeviceFinish | FrameType::Alert, State::AwaitFinish(..)) => {
                self.on_finish(frame, &mut ctx, now)
            }
            (_, State::Open(_)) if ty.is_record() => {
                self.on_record(frame, ctx.events, ctx.out, now);
                Ok(())
            }
            (_, State::Idle | State::Failed { .. } | State::Closed)
                if ty.is_record() && !self.initiator =>
            {
                // protocol.md §11.7: a record for a session this responder does not hold
                // (it restarted, or ended the session) is answered with an alert, so that
                // the initiator starts a new session instead of waiting for Acks.
                let alert = encode_alert(AlertCode::UnexpectedMessage);
                ctx.out.push_back((self.peer.clone(), false, alert));
                return;
            }
            (FrameType::Alert, State::Open(_)) if self.initiator => {
                Err("the peer holds no session with us (it restarted or ended it)".into())
            }
            (_, State::Failed { .. } | State::Closed) => Ok(()),
            _ => Err(format!("unexpected {ty:?} frame from the peer")),
        };
        if let Err(e) = result {
            self.fail(e, now, ctx.events);
        }
        if let State::Open(session) = &mut self.state {
            Self::transmit(
                &self.peer,
                self.initiator,
                session,
                &mut self.stats,
                ctx.out,
            );
            if session.is_closed() {
                self.state = State::Closed;
            }
        }
        self.pump(now, ctx.out);
    }

    fn on_hello(
        &mut self,
        frame: &[u8],
        ctx: &mut Ctx<'_>,
        rng: &mut dyn Random,
        now: Instant,
    ) -> Result<(), String> {
        let info = ctx
            .info
            .ok_or("the server did not say who the peer is before its hello")?;
        let config = ServerConfig {
            identity: ctx.identity.clone(),
            mode: if ctx.config.suite.is_hybrid() {
                Mode::Hybrid
            } else {
                Mode::Any
            },
            aeads: ctx.config.aeads.clone(),
            authorizer: Arc::new(AnyIdentified),
            session: ctx.config.session,
            resumption: None,
        };
        let bound = context(&self.peer, info.you);
        match accept_hello_bound(&config, &bound, frame, rng) {
            Ok((expect, reply)) => {
                self.stats.sessions += 1;
                self.stats.handshake_bytes = (frame.len() + reply.len()) as u64;
                self.stats.suite = Some(expect.suite().name);
                ctx.out.push_back((self.peer.clone(), false, reply));
                self.state = State::AwaitFinish(Box::new(expect), now);
                self.outbox.resend_all();
                Ok(())
            }
            Err(e) => {
                if let Some(code) = e.alert() {
                    ctx.out
                        .push_back((self.peer.clone(), false, encode_alert(code)));
                }
                Err(e.to_string())
            }
        }
    }

    fn on_server_hello(
        &mut self,
        frame: &[u8],
        ctx: &mut Ctx<'_>,
        now: Instant,
    ) -> Result<(), String> {
        let State::AwaitServerHello(expect, started) = &self.state else {
            return Ok(());
        };
        let started = *started;
        let info = ctx
            .info
            .ok_or("the server did not say who the peer is before its answer")?;
        let bound = context(info.you, &self.peer);
        let auth = expect
            .read_server_hello_bound(&bound, frame)
            .map_err(|e| e.to_string())?;
        let key = *auth.server_identity();
        let vouched = match ctx.trust.check(&self.peer, &key, Some(info)) {
            Ok(v) => v,
            Err(e) => {
                let alert = encode_alert(AlertCode::ServerRejected);
                ctx.out.push_back((self.peer.clone(), true, alert));
                return Err(e.to_string());
            }
        };
        let (session, finish) = auth.finish(now).map_err(|e| e.to_string())?;
        self.stats.handshake_bytes += (frame.len() + finish.len()) as u64;
        ctx.out.push_back((self.peer.clone(), true, finish));
        self.established(session, key, vouched, started, now, ctx);
        Ok(())
    }

    fn on_finish(&mut self, frame: &[u8], ctx: &mut Ctx<'_>, now: Instant) -> Result<(), String> {
        let State::AwaitFinish(expect, started) = &self.state else {
            return Ok(());
        };
        let started = *started;
        let (mut session, device) = expect
            .read_device_finish(frame, now)
            .map_err(|e: HandshakeError| e.to_string())?;
        let key = device.identity.ok_or("the peer is anonymous")?;
        let vouched = match ctx.trust.check(&self.peer, &key, ctx.info) {
            Ok(v) => v,
            Err(e) => {
                session.close(AlertCode::HandshakeFailure);
                while let Some(f) = session.poll_transmit() {
                    ctx.out.push_back((self.peer.clone(), false, f));
                }
                return Err(e.to_string());
            }
        };
        self.stats.handshake_bytes += frame.len() as u64;
        self.established(session, key, vouched, started, now, ctx);
        Ok(())
    }

    fn established(
        &mut self,
        session: Session,
        key: PublicIdentity,
        vouched: Vouched,
        started: Instant,
        now: Instant,
        ctx: &mut Ctx<'_>,
    ) {
        ctx.events.push_back(PeerEvent::Established {
            peer: self.peer.clone(),
            fingerprint: key.fingerprint(),
            vouched: vouched.clone(),
        });
        self.stats.fingerprint = Some(key.fingerprint());
        self.stats.vouched = Some(vouched.clone());
        self.stats.suite = Some(session.suite().name);
        self.stats.aead = Some(session.aead().name());
        self.stats.handshake_time = Some(now.saturating_duration_since(started));
        self.stats.last_error = None;
        self.restarts = 0;
        self.state = State::Open(Box::new(session));
        self.outbox.resend_all();
        tracing::info!(peer = %self.peer, fingerprint = %key.fingerprint(), %vouched, "end-to-end session established");
    }

    fn on_record(
        &mut self,
        frame: &mut [u8],
        events: &mut VecDeque<PeerEvent>,
        out: &mut VecDeque<(String, bool, Vec<u8>)>,
        now: Instant,
    ) {
        let State::Open(session) = &mut self.state else {
            return;
        };
        let mut ack = None;
        match session.handle_frame(frame, now) {
            Ok(Event::Message(plaintext)) => {
                self.stats.records_received += 1;
                match Envelope::decode(plaintext) {
                    Ok(Envelope::Message {
                        stream,
                        seq,
                        base,
                        data,
                    }) => {
                        if self.inbox.take(stream, seq, base) == Take::New {
                            events.push_back(PeerEvent::Message {
                                peer: self.peer.clone(),
                                fingerprint: self.stats.fingerprint.clone().unwrap_or_default(),
                                data: data.to_vec(),
                            });
                        }
                        ack = Some(Envelope::Ack {
                            stream,
                            next: self.inbox.ack(stream),
                        });
                    }
                    Ok(Envelope::Ack { stream, next }) => match self.outbox.ack(stream, next) {
                        Ok(count) if count > 0 => events.push_back(PeerEvent::Delivered {
                            peer: self.peer.clone(),
                            count,
                        }),
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(peer = %self.peer, error = %e, "peer acknowledgement ignored")
                        }
                    },
                    _ => {
                        tracing::warn!(peer = %self.peer, "the peer sent something other than a message: dropped")
                    }
                }
            }
            Ok(Event::KeyUpdated) => self.stats.key_updates_received += 1,
            Ok(Event::Ticket) => {}
            Ok(Event::Closed) => {
                // Answered; on_frame sends the answer and marks the conversation closed.
                session.close(AlertCode::CloseNotify);
                return;
            }
            Err(e) => {
                // The session queued its Close with the record layer's alert: it goes out.
                Self::transmit(&self.peer, self.initiator, session, &mut self.stats, out);
                self.stats.rejected += 1;
                let error = format!("the relay tampered with the session, or lost part of it: {e}");
                self.fail(error, now, events);
                return;
            }
        }
        if let Some(ack) = ack {
            let _ = session.send(&ack.encode(), now);
        }
    }
}
