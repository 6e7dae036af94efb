//! End-to-end delivery above the session, sans IO, for every transport (protocol.md §11).
//!
//! A session protects each record, but a record can still be lost with the connection that
//! carried it (a server restart, a broker restart, a cut TCP connection). So each message
//! carries, inside the encrypted record, its sender's stream id and a sequence number; the
//! receiver outputs each (stream, sequence) once and acknowledges, cumulatively, what it has
//! written to its sink; the sender keeps every message until it is acknowledged and sends it
//! again after a reconnect or a re-handshake. TCP and MQTT drive the same types:
//!
//! - [`Envelope`]: the wire format of messages and acknowledgements.
//! - [`Outbox`]: the sender's buffer of unacknowledged messages.
//! - [`Streams`]: the receiver's duplicate filter.
//! - [`Inbox`]: a receiver that takes each stream strictly in order (server -> device
//!   envelopes, relayed frames).

mod envelope;
mod inbox;
pub mod log;
mod outbox;
pub mod spool;
pub mod state;
mod streams;

pub use envelope::{
    peer_info_body, refusal_body, relay_body, valid_peer_name, Envelope, Kind, PeerInfo, Refusal,
    ACK_LEN, ENVELOPE_LEN, MAX_PEER_NAME,
};
pub use inbox::{Inbox, Take, MAX_INBOX_STREAMS};
pub use outbox::{AckError, Limits, Outbox, OutboxError, WhenFull, DEFAULT_BUFFER_BYTES};
pub use streams::{StreamKey, Streams, Verdict, DEFAULT_MAX_OUT_OF_ORDER, MAX_STREAMS_PER_DEVICE};

/// Identifies one run of a device's message numbering: 8 random bytes drawn at start.
pub type StreamId = [u8; 8];

/// Largest device buffer, and how far past the acknowledged point a server accepts a
/// sequence number: bounds the server's memory per stream.
pub const MAX_BUFFER: usize = 16 * 1024;
/// Default device buffer, in messages.
pub const DEFAULT_BUFFER: usize = 10_000;
/// Messages sent but not yet acknowledged at most, so a reconnect does not burst the whole
/// buffer and reordering stays well inside the default 1024-record replay window.
pub const MAX_IN_FLIGHT: usize = 512;
