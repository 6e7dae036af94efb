//! Fault-injection helpers for the delivery tests: server and device processes whose logs go
//! to files, signals, the output file read back, and a TCP proxy that delays one direction.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Upper bound for anything a test waits for (never reached when things work).
pub const PATIENCE: Duration = Duration::from_secs(120);

/// `secchan` with info logs.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_secchan"));
    c.env("RUST_LOG", "info");
    c
}

/// A fresh, empty directory for one test.
pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("secchan-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Creates a key pair at `path`; returns its fingerprint.
pub fn keygen(path: &Path) -> String {
    let out = bin().args(["keygen", "--out"]).arg(path).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .find(|w| w.starts_with("SHA256:"))
        .unwrap()
        .to_string()
}

/// Polls `f` until it is true, for at most [`PATIENCE`].
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < PATIENCE, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A process whose stderr goes to a log file; killed when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `command` with stdout discarded and stderr to `log`.
    pub fn spawn(mut command: Command, log: PathBuf, stdin: Stdio) -> Self {
        let child = command
            .stdin(stdin)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self { child, log }
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Kills with SIGKILL (a crash: no shutdown code runs).
    pub fn crash(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Waits for the exit (at most [`PATIENCE`]); its code.
    pub fn wait(&mut self) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                start.elapsed() < PATIENCE,
                "process did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `secchan server` on `listen` with `server.key` from `dir`, any device accepted,
/// its lines appended to `dir/out.jsonl`; waits until it listens and returns it with its
/// address.
pub fn server(dir: &Path, listen: &str, extra: &[&str], n: usize) -> (Proc, String) {
    let mut c = bin();
    c.args(["server", "--listen", listen, "--allow-any-device", "--key"])
        .arg(dir.join("server.key"))
        .arg("--out")
        .arg(dir.join("out.jsonl"))
        .args(extra);
    let p = Proc::spawn(c, dir.join(format!("server-{n}.log")), Stdio::null());
    let mut addr = String::new();
    wait_for("the server to listen", || {
        if let Some(rest) = p.log().split("addr=").nth(1) {
            addr = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
        }
        !addr.is_empty()
    });
    (p, addr)
}

/// Starts `secchan server --mqtt URL` like [`server`]; returns once it serves the broker.
pub fn mqtt_server(dir: &Path, url: &str, extra: &[&str], n: usize) -> Proc {
    let mut c = bin();
    c.args(["server", "--mqtt", url, "--allow-any-device", "--key"])
        .arg(dir.join("server.key"))
        .arg("--out")
        .arg(dir.join("out.jsonl"))
        .args(extra);
    let p = Proc::spawn(c, dir.join(format!("server-{n}.log")), Stdio::null());
    wait_for("the server to serve the broker", || {
        p.log().contains("serving through the MQTT broker")
    });
    p
}

/// Starts `secchan device` connecting to `addr`, pinning `server_fp`, reading `stdin`.
pub fn device(
    dir: &Path,
    addr: &str,
    server_fp: &str,
    extra: &[&str],
    stdin: Stdio,
    n: usize,
) -> Proc {
    let mut c = bin();
    c.args(["device", "--connect", addr, "--server-key", server_fp])
        .args(extra);
    Proc::spawn(c, dir.join(format!("device-{n}.log")), stdin)
}

/// Writes `lines` as a file and opens it as a process's stdin.
pub fn input(dir: &Path, name: &str, lines: impl Iterator<Item = String>) -> Stdio {
    let path = dir.join(name);
    let mut text = String::new();
    for l in lines {
        text.push_str(&l);
        text.push('\n');
    }
    std::fs::write(&path, text).unwrap();
    Stdio::from(std::fs::File::open(path).unwrap())
}

/// What the server wrote: (stream, seq, data) of each complete line of `dir/out.jsonl`.
pub fn written(dir: &Path) -> Vec<(String, u64, String)> {
    let text = std::fs::read_to_string(dir.join("out.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            (
                v["stream"].as_str().unwrap_or_default().to_string(),
                v["seq"].as_u64().unwrap_or(u64::MAX),
                v["data"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Asserts every one of `expected` was written exactly once, and nothing else.
pub fn assert_exactly_once(dir: &Path, expected: &[String]) {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    let got = written(dir);
    for (_, _, data) in &got {
        *counts.entry(data.as_str()).or_default() += 1;
    }
    let missing = expected
        .iter()
        .filter(|e| !counts.contains_key(e.as_str()))
        .count();
    let twice: Vec<(&&str, &usize)> = counts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert_eq!(missing, 0, "lines missing (of {})", expected.len());
    assert!(twice.is_empty(), "written more than once: {twice:?}");
    assert_eq!(got.len(), expected.len(), "unexpected lines");
}

/// A TCP proxy on loopback to `to` that holds every chunk the client sends for `delay`
/// before passing it on (the server's answers pass at once). Returns its address.
pub fn delaying_proxy(to: SocketAddr, delay: Duration) -> SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = std::net::TcpStream::connect(to) else {
                continue;
            };
            let (mut c_read, mut s_write) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut s_read, mut c_write) = (server, client);
            std::thread::spawn(move || {
                let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
                std::thread::spawn(move || {
                    for (due, chunk) in rx {
                        std::thread::sleep(due.saturating_duration_since(Instant::now()));
                        if s_write.write_all(&chunk).is_err() {
                            return;
                        }
                    }
                    let _ = s_write.shutdown(std::net::Shutdown::Write);
                });
                let mut buf = [0u8; 16 * 1024];
                while let Ok(n) = c_read.read(&mut buf) {
                    if n == 0
                        || tx
                            .send((Instant::now() + delay, buf[..n].to_vec()))
                            .is_err()
                    {
                        return;
                    }
                }
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s_read, &mut c_write);
                let _ = c_write.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}
