//! Transports move whole frames between peers and drive the sans-IO core; they add nothing
//! to the protocol but framing, timeouts and socket handling.
//!
//! [`tcp`] is the embedding API for TCP: [`tcp::connect`] (or [`tcp::resume`] with a ticket)
//! on a device, [`tcp::Listener`] and [`tcp::accept`] on a server, both yielding a
//! [`tcp::Connection`].

pub mod framing;
#[cfg(feature = "mqtt")]
pub mod mqtt;
pub mod tcp;

use crate::handshake::HandshakeError;
use crate::msgs::AlertCode;
use crate::session::SessionError;
use crate::trust::TrustError;
use std::time::Duration;

/// Largest frame body accepted on TCP: one full record (3 + 16,384 + 16 bytes). The 2-byte
/// length prefix is checked against it before any buffer is allocated (protocol.md §2.1).
pub const MAX_FRAME_LEN: usize = crate::record::MAX_RECORD_LEN;

/// Timeouts a transport enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// The whole handshake must finish within this time (slow or stalled peers are dropped).
    pub handshake: Duration,
    /// An established session with no incoming frame for this long is closed.
    pub idle: Duration,
}

impl Default for Timeouts {
    /// 10 s for the handshake, 10 minutes of silence for an established session.
    fn default() -> Self {
        Self {
            handshake: Duration::from_secs(10),
            idle: Duration::from_secs(600),
        }
    }
}

/// Transport failures: each is one clear reason a connection ended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// A socket operation failed.
    #[error("network error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer announced a frame larger than [`MAX_FRAME_LEN`].
    #[error("peer sent a frame larger than the {max} byte limit", max = MAX_FRAME_LEN)]
    FrameTooLarge,
    /// The handshake did not complete in time.
    #[error("handshake timed out after {0:?}: the peer stalled or is not a secchan peer")]
    HandshakeTimeout(Duration),
    /// No frame arrived for the idle timeout.
    #[error("session idle for {0:?}: closed")]
    IdleTimeout(Duration),
    /// The handshake failed.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The established session failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The device did not trust the server's identity.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The server refused this device after the handshake (plaintext alert, protocol.md §8.1).
    #[error("server refused the session: {0}")]
    Refused(AlertCode),
    /// The server refused the resumption ticket (protocol.md §6.4): its plaintext alert,
    /// unauthenticated. Not final: connect with a full handshake on a new connection.
    #[error("server refused the resumption ticket ({0}): connect with a full handshake")]
    TicketRefused(AlertCode),
    /// The peer answered in another protocol.
    #[error("the server answered as {0}, not as a secchan server: check the address and port")]
    NotSecchan(&'static str),
    /// Messages sent in this session went unacknowledged for this long: the server is gone or
    /// stuck, and a new session is worth a try.
    #[error("the server acknowledged nothing for {0:?}")]
    Unacknowledged(Duration),
    /// The TCP stream ended without an authenticated Close: data may have been cut off.
    #[error("connection ended without an authenticated close: the stream was truncated")]
    Truncated,
    /// An MQTT broker or delivery failure.
    #[cfg(feature = "mqtt")]
    #[error(transparent)]
    Mqtt(#[from] mqtt::MqttError),
}
