//! Session resumption (protocol.md §4.6, §4.7, §5.7, §6.3, §6.4): a device holding a ticket
//! from an earlier session proves it knows the ticket's PSK, both sides run a fresh X25519,
//! and one round trip establishes the session. The PSK came from a hybrid session's master
//! secret, so the resumed session is as post-quantum as that one; the fresh X25519 gives it
//! forward secrecy. No data travels before the server's answer (no 0-RTT).
//!
//! - Device: [`start`] -> [`ExpectResumeReply::read_reply`] -> [`Session`].
//! - Server: [`super::server::accept_first`] dispatches a ResumeHello to `accept`.

use super::device::DeviceConfig;
use super::key_schedule::{binder, resume_secret, server_confirm, session_secrets};
use super::server::{PeerDevice, ServerConfig};
use super::ticket::TicketRejection;
use super::HandshakeError;
use crate::codec::{DecodeError, Reader};
use crate::crypto::aead::AeadId;
use crate::crypto::identity::PublicIdentity;
use crate::crypto::kdf::{Secret, Transcript};
use crate::crypto::kem::{Suite, X25519Ephemeral};
use crate::crypto::random::Random;
use crate::msgs::{decode_alert, FrameType, ResumeHello, ResumeServerHello, MAX_TICKET_LEN};
use crate::session::{Role, Session, SessionConfig, SessionKeys};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// A resumption ticket as the device keeps it: the server's opaque ticket, the PSK it stands
/// for (erased on drop), and what the session that issued it established. Debug output shows
/// no secret.
#[derive(Clone)]
pub struct Ticket {
    pub(crate) ticket: Vec<u8>,
    pub(crate) psk: Secret,
    pub(crate) server: PublicIdentity,
    pub(crate) device: Option<PublicIdentity>,
    pub(crate) suite: &'static Suite,
    pub(crate) aead: AeadId,
    pub(crate) expires: SystemTime,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("server", &self.server)
            .field("device", &self.device)
            .field("suite", &self.suite.name)
            .field("aead", &self.aead)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// Version byte of [`Ticket::to_bytes`]'s format.
const TICKET_FORMAT: u8 = 0x01;

impl Ticket {
    /// The server identity of the session that issued the ticket: a resumed session's peer.
    pub fn server_identity(&self) -> &PublicIdentity {
        &self.server
    }

    /// The device identity the ticket was issued to (`None`: anonymous).
    pub fn device_identity(&self) -> Option<&PublicIdentity> {
        self.device.as_ref()
    }

    /// The suite of the session that issued the ticket.
    pub fn suite(&self) -> &'static Suite {
        self.suite
    }

    /// The AEAD a resumed session uses.
    pub fn aead(&self) -> AeadId {
        self.aead
    }

    /// When the ticket stops being usable (its lifetime after it was received, by the
    /// device's clock; the server checks its own expiry too).
    pub fn expires(&self) -> SystemTime {
        self.expires
    }

    /// Whether the ticket is still usable at `now`.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        now < self.expires
    }

    /// The ticket in a form to keep in a file (mode 0600: it holds the PSK) and load with
    /// [`from_bytes`](Self::from_bytes): `0x01 || suite || aead || expires [8] ||
    /// server [32] || device kind [1] || device [32] || psk [32] || T [1] || ticket [T]`.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let expires = self
            .expires
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut out = Zeroizing::new(Vec::with_capacity(112 + self.ticket.len()));
        out.extend_from_slice(&[TICKET_FORMAT, self.suite.id as u8, self.aead as u8]);
        out.extend_from_slice(&expires.to_be_bytes());
        out.extend_from_slice(&self.server.0);
        out.push(u8::from(self.device.is_some()));
        out.extend_from_slice(&self.device.map_or([0; 32], |d| d.0));
        out.extend_from_slice(self.psk.as_ref());
        out.push(self.ticket.len() as u8);
        out.extend_from_slice(&self.ticket);
        out
    }

    /// Parses [`to_bytes`](Self::to_bytes)'s output.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let format = r.u8("ticket format")?;
        if format != TICKET_FORMAT {
            return Err(DecodeError::InvalidValue {
                field: "ticket format",
                value: format,
            });
        }
        let suite_id = r.u8("suite")?;
        let suite = Suite::from_id(suite_id).ok_or(DecodeError::UnknownSuite(suite_id))?;
        let aead_id = r.u8("aead")?;
        let aead = AeadId::from_u8(aead_id).ok_or(DecodeError::InvalidValue {
            field: "aead",
            value: aead_id,
        })?;
        // A corrupt file may hold a time the clock type cannot represent (found by fuzzing).
        let expires = UNIX_EPOCH
            .checked_add(Duration::from_secs(u64::from_be_bytes(r.array("expires")?)))
            .ok_or(DecodeError::InvalidValue {
                field: "expires",
                value: 0xff,
            })?;
        let server = PublicIdentity(r.array("server")?);
        let kind = r.u8("device kind")?;
        let public = r.array("device")?;
        let device = match kind {
            0 => None,
            1 => Some(PublicIdentity(public)),
            value => {
                return Err(DecodeError::InvalidValue {
                    field: "device kind",
                    value,
                })
            }
        };
        let psk = Zeroizing::new(r.array("psk")?);
        let len = usize::from(r.u8("ticket length")?);
        if len == 0 || len > MAX_TICKET_LEN {
            return Err(DecodeError::Truncated {
                field: "ticket",
                needed: 1,
            });
        }
        let ticket = r.take(len, "ticket")?.to_vec();
        r.finish()?;
        Ok(Self {
            ticket,
            psk,
            server,
            device,
            suite,
            aead,
            expires,
        })
    }
}

/// Starts a resumption: returns the state awaiting ResumeServerHello and the ResumeHello
/// frame (protocol.md §6.3 step 1). Draws 32 random bytes (the X25519 secret).
///
/// The ticket must fit `config`: its suite is the one configured, its AEAD one of those
/// offered, and it was issued to the configured identity; otherwise
/// [`HandshakeError::TicketUnusable`], and the caller runs a full handshake. Check
/// [`Ticket::is_valid_at`] first: the server refuses an expired ticket.
pub fn start(
    config: &DeviceConfig,
    ticket: &Ticket,
    rng: &mut dyn Random,
) -> Result<(ExpectResumeReply, Vec<u8>), HandshakeError> {
    if ticket.suite != config.suite {
        return Err(HandshakeError::TicketUnusable("it is for another suite"));
    }
    if !config.aeads.contains(&ticket.aead) {
        return Err(HandshakeError::TicketUnusable(
            "its AEAD is not among those configured",
        ));
    }
    if config.identity.as_ref().map(|i| i.public()) != ticket.device {
        return Err(HandshakeError::TicketUnusable(
            "it was issued to another device identity",
        ));
    }
    let x25519 = X25519Ephemeral::generate(rng)?;
    let mut hello = ResumeHello::encode_without_binder(x25519.public(), &ticket.ticket);
    hello.extend_from_slice(&binder(&ticket.psk, &hello));
    let state = ExpectResumeReply {
        x25519,
        hello: hello.clone(),
        ticket: ticket.clone(),
        session: config.session,
    };
    Ok((state, hello))
}

/// Waiting for ResumeServerHello.
pub struct ExpectResumeReply {
    x25519: X25519Ephemeral,
    hello: Vec<u8>,
    ticket: Ticket,
    session: SessionConfig,
}

impl ExpectResumeReply {
    /// Processes the server's answer (protocol.md §6.3 step 2): an Alert is the server's
    /// refusal ([`HandshakeError::PeerAlert`], e.g. `ticket_rejected`: run a full handshake
    /// on a new connection); a ResumeServerHello whose confirmation verifies establishes the
    /// session, whose peer is the server of the session that issued the ticket.
    pub fn read_reply(&self, frame: &[u8], now: Instant) -> Result<Session, HandshakeError> {
        match FrameType::of(frame)? {
            FrameType::ResumeServerHello => {}
            FrameType::Alert => return Err(HandshakeError::PeerAlert(decode_alert(frame)?)),
            other => return Err(HandshakeError::UnexpectedMessage(other)),
        }
        let reply = ResumeServerHello::decode(frame)?;
        let ss_x25519 = self.x25519.agree(&reply.x25519)?;
        let prefix = frame
            .get(..frame.len() - reply.confirm.len())
            .ok_or(HandshakeError::ServerAuthFailed)?;
        let mut transcript = Transcript::default();
        transcript.update(&self.hello);
        transcript.update(prefix);
        let th_r1 = transcript.current();
        let rs = resume_secret(
            &th_r1,
            &self.ticket.psk,
            &ss_x25519,
            self.x25519.public(),
            &reply.x25519,
        );
        let expected = server_confirm(&rs, &th_r1);
        if !bool::from(expected.ct_eq(&reply.confirm)) {
            return Err(HandshakeError::ServerAuthFailed);
        }
        transcript.update(&reply.confirm);
        let secrets = session_secrets(&rs, &transcript.current());
        let t = &self.ticket;
        Ok(Session::new(
            Role::Device,
            SessionKeys {
                suite: t.suite,
                aead: t.aead,
                send: secrets.d2s,
                recv: secrets.s2d,
                psk: secrets.psk,
                resumed: true,
                local: t.device,
            },
            Some(t.server),
            &self.session,
            now,
        ))
    }
}

/// The server's side (protocol.md §6.4): every check in order, then ResumeServerHello and
/// the established session. Draws 32 random bytes (the X25519 secret), only once the ticket
/// and the device have passed every check.
pub(crate) fn accept(
    config: &ServerConfig,
    frame: &[u8],
    rng: &mut dyn Random,
    now: Instant,
    wall_now: SystemTime,
) -> Result<(Session, PeerDevice, Vec<u8>), HandshakeError> {
    // 1. Decode.
    let hello = ResumeHello::decode(frame)?;
    let resumption = config
        .resumption
        .as_deref()
        .ok_or(TicketRejection::NotOffered)?;
    // 2–4. Key id known, ticket opens, not expired.
    let contents = resumption.open(hello.ticket, wall_now)?;
    // 5. The suite and AEAD are still acceptable.
    if !config.mode.allows(contents.suite) {
        return Err(TicketRejection::Suite(contents.suite.name).into());
    }
    if !config.aeads.contains(&contents.aead) {
        return Err(TicketRejection::Aead(contents.aead).into());
    }
    // 6. The binder proves the sender holds the PSK and covers its X25519 value.
    let covered = frame
        .get(..ResumeHello::binder_offset(frame))
        .ok_or(TicketRejection::Binder)?;
    if !bool::from(binder(&contents.psk, covered).ct_eq(&hello.binder)) {
        return Err(TicketRejection::Binder.into());
    }
    // 7. Each ticket once.
    resumption.mark_used(hello.ticket, contents.expires, wall_now)?;
    // 8. The device is still authorized (revocation).
    let name = config
        .authorizer
        .authorize(contents.device.as_ref())
        .map_err(|code| HandshakeError::DeviceRefused {
            device: contents
                .device
                .map_or_else(|| "anonymous".into(), |d| d.fingerprint()),
            code,
        })?;
    // 9. X25519.
    let x25519 = X25519Ephemeral::generate(rng)?;
    let ss_x25519 = x25519.agree(&hello.x25519)?;
    let mut reply = ResumeServerHello::encode_prefix(x25519.public());
    let mut transcript = Transcript::default();
    transcript.update(frame);
    transcript.update(&reply);
    let th_r1 = transcript.current();
    let rs = resume_secret(
        &th_r1,
        &contents.psk,
        &ss_x25519,
        &hello.x25519,
        x25519.public(),
    );
    let confirm = server_confirm(&rs, &th_r1);
    reply.extend_from_slice(&confirm);
    transcript.update(&confirm);
    let secrets = session_secrets(&rs, &transcript.current());
    let session = Session::new(
        Role::Server,
        SessionKeys {
            suite: contents.suite,
            aead: contents.aead,
            send: secrets.s2d,
            recv: secrets.d2s,
            psk: secrets.psk,
            resumed: true,
            local: None,
        },
        contents.device,
        &config.session,
        now,
    );
    let peer = PeerDevice {
        identity: contents.device,
        name,
    };
    Ok((session, peer, reply))
}
