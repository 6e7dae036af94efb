//! `secchan bench --relay`: what the relay costs beside a direct message. One `secchan server
//! --relay any` and three `secchan device` processes, as users run them: a sends to b end to
//! end through the server (`--to b`), d sends to the server directly. Latency is one message
//! at a time, from the write to the sender's stdin to the line on the receiver's stdout (b's
//! for the relay, the server's for the direct path), relayed and direct alternated so that the
//! machine's load falls on both; throughput is a burst of messages written at once, to the
//! last line out; the bytes and the server's CPU per message are read from `secchan status`
//! and `/proc` over the burst (docs/benchmarks.md, "Relay").

use super::attack::procs::{cpu_s, terminate};
use super::system::Percentiles;
use super::BenchError;
use serde::Serialize;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// How long any one expected line may take before the run fails.
const LINE_TIMEOUT: Duration = Duration::from_secs(30);
/// Messages each way before the timed ones (the inner handshake, caches).
const WARMUP: usize = 5;

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub struct RelayBench {
    /// Messages timed one at a time, on each path.
    pub round_trips: usize,
    /// Messages of the burst, on each path.
    pub burst: usize,
}

/// One path's figures.
#[derive(Debug, Clone, Serialize)]
pub struct PathFigures {
    /// Write to the sender's stdin to the receiver's line, median, ms.
    pub p50_ms: f64,
    /// The same, 99th percentile, ms.
    pub p99_ms: f64,
    /// Messages a second through the burst.
    pub rate: f64,
    /// Bytes the server took in from the sender per message of the burst (delivery
    /// envelopes; the record layer's 21 bytes per record and TCP not counted).
    pub bytes_in: f64,
    /// Server CPU per message of the burst, µs.
    pub server_cpu_us: f64,
}

/// The run.
#[derive(Debug, Clone, Serialize)]
pub struct RelayReport {
    /// Messages timed one at a time, on each path.
    pub round_trips: usize,
    /// Messages of the burst, on each path.
    pub burst: usize,
    /// Device to server.
    pub direct: PathFigures,
    /// Device to device through the server, end to end.
    pub relayed: PathFigures,
}

impl RelayReport {
    /// The table docs/benchmarks.md shows.
    pub fn markdown(&self) -> String {
        let mut s = String::from(
            "| path | latency p50 (ms) | p99 (ms) | messages/s (burst) | bytes in at the server per message | server CPU per message (µs) |\n|---|---|---|---|---|---|\n",
        );
        for (name, f) in [
            ("device → server (direct)", &self.direct),
            (
                "device → server → device (relayed, end to end)",
                &self.relayed,
            ),
        ] {
            s.push_str(&format!(
                "| {name} | {:.2} | {:.2} | {:.0} | {:.0} | {:.1} |\n",
                f.p50_ms, f.p99_ms, f.rate, f.bytes_in, f.server_cpu_us
            ));
        }
        s.push_str(&format!(
            "\nRelayed / direct: latency p50 {:.2}x, throughput {:.2}x ({} messages one at a time and a burst of {} on each path, alternated).\n",
            self.relayed.p50_ms / self.direct.p50_ms.max(f64::MIN_POSITIVE),
            self.relayed.rate / self.direct.rate.max(f64::MIN_POSITIVE),
            self.round_trips,
            self.burst
        ));
        s
    }
}

/// A child process whose stdout lines (and optionally stderr lines) arrive, timestamped, on
/// channels.
struct Proc {
    child: Child,
    stdin: Option<BufWriter<ChildStdin>>,
    out: Receiver<(Instant, String)>,
    err: Receiver<(Instant, String)>,
}

fn lines_of<R: std::io::Read + Send + 'static>(r: R) -> Receiver<(Instant, String)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                return;
            }
        }
    });
    rx
}

impl Proc {
    fn start(exe: &Path, dir: &Path, args: &[&str]) -> Result<Self, BenchError> {
        let mut child = Command::new(exe)
            .current_dir(dir)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let missing = || BenchError::Helper("a child process has no pipes".into());
        let stdin = child.stdin.take().ok_or_else(missing)?;
        let out = lines_of(child.stdout.take().ok_or_else(missing)?);
        let err = lines_of(child.stderr.take().ok_or_else(missing)?);
        Ok(Self {
            child,
            stdin: Some(BufWriter::new(stdin)),
            out,
            err,
        })
    }

    /// Waits for a log line containing `needle`; returns it.
    fn logged(&self, needle: &str) -> Result<String, BenchError> {
        let deadline = Instant::now() + LINE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.err.recv_timeout(left) {
                Ok((_, line)) if line.contains(needle) => return Ok(line),
                Ok(_) => {}
                Err(_) => {
                    return Err(BenchError::Helper(format!(
                        "no log line with {needle:?} within {LINE_TIMEOUT:?}"
                    )))
                }
            }
        }
    }

    /// Writes one line to its stdin (flushed); returns when it was written.
    fn send(&mut self, line: &str) -> Result<Instant, BenchError> {
        let w = self
            .stdin
            .as_mut()
            .ok_or(BenchError::Protocol("stdin closed"))?;
        let at = Instant::now();
        writeln!(w, "{line}")?;
        w.flush()?;
        Ok(at)
    }

    /// Waits for an output line containing `needle`; returns when it arrived.
    fn line_with(&self, needle: &str) -> Result<Instant, BenchError> {
        loop {
            match self.out.recv_timeout(LINE_TIMEOUT) {
                Ok((at, line)) if line.contains(needle) => return Ok(at),
                Ok(_) => {}
                Err(_) => {
                    return Err(BenchError::Helper(format!(
                        "no output line with {needle:?} within {LINE_TIMEOUT:?}"
                    )))
                }
            }
        }
    }

    fn stop(mut self) {
        let _ = terminate(self.child.id());
        let _ = self.child.wait();
    }

    /// Closes stdin and waits for the process to end by itself.
    fn finish(mut self) -> Result<(), BenchError> {
        drop(self.stdin.take());
        let status = self.child.wait()?;
        if status.success() {
            Ok(())
        } else {
            Err(BenchError::Helper(format!("a device exited with {status}")))
        }
    }
}

/// Bytes the server took in from `device`'s session, from `secchan status --json`.
fn bytes_in(exe: &Path, socket: &Path, device: &str) -> Result<u64, BenchError> {
    let out = Command::new(exe)
        .args(["status", "--json", "--control-socket"])
        .arg(socket)
        .output()?;
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|_| BenchError::Protocol("secchan status printed no JSON"))?;
    doc["sessions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["device"] == device)
        .and_then(|s| s["bytes"].as_u64())
        .ok_or(BenchError::Protocol(
            "secchan status lists no session of the device",
        ))
}

/// One timed message: written to `sender`, seen on `receiver` as `"data":"tag"`.
fn one(sender: &mut Proc, receiver: &Proc, tag: &str) -> Result<f64, BenchError> {
    let sent = sender.send(tag)?;
    let got = receiver.line_with(&format!("\"{tag}\""))?;
    Ok(got.saturating_duration_since(sent).as_secs_f64() * 1e3)
}

/// The burst on one path: rate, bytes in and server CPU per message.
fn burst(
    (exe, socket): (&Path, &Path),
    server: &Proc,
    (sender, name): (&mut Proc, &str),
    receiver: &Proc,
    n: usize,
) -> Result<(f64, f64, f64), BenchError> {
    let (bytes_before, cpu_before) = (bytes_in(exe, socket, name)?, cpu_s(server.child.id()));
    let start = Instant::now();
    for i in 0..n {
        let w = sender
            .stdin
            .as_mut()
            .ok_or(BenchError::Protocol("stdin closed"))?;
        writeln!(w, "b{name}{i}")?;
    }
    sender
        .stdin
        .as_mut()
        .ok_or(BenchError::Protocol("stdin closed"))?
        .flush()?;
    let last = receiver.line_with(&format!("\"b{name}{}\"", n - 1))?;
    let secs = last.saturating_duration_since(start).as_secs_f64();
    let cpu = cpu_s(server.child.id())
        .zip(cpu_before)
        .map_or(0.0, |(a, b)| a - b);
    let bytes = bytes_in(exe, socket, name)?.saturating_sub(bytes_before);
    let per = n as f64;
    Ok((
        per / secs.max(f64::MIN_POSITIVE),
        bytes as f64 / per,
        cpu * 1e6 / per,
    ))
}

/// Runs the benchmark in a scratch directory.
pub fn run(bench: RelayBench) -> Result<RelayReport, BenchError> {
    let exe = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("secchan-bench-relay-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run_in(bench, &exe, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(bench: RelayBench, exe: &Path, dir: &Path) -> Result<RelayReport, BenchError> {
    let keygen = |name: &str| super::attack::keygen(exe, &dir.join(format!("{name}.key")));
    let server_fp = keygen("server")?;
    let (a, b, d) = (keygen("a")?, keygen("b")?, keygen("d")?);
    std::fs::write(dir.join("devices"), format!("{a} a\n{b} b\n{d} d\n"))?;
    let socket = dir.join("control.sock");
    let socket_arg = socket.to_string_lossy().to_string();
    let server = Proc::start(
        exe,
        dir,
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--key",
            "server.key",
            "--authorized-devices",
            "devices",
            "--relay",
            "any",
            "--control-socket",
            &socket_arg,
        ],
    )?;
    let listening = server.logged("listening")?;
    let addr = listening
        .split("addr=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .ok_or(BenchError::Protocol("the server logged no address"))?
        .to_string();
    let device = |key: &str, extra: &[&str]| -> Result<Proc, BenchError> {
        let args = [
            &[
                "device",
                "--connect",
                &addr,
                "--server-key",
                &server_fp,
                "--key",
                key,
            ][..],
            extra,
        ]
        .concat();
        let p = Proc::start(exe, dir, &args)?;
        p.logged("session established")?;
        Ok(p)
    };
    let (pin_a, pin_b) = (format!("a={a}"), format!("b={b}"));
    let receiver = device("b.key", &["--listen", "--peer-key", &pin_a])?;
    let mut relayed = device("a.key", &["--to", "b", "--peer-key", &pin_b])?;
    let mut direct = device("d.key", &[])?;
    let (mut lat_r, mut lat_d) = (Vec::new(), Vec::new());
    for i in 0..WARMUP + bench.round_trips {
        let r = one(&mut relayed, &receiver, &format!("r{i}"))?;
        let d = one(&mut direct, &server, &format!("d{i}"))?;
        if i >= WARMUP {
            lat_r.push(r);
            lat_d.push(d);
        }
    }
    let files = (exe, socket.as_path());
    let (rate_d, bytes_d, cpu_d) = burst(files, &server, (&mut direct, "d"), &server, bench.burst)?;
    let (rate_r, bytes_r, cpu_r) =
        burst(files, &server, (&mut relayed, "a"), &receiver, bench.burst)?;
    relayed.finish()?;
    direct.finish()?;
    receiver.stop();
    server.stop();
    let figures = |lat: &mut Vec<f64>, rate, bytes_in, server_cpu_us| {
        let p = Percentiles::of(lat);
        PathFigures {
            p50_ms: p.median,
            p99_ms: p.p99,
            rate,
            bytes_in,
            server_cpu_us,
        }
    };
    Ok(RelayReport {
        round_trips: bench.round_trips,
        burst: bench.burst,
        direct: figures(&mut lat_d, rate_d, bytes_d, cpu_d),
        relayed: figures(&mut lat_r, rate_r, bytes_r, cpu_r),
    })
}
