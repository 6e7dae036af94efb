//! The public types of a server instance: its options, its deliveries and its counters.

use super::super::link::PayloadBytes;
use super::super::topics;
use crate::crypto::aead::AeadId;
use crate::delivery::StreamId;
use crate::handshake::server::PeerDevice;
use crate::transport::Timeouts;
use std::sync::{Arc, Mutex};

/// How a server instance runs.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Shared-subscription group: instances in the same group share the hellos.
    pub share_group: String,
    /// Most sessions (pending and established) at once. When the established ones reach it,
    /// further hellos are dropped; until then a hello evicts the oldest pending handshake
    /// if it must.
    pub max_sessions: usize,
    /// Most handshakes pending at once; a further hello evicts the oldest one, so a flood of
    /// (replayed) hellos cannot lock honest devices out.
    pub max_pending: usize,
    /// Handshake and idle timeouts.
    pub timeouts: Timeouts,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            share_group: topics::DEFAULT_SHARE_GROUP.to_string(),
            max_sessions: 10_000,
            max_pending: super::DEFAULT_MAX_PENDING,
            timeouts: Timeouts::default(),
        }
    }
}

/// One device message as it arrived: not yet checked against what was written before. The
/// delivery intake (`service::intake`) drops duplicates, writes the rest and tells the server
/// what to acknowledge ([`MqttServer::acknowledge`](super::MqttServer::acknowledge)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The device's `{client}` topic level (its broker client id or user name).
    pub client: String,
    /// The session it arrived in (random, as on the topics).
    pub session: String,
    /// The device, as authenticated and authorized in that session.
    pub device: PeerDevice,
    /// Key-exchange suite of the session.
    pub suite: &'static str,
    /// AEAD of the session.
    pub aead: AeadId,
    /// The device's stream.
    pub stream: StreamId,
    /// Position in the stream.
    pub seq: u64,
    /// The device's base: every message of the stream below it was acknowledged (or given
    /// up) on the device (protocol.md §11.1).
    pub base: u64,
    /// The message.
    pub data: Vec<u8>,
}

/// What [`MqttServer::next_incoming`](super::MqttServer::next_incoming) hands out: device
/// messages, and what a server needs to send its devices anything (`service::mqtt_server`
/// drives the [`Hub`](crate::service::hub::Hub) with it).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Incoming {
    /// A device message.
    Delivery(Delivery),
    /// A session was established with `device`; `session` names it in
    /// [`send`](super::MqttServer::send).
    Opened {
        /// The session.
        session: String,
        /// The device, as authenticated and authorized.
        device: PeerDevice,
    },
    /// An envelope from the device other than a Message (an Ack of its downlink, a Relay),
    /// decoded once already: well-formed.
    Envelope {
        /// The session it arrived in.
        session: String,
        /// The envelope, as the device sent it.
        envelope: Vec<u8>,
    },
    /// The session ended (closed, failed, idle, or its device no longer authorized).
    Closed {
        /// The session.
        session: String,
    },
}

/// Counters of a server instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ServerStats {
    /// Sessions established.
    pub sessions_established: u64,
    /// Handshakes that failed: hellos refused with an alert, devices refused after their
    /// DeviceFinish.
    pub handshake_failures: u64,
    /// Of those, devices the authorizer refused (not on the list, revoked, another group).
    pub devices_refused: u64,
    /// Handshakes answered but not finished within the handshake timeout.
    pub handshake_timeouts: u64,
    /// DeviceFinish frames that did not verify and plaintext alerts for a pending handshake:
    /// dropped, the handshake goes on (anyone may publish them).
    pub rejected_handshake_messages: u64,
    /// Pending handshakes evicted by newer hellos ([`ServerOptions::max_pending`]).
    pub evicted_handshakes: u64,
    /// Hellos dropped because the established sessions reached
    /// [`ServerOptions::max_sessions`].
    pub refused_hellos: u64,
    /// Hellos answered with a ServerHello.
    pub hellos_answered: u64,
    /// Hellos dropped unanswered to keep the per-client hello queues bounded, or because they
    /// waited longer than the handshake timeout (a flood, docs/mqtt.md §4).
    pub shed_hellos: u64,
    /// Messages handed out by [`MqttServer::next`](super::MqttServer::next) (duplicates
    /// included: the intake counts those it drops).
    pub delivered: u64,
    /// Repeated MQTT deliveries dropped by the replay window (or a repeated handshake
    /// message).
    pub duplicate_records: u64,
    /// Records that failed authentication or were older than the replay window.
    pub rejected_records: u64,
    /// Messages on secchan's topics that were not well-formed secchan frames or topics.
    pub malformed: u64,
    /// Messages for sessions this instance does not hold.
    pub unknown_session: u64,
    /// Publishes dropped because the broker took them more slowly than they came.
    pub dropped_publishes: u64,
    /// Payload bytes moved through the broker.
    pub bytes: PayloadBytes,
}

/// What a running instance has counted, readable from other tasks (`secchan status`, the
/// metrics); it is as current as the instance's last look at its connections.
#[derive(Debug, Clone, Default)]
pub struct Counters(Arc<Mutex<(usize, usize, ServerStats)>>);

impl Counters {
    fn get(&self) -> (usize, usize, ServerStats) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The counters so far.
    pub fn stats(&self) -> ServerStats {
        self.get().2
    }

    /// Handshakes pending and sessions established now.
    pub fn now(&self) -> (usize, usize) {
        let (pending, open, _) = self.get();
        (pending, open)
    }

    pub(super) fn set(&self, pending: usize, open: usize, stats: ServerStats) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = (pending, open, stats);
    }
}
