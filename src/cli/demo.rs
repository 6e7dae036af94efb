//! `secchan demo`: a server and a device in one process on loopback.

use super::CliError;
use crate::crypto::identity::IdentityKey;
use crate::crypto::kem::{Suite, X25519_MLKEM768, X25519_ONLY};
use crate::crypto::random::OsRandom;
use crate::handshake::device::DeviceConfig;
use crate::handshake::server::ServerConfig;
use crate::handshake::{AuthorizedDevices, Mode};
use crate::record::RECORD_OVERHEAD;
use crate::transport::tcp::{connect, Listener, FRAME_PREFIX_LEN};
use crate::transport::{Timeouts, TransportError};
use crate::trust::Pinned;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SAMPLES: [&str; 4] = [
    r#"{"sensor":"greenhouse-1","temperature_c":21.4,"humidity_pct":48}"#,
    r#"{"sensor":"greenhouse-1","temperature_c":21.6,"humidity_pct":47}"#,
    r#"{"sensor":"patch-7","heart_rate_bpm":72,"spo2_pct":98}"#,
    r#"{"sensor":"patch-7","heart_rate_bpm":74,"spo2_pct":97}"#,
];

/// Handshakes timed per suite for the comparison line.
const TIMED_HANDSHAKES: usize = 50;

fn key(e: crate::crypto::CryptoError) -> CliError {
    CliError::Session {
        error: TransportError::Handshake(e.into()),
    }
}

/// Starts a server in `mode` that acknowledges every message; returns its address.
async fn start_server(
    server_key: Arc<IdentityKey>,
    devices: AuthorizedDevices,
) -> Result<std::net::SocketAddr, CliError> {
    let mut config = ServerConfig::new(server_key, Arc::new(devices));
    config.mode = Mode::Any;
    let listener = Listener::bind("127.0.0.1:0", Arc::new(config), Timeouts::default())
        .await
        .map_err(|source| CliError::Bind {
            addr: "127.0.0.1:0".into(),
            source,
        })?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok(incoming) = listener.accept().await {
            tokio::spawn(async move {
                let Ok((mut conn, peer)) = incoming.handshake().await else {
                    return;
                };
                let mut n = 0u32;
                while let Ok(Some(m)) = conn.recv().await {
                    n += 1;
                    println!(
                        "  server  <- {} : {}",
                        peer.name,
                        String::from_utf8_lossy(&m)
                    );
                    if conn.send(format!("ack {n}").as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

fn device_config(suite: &'static Suite, identity: &Arc<IdentityKey>) -> DeviceConfig {
    DeviceConfig::default()
        .with_suite(suite)
        .with_identity(identity.clone())
}

/// Median device-side handshake time (connect() to finish sent) over `n` handshakes.
async fn time_handshakes(
    addr: std::net::SocketAddr,
    config: &DeviceConfig,
    pin: &Pinned,
    n: usize,
) -> Result<Duration, CliError> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let conn = connect(addr, config, pin, Timeouts::default()).await?;
        times.push(start.elapsed());
        conn.close(Duration::from_secs(5)).await?;
    }
    times.sort();
    Ok(times.get(n / 2).copied().unwrap_or_default())
}

/// Runs the demo and prints what happened.
pub async fn run() -> Result<(), CliError> {
    let server_key = Arc::new(IdentityKey::generate(&mut OsRandom).map_err(key)?);
    let device_key = Arc::new(IdentityKey::generate(&mut OsRandom).map_err(key)?);
    let mut devices = AuthorizedDevices::new();
    devices.insert(device_key.public().fingerprint(), "demo-device".into());
    let addr = start_server(server_key.clone(), devices).await?;
    let pin = Pinned(server_key.public().fingerprint());

    println!("secchan demo: server and device on {addr}");
    println!("  server key  {}", server_key.public().fingerprint());
    println!(
        "  device key  {} (authorized as demo-device)",
        device_key.public().fingerprint()
    );

    let config = device_config(&X25519_MLKEM768, &device_key);
    let start = Instant::now();
    let mut conn = connect(addr, &config, &pin, Timeouts::default()).await?;
    let handshake_time = start.elapsed();
    let hs = conn.stats();
    println!();
    println!(
        "handshake: {} + {}, server authenticated by pinned key, device by its key",
        conn.session().suite().name,
        conn.session().aead()
    );
    println!(
        "  time      {:.2} ms (device side, TCP connect to finish sent)",
        handshake_time.as_secs_f64() * 1e3
    );
    println!(
        "  bytes     {} device->server, {} server->device, {} total",
        hs.handshake_sent,
        hs.handshake_received,
        hs.handshake_sent + hs.handshake_received
    );
    println!();
    println!("telemetry:");
    let mut payload = 0usize;
    for sample in SAMPLES {
        println!("  device  -> {sample}");
        conn.send(sample.as_bytes()).await?;
        payload += sample.len();
        if let Some(reply) = conn.recv().await? {
            println!("  device  <- {}", String::from_utf8_lossy(&reply));
        }
    }
    let before_close = conn.stats();
    let stats = conn.close(Duration::from_secs(5)).await?;
    let record_bytes = before_close.sent - hs.handshake_sent;
    let per_record = RECORD_OVERHEAD + FRAME_PREFIX_LEN;
    println!();
    println!("records:");
    println!(
        "  {} messages, {} payload bytes, {} bytes on the wire: {} bytes overhead per record ({} framing + {} header + {} tag; TLS 1.3 adds 22)",
        SAMPLES.len(),
        payload,
        record_bytes,
        per_record,
        FRAME_PREFIX_LEN,
        crate::record::HEADER_LEN,
        crate::crypto::aead::TAG_LEN,
    );
    println!(
        "  session total: {} bytes sent, {} received, closed with an authenticated close",
        stats.sent, stats.received
    );

    let hybrid = time_handshakes(addr, &config, &pin, TIMED_HANDSHAKES).await?;
    let classical_cfg = device_config(&X25519_ONLY, &device_key);
    let classical = time_handshakes(addr, &classical_cfg, &pin, TIMED_HANDSHAKES).await?;
    let classical_conn = connect(addr, &classical_cfg, &pin, Timeouts::default()).await?;
    let cbytes = classical_conn.stats();
    classical_conn.close(Duration::from_secs(5)).await?;
    println!();
    println!(
        "cost of post-quantum safety (median of {TIMED_HANDSHAKES} handshakes each, this machine):"
    );
    println!(
        "  hybrid    {:>8.1} us  {:>5} bytes",
        hybrid.as_secs_f64() * 1e6,
        hs.handshake_sent + hs.handshake_received
    );
    println!(
        "  classical {:>8.1} us  {:>5} bytes",
        classical.as_secs_f64() * 1e6,
        cbytes.handshake_sent + cbytes.handshake_received
    );
    println!(
        "  ratio     {:>8.2}x     {:>5.1}x",
        hybrid.as_secs_f64() / classical.as_secs_f64().max(1e-9),
        (hs.handshake_sent + hs.handshake_received) as f64
            / (cbytes.handshake_sent + cbytes.handshake_received).max(1) as f64
    );
    Ok(())
}
