//! A secchan device embedded in your own program, speaking to `secchan server` and to
//! `examples/server.rs`: readings go through the delivery layer, each kept until the server
//! acknowledges it (the server's sink has it) and resent on a new session if the old one is
//! lost.
//!
//! ```text
//! cargo run --example device -- 127.0.0.1:4433 device.key SHA256:<server fingerprint>
//! ```
//! It sends three simulated readings and exits once the server acknowledged all three.

use secchan::crypto::identity::IdentityKey;
use secchan::crypto::random::{OsRandom, Random};
use secchan::delivery::Outbox;
use secchan::handshake::device::DeviceConfig;
use secchan::service::tcp_device::{DeviceOptions, TcpDevice};
use secchan::telemetry::{Source, TelemetrySpec};
use secchan::transport::Timeouts;
use secchan::trust::Pinned;
use std::sync::Arc;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, server, key_file, server_fingerprint] = args.as_slice() else {
        eprintln!("usage: device SERVER_ADDR DEVICE_KEY_FILE SERVER_FINGERPRINT");
        std::process::exit(2);
    };
    let identity = IdentityKey::from_file_text(&std::fs::read_to_string(key_file)?)?;
    let config = DeviceConfig::default() // hybrid X25519 + ML-KEM-768
        .with_identity(Arc::new(identity));
    let options = DeviceOptions {
        timeouts: Timeouts::default(),
        keepalive: Duration::from_secs(30),
        close_timeout: Duration::from_secs(5),
        ack_timeout: Duration::from_secs(10),
        reconnect: true,
        give_up_after: Some(Duration::from_secs(30)),
        ticket_file: None,
    };
    // A fresh stream id per run (the server deduplicates by device, stream and sequence
    // number); up to 1000 unacknowledged readings held in memory.
    let mut stream = [0u8; 8];
    OsRandom.fill(&mut stream)?;
    let outbox = Outbox::new(stream, 1000);
    let mut readings = Source::open(&TelemetrySpec::Sim, Some("10/s".parse()?), Some(3))?;
    let device = TcpDevice::new(
        server.clone(),
        config,
        Box::new(Pinned(server_fingerprint.clone())),
        options,
        outbox,
    );
    match device
        .run(&mut readings, Box::pin(std::future::pending()))
        .await
    {
        Ok(report) => {
            println!(
                "{} readings sent, {} acknowledged",
                report.queued, report.acknowledged
            );
            Ok(())
        }
        Err((e, report)) => {
            eprintln!(
                "device stopped: {e} ({} unacknowledged)",
                report.unacknowledged
            );
            std::process::exit(1);
        }
    }
}
