//! Live reload of the authorized-devices file (SIGHUP, or the file changing): an added device
//! is admitted, a removed one's live session is closed with `revoked` while a third session
//! goes on, and a file that does not parse leaves the list in force.

mod cli_support;

use cli_support::{bin, keygen, tempdir, Logged};
use std::io::Write;
use std::path::Path;
use std::process::{Child, ChildStdin, Stdio};
use std::time::{Duration, Instant};

/// A `secchan device` with its stdin open (the session stays up while it is).
struct Device {
    proc: Logged,
    input: ChildStdin,
}

fn device(dir: &Path, addr: &str, server_fp: &str, name: &str) -> Device {
    let mut c = bin();
    c.args([
        "device",
        "--connect",
        addr,
        "--server-key",
        server_fp,
        "--key",
    ])
    .arg(dir.join(format!("{name}.key")))
    .stdin(Stdio::piped())
    .stdout(Stdio::null());
    let mut proc = Logged::spawn(c, &dir.join(format!("{name}.log")));
    let input = proc.child.stdin.take().unwrap();
    Device { proc, input }
}

impl Device {
    fn send(&mut self, line: &str) {
        writeln!(self.input, "{line}").unwrap();
        self.input.flush().unwrap();
    }
}

/// Waits until `path` has a line containing `needle`.
fn wait_for_line(path: &Path, needle: &str) {
    let start = Instant::now();
    while !std::fs::read_to_string(path)
        .unwrap_or_default()
        .contains(needle)
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no {needle:?} in {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn hangup(child: &Child) {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[test]
fn sighup_admits_added_devices_closes_removed_ones_and_keeps_the_list_when_broken() {
    let dir = tempdir("reload");
    let server_fp = keygen(&dir.join("server.key"));
    let (a, b, c) = (
        keygen(&dir.join("a.key")),
        keygen(&dir.join("b.key")),
        keygen(&dir.join("c.key")),
    );
    let devices = dir.join("devices");
    std::fs::write(&devices, format!("{a} sensor-a\n{c} sensor-c\n")).unwrap();
    let out = dir.join("out.jsonl");
    let mut server = bin();
    server
        .args(["server", "--listen", "127.0.0.1:0", "--key"])
        .arg(dir.join("server.key"))
        .arg("--authorized-devices")
        .arg(&devices)
        // Checked only on SIGHUP within the test's time: the signal is what is tested.
        .args(["--registry-poll", "3600", "--out"])
        .arg(&out);
    let mut server = Logged::spawn(server, &dir.join("server.log"));
    let addr = server.listening();

    let mut dev_a = device(&dir, &addr, &server_fp, "a");
    let mut dev_c = device(&dir, &addr, &server_fp, "c");
    dev_a.send("a-1");
    dev_c.send("c-1");
    wait_for_line(&out, "a-1");
    wait_for_line(&out, "c-1");

    // b added, a removed.
    std::fs::write(&devices, format!("{b} sensor-b\n{c} sensor-c\n")).unwrap();
    hangup(&server.child);
    server.wait_for("authorized devices reloaded", Duration::from_secs(30));
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
    let mut dev_b = device(&dir, &addr, &server_fp, "b");
    dev_b.send("b-1");
    wait_for_line(&out, "b-1");

    // A broken file: the list in force stays, and the server says why.
    std::fs::write(&devices, "this is not a device list\n").unwrap();
    hangup(&server.child);
    server.wait_for("does not parse", Duration::from_secs(30));
    dev_b.send("b-2");
    dev_c.send("c-3");
    wait_for_line(&out, "b-2");
    wait_for_line(&out, "c-3");
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "SIGHUP ended the server"
    );
}
