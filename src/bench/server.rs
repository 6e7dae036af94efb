//! The in-process server `secchan bench` measures against when no `--connect` is given: the
//! library's own [`Listener`] on loopback, on a runtime of its own (as `secchan server` runs),
//! plus a raw TCP listener for the loopback baseline.

use super::BenchError;
use crate::crypto::identity::IdentityKey;
use crate::crypto::random::OsRandom;
use crate::handshake::server::ServerConfig;
use crate::handshake::ticket::{Resumption, DEFAULT_LIFETIME};
use crate::handshake::{AllowAnyDevice, Mode};
use crate::transport::tcp::Listener;
use crate::transport::Timeouts;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// First byte of a message the bench server echoes back; other messages are discarded.
pub const ECHO_MARKER: u8 = 0x01;

/// Counters the server's threads keep, read by the measuring side.
#[derive(Debug, Default)]
pub struct ServerMeter {
    handshakes: AtomicU64,
    /// Cumulative CPU time of each worker thread, recorded whenever it parks (goes idle).
    cpu: Mutex<HashMap<ThreadId, Duration>>,
}

impl ServerMeter {
    /// Handshakes completed so far.
    pub fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::Acquire)
    }

    /// CPU time the server's threads have used, as of each one's last idle moment.
    pub fn cpu(&self) -> Duration {
        self.cpu
            .lock()
            .map(|m| m.values().sum())
            .unwrap_or_default()
    }

    fn record_park(&self) {
        let used = cpu_time::ThreadTime::now().as_duration();
        if let Ok(mut m) = self.cpu.lock() {
            m.insert(std::thread::current().id(), used);
        }
    }

    /// Waits until `n` handshakes have completed and the workers have gone idle, so
    /// [`cpu`](Self::cpu) covers them. Gives up after `limit`.
    pub async fn settle(&self, n: u64, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.handshakes() < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Workers record their CPU time when they park; give them a moment to do so.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A running in-process server. Dropping it stops its runtime.
pub struct BenchServer {
    /// The secchan listener's address.
    pub addr: SocketAddr,
    /// The raw TCP baseline listener's address.
    pub raw_addr: SocketAddr,
    /// The server key's fingerprint, for the device's pin.
    pub fingerprint: String,
    /// What the server counted.
    pub meter: Arc<ServerMeter>,
    _runtime: tokio::runtime::Runtime,
}

/// A server identity and its ticket keys: what a restarted server keeps.
#[derive(Clone)]
pub struct ServerKeys {
    /// The identity.
    pub identity: Arc<IdentityKey>,
    /// The ticket keys.
    pub resumption: Arc<Resumption>,
}

impl ServerKeys {
    /// A fresh identity and fresh ticket keys in memory (as `secchan server` has by default).
    pub fn generate() -> Result<Self, BenchError> {
        Ok(Self {
            identity: Arc::new(IdentityKey::generate(&mut OsRandom)?),
            resumption: Arc::new(
                Resumption::random(
                    DEFAULT_LIFETIME,
                    std::time::SystemTime::now(),
                    &mut OsRandom,
                )
                .map_err(|_| BenchError::Protocol("no ticket keys"))?,
            ),
        })
    }
}

impl BenchServer {
    /// Starts the server on `threads` worker threads, accepting every suite and device.
    pub fn start(threads: usize) -> Result<Self, BenchError> {
        Self::start_with(threads, ServerKeys::generate()?)
    }

    /// [`start`](Self::start) with `keys` (the same keys again: a restarted server).
    pub fn start_with(threads: usize, keys: ServerKeys) -> Result<Self, BenchError> {
        let meter = Arc::new(ServerMeter::default());
        let park_meter = meter.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("bench-server")
            .on_thread_park(move || park_meter.record_park())
            .enable_all()
            .build()?;
        let fingerprint = keys.identity.public().fingerprint();
        let mut config = ServerConfig::new(keys.identity, Arc::new(AllowAnyDevice));
        config.mode = Mode::Any;
        // As `secchan server` runs by default: tickets in every session.
        config.resumption = Some(keys.resumption);
        let (listener, raw) = runtime.block_on(async {
            let listener =
                Listener::bind("127.0.0.1:0", Arc::new(config), Timeouts::default()).await?;
            let raw = TcpListener::bind("127.0.0.1:0").await?;
            Ok::<_, std::io::Error>((listener, raw))
        })?;
        let addr = listener.local_addr()?;
        let raw_addr = raw.local_addr()?;
        runtime.spawn(accept_loop(listener, meter.clone()));
        runtime.spawn(raw_loop(raw));
        Ok(Self {
            addr,
            raw_addr,
            fingerprint,
            meter,
            _runtime: runtime,
        })
    }
}

async fn accept_loop(listener: Listener, meter: Arc<ServerMeter>) {
    while let Ok(incoming) = listener.accept().await {
        let meter = meter.clone();
        tokio::spawn(async move {
            let Ok((mut conn, _peer)) = incoming.handshake().await else {
                return;
            };
            meter.handshakes.fetch_add(1, Ordering::AcqRel);
            while let Ok(Some(m)) = conn.recv().await {
                if m.first() == Some(&ECHO_MARKER) && conn.send(&m).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Raw TCP baseline: echo one byte, then read to end of stream and answer with one byte.
async fn raw_loop(listener: TcpListener) {
    while let Ok((mut stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let mut byte = [0u8; 1];
            if stream.read_exact(&mut byte).await.is_err() || stream.write_all(&byte).await.is_err()
            {
                return;
            }
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    let _ = stream.write_all(&byte).await;
                    return;
                }
            }
        });
    }
}
