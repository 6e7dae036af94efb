//! The service layer between the transports and the command line: what `secchan server`
//! and `secchan device` do with sessions once a transport has them.
//!
//! - [`sink`]: where a server writes what devices send (JSON lines on stdout and a file).
//! - `sink_postgres`: the PostgreSQL sink, exactly once across instances (feature `postgres`).
//! - `sink_mqtt`: republishing each message to a local MQTT broker (feature `mqtt`).
//! - [`intake`]: the server half of delivery, for every transport: duplicate filter, sink,
//!   state directory, acknowledgements.
//! - `mqtt_server`: an MQTT server instance feeding the same intake.
//! - [`tcp_server`]: the TCP accept loop, one task per session, and graceful drain.
//! - [`tcp_device`]: a device that keeps a session up over TCP (reconnect with back-off,
//!   resumption tickets) and delivers every message of its outbox.

pub mod admission;
pub mod intake;
pub mod live;
#[cfg(feature = "mqtt")]
pub mod mqtt_server;
pub mod sink;
#[cfg(feature = "mqtt")]
pub mod sink_mqtt;
#[cfg(feature = "postgres")]
pub mod sink_postgres;
pub mod source;
mod tcp_accept;
pub mod tcp_device;
pub mod tcp_server;
