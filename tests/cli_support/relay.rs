//! What the relay and chat tests of both transports share (tests/relay.rs, tests/relay_mqtt.rs,
//! tests/chat_tui.rs): a `secchan` process whose output lines are awaited, fingerprints, a
//! directory of keys for a server and devices a, b and c, a fleet registry, the server, a
//! listening device, and the checks both transports' relay tests make.

use super::{bin, tempdir};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

/// A process whose stdout and stderr lines arrive on a channel, killed when dropped.
pub struct Proc {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    lines: Receiver<(bool, String)>,
    seen: Vec<(bool, String)>,
}

pub const OUT: bool = true;
pub const ERR: bool = false;

impl Proc {
    pub fn spawn(dir: &Path, args: &[&str]) -> Self {
        let mut child = bin()
            .env(
                "RUST_LOG",
                "info,secchan::service::tcp_server=debug,secchan::service::hub=debug",
            )
            .current_dir(dir)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for (is_out, pipe) in [
            (OUT, Box::new(out) as Box<dyn std::io::Read + Send>),
            (ERR, Box::new(err)),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { return };
                    if tx.send((is_out, line)).is_err() {
                        return;
                    }
                }
            });
        }
        let stdin = child.stdin.take();
        Self {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first line (on stdout if `out`, else stderr) containing `needle`.
    pub fn wait_for(&mut self, out: bool, needle: &str) -> String {
        if let Some((_, l)) = self
            .seen
            .iter()
            .find(|(o, l)| *o == out && l.contains(needle))
        {
            return l.clone();
        }
        loop {
            let (o, line) = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("no line with {needle:?}; saw {:#?}", self.seen));
            self.seen.push((o, line.clone()));
            if o == out && line.contains(needle) {
                return line;
            }
        }
    }

    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Every line so far, after a moment for the last ones to arrive.
    pub fn all(&mut self) -> String {
        std::thread::sleep(Duration::from_millis(300));
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        self.seen
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn fingerprint(dir: &Path, key: &str) -> String {
    let out = bin()
        .current_dir(dir)
        .args(["fingerprint", key])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A directory with keys for the server and devices a, b, c, and an authorized-devices file
/// naming them.
pub fn fleet(name: &str) -> std::path::PathBuf {
    let dir = tempdir(name);
    for k in ["server", "a", "b", "c"] {
        let st = bin()
            .current_dir(&dir)
            .args(["keygen", "--out", &format!("{k}.key")])
            .output()
            .unwrap();
        assert!(st.status.success());
    }
    let list: String = ["a", "b", "c"]
        .iter()
        .map(|d| format!("{} {d}\n", fingerprint(&dir, &format!("{d}.key"))))
        .collect();
    std::fs::write(dir.join("devices"), list).unwrap();
    dir
}

pub fn server(dir: &Path, extra: &[&str]) -> (Proc, String) {
    let mut args = vec!["server", "--listen", "127.0.0.1:0", "--key", "server.key"];
    args.extend_from_slice(extra);
    let mut p = Proc::spawn(dir, &args);
    let line = p.wait_for(ERR, "listening");
    let addr = line.split("addr=").nth(1).unwrap();
    let addr = addr.split_whitespace().next().unwrap().to_string();
    (p, addr)
}

/// `--peer-key NAME=FINGERPRINT` for each of `pins`, naming the peer NAME by the key of
/// `NAME.key` (or, for `(NAME, KEY)`, of `KEY.key`).
pub fn pin_args(dir: &Path, pins: &[(&str, &str)]) -> Vec<String> {
    pins.iter()
        .flat_map(|(name, key)| {
            let fp = fingerprint(dir, &format!("{key}.key"));
            ["--peer-key".to_string(), format!("{name}={fp}")]
        })
        .collect()
}

/// Device `name` that stays connected, pinning the keys of `pins`.
pub fn listener(dir: &Path, addr: &str, name: &str, pins: &[&str]) -> Proc {
    let pins: Vec<(&str, &str)> = pins.iter().map(|p| (*p, *p)).collect();
    listener_trusting(dir, addr, name, &pin_args(dir, &pins))
}

/// Device `name` that stays connected, trusting its peers through the options `trust`.
pub fn listener_trusting(dir: &Path, addr: &str, name: &str, trust: &[String]) -> Proc {
    let mut extra = vec!["--listen".to_string()];
    extra.extend_from_slice(trust);
    connected(dir, addr, "device", name, &extra)
}

/// `secchan COMMAND` (`device` or `chat`) as device `name`, connected to `addr`, with `extra`.
pub fn connected(dir: &Path, addr: &str, command: &str, name: &str, extra: &[String]) -> Proc {
    let mut args = vec![command.to_string()];
    args.extend(session_args(dir, addr, name));
    args.extend_from_slice(extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::spawn(dir, &args)
}

/// `--connect ADDR --server-key SERVER --key NAME.key`.
pub fn session_args(dir: &Path, addr: &str, name: &str) -> Vec<String> {
    let server_fp = fingerprint(dir, "server.key");
    ["--connect", addr, "--server-key", &server_fp, "--key"]
        .into_iter()
        .map(String::from)
        .chain([format!("{name}.key")])
        .collect()
}

/// `secchan registry ARGS` in `dir`, which must succeed.
pub fn registry(dir: &Path, args: &[&str]) {
    let out = bin()
        .current_dir(dir)
        .arg("registry")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Creates `fleet.reg` signed by `key` and enrolls the devices in their groups.
pub fn enroll_fleet(dir: &Path, key: &str, devices: &[(&str, &str)]) {
    registry(dir, &["init", "--key", key, "fleet.reg"]);
    for (d, g) in devices {
        let public = format!("{d}.key.pub");
        registry(
            dir,
            &[
                "enroll",
                "--key",
                key,
                "--device",
                &public,
                "--name",
                d,
                "--group",
                g,
                "fleet.reg",
            ],
        );
    }
}

/// Device a's run sending "secret-one" and "secret-two" to b succeeded (acknowledged end to
/// end), b printed both as end-to-end messages from a's key, and the server printed neither.
pub fn assert_relayed(dir: &Path, a: &std::process::Output, b: &mut Proc, server: &mut Proc) {
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    for text in ["secret-one", "secret-two"] {
        let line: serde_json::Value = serde_json::from_str(&b.wait_for(OUT, text)).unwrap();
        assert_eq!(line["from"], "a");
        assert_eq!(line["e2e"], true);
        assert_eq!(line["fingerprint"], fingerprint(dir, "a.key"));
    }
    let seen = server.all();
    assert!(
        !seen.contains("secret"),
        "the server printed plaintext: {seen}"
    );
}

/// A fleet registry `fleet.reg` in `dir`, signed by the server's key, with a and b in the
/// group greenhouse and c in office.
pub fn registry_groups(dir: &Path) {
    let fleet = [("a", "greenhouse"), ("b", "greenhouse"), ("c", "office")];
    enroll_fleet(dir, "server.key", &fleet);
}

/// With `--relay group` and [`registry_groups`]: c (office) sending to b is refused with
/// exit code 4 and `forbidden`, a (greenhouse) reaches b, and b printed only a's line.
/// `send(from, input)` runs device `from` with `--to b`.
pub fn assert_groups_decide(b: &mut Proc, send: impl Fn(&str, &str) -> std::process::Output) {
    let out = send("c", "from the office\n");
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("(forbidden)"));
    let out = send("a", "from the greenhouse\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    b.wait_for(OUT, "from the greenhouse");
    assert!(!b.all().contains("from the office"));
}
