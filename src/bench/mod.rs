//! `secchan bench`: handshake latency, bytes and CPU, server capacity, record overhead,
//! message rate, bulk throughput and memory, measured over real TCP connections
//! (docs/benchmarks.md explains each figure and how to reproduce it).
//!
//! Without a target it starts a server in this process on loopback (the library's own
//! [`Listener`](crate::transport::tcp::Listener) on a runtime of its own); with one it
//! measures against a running `secchan server`, e.g. from a Raspberry Pi over a real network.

pub mod attack;
#[cfg(feature = "mqtt")]
pub mod flood;
mod measure;
#[cfg(feature = "mqtt")]
pub mod mqtt;
pub mod ops;
mod plot;
mod progress;
pub mod relay;
mod report;
pub mod server;
pub mod sinks;
pub mod storm;
mod system;

pub use measure::Target;
pub use plot::{parse_pi_counts, write_pi as write_pi_plot, write_storm as write_storm_plot};
pub use report::Report;
pub use server::BenchServer;

use crate::crypto::aead::AeadId;
use crate::crypto::kem::{Suite, X25519_MLKEM768};
use measure::MemoryResult;
use progress::Progress;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A session failed.
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    /// A socket, file or child process failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A key could not be generated.
    #[error(transparent)]
    Crypto(#[from] crate::crypto::CryptoError),
    /// An in-memory handshake failed.
    #[error(transparent)]
    Handshake(#[from] crate::handshake::HandshakeError),
    /// An in-memory record failed.
    #[error(transparent)]
    Record(#[from] crate::record::RecordError),
    /// The peer did something the benchmark does not expect.
    #[error("unexpected server behaviour: {0}")]
    Protocol(&'static str),
    /// The helper process holding idle sessions failed.
    #[error("the helper process holding idle sessions failed: {0}")]
    Helper(String),
}

/// What to measure and how much.
#[derive(Debug, Clone)]
pub struct Options {
    /// Timed handshakes per suite and AEAD.
    pub handshakes: usize,
    /// Untimed handshakes before them.
    pub warmup: usize,
    /// Concurrent devices for the capacity figure.
    pub capacity_devices: usize,
    /// How long each capacity run lasts.
    pub capacity_time: Duration,
    /// Messages per payload size for the message-rate figures.
    pub messages: u64,
    /// Round trips per payload size for the message-latency figures.
    pub round_trips: usize,
    /// Bytes moved one way for the bulk figure (16 KiB writes).
    pub bulk_bytes: u64,
    /// Idle sessions held open for the memory figure (0 skips it).
    pub idle_sessions: usize,
    /// Suites measured; the first hybrid and the classical one give the ratios.
    pub suites: Vec<&'static Suite>,
    /// AEADs measured.
    pub aeads: Vec<AeadId>,
    /// Worker threads of the in-process server.
    pub server_threads: usize,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Also measure secchan beside plaintext MQTT through this broker.
    #[cfg(feature = "mqtt")]
    pub mqtt: Option<mqtt::MqttBench>,
}

impl Options {
    /// The full run the issue asks for: 300 handshakes per suite and AEAD, 256 MiB bulk,
    /// 1,000 idle sessions.
    pub fn full() -> Self {
        Self {
            handshakes: 300,
            warmup: 30,
            capacity_devices: 8,
            capacity_time: Duration::from_secs(2),
            messages: 20_000,
            round_trips: 2_000,
            bulk_bytes: 256 << 20,
            idle_sessions: 1_000,
            suites: crate::crypto::kem::ALL_SUITES.to_vec(),
            aeads: vec![AeadId::Aes256Gcm, AeadId::ChaCha20Poly1305],
            server_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            progress: true,
            #[cfg(feature = "mqtt")]
            mqtt: None,
        }
    }

    /// A short run (a few seconds) for smoke tests and slow devices.
    pub fn quick() -> Self {
        Self {
            handshakes: 50,
            warmup: 5,
            capacity_time: Duration::from_millis(300),
            messages: 2_000,
            round_trips: 200,
            bulk_bytes: 16 << 20,
            idle_sessions: 100,
            ..Self::full()
        }
    }

    /// The payload sizes of the record figures.
    pub const PAYLOADS: [usize; 5] = [16, 64, 256, 1024, crate::record::MAX_PAYLOAD];

    /// Payload sizes of the message-latency figures.
    pub const SMALL_PAYLOADS: [usize; 2] = [64, 256];

    fn steps(&self, local: bool) -> u64 {
        let combos = (self.suites.len() * self.aeads.len()) as u64;
        let per_aead = Self::PAYLOADS.len() as u64
            + if local {
                Self::SMALL_PAYLOADS.len() as u64
            } else {
                0
            };
        (combos + 1) * self.handshakes as u64
            + self.suites.len() as u64
            + self.aeads.len() as u64 * per_aead
            + u64::from(local)
            + u64::from(self.idle_sessions > 0)
            + self.mqtt_steps()
    }

    #[cfg(feature = "mqtt")]
    fn mqtt_steps(&self) -> u64 {
        self.mqtt
            .as_ref()
            .map_or(0, |_| Self::SMALL_PAYLOADS.len() as u64)
    }

    #[cfg(not(feature = "mqtt"))]
    fn mqtt_steps(&self) -> u64 {
        0
    }
}

/// Runs every measurement against `target` (the in-process `server`, if given).
///
/// Blocking: builds its own single-threaded runtime for the device side, so call it from a
/// plain thread, not from inside an async task.
pub fn run(
    opts: &Options,
    target: &Target,
    server: Option<&BenchServer>,
) -> Result<Report, BenchError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut progress = Progress::new(opts.progress, opts.steps(server.is_some()));
    let mut report = Report::new(opts, server.is_some());
    rt.block_on(async {
        let combos: Vec<_> = opts
            .suites
            .iter()
            .flat_map(|&s| opts.aeads.iter().map(move |&a| (s, a)))
            .collect();
        // First, so that an unreachable broker fails the run at once.
        #[cfg(feature = "mqtt")]
        if let Some(m) = &opts.mqtt {
            progress.phase("MQTT: secchan and plaintext through the broker");
            report.mqtt = Some(mqtt::run(m, target, opts, || progress.tick()).await?);
        }
        progress.phase("handshakes, every suite and AEAD in turn");
        // Resumption beside the first suite and AEAD's full handshakes (protocol.md §6.3).
        let resumption = combos.first().copied();
        report.handshakes = measure::handshakes(
            target,
            &combos,
            resumption,
            opts.warmup,
            opts.handshakes,
            || progress.tick(),
        )
        .await?;
        let default_aead = opts.aeads.first().copied().unwrap_or(AeadId::Aes256Gcm);
        for &suite in &opts.suites {
            progress.phase(&format!("capacity {}", suite.name));
            let r = measure::capacity(
                target,
                suite,
                default_aead,
                opts.capacity_devices,
                opts.capacity_time,
            )
            .await?;
            report.capacity.push(r);
            progress.tick();
        }
        let suite = opts.suites.first().copied().unwrap_or(&X25519_MLKEM768);
        for &aead in &opts.aeads {
            for payload in Options::PAYLOADS {
                progress.phase(&format!("records {aead} {payload} B"));
                let messages = if payload == crate::record::MAX_PAYLOAD {
                    (opts.bulk_bytes / payload as u64).max(1)
                } else {
                    opts.messages.max(1)
                };
                report
                    .records
                    .push(measure::stream(target, suite, aead, payload, messages).await?);
                progress.tick();
            }
            if server.is_some() {
                for payload in Options::SMALL_PAYLOADS {
                    progress.phase(&format!("round trips {aead} {payload} B"));
                    report
                        .echo
                        .push(measure::echo(target, suite, aead, payload, opts.round_trips).await?);
                    progress.tick();
                }
            }
        }
        if let Some(raw) = target.raw_addr {
            progress.phase("raw TCP baseline");
            report.raw_tcp = Some(measure::raw_tcp(raw, opts.handshakes, opts.bulk_bytes).await?);
            progress.tick();
        }
        if opts.idle_sessions > 0 {
            progress.phase(&format!("{} idle sessions", opts.idle_sessions));
            report.memory = Some(match server {
                Some(_) => idle_sessions_in_child(target, suite, default_aead, opts.idle_sessions)?,
                None => idle_sessions_here(target, suite, default_aead, opts.idle_sessions).await?,
            });
            progress.tick();
        }
        Ok::<_, BenchError>(())
    })?;
    progress.finish();
    report.finish();
    Ok(report)
}

/// Device side: RSS growth of this process while it holds `n` sessions.
async fn idle_sessions_here(
    target: &Target,
    suite: &'static Suite,
    aead: AeadId,
    n: usize,
) -> Result<MemoryResult, BenchError> {
    let before = system::rss_kib().unwrap_or(0);
    let mut after = before;
    measure::hold_sessions(target, suite, aead, n, async {
        after = system::rss_kib().unwrap_or(before);
    })
    .await?;
    Ok(MemoryResult {
        sessions: n,
        side: "device",
        rss_per_session_kib: after.saturating_sub(before) as f64 / n as f64,
    })
}

/// Server side: this process runs the server; a child process (this executable, `secchan
/// bench --hold-sessions`) opens `n` sessions and holds them while the server's RSS growth is
/// read.
fn idle_sessions_in_child(
    target: &Target,
    suite: &'static Suite,
    aead: AeadId,
    n: usize,
) -> Result<MemoryResult, BenchError> {
    let exe: PathBuf = std::env::current_exe()?;
    let before = system::rss_kib().unwrap_or(0);
    let mut child = Command::new(exe)
        .args(["bench", "--hold-sessions", &n.to_string()])
        .args(["--connect", &target.addr.to_string()])
        .args(["--server-key", &target.pin.0])
        .args(["--suite", suite.name, "--aead", aead.name()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        BufReader::new(out).read_line(&mut line)?;
    }
    // Let the server's tasks reach their idle state.
    std::thread::sleep(Duration::from_millis(200));
    let after = system::rss_kib().unwrap_or(before);
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"\n");
    }
    let status = child.wait()?;
    if line.trim() != HOLD_READY || !status.success() {
        return Err(BenchError::Helper(format!(
            "it exited with {status} before holding its sessions"
        )));
    }
    Ok(MemoryResult {
        sessions: n,
        side: "server",
        rss_per_session_kib: after.saturating_sub(before) as f64 / n as f64,
    })
}

/// What the helper prints once its sessions are established.
const HOLD_READY: &str = "ready";

/// The helper's side of [`idle_sessions_in_child`]: opens `n` sessions, prints `ready`,
/// holds them until a line (or end of input) arrives on stdin, then closes them cleanly.
pub fn hold(
    target: &Target,
    suite: &'static Suite,
    aead: AeadId,
    n: usize,
) -> Result<(), BenchError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(measure::hold_sessions(target, suite, aead, n, async {
        println!("{HOLD_READY}");
        let _ = std::io::stdout().flush();
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)
        })
        .await;
    }))
}
