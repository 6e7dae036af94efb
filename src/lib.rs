//! secchan: a post-quantum secure channel for IoT devices and the servers they report to.
//!
//! A hybrid handshake (ML-KEM-768 + X25519, protocol.md) authenticates the server (and
//! optionally the device) with Ed25519 and derives per-direction AEAD keys; records are
//! numbered, replay-checked and rotated. The crate is layered like the protocol:
//!
//! | module | layer |
//! |---|---|
//! | [`codec`] | bounds-checked reading of peer bytes |
//! | [`crypto`] | wrappers around audited primitives: KEMs, AEADs, HKDF, Ed25519 |
//! | [`msgs`] | wire messages and their encodings |
//! | [`handshake`] | device and server state machines, key schedule (sans IO) |
//! | [`record`] | sealing, opening, replay window, key update (sans IO) |
//! | [`session`] | an established session: `handle_frame`, `send`, `poll_transmit` (sans IO) |
//! | [`delivery`] | end-to-end delivery above the session: message ids, acknowledgements, outbox, duplicate filter (sans IO) |
//! | [`transport`] | tokio TCP transport and the embedding API (`connect`, `Listener`); MQTT (`transport::mqtt`, feature `mqtt`) |
//! | [`service`] | what a server and a device do with sessions: sinks, the delivery intake, the TCP server and device loops |
//! | [`telemetry`] | device telemetry sources: stdin, CSV datasets, simulated sensors |
//! | [`registry`] | the fleet registry: signed append-only log, enrollment tokens, revocation |
//!
//! Embedding: see `examples/device.rs` and `examples/server.rs`.
//!
//! Cargo features: `cli` (the `secchan` binary: command line, config file, logging, systemd
//! notification, `secchan bench`; its modules are the binary's, not this library's), `mqtt`
//! ([`transport::mqtt`]), `postgres` (the PostgreSQL sink), all three on by default, and
//! `kyber-r3` (the benchmark-only Kyber768 round 3 suite). A library user who needs only TCP
//! sets `default-features = false` and compiles no command-line, MQTT or database crate.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backoff;
pub mod codec;
pub mod crypto;
pub mod delivery;
pub mod handshake;
pub mod msgs;
pub mod record;
pub mod registry;
pub mod service;
pub mod session;
pub mod telemetry;
pub mod throttle;
pub mod transport;
pub mod trust;
