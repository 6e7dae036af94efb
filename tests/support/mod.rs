//! Helpers shared by integration tests.
#![allow(dead_code)] // each test crate uses a different part of the helpers
pub mod haproxy;
pub mod mosquitto;
#[cfg(feature = "mqtt")]
pub mod mqtt;
pub mod postgres;
