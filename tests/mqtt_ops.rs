//! Operating `secchan server --mqtt` through a real Mosquitto: a reload of the
//! authorized-devices file closes the sessions of removed devices with `revoked` (and refuses
//! them after) while other devices go on, and a file that does not parse leaves the list in
//! force; a revocation in the fleet registry does the same; `secchan status` lists the MQTT sessions and the instance's counters from the
//! systemd default socket; `--metrics` serves them beside the intake's.
#![cfg(feature = "mqtt")]

mod cli_support;
mod support;

use cli_support::reload::{keys, removal, sighup_scenario};
use cli_support::{
    bin, free_port, hangup, http_get, keygen, run_device, sample, status, tempdir, Device, Logged,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::mosquitto::Mosquitto;

const PATIENCE: Duration = Duration::from_secs(30);

/// `secchan server --mqtt` with the key of `dir`, writing to `dir`/out.jsonl.
fn command(m: &Mosquitto, dir: &Path, extra: &[&str]) -> Command {
    let mut c = bin();
    c.args(["server", "--mqtt", &m.url(), "--key"])
        .arg(dir.join("server.key"))
        .arg("--out")
        .arg(dir.join("out.jsonl"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    c
}

/// Starts `command`, logging to `dir`/server.log; returns once it serves.
fn start(command: Command, dir: &Path) -> Logged {
    let mut server = Logged::spawn(command, &dir.join("server.log"));
    server.wait_for("serving through", PATIENCE);
    server
}

/// [`command`] with the device list `dir`/devices.
fn listed(m: &Mosquitto, dir: &Path, extra: &[&str]) -> Command {
    let mut c = command(m, dir, extra);
    c.arg("--authorized-devices").arg(dir.join("devices"));
    c
}

/// [`listed`], started.
fn server(m: &Mosquitto, dir: &Path, extra: &[&str]) -> Logged {
    start(listed(m, dir, extra), dir)
}

fn device(m: &Mosquitto, dir: &Path, server_fp: &str, name: &str) -> Device {
    Device::spawn(dir, &["--mqtt", &m.url(), "--server-key", server_fp], name)
}

#[test]
fn sighup_closes_the_mqtt_sessions_of_removed_devices_only_and_keeps_the_list_when_broken() {
    let dir = tempdir("mqtt-reload");
    let m = Mosquitto::start();
    let (server_fp, devices) = keys(&dir);
    let mut server = server(&m, &dir, &["--registry-poll", "3600"]);
    sighup_scenario(&dir, &mut server, &devices, |name| {
        device(&m, &dir, &server_fp, name)
    });
    server.wait_for("no longer authorized", PATIENCE);
}

/// Runs `secchan ARGS` in `dir`; it must succeed.
fn run_ok(dir: &Path, args: &str) {
    let out = bin()
        .current_dir(dir)
        .args(args.split_whitespace())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_registry_revocation_closes_the_mqtt_session_of_that_device_only() {
    let dir = tempdir("mqtt-registry");
    let m = Mosquitto::start();
    let server_fp = keygen(&dir.join("server.key"));
    keygen(&dir.join("a.key"));
    keygen(&dir.join("c.key"));
    run_ok(&dir, "registry init --key server.key fleet.reg");
    for n in ["a", "c"] {
        run_ok(
            &dir,
            &format!("registry enroll --key server.key fleet.reg --device {n}.key.pub --name sensor-{n} --group greenhouse"),
        );
    }
    let registry = dir.join("fleet.reg");
    let registry = registry.to_str().unwrap();
    // Checked only on SIGHUP within the test's time: the signal is what is tested.
    let c = command(
        &m,
        &dir,
        &["--registry", registry, "--registry-poll", "3600"],
    );
    let mut server = start(c, &dir);
    let remove = || {
        run_ok(&dir, "registry revoke --key server.key fleet.reg sensor-a");
        hangup(&server.child);
    };
    let device = |name: &str| device(&m, &dir, &server_fp, name);
    removal(&dir, &device, remove, "revoked");
    server.wait_for("no longer authorized", PATIENCE);
}

/// Polls `get` until `done` accepts what it returned; returns that.
fn wait_until<T: std::fmt::Debug>(mut get: impl FnMut() -> T, done: impl Fn(&T) -> bool) -> T {
    let start = Instant::now();
    loop {
        let v = get();
        if done(&v) {
            return v;
        }
        assert!(start.elapsed() < PATIENCE, "gave up waiting: {v:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A test directory `name` with a server key and the key of device `key`, the only one on
/// the list (as `device`), and a broker; the fingerprints of the server and the device.
fn one_device(name: &str, key: &str, device: &str) -> (PathBuf, Mosquitto, String, String) {
    let dir = tempdir(name);
    let server_fp = keygen(&dir.join("server.key"));
    let device_fp = keygen(&dir.join(format!("{key}.key")));
    std::fs::write(dir.join("devices"), format!("{device_fp} {device}\n")).unwrap();
    (dir, Mosquitto::start(), server_fp, device_fp)
}

#[test]
fn status_lists_the_mqtt_sessions_and_the_instance_counters() {
    let (dir, m, server_fp, device_fp) = one_device("mqtt-status", "g", "greenhouse-3");
    // Where a server started by systemd (RuntimeDirectory=secchan) has it without
    // --control-socket.
    let socket = dir.join("secchan-server.sock");
    let mut c = listed(&m, &dir, &[]);
    c.env("RUNTIME_DIRECTORY", &dir);
    let mut server = start(c, &dir);
    server.wait_for("control socket", PATIENCE);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let mut dev = device(&m, &dir, &server_fp, "g");
    dev.send("one");
    dev.send("two");
    let json = |t: String| serde_json::from_str::<serde_json::Value>(&t).unwrap();
    let doc = wait_until(
        || json(status(&socket, true)),
        |doc| doc["sessions"][0]["messages"] == 2,
    );
    assert_eq!(doc["transport"], "mqtt");
    assert_eq!(doc["pending_handshakes"], 0);
    let s = &doc["sessions"][0];
    assert_eq!(s["device"], "greenhouse-3");
    assert_eq!(s["fingerprint"], device_fp.as_str());
    let peer = s["peer"].as_str().unwrap();
    assert!(
        peer.starts_with("mqtt:secchan-") && peer.contains('/'),
        "{peer}"
    );
    assert_eq!(s["suite"], "X25519MLKEM768");
    assert_eq!(s["aead"], "AES-256-GCM");
    assert_eq!(s["resumed"], false);
    assert!(s["established"].as_u64().unwrap() > 0 && s["last_seen"].as_u64().unwrap() > 0);
    // Two 3-byte lines, each in a 25-byte Message envelope header.
    assert_eq!(s["bytes"], 56);
    let a = &doc["admission"];
    assert_eq!(a["sessions_established"], 1, "{a}");
    assert_eq!(a["hellos_answered"], 1, "{a}");
    assert_eq!(a["delivered"], 2, "{a}");
    assert_eq!(a["devices_refused"], 0, "{a}");
    let text = status(&socket, false);
    assert!(
        text.starts_with("1 sessions, 0 handshakes pending (mqtt)"),
        "{text}"
    );
    assert!(
        text.contains("greenhouse-3") && text.contains(&device_fp) && text.contains(peer),
        "{text}"
    );

    // The device closes: its session is gone from the list.
    dev.close();
    assert!(
        cli_support::wait_exit(&mut dev.proc.child).success(),
        "{}",
        dev.proc.text()
    );
    wait_until(
        || json(status(&socket, true)),
        |doc| doc["sessions"].as_array().is_some_and(|s| s.is_empty()),
    );
}

#[test]
fn metrics_serve_the_mqtt_instance_counters_beside_the_intake() {
    let (dir, m, server_fp, _) = one_device("mqtt-metrics", "device", "greenhouse-7");
    keygen(&dir.join("stranger.key"));
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut server = server(&m, &dir, &["--metrics", &metrics]);
    server.wait_for("metrics at /metrics", PATIENCE);
    let scrape = || http_get(&metrics, "/metrics");
    let before = scrape();
    assert!(before.starts_with("HTTP/1.1 200"), "{before}");
    assert_eq!(sample(&before, "secchan_messages_written_total"), 0);
    assert_eq!(sample(&before, "secchan_sessions"), 0);
    assert_eq!(sample(&before, "secchan_sessions_established_total"), 0);

    let url = m.url();
    let args = |key| ["--mqtt", &url, "--server-key", &server_fp, "--key", key];
    let out = run_device(&dir, &args("device.key"), "one\ntwo\nthree\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_device(&dir, &args("stranger.key"), "nope\n");
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let after = wait_until(scrape, |s| {
        sample(s, "secchan_devices_refused_total") == 1 && sample(s, "secchan_sessions") == 0
    });
    assert_eq!(
        sample(&after, "secchan_messages_written_total"),
        3,
        "{after}"
    );
    assert_eq!(sample(&after, "secchan_messages_duplicate_total"), 0);
    assert_eq!(sample(&after, "secchan_sessions_established_total"), 1);
    assert_eq!(sample(&after, "secchan_handshakes_full_total"), 2);
    assert_eq!(sample(&after, "secchan_handshakes_failed_total"), 1);
    assert_eq!(sample(&after, "secchan_handshakes_pending"), 0);
    assert_eq!(sample(&after, "secchan_mqtt_messages_received_total"), 3);
    assert_eq!(sample(&after, "secchan_mqtt_hellos_shed_total"), 0);
    assert!(sample(&after, "secchan_mqtt_payload_bytes_received_total") > 0);
    assert!(
        !after.contains("greenhouse-7") && !after.contains("SHA256:"),
        "{after}"
    );
}
