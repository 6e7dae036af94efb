//! The service layer between the transports and the command line: what `secchan server`
//! and `secchan device` do with sessions once a transport has them.
//!
//! - [`sink`]: where a server writes what devices send (JSON lines on stdout and a file).
//! - `sink_postgres`: the PostgreSQL sink, exactly once across instances (feature `postgres`).
//! - `sink_mqtt`: republishing each message to a local MQTT broker (feature `mqtt`).
//! - [`intake`]: the server half of delivery, for every transport: duplicate filter, sink,
//!   state directory, acknowledgements.
//! - [`latency`]: how long handshakes and writes take, for whoever watches (the metrics).
//! - [`hub`]: the server's streams to its devices (downlink, relayed frames) and the relay
//!   decision.
//! - [`chat`]: `secchan chat`'s line mode: typed commands and the lines it prints.
//! - [`device_end`]: a device's receiving side: downlink and peer messages out as JSON lines,
//!   its end-to-end sessions' frames in and out.
//! - [`peer`]: a device's end-to-end sessions with other devices, relayed by the server.
//! - `mqtt_server`: an MQTT server instance feeding the same intake.
//! - [`tcp_server`]: the TCP accept loop, one task per session, and graceful drain.
//! - [`tcp_device`]: a device that keeps a session up over TCP (reconnect with back-off,
//!   resumption tickets) and delivers every message of its outbox.

pub mod admission;
pub mod chat;
pub mod chat_log;
pub mod device_end;
pub mod hub;
pub mod intake;
pub mod latency;
pub mod live;
#[cfg(feature = "mqtt")]
pub mod mqtt_server;
pub mod peer;
pub mod sink;
#[cfg(feature = "mqtt")]
pub mod sink_mqtt;
#[cfg(feature = "postgres")]
pub mod sink_postgres;
pub mod source;
pub mod status;
mod tcp_accept;
pub mod tcp_device;
pub mod tcp_server;

/// A new random stream id (protocol.md §11.1) for a stream kept in memory. Should the OS
/// generator fail, the clock's nanoseconds stand in: still distinct from the streams this
/// process and its predecessors used, which is all a receiver needs.
pub fn random_stream() -> crate::delivery::StreamId {
    use crate::crypto::random::{OsRandom, Random};
    let mut s = [0u8; 8];
    if OsRandom.fill(&mut s).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        s = nanos.to_be_bytes();
    }
    s
}
