//! `secchan bench --mqtt URL --mqtt-flood`: honest devices handshaking through the broker
//! while one broker client floods the hello topic (docs/mqtt.md §12).
//!
//! For each flood rate (hellos per second, or unpaced: as fast as the client can publish),
//! on three runtimes of this process, as three machines would: a secchan server instance; an
//! attacker, one MQTT client publishing a captured DeviceHello under fresh session ids on its
//! own topic level at QoS 0 (a broker ACL confines it to that level, docs/mqtt.md §2); and
//! honest devices, started one after another while the flood runs, each with the retry
//! budget of `secchan device` (a 10 s handshake timeout, 3 attempts). A device succeeds if
//! its first message is acknowledged within that budget; its latency is from
//! `MqttDevice::start` until the session is up.

use super::system::Percentiles;
use super::BenchError;
use crate::crypto::identity::IdentityKey;
use crate::crypto::kem::X25519_MLKEM768;
use crate::crypto::random::OsRandom;
use crate::delivery::{Streams, DEFAULT_MAX_OUT_OF_ORDER};
use crate::handshake::device::{self, DeviceConfig};
use crate::handshake::server::ServerConfig;
use crate::handshake::{AllowAnyDevice, Mode};
use crate::service::intake;
use crate::service::mqtt_server;
use crate::service::sink::Discard;
use crate::transport::mqtt::{
    random_hex, Broker, DeviceOptions, MqttDevice, MqttServer, ServerOptions, ServerStats, Topics,
};
use crate::transport::Timeouts;
use crate::trust::Pinned;
use serde::Serialize;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Flood before the first honest device starts, so it meets a flood in full swing.
const WARMUP: Duration = Duration::from_secs(2);
/// The honest devices' handshake timeout and attempts: `secchan device`'s defaults but for
/// the attempts.
const DEVICE_HANDSHAKE: Duration = Duration::from_secs(10);
const DEVICE_ATTEMPTS: u32 = 3;
/// Paced floods publish in this many bursts a second.
const TICKS_PER_SECOND: u64 = 100;

/// What `--mqtt-flood` measures.
#[derive(Debug, Clone)]
pub struct FloodBench {
    /// The broker (credentials, client id, prefix as given).
    pub broker: Broker,
    /// Flood rates in hellos per second; 0 is unpaced.
    pub rates: Vec<u64>,
    /// Honest devices per rate.
    pub devices: usize,
    /// Seconds over which the honest devices start.
    pub spread: Duration,
}

/// One honest device's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Honest {
    /// Whether its message was acknowledged within its retry budget.
    pub ok: bool,
    /// Seconds from start until the session was up (for successful devices).
    pub handshake_s: f64,
    /// Handshakes it had to try again.
    pub retries: u64,
}

/// One flood rate's figures.
#[derive(Debug, Clone, Serialize)]
pub struct FloodFigures {
    /// The rate asked for (hellos/s); 0 is unpaced.
    pub rate: u64,
    /// Hellos the attacker published per second, as achieved.
    pub achieved_per_s: f64,
    /// Honest devices that succeeded, of all.
    pub succeeded: usize,
    /// Honest devices started.
    pub devices: usize,
    /// Percentiles of the successful devices' handshake seconds.
    pub handshake_s: Percentiles,
    /// Longest successful handshake, seconds.
    pub max_handshake_s: f64,
    /// Each device.
    pub honest: Vec<Honest>,
    /// The server's counters.
    pub server: FloodServerStats,
}

/// The server counters that tell what the flood cost.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FloodServerStats {
    /// ServerHellos sent.
    pub hellos_answered: u64,
    /// Hellos dropped unanswered (per-client queue bound, or too old).
    pub shed_hellos: u64,
    /// Pending handshakes forgotten for newer ones.
    pub evicted_handshakes: u64,
    /// Sessions established (the honest devices').
    pub sessions: u64,
    /// Publishes the server's send queues dropped.
    pub dropped_publishes: u64,
}

impl From<ServerStats> for FloodServerStats {
    fn from(s: ServerStats) -> Self {
        Self {
            hellos_answered: s.hellos_answered,
            shed_hellos: s.shed_hellos,
            evicted_handshakes: s.evicted_handshakes,
            sessions: s.sessions_established,
            dropped_publishes: s.dropped_publishes,
        }
    }
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct FloodReport {
    /// One entry per rate.
    pub floods: Vec<FloodFigures>,
}

fn runtime(name: &str) -> Result<tokio::runtime::Runtime, BenchError> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()?)
}

fn rate_name(rate: u64) -> String {
    if rate == 0 {
        "unpaced".into()
    } else {
        format!("{rate}/s")
    }
}

/// Runs every rate in turn; call from a thread that is not a runtime's.
pub fn run(bench: &FloodBench) -> Result<FloodReport, BenchError> {
    let mut floods = Vec::new();
    for &rate in &bench.rates {
        eprintln!("secchan bench: flood at {} ...", rate_name(rate));
        floods.push(one(bench, rate)?);
    }
    Ok(FloodReport { floods })
}

/// The broker as one of the benchmark's clients: a given client id gets `-role` appended.
fn client(broker: &Broker, role: &str) -> Broker {
    let mut b = broker.clone();
    b.client_id = b.client_id.map(|id| format!("{id}-{role}"));
    b
}

fn one(bench: &FloodBench, rate: u64) -> Result<FloodFigures, BenchError> {
    let mut broker = bench.broker.clone();
    let prefix = format!("{}/flood-{}", broker.topics.prefix(), random_hex::<4>()?);
    broker.topics = Topics::new(&prefix).map_err(|e| BenchError::Transport(e.into()))?;
    let (server_rt, attacker_rt, devices_rt) = (
        runtime("flood-server")?,
        runtime("flood-attacker")?,
        runtime("flood-devices")?,
    );
    let identity = Arc::new(IdentityKey::generate(&mut OsRandom)?);
    let pin = Arc::new(Pinned(identity.public().fingerprint()));
    let mut config = ServerConfig::new(identity, Arc::new(AllowAnyDevice));
    config.mode = Mode::Any;
    let server_broker = client(&broker, "server");
    let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = server_rt.block_on(async {
        MqttServer::start(&server_broker, Arc::new(config), ServerOptions::default()).await
    })?;
    let server_task = server_rt.spawn(async move {
        let streams = Streams::new(1024, DEFAULT_MAX_OUT_OF_ORDER, Duration::from_secs(3600));
        let (intake, written) = intake::start(Box::new(Discard), streams, None);
        let stats = mqtt_server::serve(server, intake, async {
            let _ = stopped.await;
        })
        .await;
        let _ = written.await;
        stats
    });

    // The attacker: a captured hello, published again and again on its own topic level.
    let (_, hello) = device::start(&DeviceConfig::default(), &mut OsRandom)?;
    let attacker = client(&broker, "attacker");
    let mqtt = |e: crate::transport::mqtt::MqttError| BenchError::Transport(e.into());
    let level = attacker.client_id().map_err(mqtt)?;
    let options = attacker.client_options().map_err(mqtt)?;
    let running = Arc::new(AtomicBool::new(true));
    let sent = Arc::new(AtomicU64::new(0));
    let flood = {
        let (running, sent, topics) = (running.clone(), sent.clone(), broker.topics.clone());
        attacker_rt.spawn(async move {
            let mut options = options;
            options.set_client_id(level.clone());
            let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 4096);
            let poll = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1) / TICKS_PER_SECOND as u32);
            let mut n: u64 = 0;
            while running.load(Ordering::Relaxed) {
                let burst = if rate == 0 {
                    64
                } else {
                    tick.tick().await;
                    // Catch up with the schedule, however the ticks fell.
                    let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
                    due.saturating_sub(n)
                };
                for _ in 0..burst {
                    let topic = topics.hello(&level, &format!("{n:032x}"));
                    n += 1;
                    if client
                        .publish(
                            topic,
                            rumqttc::v5::mqttbytes::QoS::AtMostOnce,
                            false,
                            hello.clone(),
                        )
                        .await
                        .is_ok()
                    {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            let _ = client.disconnect().await;
            poll.abort();
            started.elapsed()
        })
    };
    std::thread::sleep(WARMUP);

    // The honest devices, one every spread / devices.
    let spacing = bench.spread / bench.devices.max(1) as u32;
    let tasks: Vec<_> = (0..bench.devices)
        .map(|i| {
            let (b, pin) = (client(&broker, &format!("device{i}")), pin.clone());
            let delay = spacing * i as u32;
            devices_rt.spawn(async move {
                tokio::time::sleep(delay).await;
                honest(&b, pin).await
            })
        })
        .collect();
    let honest: Vec<Honest> = devices_rt.block_on(async {
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap_or(Honest {
                ok: false,
                handshake_s: 0.0,
                retries: 0,
            }));
        }
        out
    });
    running.store(false, Ordering::Relaxed);
    let flood_time = attacker_rt
        .block_on(flood)
        .map_err(|_| BenchError::Protocol("the flood task failed"))?;
    let _ = stop_server.send(());
    let stats = server_rt
        .block_on(server_task)
        .map_err(|_| BenchError::Protocol("the flood server's task failed"))??;
    server_rt.shutdown_background();
    attacker_rt.shutdown_background();
    devices_rt.shutdown_background();
    let mut times: Vec<f64> = honest
        .iter()
        .filter(|h| h.ok)
        .map(|h| h.handshake_s)
        .collect();
    let max_handshake_s = times.iter().copied().fold(0.0, f64::max);
    Ok(FloodFigures {
        rate,
        achieved_per_s: sent.load(Ordering::Relaxed) as f64 / flood_time.as_secs_f64().max(1e-9),
        succeeded: times.len(),
        devices: honest.len(),
        handshake_s: Percentiles::of(&mut times),
        max_handshake_s,
        honest,
        server: stats.into(),
    })
}

/// One honest device: handshake, one message, its acknowledgement.
async fn honest(broker: &Broker, pin: Arc<Pinned>) -> Honest {
    let failed = Honest {
        ok: false,
        handshake_s: 0.0,
        retries: 0,
    };
    let Ok(identity) = IdentityKey::generate(&mut OsRandom) else {
        return failed;
    };
    let config = DeviceConfig::default()
        .with_suite(&X25519_MLKEM768)
        .with_identity(Arc::new(identity));
    let options = DeviceOptions {
        timeouts: Timeouts {
            handshake: DEVICE_HANDSHAKE,
            ..Timeouts::default()
        },
        handshake_attempts: DEVICE_ATTEMPTS,
        ..DeviceOptions::default()
    };
    let start = Instant::now();
    let Ok(mut device) = MqttDevice::start(broker, config, pin, options).await else {
        return failed;
    };
    let handshake_s = start.elapsed().as_secs_f64();
    let retries = device.stats().handshake_retries;
    if device.send(b"{\"honest\":true}".to_vec()).await.is_err() {
        return failed;
    }
    let ok = device.finish(Duration::from_secs(30)).await.is_ok();
    Honest {
        ok,
        handshake_s,
        retries,
    }
}

impl FloodReport {
    /// The table printed after the run.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "MQTT hello flood (one attacker client, QoS 0) against honest devices (10 s handshake timeout, 3 attempts)");
        let _ = writeln!(
            s,
            "{:>9} {:>12} {:>10} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>8}",
            "flood",
            "achieved/s",
            "honest ok",
            "med s",
            "p90 s",
            "max s",
            "answered",
            "shed",
            "evicted",
            "dropped"
        );
        for f in &self.floods {
            let _ = writeln!(
                s,
                "{:>9} {:>12.0} {:>5}/{:<4} {:>8.3} {:>8.3} {:>8.3} {:>9} {:>9} {:>9} {:>8}",
                rate_name(f.rate),
                f.achieved_per_s,
                f.succeeded,
                f.devices,
                f.handshake_s.median,
                f.handshake_s.p90,
                f.max_handshake_s,
                f.server.hellos_answered,
                f.server.shed_hellos,
                f.server.evicted_handshakes,
                f.server.dropped_publishes,
            );
        }
        s
    }

    /// The chart's curves: per rate, the share of honest devices up within x seconds.
    pub(super) fn curves(&self) -> Vec<(String, Vec<(f64, f64)>)> {
        self.floods
            .iter()
            .map(|f| {
                let mut t: Vec<f64> = f
                    .honest
                    .iter()
                    .filter(|h| h.ok)
                    .map(|h| h.handshake_s)
                    .collect();
                t.sort_by(f64::total_cmp);
                let n = f.devices.max(1) as f64;
                let points = t
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| (v, 100.0 * (i + 1) as f64 / n))
                    .collect();
                (format!("flood {}", rate_name(f.rate)), points)
            })
            .collect()
    }

    /// Writes `mqtt-flood.svg` into `dir`.
    pub fn write_plot(&self, dir: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
        super::plot::write_flood(self, dir)
    }
}
