//! The service layer between the transports and the command line: what `secchan server`
//! and `secchan device` do with sessions once a transport has them.
//!
//! - [`sink`]: where a server writes what devices send (JSON lines on stdout and a file).
//! - [`intake`]: the server half of delivery, for every transport: duplicate filter, sink,
//!   state directory, acknowledgements.
//! - [`peer`]: a device's end-to-end sessions with other devices, relayed by the server.
//! - `mqtt_server`: an MQTT server instance feeding the same intake.
//! - [`tcp_server`]: the TCP accept loop, one task per session, and graceful drain.
//! - [`tcp_device`]: a device that keeps a session up over TCP (reconnect with back-off,
//!   resumption tickets) and delivers every message of its outbox.

pub mod intake;
#[cfg(feature = "mqtt")]
pub mod mqtt_server;
pub mod peer;
pub mod sink;
pub mod tcp_device;
pub mod tcp_server;
