//! `secchan server --metrics ADDR`: a scrape after a device delivered its messages shows them
//! written, the session established and the handshake counted; no device name is in it; any
//! other path is 404.

mod cli_support;

use cli_support::{bin, free_port, http_get as get, keygen, run_device, sample, tempdir, Logged};
use std::process::Stdio;

#[test]
fn a_scrape_shows_a_delivered_session_and_names_no_device() {
    let dir = tempdir("metrics");
    let server_fp = keygen(&dir.join("server.key"));
    let device_fp = keygen(&dir.join("device.key"));
    std::fs::write(dir.join("devices"), format!("{device_fp} greenhouse-7\n")).unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut c = bin();
    c.args(["server", "--listen", "127.0.0.1:0", "--key"])
        .arg(dir.join("server.key"))
        .arg("--authorized-devices")
        .arg(dir.join("devices"))
        .args(["--metrics", &metrics])
        .stdout(Stdio::null());
    let mut server = Logged::spawn(c, &dir.join("server.log"));
    let addr = server.listening();
    server.wait_for("metrics at /metrics", std::time::Duration::from_secs(30));

    let before = get(&metrics, "/metrics");
    assert!(before.starts_with("HTTP/1.1 200"), "{before}");
    assert_eq!(sample(&before, "secchan_messages_written_total"), 0);

    let out = run_device(
        &dir,
        &[
            "--connect",
            &addr,
            "--server-key",
            &server_fp,
            "--key",
            "device.key",
        ],
        "one\ntwo\nthree\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = get(&metrics, "/metrics");
    assert_eq!(
        sample(&after, "secchan_messages_written_total"),
        3,
        "{after}"
    );
    assert_eq!(sample(&after, "secchan_sessions_established_total"), 1);
    assert_eq!(sample(&after, "secchan_handshakes_full_total"), 1);
    assert_eq!(sample(&after, "secchan_messages_duplicate_total"), 0);
    assert!(
        !after.contains("greenhouse-7") && !after.contains("SHA256:"),
        "{after}"
    );

    let other = get(&metrics, "/");
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
}
