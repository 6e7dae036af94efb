//! A secchan server embedded in your own program, speaking to `secchan device` and to
//! `examples/device.rs`: each device message goes to a sink of your own (here: printed), and
//! the device gets its acknowledgement only after the sink has it.
//!
//! ```text
//! secchan keygen --out server.key
//! secchan keygen --out device.key        # prints the device's fingerprint
//! cargo run --example server -- 127.0.0.1:4433 server.key SHA256:<device fingerprint> [N]
//! ```
//! It accepts only the one device given and prints `device stream seq: message` for each
//! message; with N it stops (and answers what is in flight) after N messages.

use secchan::crypto::identity::IdentityKey;
use secchan::delivery::{Streams, DEFAULT_MAX_OUT_OF_ORDER};
use secchan::handshake::server::ServerConfig;
use secchan::handshake::AuthorizedDevices;
use secchan::service::sink::{Sink, SinkFuture, SinkRecord};
use secchan::service::{intake, tcp_server};
use secchan::transport::tcp::Listener;
use secchan::transport::Timeouts;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Prints each message; after `stop_after` of them, wakes `done`.
struct Print {
    written: u64,
    stop_after: Option<u64>,
    done: Arc<Notify>,
}

impl Sink for Print {
    fn write<'a>(&'a mut self, batch: &'a [SinkRecord]) -> SinkFuture<'a> {
        Box::pin(async move {
            for r in batch {
                println!(
                    "{} {} {}: {}",
                    r.origin.device.name,
                    hex::encode(r.stream),
                    r.seq,
                    String::from_utf8_lossy(&r.data)
                );
                self.written += 1;
            }
            if self.stop_after.is_some_and(|n| self.written >= n) {
                self.done.notify_one();
            }
            Ok(())
        })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (listen, key_file, device, stop_after) = match args.as_slice() {
        [_, l, k, d] => (l, k, d, None),
        [_, l, k, d, n] => (l, k, d, Some(n.parse::<u64>()?)),
        _ => {
            eprintln!("usage: server LISTEN_ADDR SERVER_KEY_FILE DEVICE_FINGERPRINT [N]");
            std::process::exit(2);
        }
    };
    let identity = IdentityKey::from_file_text(&std::fs::read_to_string(key_file)?)?;
    println!("server fingerprint: {}", identity.public().fingerprint());
    let mut devices = AuthorizedDevices::new();
    devices.insert(device.clone(), "my-device".into());
    let config = ServerConfig::new(Arc::new(identity), Arc::new(devices));
    let listener = Listener::bind(listen.as_str(), Arc::new(config), Timeouts::default()).await?;
    let done = Arc::new(Notify::new());
    let sink = Print {
        written: 0,
        stop_after,
        done: done.clone(),
    };
    // The duplicate filter: a message resent after a reconnect is acknowledged, not printed
    // twice (1024 streams remembered for an hour).
    let streams = Streams::new(1024, DEFAULT_MAX_OUT_OF_ORDER, Duration::from_secs(3600));
    let (intake, _written) = intake::start(Box::new(sink), streams, None);
    let options = tcp_server::ServerOptions {
        limits: Default::default(),
        hello_timeout: tcp_server::DEFAULT_HELLO_TIMEOUT,
        drain_timeout: Duration::from_secs(5),
        live: None,
        // No downlink or relay in this example.
        hub: std::sync::Arc::new(secchan::service::hub::Hub::new(
            secchan::service::hub::RelayPolicy::Off,
        )),
        latency: None,
    };
    let stop = async move {
        tokio::select! {
            _ = done.notified() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    tcp_server::run(listener, intake, options, stop).await;
    Ok(())
}
