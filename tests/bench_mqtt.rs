//! `secchan bench --mqtt` against a real Mosquitto started by the test: the MQTT section is
//! in the table and the JSON, every message sent arrived once on both transports, and the
//! byte counts are those docs/mqtt.md gives (never speeds). A wrong broker password fails
//! at once with a one-line error.
#![cfg(feature = "mqtt")]

mod cli_support;
mod support;

use cli_support::{assert_one_line_error, bin, tempdir};
use secchan::delivery::{ACK_LEN, ENVELOPE_LEN};
use secchan::record::UNORDERED_RECORD_OVERHEAD;
use support::mosquitto::Mosquitto;

/// The TCP figures as small as they go, so the run is mostly the MQTT section.
const TINY: [&str; 12] = [
    "--quick",
    "--handshakes",
    "1",
    "--bulk-mib",
    "1",
    "--idle-sessions",
    "0",
    "--suite",
    "X25519",
    "--aead",
    "AES-256-GCM",
    "--no-progress",
];

/// Rate-phase messages per payload size; a tenth of them are timed one by one.
const MESSAGES: u64 = 20;
/// Untimed messages before them (src/bench/mqtt.rs).
const WARMUP: u64 = 10;

#[test]
fn bench_mqtt_reports_both_transports_with_the_broker_credentials() {
    let broker = Mosquitto::start_with_password("bench", "s3cret-pw");
    let dir = tempdir("bench-mqtt");
    let report = dir.join("report.json");
    let out = bin()
        .args(["bench"])
        .args(TINY)
        .args(["--mqtt", &broker.url(), "--mqtt-username", "bench"])
        .args(["--mqtt-client-id", "lab", "--mqtt-prefix", "site/telemetry"])
        .args(["--mqtt-messages", &MESSAGES.to_string()])
        .args(["--json", report.to_str().unwrap()])
        .env("SECCHAN_MQTT_PASSWORD", "s3cret-pw")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "MQTT through mqtt://127.0.0.1:",
        "/site/telemetry/bench-",
        "plaintext MQTT",
        "secchan/plaintext",
        "MQTT payload per message, not on the wire",
    ] {
        assert!(stdout.contains(needle), "table lacks {needle:?}: {stdout}");
    }
    // The TCP sections are still there.
    assert!(stdout.contains("Handshakes"), "{stdout}");

    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let m = &r["mqtt"];
    assert_eq!(m["suite"], "X25519");
    assert_eq!(m["aead"], "AES-256-GCM");
    assert_eq!(m["rate_messages"], MESSAGES);
    assert_eq!(m["latency_messages"], MESSAGES / 10);
    assert!(!m["broker"].as_str().unwrap().contains("s3cret"));
    // `site/telemetry/bench-xxxxxxxx/lab-device/up/{16 hex}/{32 hex}`.
    assert_eq!(
        m["topic_len"],
        "site/telemetry/bench-01234567/lab-device".len() + 4 + 16 + 1 + 32
    );
    let per_payload = WARMUP + MESSAGES / 10 + MESSAGES;
    let results = m["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for (res, payload) in results.iter().zip([64u64, 256]) {
        assert_eq!(res["payload"], payload);
        let (s, p) = (&res["secchan"], &res["plaintext"]);
        assert_eq!(s["delivered"], per_payload, "{res}");
        assert_eq!(p["delivered"], per_payload, "{res}");
        // Sent alone, each message is one record and earns one Ack record.
        let record = |len: usize| (len + UNORDERED_RECORD_OVERHEAD) as f64;
        assert_eq!(
            s["up_bytes"].as_f64(),
            Some(record(payload as usize + ENVELOPE_LEN))
        );
        assert_eq!(s["down_bytes"].as_f64(), Some(record(ACK_LEN)));
        let burst = s["down_bytes_burst"].as_f64().unwrap();
        assert!(burst > 0.0 && burst <= record(ACK_LEN), "{res}");
        assert_eq!(p["up_bytes"].as_f64(), Some(payload as f64));
        assert_eq!(p["down_bytes"].as_f64(), Some(0.0));
        for f in [s, p] {
            assert!(f["latency_us"]["median"].as_f64().unwrap() > 0.0, "{res}");
            assert!(f["messages_per_s"].as_f64().unwrap() > 0.0, "{res}");
        }
        let ratios = &res["ratios"];
        assert_eq!(
            ratios["up_bytes"].as_f64(),
            Some(record(payload as usize + ENVELOPE_LEN) / payload as f64)
        );
        assert!(ratios["latency"].as_f64().unwrap() > 0.0);
        assert!(ratios["messages_per_s"].as_f64().unwrap() > 0.0);
    }
    // The server's own count: every message once, none dropped as a duplicate.
    assert_eq!(m["server_delivered"], 2 * per_payload);
    assert_eq!(m["server_duplicates"], 0);
}

#[test]
fn bench_mqtt_with_a_wrong_broker_password_fails_at_once() {
    let broker = Mosquitto::start_with_password("bench", "right");
    let out = bin()
        .args(["bench"])
        .args(TINY)
        .args(["--mqtt", &broker.url(), "--mqtt-username", "bench"])
        .env("SECCHAN_MQTT_PASSWORD", "wrong")
        .output()
        .unwrap();
    assert_one_line_error(&out, &["refused the connection", "--mqtt-username"]);
    // It failed before measuring anything over TCP.
    assert!(String::from_utf8_lossy(&out.stdout).is_empty());
}

#[test]
fn mqtt_messages_needs_a_broker() {
    let out = bin()
        .args(["bench", "--mqtt-messages", "10"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--mqtt <URL>"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bench_mqtt_flood_reports_every_honest_device_and_the_shedding() {
    let broker = Mosquitto::start();
    let dir = tempdir("bench-mqtt-flood");
    let (report, plots) = (dir.join("flood.json"), dir.join("plots"));
    let out = bin()
        .args(["bench", "--mqtt", &broker.url(), "--mqtt-flood", "200,0"])
        .args(["--flood-devices", "2", "--flood-spread", "1"])
        .args(["--json", report.to_str().unwrap()])
        .args(["--plot", plots.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("MQTT hello flood"), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let floods = json["floods"].as_array().unwrap();
    assert_eq!(floods.len(), 2);
    for (f, rate) in floods.iter().zip([200, 0]) {
        assert_eq!(f["rate"], rate);
        assert_eq!(f["devices"], 2);
        assert_eq!(f["honest"].as_array().unwrap().len(), 2);
        assert!(f["server"]["hellos_answered"].as_u64().unwrap() >= 1, "{f}");
        // Every honest device that got in established a session on the server.
        assert_eq!(f["server"]["sessions"], f["succeeded"], "{f}");
    }
    let svg = std::fs::read_to_string(plots.join("mqtt-flood.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("flood unpaced"),
        "{svg}"
    );
}
