//! The delivery promise through a real Mosquitto, on the same delivery code as TCP (the
//! server's intake and state directory, the device's outbox and spool): server restarts and
//! crashes, and a device killed and rerun with its spool.

mod delivery_support;
#[allow(dead_code)]
#[path = "support/mosquitto.rs"]
mod mosquitto;

use delivery_support::*;
use mosquitto::Mosquitto;

fn lines(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// `secchan device --mqtt URL` pinning the server's key, with `extra`.
fn mqtt_device(
    dir: &std::path::Path,
    url: &str,
    extra: &[&str],
    input: std::process::Stdio,
    n: usize,
) -> Proc {
    let mut c = bin();
    c.args(["device", "--mqtt", url, "--server-key"])
        .arg(dir.join("server.key.pub"))
        .args(["--ack-timeout", "1"])
        .args(extra);
    Proc::spawn(c, dir.join(format!("device-{n}.log")), input)
}

#[test]
fn server_restarts_and_crashes_through_a_broker_lose_and_repeat_nothing() {
    let m = Mosquitto::start();
    let dir = tempdir("delivery-mqtt-restarts");
    keygen(&dir.join("server.key"));
    let state = dir.join("state");
    let args = [
        "--state-dir",
        state.to_str().unwrap(),
        "--drain-timeout",
        "1",
    ];
    let mut srv = mqtt_server(&dir, &m.url(), &args, 0);
    let sent = lines("mqtt-restart", 4_000);
    let mut dev = mqtt_device(
        &dir,
        &m.url(),
        &["--rate", "1000/s"],
        input(&dir, "input", sent.iter().cloned()),
        0,
    );
    for round in 1..=4 {
        let seen = written(&dir).len();
        wait_for("progress", || {
            written(&dir).len() > seen || dev.child.try_wait().unwrap().is_some()
        });
        if round % 2 == 0 {
            srv.crash();
        } else {
            srv.terminate();
            srv.wait();
        }
        srv = mqtt_server(&dir, &m.url(), &args, round);
    }
    assert_eq!(dev.wait(), Some(0), "{}", dev.log());
    let sessions = dev.log().matches("session established").count();
    assert!(
        sessions >= 2,
        "the device moved to the restarted instances: {}",
        dev.log()
    );
    assert_exactly_once(&dir, &sent);
}

#[test]
fn a_device_killed_through_a_broker_goes_on_from_its_spool() {
    let m = Mosquitto::start();
    let dir = tempdir("delivery-mqtt-spool");
    keygen(&dir.join("server.key"));
    let _srv = mqtt_server(&dir, &m.url(), &[], 0);
    let spool = dir.join("spool");
    let spool_arg = ["--spool", spool.to_str().unwrap()];
    let first = lines("first", 3_000);
    let mut dev = mqtt_device(
        &dir,
        &m.url(),
        &[&spool_arg[..], &["--rate", "1000/s"]].concat(),
        input(&dir, "input-1", first.iter().cloned()),
        0,
    );
    wait_for("the first lines", || !written(&dir).is_empty());
    dev.crash();
    let second = lines("second", 50);
    let mut again = mqtt_device(
        &dir,
        &m.url(),
        &spool_arg,
        input(&dir, "input-2", second.iter().cloned()),
        1,
    );
    assert_eq!(again.wait(), Some(0), "{}", again.log());
    let got = written(&dir);
    assert!(
        got.iter().all(|(s, _, _)| *s == got[0].0),
        "one stream across both runs"
    );
    let mut seqs: Vec<u64> = got.iter().map(|(_, seq, _)| *seq).collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (0..got.len() as u64).collect::<Vec<_>>(),
        "each seq once, no gap"
    );
    let read_first = got.len() - second.len();
    for (_, seq, data) in &got {
        let want = match *seq as usize {
            i if i < read_first => &first[i],
            i => &second[i - read_first],
        };
        assert_eq!(data, want, "message {seq}");
    }
}
