//! `secchan bench --attack`: the TCP server under each attack protocol.md §2.3 defends
//! against, with an honest device trying to get through, on loopback.
//!
//! The server is `secchan server` itself, in its own process (so its CPU time and memory are
//! read from `/proc`), with `--max-sessions 200 --max-pending 256` and otherwise its defaults;
//! each attack runs twice side by side, with those defences and with them turned off as far
//! as the flags go ([`DEFENCES_OFF`]).
//! Attackers are `secchan bench --attacker` processes bound to 127.0.0.2 and up, at the lowest
//! CPU priority (on loopback their CPU is the server's and the honest device's, which in a
//! real attack it is not); the honest
//! device runs in this process on 127.0.0.1 and makes its tries one after another, each a
//! `tcp::connect` (following a cookie if it gets one), one message and its acknowledgement.
//! A try succeeds if the message is acknowledged; its time is the handshake's. Before the
//! attacks, a round without attackers gives the baseline every ratio is measured against.
//! After them, the cookie's cost: `secchan server` always under load and a paced attacker
//! whose hellos never follow their cookies, against a raw TCP server doing the same I/O, in
//! alternating pairs, each process on a CPU of its own where `taskset` can pin them.

pub mod attacker;
pub(crate) mod procs;
pub mod raw;
mod report;

use super::system::{percentile, Percentiles};
use super::BenchError;
use crate::crypto::identity::IdentityKey;
use crate::crypto::random::OsRandom;
use crate::delivery::Envelope;
use crate::handshake::cookie::CookieJar;
use crate::handshake::device::{self, DeviceConfig};
use crate::transport::{tcp, Timeouts};
use crate::trust::Pinned;
use attacker::{Counts, Kind};
use procs::{AttackerProc, RawProc, ServerProc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The server's limits in every round (beside its defaults).
const SERVER_LIMITS: [&str; 2] = ["--max-sessions", "200"];
/// Its pending budget in the rounds with the defences.
const DEFENCES_ON: [&str; 2] = ["--max-pending", "256"];
/// The admission defences turned as far off as the flags go, for the rounds "without": a
/// pending budget as large as the sessions' descriptors allow, no per-source limits, the
/// hello given the whole handshake timeout, never under load. What is not a flag stays on:
/// reads bounded by what arrived, warnings summed up per interval.
const DEFENCES_OFF: [&str; 14] = [
    "--max-pending",
    "65536",
    "--max-pending-per-source",
    "65536",
    "--max-sessions-per-source",
    "1000000",
    "--hello-timeout",
    "10",
    "--cookie-pending",
    "65536",
    "--cookie-rate",
    "1000000000",
    "--source-handshake-rate",
    "1000000000",
];
/// How long one honest try may take before it counts as failed.
const TRY_DEADLINE: Duration = Duration::from_secs(5);
/// What the server may hold per pending handshake, for the memory bound: the frame
/// (at most 1,246 bytes), its task, its socket's buffers in user space and the handshake
/// state after a ServerHello, with room to spare.
const PENDING_KIB: u64 = 16;
/// `--max-pending` above.
const MAX_PENDING: u64 = 256;

/// How much `secchan bench --attack` does.
#[derive(Debug, Clone)]
pub struct AttackBench {
    /// The honest device's tries per round.
    pub tries: usize,
    /// A short run: less warm-up, a shorter cookie round.
    pub quick: bool,
}

/// One round: an attack (or none), the honest device's tries, what the server spent.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    /// The attack's name.
    pub attack: &'static str,
    /// Whether the server ran with its admission defences (its defaults), or with them
    /// turned off as far as the flags go ([`DEFENCES_OFF`]).
    pub defences: bool,
    /// What the attackers did.
    pub attackers: String,
    /// Tries that succeeded.
    pub honest_ok: usize,
    /// Tries made.
    pub tries: usize,
    /// Successful tries that were answered with a cookie first (two round trips).
    pub with_cookie: usize,
    /// Handshake times of the successful tries, milliseconds.
    pub handshake_ms: Percentiles,
    /// Their 95th percentile, milliseconds.
    pub p95_ms: f64,
    /// `p95_ms` over the baseline's.
    pub p95_vs_baseline: f64,
    /// CPU seconds the server used during the round.
    pub server_cpu_s: f64,
    /// CPU seconds the attackers used.
    pub attacker_cpu_s: f64,
    /// The server's resident memory when the attack started, KiB.
    pub rss_start_kib: u64,
    /// Its peak during the round, KiB.
    pub rss_peak_kib: u64,
    /// The bound it must hold: the baseline round's peak plus [`PENDING_KIB`] per pending
    /// slot.
    pub rss_bound_kib: u64,
    /// Lines the server logged during the round, and their bytes.
    pub log_lines: usize,
    /// See `log_lines`.
    pub log_bytes: usize,
    /// What the attackers counted.
    pub attacker: Counts,
    /// What the server counted (its totals when it stopped).
    pub server: BTreeMap<String, u64>,
    /// The successful tries' handshake times, sorted (for the chart).
    #[serde(skip)]
    pub curve: Vec<f64>,
}

/// What answering a hello with a cookie costs the server.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CookieCost {
    /// Hellos answered with a cookie during the rounds (the server always under load).
    pub cookies: u64,
    /// Server CPU seconds during the rounds.
    pub server_cpu_s: f64,
    /// Server CPU per hello answered, microseconds, the median of the rounds: accepting the
    /// connection, reading the hello, the cookie, the reply and the close.
    pub us_per_hello: f64,
    /// The cookie itself (one HMAC over the address and the hello) in memory, microseconds.
    pub us_per_cookie_in_memory: f64,
    /// The raw TCP baseline: connections answered by a server doing the same I/O and nothing
    /// else, against the same attacker for as long.
    pub raw_connections: u64,
    /// Its CPU per connection, microseconds (the median of the rounds).
    pub raw_us_per_connection: f64,
    /// What secchan adds per hello answered with a cookie, in each pair of rounds: secchan's
    /// CPU per hello less the baseline's per connection.
    pub pairs_beyond_tcp: Vec<f64>,
    /// Their median.
    pub us_beyond_tcp: f64,
    /// Hellos a second the attacker sent.
    pub rate: u32,
    /// Whether the server and the attacker ran on a CPU each (`taskset`).
    pub pinned: bool,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct AttackReport {
    /// The round without attackers, then one per attack.
    pub rounds: Vec<Round>,
    /// The cookie's cost.
    pub cookie: CookieCost,
}

/// What the attackers of a round do.
struct Attack {
    name: &'static str,
    what: String,
    /// Kind, sources, connections per process.
    procs: Vec<(Kind, Vec<IpAddr>, usize)>,
    server_args: Vec<String>,
}

fn sources(first: u8, n: u8) -> Vec<IpAddr> {
    (first..first + n)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect()
}

fn attacks() -> Vec<Attack> {
    vec![
        Attack {
            name: "none",
            what: "no attacker (baseline)".into(),
            procs: vec![],
            server_args: vec![],
        },
        Attack {
            name: "slowloris",
            what: "1,000 connections from 10 addresses, one hello byte a second each".into(),
            procs: vec![(Kind::Slowloris, sources(2, 10), 1000)],
            server_args: vec![],
        },
        Attack {
            name: "idle sockets",
            what: "220 idle sockets from one address, reopened when given up".into(),
            procs: vec![(Kind::Idle, sources(2, 1), 220)],
            server_args: vec![],
        },
        Attack {
            name: "hello flood",
            what: "2 processes, 64 connections each, replaying 64 hellos as fast as answered, following cookies".into(),
            procs: vec![
                (Kind::Flood, sources(2, 1), 64),
                (Kind::Flood, sources(3, 1), 64),
            ],
            server_args: vec![],
        },
        Attack {
            name: "3-byte pins",
            what: "1,000 connections from 4 addresses, each the longest hello's length and one byte".into(),
            procs: vec![(Kind::Pin, sources(2, 4), 1000)],
            server_args: vec![],
        },
        Attack {
            name: "reconnect loop",
            what: "64 connections from one address, each a malformed hello, again once closed".into(),
            procs: vec![(Kind::Garbage, sources(2, 1), 64)],
            server_args: vec![],
        },
        Attack {
            name: "hello-then-hold",
            what: "1,000 connections from 4 addresses, each holding after its ServerHello".into(),
            procs: vec![(Kind::HelloHold, sources(2, 4), 1000)],
            server_args: vec![],
        },
    ]
}

/// Runs every round; call from a thread that is not a runtime's.
pub fn run(bench: &AttackBench) -> Result<AttackReport, BenchError> {
    let exe = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("secchan-attack-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = run_in(bench, &exe, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(bench: &AttackBench, exe: &Path, dir: &Path) -> Result<AttackReport, BenchError> {
    let fingerprint = keygen(exe, &dir.join("server.key"))?;
    let honest = Arc::new(IdentityKey::generate(&mut OsRandom)?);
    std::fs::write(
        dir.join("devices"),
        format!("{} honest\n", honest.public().fingerprint()),
    )?;
    let base: Vec<String> = ["--key", "server.key", "--authorized-devices", "devices"]
        .iter()
        .chain(SERVER_LIMITS.iter())
        .map(|s| s.to_string())
        .collect();
    let device = Honest {
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        config: DeviceConfig::default().with_identity(honest),
        pin: Pinned(fingerprint),
    };
    let warmup = if bench.quick {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(2)
    };
    let strings = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    let (on, off) = (strings(&DEFENCES_ON), strings(&DEFENCES_OFF));
    let mut rounds: Vec<Round> = Vec::new();
    for attack in attacks() {
        // Side by side: with the defences, then (under an attack) without them.
        let configs: &[bool] = if attack.procs.is_empty() {
            &[true]
        } else {
            &[true, false]
        };
        for &defences in configs {
            let with = if defences { "with" } else { "without" };
            eprintln!("secchan bench: {} {with} the defences ...", attack.name);
            let extra = if defences { &on } else { &off };
            let args = [&base[..], &attack.server_args[..], extra].concat();
            let mut round = one(exe, dir, &args, &attack, &device, bench.tries, warmup)?;
            round.defences = defences;
            let (p95, peak) = rounds
                .first()
                .map_or((round.p95_ms, round.rss_peak_kib), |b| {
                    (b.p95_ms, b.rss_peak_kib)
                });
            round.p95_vs_baseline = round.p95_ms / p95.max(f64::MIN_POSITIVE);
            round.rss_bound_kib = if defences {
                peak + MAX_PENDING * PENDING_KIB
            } else {
                0
            };
            rounds.push(round);
        }
    }
    eprintln!("secchan bench: cookie cost ...");
    let window = if bench.quick {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    let pairs = if bench.quick { 1 } else { COOKIE_PAIRS };
    let cookie = cookie_cost(exe, dir, &base, window, pairs)?;
    Ok(AttackReport { rounds, cookie })
}

/// `secchan keygen --out PATH`; the key's fingerprint.
pub(crate) fn keygen(exe: &Path, path: &Path) -> Result<String, BenchError> {
    let out = std::process::Command::new(exe)
        .args(["keygen", "--out"])
        .arg(path)
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|w| w.starts_with("SHA256:"))
        .map(str::to_string)
        .ok_or_else(|| BenchError::Helper("secchan keygen printed no fingerprint".into()))
}

/// The honest device.
struct Honest {
    rt: tokio::runtime::Runtime,
    config: DeviceConfig,
    pin: Pinned,
}

impl Honest {
    /// One try: a handshake (its time, and whether it took a cookie, if it and the
    /// message's acknowledgement succeed).
    fn attempt(&self, addr: SocketAddr, seq: u64) -> Option<(f64, bool)> {
        self.rt.block_on(async {
            let start = Instant::now();
            let connect = tcp::connect(addr, &self.config, &self.pin, Timeouts::default());
            let mut conn = tokio::time::timeout(TRY_DEADLINE, connect)
                .await
                .ok()?
                .ok()?;
            let handshake = start.elapsed().as_secs_f64() * 1e3;
            // A hello sent twice: the server asked for a cookie.
            let with_cookie = conn.stats().handshake_sent > 2 * 1200;
            let message = Envelope::Message {
                stream: [0x5a; 8],
                seq,
                base: seq,
                data: b"{\"honest\":true}",
            };
            conn.send(&message.encode()).await.ok()?;
            let acked = tokio::time::timeout(Duration::from_secs(10), async {
                while let Ok(Some(m)) = conn.recv().await {
                    if matches!(Envelope::decode(&m), Ok(Envelope::Ack { next, .. }) if next > seq)
                    {
                        return true;
                    }
                }
                false
            })
            .await
            .unwrap_or(false);
            let _ = conn.close(Duration::from_secs(2)).await;
            acked.then_some((handshake, with_cookie))
        })
    }
}

fn one(
    exe: &Path,
    dir: &Path,
    args: &[String],
    attack: &Attack,
    honest: &Honest,
    tries: usize,
    warmup: Duration,
) -> Result<Round, BenchError> {
    let server = ServerProc::start(exe, dir, args, None)?;
    std::thread::sleep(Duration::from_millis(100));
    let rss_start_kib = server.rss_kib();
    let cpu_before = server.cpu_s();
    let logged_before = server.logged();
    let mut attackers = Vec::new();
    for (kind, sources, conns) in &attack.procs {
        attackers.push(AttackerProc::start(
            exe,
            *kind,
            server.addr,
            sources,
            *conns,
            0,
            None,
        )?);
    }
    std::thread::sleep(if attackers.is_empty() {
        Duration::ZERO
    } else {
        warmup
    });
    let (mut times, mut with_cookie) = (Vec::new(), 0);
    for seq in 0..tries as u64 {
        if let Some((t, cookie)) = honest.attempt(server.addr, seq) {
            times.push(t);
            with_cookie += usize::from(cookie);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut attacker = Counts::default();
    let mut attacker_cpu_s = 0.0;
    for a in attackers {
        attacker_cpu_s += a.cpu_s();
        attacker.add(&a.stop()?);
    }
    let server_cpu_s = server.cpu_s() - cpu_before;
    let rss_peak_kib = server.peak_rss_kib();
    let logged = server.logged();
    let counted = server.stop()?;
    let mut curve = times.clone();
    let handshake_ms = Percentiles::of(&mut curve);
    Ok(Round {
        attack: attack.name,
        defences: true,
        attackers: attack.what.clone(),
        honest_ok: times.len(),
        tries,
        with_cookie,
        handshake_ms,
        p95_ms: percentile(&curve, 95.0),
        p95_vs_baseline: 1.0,
        server_cpu_s,
        attacker_cpu_s,
        rss_start_kib,
        rss_peak_kib,
        rss_bound_kib: 0,
        log_lines: logged.0 - logged_before.0,
        log_bytes: logged.1 - logged_before.1,
        attacker,
        server: counted,
        curve,
    })
}

/// Measurement pairs of the cookie cost (secchan and the raw baseline), the side measured
/// first alternating (ABBA), so that a drift in the machine's load falls on both sides; the
/// report gives their medians.
const COOKIE_PAIRS: usize = 7;
/// Hellos a second the cookie cost's attacker sends: well below what either server answers
/// on one core, so that both answer the same load and the figure is a cost per hello, not a
/// measure of which one saturates first.
const COOKIE_RATE: u32 = 8_000;

/// The first of the cookie cost's attacker addresses (127.0.0.20 and up, two a pair).
const COOKIE_SOURCES: u8 = 20;

/// Where the cookie cost's processes run: the server on CPU 0 and the attacker on CPU 1 when
/// they can be pinned (they then do not migrate or share a core), unpinned otherwise.
#[derive(Clone, Copy)]
struct Cpus {
    server: Option<usize>,
    attacker: Option<usize>,
}

/// One side of a pair: a server's CPU seconds while one paced attacker from 127.0.0.`source`
/// sent hellos that never follow their cookies for `window`. Each side has a source of its
/// own, unused by the attacks, so that no side's connections meet another's left in
/// TIME_WAIT.
fn answered_under(
    exe: &Path,
    (addr, source): (SocketAddr, u8),
    cpu_s: &dyn Fn() -> f64,
    window: Duration,
    cpus: Cpus,
) -> Result<f64, BenchError> {
    let before = cpu_s();
    let attacker = AttackerProc::start(
        exe,
        Kind::CookieOnly,
        addr,
        &sources(source, 1),
        32,
        COOKIE_RATE,
        cpus.attacker,
    )?;
    std::thread::sleep(window);
    attacker.stop()?;
    Ok(cpu_s() - before)
}

/// The server always under load (`--cookie-pending 0`) and one attacker sending paced
/// hellos that never follow their cookies, for `window`, and the same attacker against the
/// raw TCP baseline for as long, `pairs` times: server CPU per hello answered, beyond the
/// baseline's.
fn cookie_cost(
    exe: &Path,
    dir: &Path,
    base: &[String],
    window: Duration,
    pairs: usize,
) -> Result<CookieCost, BenchError> {
    let on = DEFENCES_ON.map(String::from);
    let args = [base, &on, &["--cookie-pending".into(), "0".into()]].concat();
    let pinned = procs::pinning();
    let cpus = Cpus {
        server: pinned.then_some(0),
        attacker: pinned.then_some(1),
    };
    let mut c = CookieCost {
        rate: COOKIE_RATE,
        pinned,
        ..CookieCost::default()
    };
    let secchan = |c: &mut CookieCost, source: u8| -> Result<f64, BenchError> {
        let server = ServerProc::start(exe, dir, &args, cpus.server)?;
        let at = (server.addr, source);
        let cpu = answered_under(exe, at, &|| server.cpu_s(), window, cpus)?;
        let cookies = server.stop()?.get("cookies_sent").copied().unwrap_or(0);
        c.cookies += cookies;
        c.server_cpu_s += cpu;
        Ok(cpu * 1e6 / (cookies.max(1) as f64))
    };
    let raw = |c: &mut CookieCost, source: u8| -> Result<f64, BenchError> {
        let raw = RawProc::start(exe, cpus.server)?;
        let cpu = answered_under(exe, (raw.addr, source), &|| raw.cpu_s(), window, cpus)?;
        let connections = raw.stop()?;
        c.raw_connections += connections;
        Ok(cpu * 1e6 / (connections.max(1) as f64))
    };
    let (mut secchan_us, mut raw_us, mut beyond) = (Vec::new(), Vec::new(), Vec::new());
    for pair in 0..pairs.clamp(1, 100) {
        let (s_from, r_from) = (
            COOKIE_SOURCES + 2 * pair as u8,
            COOKIE_SOURCES + 2 * pair as u8 + 1,
        );
        let (s, r) = if pair % 2 == 0 {
            (secchan(&mut c, s_from)?, raw(&mut c, r_from)?)
        } else {
            let r = raw(&mut c, r_from)?;
            (secchan(&mut c, s_from)?, r)
        };
        secchan_us.push(s);
        raw_us.push(r);
        beyond.push(s - r);
    }
    // The cookie alone, in memory: one HMAC over the address and a hybrid hello.
    let jar = CookieJar::random(&mut OsRandom, Instant::now())?;
    let (_, hello) = device::start(&DeviceConfig::default(), &mut OsRandom)?;
    let source = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let n = 20_000;
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(jar.reply(source, std::hint::black_box(&hello), Instant::now()));
    }
    c.us_per_cookie_in_memory = start.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    let median = |v: &mut Vec<f64>| Percentiles::of(v).median;
    c.us_per_hello = median(&mut secchan_us);
    c.raw_us_per_connection = median(&mut raw_us);
    c.pairs_beyond_tcp = beyond.clone();
    c.us_beyond_tcp = median(&mut beyond);
    Ok(c)
}
