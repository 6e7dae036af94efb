//! A minimal secchan server embedded in your own program.
//!
//! ```text
//! secchan keygen --out server.key
//! secchan keygen --out device.key        # prints the device's fingerprint
//! cargo run --example server -- 127.0.0.1:4433 server.key SHA256:<device fingerprint>
//! ```
//! It accepts only the one device given, prints each message and replies "ok".

use secchan::crypto::identity::IdentityKey;
use secchan::handshake::server::ServerConfig;
use secchan::handshake::AuthorizedDevices;
use secchan::transport::tcp::Listener;
use secchan::transport::Timeouts;
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, key_file, device] = args.as_slice() else {
        eprintln!("usage: server LISTEN_ADDR SERVER_KEY_FILE DEVICE_FINGERPRINT");
        std::process::exit(2);
    };
    let identity = IdentityKey::from_file_text(&std::fs::read_to_string(key_file)?)?;
    println!("server fingerprint: {}", identity.public().fingerprint());
    let mut devices = AuthorizedDevices::new();
    devices.insert(device.clone(), "my-device".into());
    let config = ServerConfig::new(Arc::new(identity), Arc::new(devices));
    let listener = Listener::bind(listen, Arc::new(config), Timeouts::default()).await?;
    loop {
        let incoming = listener.accept().await?;
        tokio::spawn(async move {
            let (mut conn, peer) = match incoming.handshake().await {
                Ok(c) => c,
                Err(e) => return eprintln!("handshake failed: {e}"),
            };
            while let Ok(Some(message)) = conn.recv().await {
                println!("{}: {}", peer.name, String::from_utf8_lossy(&message));
                if conn.send(b"ok").await.is_err() {
                    break;
                }
            }
        });
    }
}
