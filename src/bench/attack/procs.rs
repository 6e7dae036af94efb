//! The processes of `secchan bench --attack`: the server under attack (`secchan server`, as
//! users run it) and the attackers (`secchan bench --attacker`), each its own process, so
//! that the server's CPU time and memory are its own (`/proc/PID/stat`, `/proc/PID/status`).

use super::attacker::{Counts, Kind};
use crate::bench::BenchError;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Clock ticks per second of `/proc/PID/stat` (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

/// How a helper process runs: on a CPU of its own (by `taskset`, see [`pinning`]), and at
/// the lowest CPU priority (`nice -n 19`, for attackers).
#[derive(Debug, Clone, Copy, Default)]
pub struct Placement {
    /// The CPU it runs on alone, if any.
    pub cpu: Option<usize>,
    /// Whether it yields the CPU to every other process.
    pub low_priority: bool,
}

/// A command running `exe` as `placement` says.
fn command(exe: &Path, placement: Placement) -> Command {
    let mut argv: Vec<std::ffi::OsString> = Vec::new();
    if let Some(cpu) = placement.cpu {
        argv.extend(["taskset".into(), "-c".into(), cpu.to_string().into()]);
    }
    if placement.low_priority {
        argv.extend(["nice".into(), "-n".into(), "19".into()]);
    }
    argv.push(exe.into());
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..]);
    c
}

/// Whether processes can be pinned to a CPU each: at least 2 CPUs and `taskset` (util-linux)
/// present. Without it the measurements run unpinned.
pub fn pinning() -> bool {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    cpus >= 2
        && Command::new("taskset")
            .args(["-c", "0", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// A `secchan server` child process.
pub struct ServerProc {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    reader: std::thread::JoinHandle<()>,
}

fn helper_failed(what: &str) -> BenchError {
    BenchError::Helper(what.to_string())
}

/// Sends SIGTERM to `pid` (what a service manager sends).
pub(crate) fn terminate(pid: u32) -> Result<(), BenchError> {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(helper_failed("kill -TERM failed"))
    }
}

/// `/proc/PID/status` field `key`, in KiB.
fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU seconds (user and system) `pid` has used.
pub fn cpu_s(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields count from after it.
    let rest = text.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS)
}

/// The `name=number` fields of a log line.
fn fields(line: &str) -> BTreeMap<String, u64> {
    line.split_whitespace()
        .filter_map(|w| {
            let (k, v) = w.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

impl ServerProc {
    /// Starts `exe server --listen 127.0.0.1:0 ARGS` in `dir` (on CPU `cpu` alone, if given)
    /// and waits until it listens.
    pub fn start(
        exe: &Path,
        dir: &Path,
        args: &[String],
        cpu: Option<usize>,
    ) -> Result<Self, BenchError> {
        let placement = Placement {
            cpu,
            ..Placement::default()
        };
        let mut child = command(exe, placement)
            .current_dir(dir)
            .args(["server", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| helper_failed("no stderr"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let reader = {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(rest) = line.split("addr=").nth(1) {
                        let addr = rest.split_whitespace().next().unwrap_or_default();
                        let _ = addr_tx.send(addr.to_string());
                    }
                    if let Ok(mut l) = lines.lock() {
                        l.push(line);
                    }
                }
            })
        };
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| helper_failed("the server did not start listening"))?
            .parse()
            .map_err(|_| helper_failed("the server's address did not parse"))?;
        Ok(Self {
            child,
            addr,
            lines,
            reader,
        })
    }

    /// CPU seconds it has used.
    pub fn cpu_s(&self) -> f64 {
        cpu_s(self.child.id()).unwrap_or(0.0)
    }

    /// Its resident memory now, KiB.
    pub fn rss_kib(&self) -> u64 {
        status_kib(self.child.id(), "VmRSS:").unwrap_or(0)
    }

    /// Its peak resident memory so far, KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        status_kib(self.child.id(), "VmHWM:").unwrap_or(0)
    }

    /// Lines it has logged so far, and their bytes.
    pub fn logged(&self) -> (usize, usize) {
        self.lines.lock().map_or((0, 0), |l| {
            (l.len(), l.iter().map(|line| line.len() + 1).sum())
        })
    }

    /// Stops it with SIGTERM and returns the counters it logged when it stopped.
    pub fn stop(mut self) -> Result<BTreeMap<String, u64>, BenchError> {
        terminate(self.child.id())?;
        let status = self.child.wait()?;
        let _ = self.reader.join();
        let lines = self.lines.lock().map_err(|_| helper_failed("log"))?;
        let served = lines
            .iter()
            .rev()
            .find(|l| l.contains("connections served"))
            .ok_or_else(|| {
                helper_failed(&format!(
                    "the server ({status}) logged no totals; its last lines: {}",
                    lines[lines.len().saturating_sub(5)..].join(" | ")
                ))
            })?;
        Ok(fields(served))
    }
}

/// A `secchan bench` helper child process that prints a line when it is up, runs until a
/// line arrives on its stdin, and prints one last line.
pub struct Helper {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Helper {
    /// Starts `exe bench ARGS` as `placement` says; the helper and the first line it printed.
    fn start(
        exe: &Path,
        args: &[String],
        placement: Placement,
    ) -> Result<(Self, String), BenchError> {
        let mut child = command(exe, placement)
            .arg("bench")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take().ok_or_else(|| helper_failed("stdin"))?;
        let mut stdout =
            BufReader::new(child.stdout.take().ok_or_else(|| helper_failed("stdout"))?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let helper = Self {
            child,
            stdin,
            stdout,
        };
        Ok((helper, line.trim().to_string()))
    }

    /// CPU seconds it has used.
    pub fn cpu_s(&self) -> f64 {
        cpu_s(self.child.id()).unwrap_or(0.0)
    }

    /// Stops it; its last line.
    fn finish(mut self) -> Result<String, BenchError> {
        let _ = self.stdin.write_all(b"\n");
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let _ = self.child.wait();
        Ok(line.trim().to_string())
    }
}

/// A `secchan bench --attacker` child process.
pub struct AttackerProc(Helper);

impl AttackerProc {
    /// Starts an attacker of `kind` with `conns` connections to `target` from `sources`
    /// (flooding at `rate` hellos a second, 0: as fast as it can; on CPU `cpu` alone, if
    /// given), and waits until its connections are up. It runs at the lowest CPU priority:
    /// on loopback its CPU is the server's and the honest device's, which in a real attack it
    /// is not; what it makes the server do is measured as the server's.
    pub fn start(
        exe: &Path,
        kind: Kind,
        target: SocketAddr,
        sources: &[IpAddr],
        conns: usize,
        rate: u32,
        cpu: Option<usize>,
    ) -> Result<Self, BenchError> {
        let kind_name = clap::ValueEnum::to_possible_value(&kind)
            .map(|v| v.get_name().to_string())
            .unwrap_or_default();
        let sources: Vec<String> = sources.iter().map(IpAddr::to_string).collect();
        let args = [
            "--attacker".to_string(),
            kind_name.clone(),
            "--attack-target".into(),
            target.to_string(),
            "--attack-sources".into(),
            sources.join(","),
            "--attack-conns".into(),
            conns.to_string(),
            "--attack-rate".into(),
            rate.to_string(),
        ];
        let placement = Placement {
            cpu,
            low_priority: true,
        };
        let (helper, line) = Helper::start(exe, &args, placement)?;
        if line != "ready" {
            return Err(helper_failed(&format!(
                "attacker {kind_name} did not start"
            )));
        }
        Ok(Self(helper))
    }

    /// CPU seconds it has used.
    pub fn cpu_s(&self) -> f64 {
        self.0.cpu_s()
    }

    /// Stops it; what it counted.
    pub fn stop(self) -> Result<Counts, BenchError> {
        let line = self.0.finish()?;
        serde_json::from_str(&line)
            .map_err(|_| helper_failed(&format!("attacker counts: {line:?}")))
    }
}

/// A `secchan bench --raw-responder` child process (the raw TCP baseline).
pub struct RawProc {
    helper: Helper,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl RawProc {
    /// Starts it (on CPU `cpu` alone, if given) and waits until it listens.
    pub fn start(exe: &Path, cpu: Option<usize>) -> Result<Self, BenchError> {
        let placement = Placement {
            cpu,
            ..Placement::default()
        };
        let (helper, line) = Helper::start(exe, &["--raw-responder".to_string()], placement)?;
        let addr = line
            .strip_prefix("addr=")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| helper_failed("the raw responder did not start"))?;
        Ok(Self { helper, addr })
    }

    /// CPU seconds it has used.
    pub fn cpu_s(&self) -> f64 {
        self.helper.cpu_s()
    }

    /// Stops it; the connections it answered.
    pub fn stop(self) -> Result<u64, BenchError> {
        let line = self.helper.finish()?;
        line.parse()
            .map_err(|_| helper_failed(&format!("raw responder count: {line:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_s_totals_and_a_process_s_cpu_time_are_read() {
        let line = "2026-01-01T00:00:00Z  INFO secchan::service::tcp_server: connections served accepted=7 sessions=2 evicted=0 mode=hybrid";
        let f = fields(line);
        assert_eq!(f.get("accepted"), Some(&7));
        assert_eq!(f.get("sessions"), Some(&2));
        assert_eq!(f.get("evicted"), Some(&0));
        assert!(!f.contains_key("mode"), "only numbers are counts");
        assert!(cpu_s(std::process::id()).is_some());
        assert!(status_kib(std::process::id(), "VmRSS:").is_some_and(|k| k > 0));
    }
}
