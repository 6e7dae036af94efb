//! Operating `secchan server --mqtt` through a real Mosquitto: a reload of the
//! authorized-devices file closes the sessions of removed devices with `revoked` (and refuses
//! them after) while other devices go on, and a file that does not parse leaves the list in
//! force.
#![cfg(feature = "mqtt")]

mod cli_support;
mod support;

use cli_support::reload::{keys, sighup_scenario};
use cli_support::{bin, tempdir, Device, Logged};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use support::mosquitto::Mosquitto;

const PATIENCE: Duration = Duration::from_secs(30);

/// `secchan server --mqtt` with the key and device list of `dir`, writing to `dir`/out.jsonl;
/// returns once it serves.
fn server(m: &Mosquitto, dir: &Path, extra: &[&str]) -> Logged {
    let mut c = bin();
    c.args(["server", "--mqtt", &m.url(), "--key"])
        .arg(dir.join("server.key"))
        .arg("--authorized-devices")
        .arg(dir.join("devices"))
        .arg("--out")
        .arg(dir.join("out.jsonl"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let mut server = Logged::spawn(c, &dir.join("server.log"));
    server.wait_for("serving through", PATIENCE);
    server
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
