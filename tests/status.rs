//! `secchan status` against a live server's control socket: the session of a connected device
//! with its name, fingerprint, suite, message count, key updates and key age, and no record
//! rejected; the socket is mode 0600; a second server refuses a socket in use; no server is
//! one clear error.

mod cli_support;

use cli_support::{bin, keygen, tempdir, Logged};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn status_lists_a_live_session_from_an_owner_only_socket() {
    let dir = tempdir("status");
    let server_fp = keygen(&dir.join("server.key"));
    let device_fp = keygen(&dir.join("device.key"));
    std::fs::write(dir.join("devices"), format!("{device_fp} greenhouse-3\n")).unwrap();
    let socket = dir.join("control.sock");
    let mut c = bin();
    c.args(["server", "--listen", "127.0.0.1:0", "--key"])
        .arg(dir.join("server.key"))
        .arg("--authorized-devices")
        .arg(dir.join("devices"))
        .arg("--control-socket")
        .arg(&socket)
        .stdout(Stdio::null());
    let mut server = Logged::spawn(c, &dir.join("server.log"));
    let addr = server.listening();
    server.wait_for("control socket", Duration::from_secs(30));
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let mut d = bin();
    d.args([
        "device",
        "--connect",
        &addr,
        "--server-key",
        &server_fp,
        // A new sending key before every record but the first.
        "--rekey-records",
        "1",
        "--key",
    ])
    .arg(dir.join("device.key"))
    .stdin(Stdio::piped())
    .stdout(Stdio::null());
    let mut device = Logged::spawn(d, &dir.join("device.log"));
    let mut input = device.child.stdin.take().unwrap();
    writeln!(input, "one\ntwo").unwrap();
    input.flush().unwrap();

    let status = |json: bool| cli_support::status(&socket, json);
    // Wait until both messages are counted.
    let start = Instant::now();
    let doc = loop {
        let doc: serde_json::Value = serde_json::from_str(&status(true)).unwrap();
        if doc["sessions"][0]["messages"] == 2 {
            break doc;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{doc}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(doc["transport"], "tcp");
    let s = &doc["sessions"][0];
    assert_eq!(s["device"], "greenhouse-3");
    assert_eq!(s["fingerprint"], device_fp.as_str());
    assert_eq!(s["suite"], "X25519MLKEM768");
    // Two 3-byte lines, each in a 25-byte Message envelope header.
    assert_eq!(s["bytes"], 56);
    // The device's key changed before its second message at the latest.
    assert!(s["key_updates"].as_u64().unwrap() >= 1, "{doc}");
    let installed = s["keys_installed"].as_u64().unwrap();
    assert!(installed >= s["established"].as_u64().unwrap(), "{doc}");
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(installed <= unix_now, "{doc}");
    assert_eq!(s["rejected"]["replayed"], 0, "{doc}");
    assert_eq!(s["rejected"]["forged"], 0, "{doc}");
    assert_eq!(doc["rejected"]["replayed"], 0, "{doc}");
    let text = status(false);
    assert!(
        text.starts_with("1 sessions, 0 handshakes pending, 0 records rejected"),
        "{text}"
    );
    assert!(
        text.contains("greenhouse-3") && text.contains(&device_fp),
        "{text}"
    );
    assert!(text.contains(" key updates, 0 records rejected"), "{text}");

    // A second server on the same socket is refused with one line.
    let mut c2 = bin();
    c2.args([
        "server",
        "--listen",
        "127.0.0.1:0",
        "--allow-any-device",
        "--key",
    ])
    .arg(dir.join("server.key"))
    .arg("--control-socket")
    .arg(&socket);
    let out = c2.output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The device closes: its session is gone from the list.
    drop(input);
    let _ = device.child.wait();
    let start = Instant::now();
    while status(true).contains("greenhouse-3") {
        assert!(start.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(server);
    let out = bin()
        .args(["status", "--control-socket"])
        .arg(dir.join("nothing.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no server answers"));
}
