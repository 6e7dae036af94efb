//! `secchan server --metrics ADDR`: a scrape after a device delivered its messages shows them
//! written, the session established, the handshake counted and both timed (a resumed session
//! under its own kind); no device name is in it; any other path is 404. A record replayed,
//! forged or dropped in a live session is counted under its reason.

mod cli_support;
mod common;

use cli_support::{bin, free_port, http_get as get, keygen, run_device, sample, tempdir, Logged};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A server with --metrics for the device key in `dir` (named greenhouse-7): the process,
/// its device address, its metrics address and its fingerprint.
fn metrics_server(dir: &Path) -> (Logged, String, String, String) {
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
    server.wait_for("metrics at /metrics", Duration::from_secs(30));
    (server, addr, metrics, server_fp)
}

#[test]
fn a_scrape_shows_a_delivered_session_and_names_no_device() {
    let dir = tempdir("metrics");
    let (_server, addr, metrics, server_fp) = metrics_server(&dir);

    let before = get(&metrics, "/metrics");
    assert!(before.starts_with("HTTP/1.1 200"), "{before}");
    assert_eq!(sample(&before, "secchan_messages_written_total"), 0);

    // With a spool the device keeps its ticket: its second run resumes.
    let device_args = [
        "--connect",
        &addr,
        "--server-key",
        &server_fp,
        "--key",
        "device.key",
        "--spool",
        "spool",
    ];
    let out = run_device(&dir, &device_args, "one\ntwo\nthree\n");
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
    assert_eq!(sample(&after, "secchan_duplicate_keys_total"), 0);
    // Each message written is timed once, the handshake once under its kind.
    assert_eq!(sample(&after, "secchan_delivery_write_seconds_count"), 3);
    assert_eq!(
        sample(
            &after,
            "secchan_handshake_duration_seconds_count{kind=\"full\"}"
        ),
        1
    );
    assert_eq!(
        sample(
            &after,
            "secchan_handshake_duration_seconds_count{kind=\"resumed\"}"
        ),
        0
    );
    assert_eq!(
        sample(
            &after,
            "secchan_records_rejected_total{reason=\"replayed\"}"
        ),
        0
    );
    assert!(
        !after.contains("greenhouse-7") && !after.contains("SHA256:"),
        "{after}"
    );

    let out = run_device(&dir, &device_args, "four\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resumed = get(&metrics, "/metrics");
    assert_eq!(
        sample(
            &resumed,
            "secchan_handshake_duration_seconds_count{kind=\"resumed\"}"
        ),
        1,
        "{resumed}"
    );
    assert_eq!(sample(&resumed, "secchan_delivery_write_seconds_count"), 4);

    let other = get(&metrics, "/");
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
}

/// What the proxy does to the device's first record: send it twice, flip a bit of its tag,
/// or drop it (so that the next one arrives out of order).
type Tamper = fn(Vec<u8>) -> Vec<Vec<u8>>;

#[tokio::test(flavor = "multi_thread")]
async fn records_replayed_forged_or_dropped_in_a_live_session_are_counted_by_reason() {
    let dir = tempdir("metrics-replay");
    let (_server, addr, metrics, server_fp) = metrics_server(&dir);
    let cases: [(&str, Tamper); 3] = [
        ("replayed", |f| vec![f.clone(), f]),
        ("forged", |mut f| {
            *f.last_mut().unwrap() ^= 1;
            vec![f]
        }),
        ("out_of_order", |_| vec![]),
    ];
    let rejected = |reason: &str| format!("secchan_records_rejected_total{{reason=\"{reason}\"}}");
    let mut scrape = String::new();
    for (reason, tamper) in cases {
        // Device to server, frames 0 and 1 are the handshake, 2 is the first record.
        let proxy = common::start_mitm(addr.parse().unwrap(), move |up, i, frame| {
            if up && i == 2 {
                tamper(frame)
            } else {
                vec![frame]
            }
        })
        .await;
        let (device_dir, server_fp) = (dir.clone(), server_fp.clone());
        let out = tokio::task::spawn_blocking(move || {
            run_device(
                &device_dir,
                &[
                    "--connect",
                    &proxy.to_string(),
                    "--server-key",
                    &server_fp,
                    "--key",
                    "device.key",
                ],
                "one\ntwo\n",
            )
        })
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{reason} ended the session: {stderr}"
        );
        // The server counts the record as its session ends, right after its Close went out.
        let start = Instant::now();
        scrape = loop {
            let m = metrics.clone();
            let scrape = tokio::task::spawn_blocking(move || get(&m, "/metrics"))
                .await
                .unwrap();
            if sample(&scrape, &rejected(reason)) > 0 {
                break scrape;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{reason}: {scrape}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
    }
    for reason in ["replayed", "forged", "out_of_order"] {
        assert_eq!(sample(&scrape, &rejected(reason)), 1, "{scrape}");
    }
    for reason in ["too_old", "unknown_epoch"] {
        assert_eq!(sample(&scrape, &rejected(reason)), 0, "{scrape}");
    }
}
