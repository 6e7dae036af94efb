//! Running the `secchan` binary from tests: commands, temporary directories, a server process
//! on a free loopback port, a device process fed from stdin, and the one-line error check.
#![allow(dead_code)]

pub mod relay;
pub mod reload;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};

/// `secchan` with info logs on stderr.
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

/// `secchan keygen --out PATH`; the fingerprint it printed.
pub fn keygen(path: &Path) -> String {
    let out = bin().arg("keygen").arg("--out").arg(path).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// One line on stderr, starting with "secchan: " and containing every needle, and a failure
/// exit.
pub fn assert_one_line_error(out: &Output, needles: &[&str]) {
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("secchan: "), "stderr: {stderr}");
    for needle in needles {
        assert!(last.contains(needle), "expected {needle:?} in {last:?}");
    }
}

/// A `secchan server` process, killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: String,
}

impl Server {
    /// Spawns `command` (a `secchan server --listen 127.0.0.1:0 ...`) and waits for its
    /// "listening" log line to learn the address.
    pub fn start(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("server exited before listening")
                .unwrap();
            if let Some(rest) = line.split("addr=").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, addr }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `secchan device ARGS` in `dir` with `stdin` as its input.
pub fn run_device(dir: &Path, args: &[&str], stdin: impl AsRef<[u8]>) -> Output {
    let mut child = bin()
        .current_dir(dir)
        .arg("device")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.as_ref().to_vec();
    // A device that fails may exit before it has read all of its input: that is not an error
    // of the test.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let out = child.wait_with_output().unwrap();
    let _ = writer.join();
    out
}

/// A `secchan` process whose stderr goes to a file (its log, for tests that read what it
/// said), killed when dropped.
pub struct Logged {
    pub child: Child,
    pub log: PathBuf,
}

impl Logged {
    /// Spawns `command` with stdin, stdout and stderr as given by the caller, except stderr,
    /// which goes to `log`.
    pub fn spawn(mut command: Command, log: &Path) -> Self {
        let child = command
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        Self {
            child,
            log: log.to_path_buf(),
        }
    }

    /// What it logged so far.
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many lines of the log contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.text().lines().filter(|l| l.contains(needle)).count()
    }

    /// Waits until the log has a line containing `needle`; panics, showing the log, if the
    /// process exits or `timeout` passes first.
    pub fn wait_for(&mut self, needle: &str, timeout: std::time::Duration) -> String {
        let start = std::time::Instant::now();
        loop {
            if let Some(line) = self.text().lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "exited with {status} before logging {needle:?}:\n{}",
                    self.text()
                );
            }
            assert!(
                start.elapsed() < timeout,
                "no {needle:?} in {timeout:?}:\n{}",
                self.text()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Waits for a server's "listening" line and returns its address.
    pub fn listening(&mut self) -> String {
        let line = self.wait_for("listening", std::time::Duration::from_secs(30));
        let rest = line
            .split("addr=")
            .nth(1)
            .expect("listening line has addr=");
        rest.split_whitespace().next().unwrap().to_string()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port (bound and released: a test binds it again right away).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// A `secchan device` with its stdin open (the session stays up while it is), its stdout
/// discarded.
pub struct Device {
    pub proc: Logged,
    input: Option<ChildStdin>,
}

impl Device {
    /// `secchan device ARGS --key DIR/NAME.key`, logging to DIR/NAME.log.
    pub fn spawn(dir: &Path, args: &[&str], name: &str) -> Self {
        let mut c = bin();
        c.arg("device")
            .args(args)
            .arg("--key")
            .arg(dir.join(format!("{name}.key")))
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        let mut proc = Logged::spawn(c, &dir.join(format!("{name}.log")));
        let input = proc.child.stdin.take().unwrap();
        Self {
            proc,
            input: Some(input),
        }
    }

    /// Closes its stdin: the end of its input.
    pub fn close(&mut self) {
        self.input = None;
    }

    /// Sends one line.
    pub fn send(&mut self, line: &str) {
        let input = self.input.as_mut().expect("input closed");
        writeln!(input, "{line}").unwrap();
        input.flush().unwrap();
    }
}

/// Waits until `path` has a line containing `needle`.
pub fn wait_for_line(path: &Path, needle: &str) {
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(path)
        .unwrap_or_default()
        .contains(needle)
    {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "no {needle:?} in {}",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Waits for `child` to exit.
pub fn wait_exit(child: &mut Child) -> ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "did not exit"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Sends SIGHUP to `child`.
pub fn hangup(child: &Child) {
    signal(child, "-HUP");
}

/// Sends signal `sig` (`-HUP`, `-STOP`, `-CONT`, ...) to `child`.
pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

/// `GET path` from the HTTP server at `addr`: the whole response.
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The value of the sample `name` in a metrics scrape.
pub fn sample(scrape: &str, name: &str) -> u64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {scrape}"))
        .trim()
        .parse()
        .unwrap()
}

/// What `secchan status --control-socket SOCKET` prints (with `--json` if `json`).
pub fn status(socket: &Path, json: bool) -> String {
    let mut c = bin();
    c.arg("status").arg("--control-socket").arg(socket);
    if json {
        c.arg("--json");
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
