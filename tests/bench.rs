//! `secchan bench` end to end: a tiny run against the in-process server and one against a
//! `secchan server` child process, each checking the report's figures and files (never their
//! speed), plus the in-memory operations used for instruction counts.

mod cli_support;

use cli_support::{assert_one_line_error, bin, tempdir, Server};
use std::path::Path;
use std::process::Output;

fn secchan(args: &[&str]) -> Output {
    bin().args(args).output().expect("run secchan")
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("JSON file")).expect("valid JSON")
}

/// Small enough for a test; every figure still measured.
const TINY: [&str; 10] = [
    "--quick",
    "--handshakes",
    "4",
    "--bulk-mib",
    "1",
    "--idle-sessions",
    "5",
    "--aead",
    "AES-256-GCM",
    "--no-progress",
];

#[test]
fn in_process_run_reports_every_figure_and_writes_json_and_charts() {
    let dir = tempdir("bench-local");
    let report = dir.join("report.json");
    let plots = dir.join("plots");
    let out = secchan(
        &[
            &["bench", "--suite", "X25519MLKEM768,X25519"][..],
            &TINY,
            &[
                "--json",
                report.to_str().unwrap(),
                "--plot",
                plots.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for heading in [
        "Handshakes",
        "Server capacity",
        "Records",
        "Message round trips",
        "Raw loopback TCP",
        "Memory",
        "Goals",
    ] {
        assert!(stdout.contains(heading), "table lacks {heading}: {stdout}");
    }
    let r = json(&report);
    assert_eq!(r["run"]["server"], "in-process loopback");
    let hs = r["handshakes"].as_array().unwrap();
    assert_eq!(hs.len(), 3);
    let bytes = |h: &serde_json::Value| {
        h["bytes_device_to_server"].as_u64().unwrap()
            + h["bytes_server_to_device"].as_u64().unwrap()
    };
    assert_eq!(hs[0]["suite"], "X25519MLKEM768");
    assert_eq!(hs[1]["suite"], "X25519");
    // ML-KEM-768 adds its 1,184-byte key and 1,088-byte ciphertext to the classical handshake.
    assert_eq!(bytes(&hs[0]) - bytes(&hs[1]), 1184 + 1088);
    for h in hs {
        assert_eq!(h["count"], 4);
        assert!(h["latency_us"]["median"].as_f64().unwrap() > 0.0);
        assert!(h["server_cpu_us"].as_f64().unwrap() > 0.0);
    }
    assert!(r["ratios"]["bytes"].as_f64().unwrap() > 1.0);
    // The third row resumes sessions of the first suite: 138 + 50 frame bytes, 192 on TCP.
    assert_eq!(hs[2]["suite"], "X25519MLKEM768");
    assert_eq!(hs[2]["resumed"], true);
    assert_eq!(hs[2]["bytes_device_to_server"], 140);
    assert_eq!(hs[2]["bytes_server_to_device"], 52);
    assert!(hs[0]["resumed"] == false && hs[1]["resumed"] == false);
    assert_eq!(r["resumption"]["suite"], "X25519MLKEM768");
    assert!(r["resumption"]["bytes"].as_f64().unwrap() < 0.1);
    assert!(stdout.contains("X25519MLKEM768 resumed"), "{stdout}");
    let goals = r["goals"].as_array().unwrap();
    assert!(goals
        .iter()
        .any(|g| g["name"] == "resumption handshake bytes" && g["measured"] == 192.0));
    let records = r["records"].as_array().unwrap();
    assert_eq!(records.len(), 5);
    for rec in records {
        // 2-byte frame length, 3-byte record header, 16-byte tag.
        assert_eq!(rec["overhead_bytes"], 21, "{rec}");
    }
    assert_eq!(r["echo"].as_array().unwrap().len(), 2);
    assert_eq!(r["memory"]["side"], "server");
    assert_eq!(r["memory"]["sessions"], 5);
    assert_eq!(r["capacity"].as_array().unwrap().len(), 2);
    for chart in ["handshake-latency.svg", "throughput.svg", "overhead.svg"] {
        let svg = std::fs::read_to_string(plots.join(chart)).expect(chart);
        assert!(
            svg.starts_with("<svg") && svg.contains("<polyline"),
            "{chart}"
        );
    }
}

#[test]
fn remote_run_measures_a_secchan_server_child_process() {
    let dir = tempdir("bench-remote");
    let key = dir.join("server.key");
    assert!(secchan(&["keygen", "--out", key.to_str().unwrap()])
        .status
        .success());
    let mut command = bin();
    command
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--key",
            key.to_str().unwrap(),
        ])
        .args(["--mode", "any", "--allow-any-device"])
        // The idle sessions are one device identity's: more than its default cap of 4.
        .args(["--max-sessions-per-device", "16"]);
    let mut server = Server::start(command);
    // The server prints every message on stdout: drain it so it never blocks.
    let mut stdout = server.child.stdout.take().unwrap();
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let report = dir.join("remote.json");
    let pubkey = format!("{}.pub", key.display());
    let out = secchan(
        &[
            &["bench", "--connect", &server.addr, "--server-key", &pubkey][..],
            &["--suite", "X25519"],
            &TINY,
            &["--json", report.to_str().unwrap()],
        ]
        .concat(),
    );
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = json(&report);
    assert_eq!(r["run"]["server"], "remote");
    assert!(r["handshakes"][0]["server_cpu_us"].is_null());
    // `secchan server` issues tickets by default: the remote run resumes too.
    assert_eq!(r["handshakes"][1]["resumed"], true);
    assert!(r["echo"].as_array().unwrap().is_empty());
    assert!(r["raw_tcp"].is_null());
    assert_eq!(r["memory"]["side"], "device");
}

#[test]
fn unreachable_server_is_one_line_error() {
    // A port nothing listens on: bind one, then free it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .to_string();
    let args = [
        "bench",
        "--connect",
        &addr,
        "--server-key",
        "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "--quick",
    ];
    let out = secchan(&[&args[..], &["--no-progress"]].concat());
    assert_one_line_error(&out, &["benchmark failed", "network error"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr)
            .trim_end()
            .lines()
            .count(),
        1
    );
    let out = secchan(&["bench", "--connect", &addr]);
    assert!(
        !out.status.success(),
        "--connect without --server-key must be refused"
    );
}

#[test]
fn operations_for_instruction_counts_run_in_memory() {
    for (op, suite) in [
        ("handshake", "X25519MLKEM768"),
        ("handshake-to-finish", "X25519MLKEM768"),
        #[cfg(feature = "kyber-r3")]
        ("handshake-to-finish", "X25519Kyber768R3"),
        ("server-accept", "X25519"),
        ("seal-open-1k", "X25519"),
    ] {
        let out = secchan(&[
            "bench",
            "--ops",
            op,
            "--iterations",
            "2",
            "--suite",
            suite,
            "--aead",
            "ChaCha20-Poly1305",
        ]);
        assert!(
            out.status.success(),
            "{op}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("x 2") && stdout.contains(suite), "{stdout}");
    }
    let info = secchan(&["bench", "--ops", "info"]);
    let stdout = String::from_utf8_lossy(&info.stdout);
    assert!(
        stdout.contains(std::env::consts::ARCH) && stdout.contains("AEAD preference"),
        "{stdout}"
    );
}

#[test]
fn reconnect_storm_brings_every_device_back_both_ways() {
    let dir = tempdir("bench-storm");
    let report = dir.join("storm.json");
    let out = secchan(&[
        "bench",
        "--storm",
        "20",
        "--json",
        report.to_str().unwrap(),
        "--plot",
        dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("resumption/full"), "{stdout}");
    let v = json(&report);
    let rounds = v["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2);
    assert_eq!(rounds[0]["how"], "full handshake");
    assert_eq!(rounds[1]["how"], "resumption");
    for r in rounds {
        assert_eq!(r["devices"], 20);
        assert!(r["all_back_s"].as_f64().unwrap() > 0.0);
    }
    // Bytes are exact: a full hybrid handshake and a resumption on the TCP wire.
    assert_eq!(rounds[0]["bytes_per_device"].as_f64(), Some(2577.0));
    assert_eq!(rounds[1]["bytes_per_device"].as_f64(), Some(192.0));
    let svg = std::fs::read_to_string(dir.join("reconnect-storm.svg")).unwrap();
    assert!(svg.contains("resumption") && svg.contains("full handshake"));
}

#[test]
fn relay_run_measures_both_paths_through_real_processes() {
    let dir = tempdir("bench-relay");
    let report = dir.join("relay.json");
    let out = secchan(&[
        "bench",
        "--relay",
        "--quick",
        "--json",
        report.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("relayed, end to end"), "{stdout}");
    let v = json(&report);
    assert_eq!(v["round_trips"], 20);
    assert_eq!(v["burst"], 2000);
    for path in ["direct", "relayed"] {
        let f = &v[path];
        for k in ["p50_ms", "p99_ms", "rate", "bytes_in"] {
            assert!(f[k].as_f64().unwrap() > 0.0, "{path}.{k}: {f}");
        }
    }
    // A relayed message carries the inner record and the relay envelope beside the data.
    assert!(
        v["relayed"]["bytes_in"].as_f64().unwrap() > v["direct"]["bytes_in"].as_f64().unwrap(),
        "{v}"
    );
}
