//! `secchan bench`: wiring from the command line to [`crate::bench`].

use super::keys::{load_secret, server_fingerprint};
use super::{parse_aead, CliError};
use crate::bench::{self, BenchServer, Options, Target};
use crate::crypto::aead::AeadId;
use crate::crypto::identity::IdentityKey;
use crate::crypto::kem::{Suite, X25519_MLKEM768};
use crate::crypto::random::OsRandom;
use crate::trust::Pinned;
use clap::Args;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;

/// Options of `secchan bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Measure against a running `secchan server` (run it with `--mode any`) instead of one
    /// started in this process on loopback.
    #[arg(long, value_name = "HOST:PORT", requires = "server_key")]
    connect: Option<String>,
    /// The remote server's key: its fingerprint (SHA256:...) or its .pub file.
    #[arg(long, value_name = "FINGERPRINT|FILE")]
    server_key: Option<String>,
    /// Device secret key to present to a remote server (default: a fresh key, which the
    /// server accepts only with --allow-any-device).
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// A short run (a few seconds): 50 handshakes per suite and AEAD, 16 MiB bulk, 100 idle
    /// sessions. Explicit size options below override it.
    #[arg(long)]
    quick: bool,
    /// Timed handshakes per suite and AEAD [default: 300].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    handshakes: Option<u64>,
    /// Bulk transfer size in MiB [default: 256].
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
    bulk_mib: Option<u64>,
    /// Idle sessions held open for the memory figure; 0 skips it [default: 1000].
    #[arg(long, value_name = "N")]
    idle_sessions: Option<usize>,
    /// Concurrent devices in the capacity run.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1000))]
    devices: u64,
    /// Worker threads of the in-process server [default: one per core].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=256))]
    server_threads: Option<u64>,
    /// Suites to measure (comma-separated) [default: every suite in this build:
    /// X25519MLKEM768, X25519Kyber768R3 with the kyber-r3 feature, X25519].
    #[arg(long, value_name = "SUITE", value_delimiter = ',', value_parser = super::device::parse_suite)]
    suite: Vec<&'static Suite>,
    /// AEADs to measure (comma-separated) [default: both].
    #[arg(long, value_name = "AEAD", value_delimiter = ',', value_parser = parse_aead)]
    aead: Vec<AeadId>,
    /// Also write the report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Also write SVG charts into DIR.
    #[arg(long, value_name = "DIR")]
    plot: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Repeat one in-memory operation --iterations times and exit (instruction counting under
    /// emulation, see scripts/aarch64.sh); `info` shows the CPU's AES support and AEAD order.
    #[arg(long, value_enum, value_name = "OP", conflicts_with = "connect")]
    ops: Option<bench::ops::Op>,
    /// Repetitions for --ops.
    #[arg(long, value_name = "N", default_value_t = 1, requires = "ops")]
    iterations: usize,
    /// With --mqtt URL, also measure secchan through that broker beside plaintext MQTT
    /// through the same broker (docs/mqtt.md, Measuring).
    #[cfg(feature = "mqtt")]
    #[command(
        flatten,
        next_help_heading = "secchan beside plaintext MQTT through a broker"
    )]
    mqtt: super::mqtt::MqttArgs,
    /// Messages sent back to back per payload size for the --mqtt rate figure; a tenth of
    /// them are timed one by one for its latency figure [default: 2000].
    #[cfg(feature = "mqtt")]
    #[arg(long, value_name = "N", requires = "mqtt", value_parser = clap::value_parser!(u64).range(1..))]
    mqtt_messages: Option<u64>,
    /// With --mqtt URL: instead of the report, flood the hello topic at these rates
    /// (hellos/s, comma-separated; 0: as fast as one client can publish) while honest devices
    /// handshake, and report how many succeed and how fast (docs/mqtt.md, Measuring).
    #[cfg(feature = "mqtt")]
    #[arg(long, value_name = "RATES", value_delimiter = ',', requires = "mqtt")]
    mqtt_flood: Vec<u64>,
    /// Honest devices per --mqtt-flood rate.
    #[cfg(feature = "mqtt")]
    #[arg(long, value_name = "N", default_value_t = 20, requires = "mqtt_flood", value_parser = clap::value_parser!(u64).range(1..=1000))]
    flood_devices: u64,
    /// Seconds over which the honest devices of a --mqtt-flood rate start.
    #[cfg(feature = "mqtt")]
    #[arg(long, value_name = "SECS", default_value_t = 10, requires = "mqtt_flood", value_parser = clap::value_parser!(u64).range(1..=3600))]
    flood_spread: u64,
    /// Instead of the report: N devices reconnecting at once after a restart of the
    /// in-process server, with full handshakes and then with resumption (docs/benchmarks.md,
    /// "Reconnect storm"). Uses the first --suite and --aead.
    #[arg(long, value_name = "N", conflicts_with_all = ["connect", "ops"], value_parser = clap::value_parser!(u64).range(1..=10_000))]
    storm: Option<u64>,
    /// Instead of measuring: chart the Raspberry Pi instruction counts that
    /// `scripts/aarch64.sh count` printed into FILE (needs --plot DIR; writes pi-handshake.svg).
    #[arg(long, value_name = "FILE", requires = "plot")]
    pi_counts: Option<PathBuf>,
    /// Instead of the report: messages/s and send-to-acknowledgement time through the
    /// server's delivery path into this sink (repeatable; postgres://..., mqtt://...), beside
    /// JSON lines and no sink, in one run (docs/benchmarks.md, Sinks). Rows it writes stay.
    #[arg(long = "sink", value_name = "URL")]
    sinks: Vec<String>,
    /// With --sink: the sink's password file (as for `secchan server`).
    #[arg(long, value_name = "FILE", requires = "sinks")]
    sink_password_file: Option<PathBuf>,
    /// With --sink: devices sending at once, each this many messages.
    #[arg(long, value_name = "N", default_value_t = 4000, requires = "sinks")]
    sink_messages: u64,
    /// Instead of the report: the TCP server (`secchan server`, its own process) under each
    /// attack in turn (slowloris, idle sockets, a hello flood from 2 processes,
    /// hello-then-hold) from 127.0.0.2 and up, while an honest device on 127.0.0.1 tries to
    /// get through; and what a cookie costs the server (docs/benchmarks.md, "Under attack").
    #[arg(long, conflicts_with_all = ["connect", "ops", "storm"])]
    attack: bool,
    /// Instead of the report: the relay beside a direct message, with `secchan server
    /// --relay any` and three `secchan device` processes: latency one message at a time and
    /// messages/s in a burst, device to device end to end through the server beside device to
    /// server, and the server's bytes and CPU per message (docs/benchmarks.md, "Relay").
    #[arg(long = "relay", conflicts_with_all = ["connect", "ops", "storm", "attack"])]
    relay_bench: bool,
    /// The honest device's tries per attack [default: 100; with --quick 10].
    #[arg(long, value_name = "N", requires = "attack", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    attack_tries: Option<u64>,
    /// Internal: the raw TCP baseline of --attack's cookie cost.
    #[arg(long, hide = true)]
    raw_responder: bool,
    /// Internal: be one attacker of --attack (what each of its connections does).
    #[arg(
        long,
        value_enum,
        value_name = "KIND",
        hide = true,
        requires = "attack_target"
    )]
    attacker: Option<bench::attack::attacker::Kind>,
    /// Internal: the server an --attacker attacks.
    #[arg(long, value_name = "ADDR", hide = true)]
    attack_target: Option<SocketAddr>,
    /// Internal: the addresses an --attacker's connections come from (comma-separated).
    #[arg(long, value_name = "ADDRS", hide = true, value_delimiter = ',')]
    attack_sources: Vec<std::net::IpAddr>,
    /// Internal: an --attacker's connections.
    #[arg(long, value_name = "N", hide = true, default_value_t = 1)]
    attack_conns: usize,
    /// Internal: an --attacker flood's hellos a second, all connections together (0: as fast
    /// as they are answered).
    #[arg(long, value_name = "N", hide = true, default_value_t = 0)]
    attack_rate: u32,
    /// Internal: open N sessions to --connect, print "ready", hold them until stdin has a line.
    #[arg(long, value_name = "N", hide = true, requires = "connect")]
    hold_sessions: Option<usize>,
}

impl BenchArgs {
    /// The in-memory operation asked for with `--ops`, if any.
    pub fn ops(&self) -> Option<bench::ops::Op> {
        self.ops
    }

    fn options(&self) -> Options {
        let mut o = if self.quick {
            Options::quick()
        } else {
            Options::full()
        };
        if let Some(n) = self.handshakes {
            o.handshakes = n as usize;
            o.warmup = o.warmup.min(o.handshakes);
        }
        if let Some(mib) = self.bulk_mib {
            o.bulk_bytes = mib << 20;
        }
        if let Some(n) = self.idle_sessions {
            o.idle_sessions = n;
        }
        if let Some(t) = self.server_threads {
            o.server_threads = t as usize;
        }
        o.capacity_devices = self.devices as usize;
        if !self.suite.is_empty() {
            o.suites = self.suite.clone();
        }
        if !self.aead.is_empty() {
            o.aeads = self.aead.clone();
        }
        o.progress = !self.no_progress;
        o
    }
}

fn resolve(addr: &str) -> Result<SocketAddr, CliError> {
    addr.to_socket_addrs()
        .map_err(|source| CliError::Connect {
            addr: addr.into(),
            source,
        })?
        .next()
        .ok_or_else(|| CliError::Connect {
            addr: addr.into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address found"),
        })
}

/// Runs the benchmark (or, with `hold`, the idle-session helper) against `remote` or an
/// in-process server.
fn measure(
    opts: &Options,
    remote: Option<(SocketAddr, String)>,
    identity: Arc<IdentityKey>,
    hold: Option<usize>,
) -> Result<Option<bench::Report>, bench::BenchError> {
    let (server, target) = match remote {
        Some((addr, fingerprint)) => {
            let target = Target {
                addr,
                raw_addr: None,
                pin: Pinned(fingerprint),
                identity,
                meter: None,
            };
            (None, target)
        }
        None => {
            let server = BenchServer::start(opts.server_threads)?;
            let target = Target {
                addr: server.addr,
                raw_addr: Some(server.raw_addr),
                pin: Pinned(server.fingerprint.clone()),
                identity,
                meter: Some(server.meter.clone()),
            };
            (Some(server), target)
        }
    };
    match hold {
        Some(n) => {
            let suite = opts.suites.first().copied().unwrap_or(&X25519_MLKEM768);
            let aead = opts.aeads.first().copied().unwrap_or(AeadId::Aes256Gcm);
            bench::hold(&target, suite, aead, n).map(|()| None)
        }
        None => bench::run(opts, &target, server.as_ref()).map(Some),
    }
}

/// `bench --ops OP`: repeats one in-memory operation on the calling thread and prints what it
/// did. It needs no runtime and starts no thread, so an instruction count under emulation
/// (scripts/aarch64.sh) holds this operation and start-up only.
pub fn run_ops(args: &BenchArgs, op: bench::ops::Op) -> Result<(), CliError> {
    let suite = args.suite.first().copied().unwrap_or(&X25519_MLKEM768);
    let aead = args
        .aead
        .first()
        .copied()
        .or_else(|| AeadId::default_preference().first().copied())
        .unwrap_or(AeadId::Aes256Gcm);
    println!("{}", bench::ops::run(op, suite, aead, args.iterations)?);
    Ok(())
}

/// Measures, prints the table, writes JSON and charts if asked (everything but `--ops`, which
/// [`run_ops`] runs).
pub async fn run(args: BenchArgs) -> Result<(), CliError> {
    if !args.sinks.is_empty() {
        return sinks(&args).await;
    }
    #[cfg(feature = "mqtt")]
    if let (Some(url), false) = (&args.mqtt.mqtt, args.mqtt_flood.is_empty()) {
        return flood(&args, url).await;
    }
    if let Some(devices) = args.storm {
        return storm(&args, devices as usize).await;
    }
    if let (Some(file), Some(dir)) = (&args.pi_counts, &args.plot) {
        let text = std::fs::read_to_string(file).map_err(CliError::LocalIo)?;
        let counts = bench::parse_pi_counts(&text);
        if counts.is_empty() {
            return Err(CliError::LocalIo(std::io::Error::other(format!(
                "{}: no handshake rows of `scripts/aarch64.sh count` in it",
                file.display()
            ))));
        }
        let path = bench::write_pi_plot(&counts, dir).map_err(|source| CliError::Write {
            path: dir.clone(),
            source,
        })?;
        eprintln!("secchan bench: chart written to {}", path.display());
        return Ok(());
    }
    if let (Some(kind), Some(target)) = (args.attacker, args.attack_target) {
        return attacker(&args, kind, target).await;
    }
    if args.raw_responder {
        let answered = tokio::task::spawn_blocking(bench::attack::raw::serve)
            .await
            .map_err(|e| CliError::LocalIo(std::io::Error::other(e)))??;
        println!("{answered}");
        return Ok(());
    }
    if args.relay_bench {
        return relay(&args).await;
    }
    if args.attack {
        return attack(&args).await;
    }
    let identity = Arc::new(match &args.key {
        Some(path) => load_secret(path)?,
        None => IdentityKey::generate(&mut OsRandom).map_err(bench::BenchError::from)?,
    });
    #[allow(unused_mut)] // set only with the mqtt feature
    let mut opts = args.options();
    #[cfg(feature = "mqtt")]
    if let Some(url) = &args.mqtt.mqtt {
        opts.mqtt = Some(bench::mqtt::MqttBench {
            broker: args.mqtt.broker(url)?,
            messages: args
                .mqtt_messages
                .unwrap_or(bench::mqtt::MqttBench::DEFAULT_MESSAGES),
        });
    }
    let remote = match &args.connect {
        Some(addr) => Some((
            resolve(addr)?,
            server_fingerprint(args.server_key.as_deref().unwrap_or_default())?,
        )),
        None => None,
    };
    let hold = args.hold_sessions;
    // The benchmark drives runtimes of its own (the device's and the in-process server's):
    // run it on a blocking thread.
    let report = tokio::task::spawn_blocking(move || measure(&opts, remote, identity, hold))
        .await
        .map_err(|e| CliError::LocalIo(std::io::Error::other(e)))?;
    let Some(report) = report? else { return Ok(()) };
    print!("{}", report.to_table());
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    if let Some(dir) = &args.plot {
        let files = report.write_plots(dir).map_err(|source| CliError::Write {
            path: dir.clone(),
            source,
        })?;
        for f in files {
            eprintln!("secchan bench: chart written to {}", f.display());
        }
    }
    Ok(())
}

/// Writes `report` as pretty JSON to `path` (`--json`).
fn write_json(path: &std::path::Path, report: &impl serde::Serialize) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(path, text + "\n").map_err(|source| CliError::Write {
        path: path.to_path_buf(),
        source,
    })?;
    eprintln!("secchan bench: JSON written to {}", path.display());
    Ok(())
}

/// Writes `report` as JSON (`--json`) and its chart (`--plot`, by `plot`) if asked.
fn write_outputs<R: serde::Serialize>(
    args: &BenchArgs,
    report: &R,
    plot: impl FnOnce(&std::path::Path) -> std::io::Result<std::path::PathBuf>,
) -> Result<(), CliError> {
    if let Some(path) = &args.json {
        write_json(path, report)?;
    }
    if let Some(dir) = &args.plot {
        let file = plot(dir).map_err(|source| CliError::Write {
            path: dir.clone(),
            source,
        })?;
        eprintln!("secchan bench: chart written to {}", file.display());
    }
    Ok(())
}

/// `bench --attack`.
async fn attack(args: &BenchArgs) -> Result<(), CliError> {
    let bench = bench::attack::AttackBench {
        tries: args
            .attack_tries
            .map_or(if args.quick { 10 } else { 100 }, |n| n as usize),
        quick: args.quick,
    };
    // It starts processes and drives a runtime of its own: run it on a blocking thread.
    let report = tokio::task::spawn_blocking(move || bench::attack::run(&bench))
        .await
        .map_err(|e| CliError::LocalIo(std::io::Error::other(e)))??;
    print!("{}", report.markdown());
    write_outputs(args, &report, |dir| report.write_plot(dir))
}

/// `bench --relay`.
async fn relay(args: &BenchArgs) -> Result<(), CliError> {
    let bench = if args.quick {
        bench::relay::RelayBench {
            round_trips: 20,
            burst: 2000,
        }
    } else {
        bench::relay::RelayBench {
            round_trips: 500,
            burst: 20_000,
        }
    };
    // It starts processes and waits on their pipes: run it on a blocking thread.
    let report = tokio::task::spawn_blocking(move || bench::relay::run(bench))
        .await
        .map_err(|e| CliError::LocalIo(std::io::Error::other(e)))??;
    print!("{}", report.markdown());
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    Ok(())
}

/// `bench --attacker KIND`: one attacker process of `bench --attack`; prints its counts.
async fn attacker(
    args: &BenchArgs,
    kind: bench::attack::attacker::Kind,
    target: SocketAddr,
) -> Result<(), CliError> {
    let (sources, conns, rate) = (
        args.attack_sources.clone(),
        args.attack_conns,
        args.attack_rate,
    );
    let sources = if sources.is_empty() {
        vec![std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)]
    } else {
        sources
    };
    let counts = tokio::task::spawn_blocking(move || {
        bench::attack::attacker::run(kind, target, &sources, conns, rate)
    })
    .await
    .map_err(|e| CliError::LocalIo(std::io::Error::other(e)))??;
    println!(
        "{}",
        serde_json::to_string(&counts).map_err(std::io::Error::other)?
    );
    Ok(())
}

/// `bench --storm N`.
async fn storm(args: &BenchArgs, devices: usize) -> Result<(), CliError> {
    let suite = args.suite.first().copied().unwrap_or(&X25519_MLKEM768);
    let aead = args.aead.first().copied().unwrap_or(AeadId::Aes256Gcm);
    let threads = args.server_threads.map_or_else(
        || std::thread::available_parallelism().map_or(2, |n| n.get()),
        |n| n as usize,
    );
    // It drives runtimes of its own: run it on a blocking thread.
    let report =
        tokio::task::spawn_blocking(move || bench::storm::run(devices, suite, aead, threads))
            .await
            .map_err(|e| CliError::LocalIo(std::io::Error::other(e)))??;
    print!("{}", report.markdown());
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    if let Some(dir) = &args.plot {
        let file = bench::write_storm_plot(&report, dir).map_err(|source| CliError::Write {
            path: dir.clone(),
            source,
        })?;
        eprintln!("secchan bench: chart written to {}", file.display());
    }
    Ok(())
}

/// `--mqtt-flood`: the flood benchmark alone.
#[cfg(feature = "mqtt")]
async fn flood(args: &BenchArgs, url: &str) -> Result<(), CliError> {
    let bench = bench::flood::FloodBench {
        broker: args.mqtt.broker(url)?,
        rates: args.mqtt_flood.clone(),
        devices: args.flood_devices as usize,
        spread: std::time::Duration::from_secs(args.flood_spread),
    };
    // It drives runtimes of its own: run it on a blocking thread.
    let report = tokio::task::spawn_blocking(move || bench::flood::run(&bench))
        .await
        .map_err(|e| CliError::LocalIo(std::io::Error::other(e)))??;
    print!("{}", report.to_table());
    write_outputs(args, &report, |dir| report.write_plot(dir))
}

/// `--sink`: the sink benchmark alone.
async fn sinks(args: &BenchArgs) -> Result<(), CliError> {
    let mut sinks = Vec::new();
    for url in &args.sinks {
        sinks.extend(super::sink::opener(url, args.sink_password_file.clone())?);
    }
    let bench = bench::sinks::SinkBench {
        sinks,
        devices: args.devices as usize,
        messages: args.sink_messages,
        round_trips: 200,
        rounds: 3,
    };
    // It drives a runtime of its own: run it on a blocking thread.
    let report = tokio::task::spawn_blocking(move || bench::sinks::run(bench))
        .await
        .map_err(|e| CliError::LocalIo(std::io::Error::other(e)))??;
    print!("{report}");
    Ok(())
}
