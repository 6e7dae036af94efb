//! The live-reload scenarios both transports are tested with (tests/reload.rs over TCP,
//! tests/mqtt_ops.rs over MQTT).

use super::{hangup, keygen, wait_exit, wait_for_line, Device, Logged};
use std::path::Path;
use std::time::Duration;

/// Creates `server.key` and the keys of devices a, b and c in `dir`, and `dir`/devices listing
/// a and c; returns the server's fingerprint and the devices'.
pub fn keys(dir: &Path) -> (String, [String; 3]) {
    let server = keygen(&dir.join("server.key"));
    let devices = ["a", "b", "c"].map(|n| keygen(&dir.join(format!("{n}.key"))));
    let [a, _, c] = &devices;
    std::fs::write(dir.join("devices"), format!("{a} sensor-a\n{c} sensor-c\n")).unwrap();
    (server, devices)
}

/// With a server writing to `dir`/out.jsonl and `device(name)` starting that device against
/// it: devices a and c deliver; `remove` takes a off the server's list; a's live session is
/// then closed with `revoked` (exit 4), c's goes on, and a, coming back, is refused (exit 4,
/// its log saying `refusal`). Returns c, still connected.
pub fn removal(
    dir: &Path,
    device: &impl Fn(&str) -> Device,
    remove: impl FnOnce(),
    refusal: &str,
) -> Device {
    let out = dir.join("out.jsonl");
    let mut dev_a = device("a");
    let mut dev_c = device("c");
    dev_a.send("a-1");
    dev_c.send("c-1");
    wait_for_line(&out, "a-1");
    wait_for_line(&out, "c-1");

    remove();
    let status = wait_exit(&mut dev_a.proc.child);
    assert_eq!(status.code(), Some(4), "{}", dev_a.proc.text());
    assert!(
        dev_a.proc.text().contains("revoked"),
        "{}",
        dev_a.proc.text()
    );
    // c's session was not touched: the same device process goes on.
    dev_c.send("c-2");
    wait_for_line(&out, "c-2");
    assert!(dev_c.proc.child.try_wait().unwrap().is_none());
    let mut again = device("a");
    again.send("a-2");
    let status = wait_exit(&mut again.proc.child);
    assert_eq!(status.code(), Some(4), "{}", again.proc.text());
    assert!(again.proc.text().contains(refusal), "{}", again.proc.text());
    let written = std::fs::read_to_string(&out).unwrap();
    assert!(!written.contains("a-2"), "{written}");
    dev_c
}

/// With `server` serving the list of [`keys`] (checked only on SIGHUP within the test's time:
/// the signal is what is tested): [`removal`] by rewriting the file and SIGHUP, an added
/// device admitted, and a file that does not parse leaving the list in force.
pub fn sighup_scenario(
    dir: &Path,
    server: &mut Logged,
    [_, b, c]: &[String; 3],
    device: impl Fn(&str) -> Device,
) {
    let devices = dir.join("devices");
    let out = dir.join("out.jsonl");
    let patience = Duration::from_secs(30);
    // b added, a removed.
    let remove = || {
        std::fs::write(&devices, format!("{b} sensor-b\n{c} sensor-c\n")).unwrap();
        hangup(&server.child);
        server.wait_for("authorized devices reloaded", patience);
    };
    let not_listed = "not on the server's authorized list";
    let mut dev_c = removal(dir, &device, remove, not_listed);
    let mut dev_b = device("b");
    dev_b.send("b-1");
    wait_for_line(&out, "b-1");

    // A broken file: the list in force stays, and the server says why.
    std::fs::write(&devices, "this is not a device list\n").unwrap();
    hangup(&server.child);
    server.wait_for("does not parse", patience);
    dev_b.send("b-2");
    dev_c.send("c-3");
    wait_for_line(&out, "b-2");
    wait_for_line(&out, "c-3");
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "SIGHUP ended the server"
    );
}
