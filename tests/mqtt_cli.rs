//! The `secchan` binary over a real Mosquitto: the README's walkthrough with the sample
//! dataset, two server processes sharing the devices, signals, --max-sessions, broker
//! accounts, and one-line errors.
#![cfg(feature = "mqtt")]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::mosquitto::Mosquitto;

const SECCHAN: &str = env!("CARGO_BIN_EXE_secchan");
/// Upper bound for anything the tests wait for.
const PATIENCE: Duration = Duration::from_secs(30);

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("secchan-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn secchan(args: &[&str]) -> Command {
    let mut c = Command::new(SECCHAN);
    c.args(args).env("RUST_LOG", "secchan=info");
    c
}

fn run_ok(mut c: Command) -> Output {
    let out = c.stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{c:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A broker, and a directory with a server key, `devices` device keys and the
/// authorized-devices file.
fn setup(name: &str, devices: usize) -> (Mosquitto, Dir) {
    let dir = Dir::new(name);
    keys(&dir, devices);
    (Mosquitto::start(), dir)
}

/// Creates the server key and device keys, and the authorized-devices file.
fn keys(dir: &Dir, devices: usize) {
    run_ok(secchan(&[
        "keygen",
        "--out",
        dir.path("server.key").to_str().unwrap(),
    ]));
    let mut authorized = String::new();
    for i in 0..devices {
        let key = dir.path(&format!("device{i}.key"));
        let out = run_ok(secchan(&["keygen", "--out", key.to_str().unwrap()]));
        authorized.push_str(&format!(
            "{} device-{i}\n",
            String::from_utf8_lossy(&out.stdout).trim()
        ));
    }
    std::fs::write(dir.path("authorized"), authorized).unwrap();
}

/// Starts `secchan server --mqtt` writing to `out` (its log to `out`.log); returns once it
/// serves.
fn server(m: &Mosquitto, dir: &Dir, out: &str) -> Child {
    server_with(m, dir, out, &[])
}

/// [`server`] with more options.
fn server_with(m: &Mosquitto, dir: &Dir, out: &str, extra: &[&str]) -> Child {
    let log = dir.path(&format!("{out}.log"));
    let child = secchan(&[
        "server",
        "--mqtt",
        &m.url(),
        "--key",
        dir.path("server.key").to_str().unwrap(),
        "--authorized-devices",
        dir.path("authorized").to_str().unwrap(),
        "--mode",
        "any",
        "--out",
        dir.path(out).to_str().unwrap(),
    ])
    .args(extra)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log).unwrap())
    .spawn()
    .unwrap();
    wait_for(|| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("serving through")
    });
    child
}

fn device(m: &Mosquitto, dir: &Dir, i: usize, telemetry: &[&str]) -> Command {
    let mut c = secchan(&[
        "device",
        "--mqtt",
        &m.url(),
        "--server-key",
        dir.path("server.key.pub").to_str().unwrap(),
        "--key",
        dir.path(&format!("device{i}.key")).to_str().unwrap(),
    ]);
    c.args(telemetry);
    c
}

fn wait_for(mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < PATIENCE, "gave up waiting");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Sends `signal` (INT: Ctrl-C, TERM: a service manager) and waits for the process to end.
fn stop(mut child: Child, signal: &str) -> std::process::ExitStatus {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > PATIENCE {
            let _ = child.kill();
            panic!("secchan did not stop on SIG{signal}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops a server the way Ctrl-C does; it exits 0.
fn interrupt(child: Child) {
    let status = stop(child, "INT");
    assert!(status.success(), "server exited with {status}");
}

/// Starts a device in the background, its log going to `log`.
fn spawn_device(mut c: Command, log: &Path) -> Child {
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn sample_dataset_reaches_the_server_output_file() {
    let (m, dir) = setup("mqtt-cli-csv", 1);
    let srv = server(&m, &dir, "received.jsonl");
    let dataset = concat!(env!("CARGO_MANIFEST_DIR"), "/data/sample.csv");
    let csv = format!("csv:{dataset}");
    run_ok(device(
        &m,
        &dir,
        0,
        &["--telemetry", &csv, "--rate", "500/s"],
    ));
    let out = dir.path("received.jsonl");
    wait_for(|| lines(&out).len() >= 50);
    interrupt(srv);
    let got = lines(&out);
    assert_eq!(got.len(), 50);
    for (i, line) in got.iter().enumerate() {
        assert_eq!(line["device"], "device-0");
        assert_eq!(line["seq"], i as u64);
        assert_eq!(line["suite"], "X25519MLKEM768");
        let data: serde_json::Value = serde_json::from_str(line["data"].as_str().unwrap()).unwrap();
        assert!(
            data["temperature_c"].is_number() && data["spo2_pct"].is_number(),
            "{data}"
        );
    }
    let first: serde_json::Value = serde_json::from_str(got[0]["data"].as_str().unwrap()).unwrap();
    assert_eq!(first["timestamp"], "2026-03-14T08:00:00Z");
    let mode = std::fs::metadata(&out).unwrap();
    #[cfg(unix)]
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
}

#[test]
fn two_server_processes_share_the_devices() {
    let (m, dir) = setup("mqtt-cli-share", 4);
    let a = server(&m, &dir, "a.jsonl");
    let b = server(&m, &dir, "b.jsonl");
    let devices: Vec<Child> = (0..4)
        .map(|i| {
            device(
                &m,
                &dir,
                i,
                &[
                    "--telemetry",
                    "sim",
                    "--count",
                    "5",
                    "--rate",
                    "500/s",
                    "--mode",
                    "classical",
                ],
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for d in devices {
        let out = d.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (a_out, b_out) = (dir.path("a.jsonl"), dir.path("b.jsonl"));
    wait_for(|| lines(&a_out).len() + lines(&b_out).len() >= 20);
    interrupt(a);
    interrupt(b);
    let (a_lines, b_lines) = (lines(&a_out), lines(&b_out));
    assert!(!a_lines.is_empty(), "server A got no device");
    assert!(!b_lines.is_empty(), "server B got no device");
    let ids: Vec<(String, u64)> = a_lines
        .iter()
        .chain(&b_lines)
        .map(|l| {
            (
                l["stream"].as_str().unwrap().to_string(),
                l["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    // No instance stopped while devices ran, so not even the duplicate of docs/mqtt.md §6.4
    // may appear.
    assert_eq!(ids.len(), 20, "lines across both servers: {ids:?}");
    assert_eq!(unique.len(), 20, "a message was output twice: {ids:?}");
}

#[test]
fn sigterm_stops_the_server_and_the_device_cleanly() {
    let (m, dir) = setup("mqtt-cli-term", 1);
    let srv = server(&m, &dir, "out.jsonl");
    let log = dir.path("device.log");
    let dev = spawn_device(
        device(&m, &dir, 0, &["--telemetry", "sim", "--rate", "50/s"]),
        &log,
    );
    let out = dir.path("out.jsonl");
    wait_for(|| lines(&out).len() >= 5);
    let status = stop(dev, "TERM");
    assert!(status.success(), "device: {status}: {}", read(&log));
    assert!(
        read(&log).contains("all messages delivered and acknowledged"),
        "{}",
        read(&log)
    );
    let status = stop(srv, "TERM");
    let server_log = read(&dir.path("out.jsonl.log"));
    assert!(status.success(), "server: {status}: {server_log}");
    assert!(server_log.contains("closing every session"), "{server_log}");
    assert!(server_log.contains("server stopped"), "{server_log}");
    // Everything the device had acknowledged is in the output, once.
    let seqs: Vec<u64> = lines(&out)
        .iter()
        .map(|l| l["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
}

#[test]
fn ctrl_c_stops_a_device_waiting_on_a_full_buffer() {
    let (mut m, dir) = setup("mqtt-cli-full", 1);
    let srv = server(&m, &dir, "out.jsonl");
    let log = dir.path("device.log");
    let telemetry = ["--telemetry", "sim", "--rate", "1000/s"];
    let options = ["--buffer", "5", "--drain-timeout", "1"];
    let dev = spawn_device(
        device(&m, &dir, 0, &[&telemetry[..], &options].concat()),
        &log,
    );
    wait_for(|| !lines(&dir.path("out.jsonl")).is_empty());
    m.kill();
    // The source is paused until acknowledgements make room, and says so.
    wait_for(|| read(&log).contains("telemetry buffer full"));
    let status = stop(dev, "INT");
    assert!(!status.success(), "messages were left unacknowledged");
    let log = read(&log);
    assert!(log.contains("were not acknowledged"), "{log}");
    m.spawn();
    interrupt(srv);
}

#[test]
fn max_sessions_is_honoured_on_mqtt() {
    let (m, dir) = setup("mqtt-cli-max", 2);
    let srv = server_with(&m, &dir, "out.jsonl", &["--max-sessions", "1"]);
    let log = dir.path("device0.log");
    let first = spawn_device(
        device(&m, &dir, 0, &["--telemetry", "sim", "--rate", "20/s"]),
        &log,
    );
    wait_for(|| !lines(&dir.path("out.jsonl")).is_empty());
    let out = device(
        &m,
        &dir,
        1,
        &[
            "--telemetry",
            "sim",
            "--count",
            "1",
            "--handshake-timeout",
            "2",
            "--handshake-attempts",
            "1",
        ],
    )
    .stdin(Stdio::null())
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a second session was accepted: {err}"
    );
    assert!(err.contains("no secchan server answered"), "{err}");
    assert!(stop(first, "INT").success(), "{}", read(&log));
    interrupt(srv);
    assert!(lines(&dir.path("out.jsonl"))
        .iter()
        .all(|l| l["device"] == "device-0"));
}

#[test]
fn broker_account_and_client_ids_reach_the_broker() {
    let dir = Dir::new("mqtt-cli-account");
    keys(&dir, 1);
    let m = Mosquitto::start_with_password("sensor", "correct horse");
    let password = dir.path("password");
    std::fs::write(&password, "correct horse\n").unwrap();
    let account = |id: &'static str| {
        vec![
            "--mqtt-username".to_string(),
            "sensor".into(),
            "--mqtt-password-file".into(),
            password.to_str().unwrap().into(),
            "--mqtt-client-id".into(),
            id.into(),
        ]
    };
    let server_account = account("lab-server");
    let server_account: Vec<&str> = server_account.iter().map(String::as_str).collect();
    let srv = server_with(&m, &dir, "out.jsonl", &server_account);
    let device_account = account("lab-device");
    let mut c = device(&m, &dir, 0, &["--telemetry", "sim", "--count", "3"]);
    c.args(&device_account);
    run_ok(c);
    wait_for(|| lines(&dir.path("out.jsonl")).len() >= 3);
    interrupt(srv);
    let log = m.log();
    for id in ["lab-server", "lab-device"] {
        assert!(log.contains(&format!("as {id} ")), "{log}");
    }
    assert!(log.contains("u'sensor'"), "{log}");
}

/// Runs secchan, expects it to fail, returns its stderr.
fn fails(args: &[&str]) -> String {
    let out = secchan(args).stdin(Stdio::null()).output().unwrap();
    assert!(!out.status.success(), "secchan {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_mqtt_options_are_one_line_errors() {
    let dir = Dir::new("mqtt-cli-errors");
    keys(&dir, 1);
    let err = fails(&[
        "device",
        "--mqtt",
        "wss://h:8883",
        "--server-key",
        "SHA256:x",
    ]);
    assert!(err.contains("WebSockets is not built in"), "{err}");
    let err = fails(&[
        "device",
        "--mqtt",
        "mqtt://h",
        "--mqtt-ca",
        "ca.pem",
        "--server-key",
        "SHA256:x",
    ]);
    assert!(err.contains("use an mqtts:// URL"), "{err}");
    let pin = dir.path("server.key.pub");
    let pin = pin.to_str().unwrap();
    let no_broker = [
        "device",
        "--mqtt",
        "mqtt://127.0.0.1:1",
        "--server-key",
        pin,
    ];
    let err = fails(&[&no_broker[..], &["--telemetry", "csv:/nonexistent.csv"]].concat());
    assert!(
        err.contains("cannot read telemetry dataset /nonexistent.csv"),
        "{err}"
    );
    let err = fails(&no_broker);
    assert!(
        err.contains("cannot reach the MQTT broker at 127.0.0.1:1"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let err = fails(&[
        "device",
        "--mqtt",
        "mqtts://127.0.0.1:1",
        "--mqtt-ca",
        "/nonexistent/ca.pem",
        "--server-key",
        pin,
    ]);
    assert!(
        err.contains("cannot use /nonexistent/ca.pem as the CA file (--mqtt-ca)"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let err = fails(&[
        "device",
        "--mqtt",
        "mqtt://h",
        "--connect",
        "127.0.0.1:4433",
    ]);
    assert!(err.contains("cannot be used with"), "{err}");
    let err = fails(&[&no_broker[..], &["--ack-timeout", "99999999999"]].concat());
    assert!(
        err.contains("--ack-timeout") && err.contains("1..=3600"),
        "{err}"
    );
    // Trust on first use over a broker trusts whoever answers first: refused, saying why,
    // before the broker is contacted; allowed with --mqtt-allow-tofu.
    let known = dir.path("known_servers");
    let tofu = [
        "device",
        "--mqtt",
        "mqtt://127.0.0.1:1",
        "--known-servers",
        known.to_str().unwrap(),
    ];
    let err = fails(&tofu);
    assert!(err.contains("trusting on first use"), "{err}");
    assert!(err.contains("whichever client answers first"), "{err}");
    assert!(
        err.contains("--server-key") && err.contains("--mqtt-allow-tofu"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let err = fails(&[&tofu[..], &["--mqtt-allow-tofu"]].concat());
    assert!(err.contains("cannot reach the MQTT broker"), "{err}");
    let key = dir.path("server.key");
    let err = fails(&[
        "server",
        "--mqtt",
        "mqtt://127.0.0.1:1",
        "--key",
        key.to_str().unwrap(),
        "--allow-any-device",
        "--replay-window",
        "256",
    ]);
    assert!(err.contains("--replay-window to at least 512"), "{err}");
}
