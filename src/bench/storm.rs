//! `secchan bench --storm N`: N devices reconnecting at once after a server restart, with
//! full hybrid handshakes beside resumptions, measured side by side in one run.
//!
//! Each round starts an in-process server, connects N devices (and, for the resumption round,
//! lets each take its ticket), then restarts the server with the same identity and ticket keys
//! (every connection is cut) and has every device reconnect at once, retrying with back-off
//! (50 ms doubling to 1 s, jittered) until it has a session. The figure that matters is the
//! time until every device is back.

use super::measure::Target;
use super::server::{BenchServer, ServerKeys};
use super::system::Percentiles;
use super::BenchError;
use crate::backoff::Backoff;
use crate::crypto::aead::AeadId;
use crate::crypto::identity::IdentityKey;
use crate::crypto::kem::Suite;
use crate::crypto::random::OsRandom;
use crate::handshake::resume::Ticket;
use crate::transport::tcp::Connection;
use crate::trust::Pinned;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Devices connecting at once while the storm is set up (not timed).
const SETUP_PARALLEL: usize = 64;
/// Reconnect back-off of the storm's devices.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// One round of the storm.
#[derive(Debug, Clone, Serialize)]
pub struct StormRound {
    /// "full handshake" or "resumption".
    pub how: &'static str,
    /// Devices.
    pub devices: usize,
    /// Seconds from the restart until every device had a session again.
    pub all_back_s: f64,
    /// Seconds until each device was back.
    pub back_s: Percentiles,
    /// Connection attempts that failed and were retried.
    pub retries: u64,
    /// Server CPU seconds spent on the reconnections.
    pub server_cpu_s: f64,
    /// Handshake bytes per reconnection, both directions, on the TCP wire.
    pub bytes_per_device: f64,
    /// Every device's time until back, sorted (for the chart).
    #[serde(skip)]
    pub curve: Vec<f64>,
}

/// Both rounds.
#[derive(Debug, Clone, Serialize)]
pub struct StormReport {
    /// Suite of the devices' sessions.
    pub suite: &'static str,
    /// AEAD.
    pub aead: &'static str,
    /// Full handshakes, then resumptions.
    pub rounds: Vec<StormRound>,
}

impl StormReport {
    /// The report's section as Markdown.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "## Reconnect storm ({} devices, {} {})\n\n| reconnection | all back (s) | median (s) | p90 (s) | retries | server CPU (s) | bytes/device |\n|---|---|---|---|---|---|---|\n",
            self.rounds.first().map_or(0, |r| r.devices),
            self.suite,
            self.aead
        );
        for r in &self.rounds {
            s.push_str(&format!(
                "| {} | {:.2} | {:.3} | {:.3} | {} | {:.2} | {:.0} |\n",
                r.how,
                r.all_back_s,
                r.back_s.median,
                r.back_s.p90,
                r.retries,
                r.server_cpu_s,
                r.bytes_per_device
            ));
        }
        if let [full, resumed] = &self.rounds[..] {
            s.push_str(&format!(
                "\nresumption/full: all back {:.2}x, server CPU {:.2}x, bytes {:.3}x\n",
                resumed.all_back_s / full.all_back_s,
                resumed.server_cpu_s / full.server_cpu_s.max(f64::MIN_POSITIVE),
                resumed.bytes_per_device / full.bytes_per_device
            ));
        }
        s
    }

    /// The chart's curves: % of devices back by each time.
    pub fn curves(&self) -> Vec<(String, Vec<(f64, f64)>)> {
        self.rounds
            .iter()
            .map(|r| {
                let pts = super::plot::cumulative(&r.curve, r.curve.len());
                (r.how.to_string(), pts)
            })
            .collect()
    }
}

/// Runs both rounds with `devices` devices. It drives runtimes of its own (the servers',
/// and one for the devices): call it from a thread that is not inside a runtime.
pub fn run(
    devices: usize,
    suite: &'static Suite,
    aead: AeadId,
    server_threads: usize,
) -> Result<StormReport, BenchError> {
    let device_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("storm-devices")
        .enable_all()
        .build()?;
    let mut rounds = Vec::new();
    for resumed in [false, true] {
        rounds.push(round(
            &device_rt,
            devices,
            (suite, aead),
            server_threads,
            resumed,
        )?);
    }
    Ok(StormReport {
        suite: suite.name,
        aead: aead.name(),
        rounds,
    })
}

fn target(server: &BenchServer, identity: &Arc<IdentityKey>) -> Arc<Target> {
    Arc::new(Target {
        addr: server.addr,
        raw_addr: None,
        pin: Pinned(server.fingerprint.clone()),
        identity: identity.clone(),
        meter: Some(server.meter.clone()),
    })
}

/// Waits (briefly) for the ticket the server sends right after the handshake.
async fn take_ticket(conn: &mut Connection) -> Option<Ticket> {
    for _ in 0..20 {
        if let Some(t) = conn.take_ticket() {
            return Some(t);
        }
        let _ = tokio::time::timeout(Duration::from_millis(50), conn.recv()).await;
    }
    conn.take_ticket()
}

fn round(
    rt: &tokio::runtime::Runtime,
    devices: usize,
    (suite, aead): (&'static Suite, AeadId),
    server_threads: usize,
    resumed: bool,
) -> Result<StormRound, BenchError> {
    let keys = ServerKeys::generate()?;
    let identity = Arc::new(IdentityKey::generate(&mut OsRandom)?);
    let before = BenchServer::start_with(server_threads, keys.clone())?;
    let first = target(&before, &identity);
    // Every device has a session (and a ticket) when the server goes down.
    let gate = Arc::new(tokio::sync::Semaphore::new(SETUP_PARALLEL));
    let held = rt.block_on(async {
        let mut setup = Vec::with_capacity(devices);
        for _ in 0..devices {
            let (first, gate) = (first.clone(), gate.clone());
            setup.push(tokio::spawn(async move {
                let _permit = gate.acquire().await;
                let mut conn = first.connect(suite, aead).await?;
                let ticket = take_ticket(&mut conn).await;
                Ok::<_, BenchError>((conn, ticket))
            }));
        }
        let mut held = Vec::with_capacity(devices);
        for t in setup {
            held.push(
                t.await
                    .map_err(|_| BenchError::Protocol("a storm device failed"))??,
            );
        }
        Ok::<_, BenchError>(held)
    })?;
    drop(before);
    let after = BenchServer::start_with(server_threads, keys)?;
    let second = target(&after, &identity);
    let cpu_before = after.meter.cpu();
    let start = Instant::now();
    let _guard = rt.enter();
    let mut storm = Vec::with_capacity(devices);
    for (conn, ticket) in held {
        drop(conn);
        let second = second.clone();
        storm.push(tokio::spawn(async move {
            let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX, (0.5, 1.0));
            let mut retries = 0u64;
            loop {
                let attempt = match (&ticket, resumed) {
                    (Some(t), true) => second.resume(suite, aead, t).await,
                    _ => second.connect(suite, aead).await,
                };
                match attempt {
                    Ok(conn) => {
                        let back = start.elapsed();
                        let stats = conn.stats();
                        return (
                            back,
                            retries,
                            stats.handshake_sent + stats.handshake_received,
                            conn,
                        );
                    }
                    Err(_) => {
                        retries += 1;
                        tokio::time::sleep(backoff.next_pause()).await;
                    }
                }
            }
        }));
    }
    let mut back = Vec::with_capacity(devices);
    let (mut retries, mut bytes) = (0u64, 0u64);
    let conns = rt.block_on(async {
        let mut conns = Vec::with_capacity(devices);
        for t in storm {
            let (b, r, n, conn) = t
                .await
                .map_err(|_| BenchError::Protocol("a storm device failed"))?;
            back.push(b.as_secs_f64());
            retries += r;
            bytes += n;
            conns.push(conn);
        }
        after.meter.settle(0, Duration::from_millis(0)).await;
        Ok::<_, BenchError>(conns)
    })?;
    let all_back_s = start.elapsed().as_secs_f64();
    let server_cpu_s = (after.meter.cpu().saturating_sub(cpu_before)).as_secs_f64();
    drop(conns);
    drop(_guard);
    drop(after);
    back.sort_by(f64::total_cmp);
    let mut micros: Vec<f64> = back.clone();
    let back_s = Percentiles::of(&mut micros);
    Ok(StormRound {
        how: if resumed {
            "resumption"
        } else {
            "full handshake"
        },
        devices,
        all_back_s: back.last().copied().unwrap_or(all_back_s),
        back_s,
        retries,
        server_cpu_s,
        bytes_per_device: bytes as f64 / devices.max(1) as f64,
        curve: back,
    })
}
