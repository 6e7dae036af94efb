//! The benchmark report: terminal table, JSON and the ratios that matter.

use super::measure::{
    CapacityResult, EchoResult, HandshakeResult, MemoryResult, RawTcpResult, RecordResult,
};
use super::system::{peak_rss_kib, Build, Machine};
use super::Options;
use serde::Serialize;
use std::fmt::Write as _;

/// How much was measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunSize {
    /// Timed handshakes per suite and AEAD.
    pub handshakes: usize,
    /// Concurrent devices in the capacity run.
    pub capacity_devices: usize,
    /// Seconds per capacity run.
    pub capacity_secs: f64,
    /// Bytes in the bulk run.
    pub bulk_bytes: u64,
    /// Server: "in-process loopback" or "remote".
    pub server: &'static str,
    /// Worker threads of the in-process server.
    pub server_threads: Option<usize>,
}

/// One kind of handshake's figures divided by another's, measured side by side in one run.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Factors {
    /// Median handshake latency.
    pub latency: f64,
    /// Handshake bytes, both directions.
    pub bytes: f64,
    /// Device CPU per handshake.
    pub device_cpu: f64,
    /// Server CPU per handshake (in-process runs).
    pub server_cpu: Option<f64>,
}

impl Factors {
    fn of(a: &HandshakeResult, b: &HandshakeResult) -> Self {
        Self {
            latency: a.latency_us.median / b.latency_us.median,
            bytes: a.total_bytes() as f64 / b.total_bytes() as f64,
            device_cpu: a.device_cpu_us / b.device_cpu_us,
            server_cpu: a.server_cpu_us.zip(b.server_cpu_us).map(|(a, b)| a / b),
        }
    }

    fn line(&self, what: &str) -> String {
        format!(
            "  {what}: latency {:.2}x, bytes {:.3}x, device CPU {:.2}x, server CPU {}",
            self.latency,
            self.bytes,
            self.device_cpu,
            self.server_cpu.map_or("n/a".into(), |c| format!("{c:.2}x"))
        )
    }
}

/// Hybrid divided by classical, for the first hybrid suite and the first AEAD measured.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Ratios {
    /// The hybrid suite compared.
    pub hybrid: &'static str,
    /// The factors.
    #[serde(flatten)]
    pub vs: Factors,
}

/// Resumption divided by the full handshake of the same suite and AEAD.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ResumptionRatios {
    /// The suite of the sessions the tickets came from.
    pub suite: &'static str,
    /// The factors.
    #[serde(flatten)]
    pub vs: Factors,
}

/// A goal from the benchmark issue that this run can judge alone (the goals relative to TLS
/// come from `cargo bench --bench vs_tls`).
#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    /// What is measured.
    pub name: &'static str,
    /// The limit.
    pub limit: f64,
    /// What this run measured.
    pub measured: f64,
    /// Whether `measured` is within `limit`.
    pub met: bool,
}

/// Everything one `secchan bench` run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The machine.
    pub machine: Machine,
    /// The build.
    pub build: Build,
    /// How much was measured.
    pub run: RunSize,
    /// Per suite and AEAD.
    pub handshakes: Vec<HandshakeResult>,
    /// Per suite.
    pub capacity: Vec<CapacityResult>,
    /// Per AEAD and payload size.
    pub records: Vec<RecordResult>,
    /// Per AEAD and small payload size (in-process runs).
    pub echo: Vec<EchoResult>,
    /// Loopback TCP without secchan (in-process runs).
    pub raw_tcp: Option<RawTcpResult>,
    /// secchan beside plaintext MQTT through a broker (`--mqtt`).
    #[cfg(feature = "mqtt")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<super::mqtt::MqttReport>,
    /// Idle-session memory.
    pub memory: Option<MemoryResult>,
    /// Peak RSS of this process, in KiB.
    pub peak_rss_kib: Option<u64>,
    /// Hybrid / classical.
    pub ratios: Option<Ratios>,
    /// Resumption / full handshake.
    pub resumption: Option<ResumptionRatios>,
    /// The goals this run can judge.
    pub goals: Vec<Goal>,
}

impl Report {
    pub(super) fn new(opts: &Options, local: bool) -> Self {
        Self {
            machine: Machine::detect(),
            build: Build::detect(),
            run: RunSize {
                handshakes: opts.handshakes,
                capacity_devices: opts.capacity_devices,
                capacity_secs: opts.capacity_time.as_secs_f64(),
                bulk_bytes: opts.bulk_bytes,
                server: if local {
                    "in-process loopback"
                } else {
                    "remote"
                },
                server_threads: local.then_some(opts.server_threads),
            },
            handshakes: Vec::new(),
            capacity: Vec::new(),
            records: Vec::new(),
            echo: Vec::new(),
            raw_tcp: None,
            #[cfg(feature = "mqtt")]
            mqtt: None,
            memory: None,
            peak_rss_kib: None,
            ratios: None,
            resumption: None,
            goals: Vec::new(),
        }
    }

    /// Computes the ratios and goals once every figure is in.
    pub(super) fn finish(&mut self) {
        self.peak_rss_kib = peak_rss_kib();
        let aead = self.handshakes.first().map(|h| h.aead);
        let find = |hybrid: bool| {
            self.handshakes.iter().find(|h| {
                Some(h.aead) == aead
                    && !h.resumed
                    && crate::crypto::kem::Suite::from_name(h.suite)
                        .is_some_and(|s| s.is_hybrid() == hybrid)
            })
        };
        if let (Some(h), Some(c)) = (find(true), find(false)) {
            self.ratios = Some(Ratios {
                hybrid: h.suite,
                vs: Factors::of(h, c),
            });
            self.goals.push(goal(
                "hybrid/classical handshake latency",
                1.15,
                self.ratios.as_ref().map_or(0.0, |r| r.vs.latency),
            ));
            self.goals.push(goal(
                "hybrid mutual-auth handshake bytes",
                2600.0,
                h.total_bytes() as f64,
            ));
            self.goals.push(goal(
                "classical handshake bytes",
                400.0,
                c.total_bytes() as f64,
            ));
        }
        let resumed = self.handshakes.iter().find(|h| h.resumed);
        let full = resumed.and_then(|r| {
            self.handshakes
                .iter()
                .find(|h| !h.resumed && h.suite == r.suite && h.aead == r.aead)
        });
        if let (Some(r), Some(f)) = (resumed, full) {
            let ratios = ResumptionRatios {
                suite: f.suite,
                vs: Factors::of(r, f),
            };
            self.goals.push(goal(
                "resumption/full handshake latency",
                0.5,
                ratios.vs.latency,
            ));
            self.goals.push(goal(
                "resumption handshake bytes",
                200.0,
                r.total_bytes() as f64,
            ));
            self.resumption = Some(ratios);
        }
        if let Some(max) = self.records.iter().map(|r| r.overhead_bytes).max() {
            self.goals
                .push(goal("record overhead bytes", 22.0, max as f64));
        }
        if let Some(m) = &self.memory {
            self.goals.push(goal(
                "RSS per idle session (KiB)",
                16.0,
                m.rss_per_session_kib,
            ));
        }
    }

    /// Writes the SVG charts into `dir`; returns the files written.
    pub fn write_plots(&self, dir: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
        super::plot::write(self, dir)
    }

    /// The report as the terminal shows it.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let _ = self.write_table(&mut s);
        s
    }

    fn write_table(&self, s: &mut String) -> std::fmt::Result {
        let b = &self.build;
        writeln!(
            s,
            "secchan bench {} — {} ({} cores, {})",
            b.version, self.machine.cpu, self.machine.cores, self.machine.os
        )?;
        writeln!(
            s,
            "build: {}; AEAD {}; CPU AES: {}",
            if b.optimized {
                "release"
            } else {
                "DEBUG (figures not meaningful)"
            },
            b.aead_backend,
            if b.cpu_aes { "yes" } else { "no" }
        )?;
        writeln!(
            s,
            "       ML-KEM {}; Kyber {}; {}",
            b.mlkem_backend, b.kyber_backend, b.ecc_backend
        )?;
        writeln!(
            s,
            "server: {}{}",
            self.run.server,
            self.run
                .server_threads
                .map(|t| format!(", {t} worker threads"))
                .unwrap_or_default()
        )?;
        writeln!(s)?;
        writeln!(s, "Handshakes (new TCP connection each, mutual auth; latency from connect() to device done; {} timed)", self.run.handshakes)?;
        writeln!(
            s,
            "  {:<22} {:<18} {:>8} {:>8} {:>8} {:>8}  {:>6} {:>6}  {:>9} {:>9}",
            "suite",
            "AEAD",
            "p10 µs",
            "med µs",
            "p90 µs",
            "p99 µs",
            "d->s B",
            "s->d B",
            "dev CPU",
            "srv CPU"
        )?;
        for h in &self.handshakes {
            let l = &h.latency_us;
            writeln!(
                s,
                "  {:<22} {:<18} {:>8.0} {:>8.0} {:>8.0} {:>8.0}  {:>6} {:>6}  {:>7.0}µs {:>9}",
                h.label(),
                h.aead,
                l.p10,
                l.median,
                l.p90,
                l.p99,
                h.bytes_device_to_server,
                h.bytes_server_to_device,
                h.device_cpu_us,
                h.server_cpu_us
                    .map_or("n/a".into(), |c| format!("{c:.0}µs"))
            )?;
        }
        if let Some(r) = &self.ratios {
            writeln!(s, "{}", r.vs.line(&format!("{} / classical", r.hybrid)))?;
        }
        if let Some(r) = &self.resumption {
            writeln!(
                s,
                "{}",
                r.vs.line(&format!("resumption / full {}", r.suite))
            )?;
        }
        writeln!(s)?;
        writeln!(
            s,
            "Server capacity ({} concurrent devices in this process, {:.1} s each)",
            self.run.capacity_devices, self.run.capacity_secs
        )?;
        for c in &self.capacity {
            writeln!(
                s,
                "  {:<17} {:>8.0} handshakes/s",
                c.suite, c.handshakes_per_s
            )?;
        }
        writeln!(s)?;
        writeln!(
            s,
            "Records (one way, back to back; overhead includes the 2-byte TCP framing)"
        )?;
        writeln!(
            s,
            "  {:<18} {:>7} {:>8} {:>9} {:>9} {:>12} {:>10}",
            "AEAD", "payload", "on wire", "overhead", "overhead", "messages/s", "MB/s"
        )?;
        for r in &self.records {
            writeln!(
                s,
                "  {:<18} {:>7} {:>8} {:>8}B {:>8.1}% {:>12.0} {:>10.1}",
                r.aead,
                r.payload,
                r.wire_bytes,
                r.overhead_bytes,
                r.overhead_pct,
                r.messages_per_s,
                r.mb_per_s
            )?;
        }
        if !self.echo.is_empty() {
            writeln!(s)?;
            writeln!(s, "Message round trips (device sends, server echoes)")?;
            for e in &self.echo {
                writeln!(
                    s,
                    "  {:<18} {:>5} B  median {:>6.0} µs  p99 {:>6.0} µs",
                    e.aead, e.payload, e.round_trip_us.median, e.round_trip_us.p99
                )?;
            }
        }
        if let Some(raw) = &self.raw_tcp {
            writeln!(s)?;
            writeln!(s, "Raw loopback TCP: connect + 1-byte echo median {:.0} µs; {} MiB in 16 KiB writes {:.0} MB/s", raw.connect_echo_us.median, raw.bulk_bytes >> 20, raw.bulk_mb_per_s)?;
        }
        #[cfg(feature = "mqtt")]
        if let Some(m) = &self.mqtt {
            writeln!(s)?;
            m.write_table(s)?;
        }
        writeln!(s)?;
        if let Some(m) = &self.memory {
            writeln!(
                s,
                "Memory: {:.1} KiB RSS per idle established session ({} sessions, {} side)",
                m.rss_per_session_kib, m.sessions, m.side
            )?;
        }
        if let Some(p) = self.peak_rss_kib {
            writeln!(
                s,
                "        peak RSS of this process {:.1} MiB",
                p as f64 / 1024.0
            )?;
        }
        if !self.goals.is_empty() {
            writeln!(s)?;
            writeln!(
                s,
                "Goals this run can judge (TLS-relative goals: cargo bench --bench vs_tls)"
            )?;
            for g in &self.goals {
                writeln!(
                    s,
                    "  {:<38} {:>9.2} (limit {:>7.2})  {}",
                    g.name,
                    g.measured,
                    g.limit,
                    if g.met { "met" } else { "MISSED" }
                )?;
            }
        }
        Ok(())
    }
}

fn goal(name: &'static str, limit: f64, measured: f64) -> Goal {
    Goal {
        name,
        limit,
        measured,
        met: measured <= limit,
    }
}
