//! The handshake (protocol.md §4–§6): one round trip, device hello -> server hello -> device
//! finish, as type-state machines. Each step returns the next state as a new type, so an
//! out-of-order call does not compile. Reading the peer's message borrows the waiting state:
//! a message that fails leaves it unchanged, for transports where strangers can inject frames.
//!
//! - Device: [`device::start`] -> [`device::ExpectServerHello`] ->
//!   [`device::ServerAuthenticated`] (the caller decides whether to trust the server's key)
//!   -> [`crate::session::Session`].
//! - Server: [`server::accept_hello`] -> [`server::ExpectDeviceFinish`] ->
//!   [`crate::session::Session`].
//! - Resumption with a ticket from an earlier session ([`resume`]): device [`resume::start`]
//!   -> [`resume::ExpectResumeReply`] -> session; a server takes either first message with
//!   [`server::accept_first`]. Tickets are sealed and checked by [`ticket::Resumption`].

pub mod cookie;
pub mod device;
mod key_schedule;
pub mod resume;
pub mod server;
pub mod ticket;
pub mod ticket_file;

use crate::codec::DecodeError;
use crate::crypto::aead::AeadId;
use crate::crypto::identity::PublicIdentity;
use crate::crypto::kem::{Suite, SuiteId};
use crate::crypto::CryptoError;
use crate::msgs::{AlertCode, FrameType};

/// Signature context for the server's signature (protocol.md §5.2).
pub const SERVER_SIGNATURE_CONTEXT: &[u8] = b"secchan v1 server signature\0";
/// Signature context for the device's signature (protocol.md §5.3).
pub const DEVICE_SIGNATURE_CONTEXT: &[u8] = b"secchan v1 device signature\0";
/// Signature context for an enrollment token's proof (docs/registry.md §5): the token key
/// signs `context || TH2 || device public key`.
pub const ENROLLMENT_PROOF_CONTEXT: &[u8] = b"secchan v1 enrollment proof\0";

/// Which suites a server accepts, and which one a device offers (protocol.md §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Mode {
    /// Standard post-quantum hybrid suites only: X25519 + ML-KEM-768 (the default).
    #[default]
    Hybrid,
    /// X25519 alone (for measuring the cost of post-quantum safety).
    Classical,
    /// Server only: every suite, classical X25519 and the pre-standard X25519 + Kyber768
    /// round 3 (benchmarks) included.
    Any,
}

impl Mode {
    /// Whether a server in this mode accepts `suite`.
    pub fn allows(self, suite: &Suite) -> bool {
        match self {
            Self::Hybrid => suite.is_hybrid() && suite.standard,
            Self::Classical => !suite.is_hybrid(),
            Self::Any => true,
        }
    }

    /// Name as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Hybrid => "hybrid",
            Self::Classical => "classical",
            Self::Any => "any",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Handshake failures. [`HandshakeError::alert`] names the alert sent to the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// A handshake message was malformed.
    #[error("malformed handshake message: {0}")]
    Decode(#[from] DecodeError),
    /// A frame of the wrong type arrived.
    #[error("unexpected {0:?} frame during the handshake")]
    UnexpectedMessage(FrameType),
    /// The peer aborted with an alert.
    #[error("peer aborted the handshake: {0}")]
    PeerAlert(AlertCode),
    /// The server's mode does not accept the device's suite.
    #[error("suite {suite} is not accepted by a server in {mode} mode")]
    SuiteRefused {
        /// The offered suite.
        suite: &'static str,
        /// The server's mode.
        mode: Mode,
    },
    /// The device offered a suite protocol.md defines that this build leaves out
    /// (X25519Kyber768R3 without the `kyber-r3` feature); refused like [`Self::SuiteRefused`].
    #[error(
        "suite {} is not in this build of secchan (it is built only with the cargo feature {})",
        .0.name(),
        .0.feature().unwrap_or_default()
    )]
    SuiteNotBuilt(SuiteId),
    /// The device and server share no AEAD.
    #[error("no AEAD in common with the peer")]
    NoCommonAead,
    /// The device is configured to offer no AEAD, or more than a DeviceHello can carry.
    #[error("a device offers 1 to {max} AEADs, but {0} are configured", max = crate::msgs::MAX_AEAD_OFFERS)]
    AeadOfferCount(usize),
    /// The server selected a suite or AEAD the device did not offer: a downgrade attempt.
    #[error(
        "downgrade detected: the device offered {offered} but the server hello selected {selected}"
    )]
    Downgrade {
        /// What the device offered.
        offered: String,
        /// What arrived.
        selected: String,
    },
    /// A key-exchange value was invalid (bad ML-KEM key, low-order X25519 point, RNG failure).
    #[error("key exchange failed: {0}")]
    KeyExchange(#[from] CryptoError),
    /// The server's authentication did not verify: wrong key, or a modified transcript.
    #[error("server authentication failed: its signature or handshake MAC did not verify (man in the middle, or a modified handshake)")]
    ServerAuthFailed,
    /// The device's authentication did not verify.
    #[error("device authentication failed: its signature or handshake MAC did not verify")]
    DeviceAuthFailed,
    /// The enrollment token's proof did not verify: it was made for another handshake or
    /// another device key.
    #[error("enrollment proof of device {device} did not verify (replayed from another handshake, or forged)")]
    EnrollmentProofFailed {
        /// The device's fingerprint.
        device: String,
    },
    /// An enrollment token was configured without a device identity to enroll.
    #[error("an enrollment token needs a device identity key to enroll")]
    EnrollmentWithoutIdentity,
    /// The server refused a resumption ticket (protocol.md §6.4).
    #[error("resumption ticket refused: {0}")]
    TicketRejected(#[from] ticket::TicketRejection),
    /// The device's ticket does not fit its configuration (a local check: run a full
    /// handshake instead).
    #[error("the resumption ticket cannot be used: {0}")]
    TicketUnusable(&'static str),
    /// The device was refused by the server's authorizer.
    #[error("device {device} refused: {code}")]
    DeviceRefused {
        /// The device's fingerprint, or "anonymous".
        device: String,
        /// Why.
        code: AlertCode,
    },
}

impl HandshakeError {
    /// The alert to send the peer for this failure, if one is sent.
    pub fn alert(&self) -> Option<AlertCode> {
        Some(match self {
            Self::Decode(DecodeError::UnsupportedVersion(_)) => AlertCode::UnsupportedVersion,
            Self::Decode(_) => AlertCode::DecodeError,
            Self::UnexpectedMessage(_) => AlertCode::UnexpectedMessage,
            Self::PeerAlert(_)
            | Self::EnrollmentWithoutIdentity
            | Self::AeadOfferCount(_)
            | Self::TicketUnusable(_) => return None,
            Self::TicketRejected(_) => AlertCode::TicketRejected,
            Self::EnrollmentProofFailed { .. } => AlertCode::EnrollmentRefused,
            Self::SuiteRefused { .. } | Self::SuiteNotBuilt(_) => AlertCode::SuiteRefused,
            Self::NoCommonAead => AlertCode::NoCommonAead,
            Self::Downgrade { .. }
            | Self::KeyExchange(_)
            | Self::ServerAuthFailed
            | Self::DeviceAuthFailed => AlertCode::HandshakeFailure,
            Self::DeviceRefused { code, .. } => *code,
        })
    }
}

/// Decides which devices a server accepts. The core calls it with the device's verified
/// identity (`None` for an anonymous device) after the handshake's cryptography succeeded.
pub trait Authorizer: Send + Sync {
    /// Returns the name to show for an accepted device, or the alert that refuses it
    /// ([`AlertCode::UnknownDevice`] or [`AlertCode::DeviceAuthRequired`]).
    fn authorize(&self, device: Option<&PublicIdentity>) -> Result<String, AlertCode>;

    /// Called instead of [`authorize`](Self::authorize) when the device presented an
    /// enrollment token (DeviceFinish kind 0x02) whose proof over this handshake verified:
    /// `token` is the token's public key. Returns the device's name, or the alert refusing it.
    /// An authorizer without enrollment treats the device as if it presented no token.
    fn enroll(&self, device: &PublicIdentity, token: &PublicIdentity) -> Result<String, AlertCode> {
        let _ = token;
        self.authorize(Some(device))
    }

    /// Whether a device accepted earlier is still authorized. Transports that keep sessions
    /// open ask it periodically (the MQTT server on every sweep) and close the session with
    /// the returned alert. It must be cheap and do no I/O. The default keeps every session.
    fn still_authorized(&self, device: &PublicIdentity) -> Result<(), AlertCode> {
        let _ = device;
        Ok(())
    }
}

/// Accepts every device, naming it by fingerprint. Only for `--allow-any-device`.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAnyDevice;

impl Authorizer for AllowAnyDevice {
    fn authorize(&self, device: Option<&PublicIdentity>) -> Result<String, AlertCode> {
        Ok(device.map_or_else(|| "anonymous".to_string(), |d| d.fingerprint()))
    }
}

/// Accepts devices whose identity is on a list, each with a name.
#[derive(Debug, Clone, Default)]
pub struct AuthorizedDevices {
    devices: std::collections::HashMap<String, String>,
}

impl AuthorizedDevices {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a device by fingerprint with a display name.
    pub fn insert(&mut self, fingerprint: String, name: String) {
        self.devices.insert(fingerprint, name);
    }

    /// Number of devices on the list.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }
}

impl Authorizer for AuthorizedDevices {
    fn authorize(&self, device: Option<&PublicIdentity>) -> Result<String, AlertCode> {
        let device = device.ok_or(AlertCode::DeviceAuthRequired)?;
        self.devices
            .get(&device.fingerprint())
            .cloned()
            .ok_or(AlertCode::UnknownDevice)
    }
}

/// Picks the first AEAD in the device's preference list that the server supports.
fn select_aead(device_prefs: &[AeadId], server_supports: &[AeadId]) -> Option<AeadId> {
    device_prefs
        .iter()
        .copied()
        .find(|a| server_supports.contains(a))
}

#[cfg(test)]
mod resume_tests;
#[cfg(test)]
mod tests;
