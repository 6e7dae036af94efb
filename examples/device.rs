//! A minimal secchan device embedded in your own program.
//!
//! ```text
//! cargo run --example device -- 127.0.0.1:4433 device.key SHA256:<server fingerprint>
//! ```
//! It sends three readings, prints the replies, and closes the session cleanly.

use secchan::crypto::identity::IdentityKey;
use secchan::handshake::device::DeviceConfig;
use secchan::transport::tcp::connect;
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
    let config = DeviceConfig {
        identity: Some(Arc::new(identity)),
        ..DeviceConfig::default() // hybrid X25519 + ML-KEM-768
    };
    let pin = Pinned(server_fingerprint.clone());
    let mut conn = connect(server.as_str(), &config, &pin, Timeouts::default()).await?;
    println!(
        "connected: {} + {}",
        conn.session().suite().name,
        conn.session().aead()
    );
    for reading in ["21.5", "21.7", "21.6"] {
        conn.send(format!("{{\"temperature_c\":{reading}}}").as_bytes())
            .await?;
        if let Some(reply) = conn.recv().await? {
            println!("server: {}", String::from_utf8_lossy(&reply));
        }
    }
    // Sends our close and waits for the server's: everything sent was received.
    conn.close(Duration::from_secs(5)).await?;
    Ok(())
}
