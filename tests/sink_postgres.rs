//! `secchan server --sink postgres://...` against a real PostgreSQL (a throwaway cluster per
//! test, tests/support/postgres.rs): each message is one row, in the column its content
//! calls for; a database that stops mid-stream loses nothing and writes nothing twice; the
//! schema is created by `--init-sink` or at start; passwords never come from the URL.
#![cfg(feature = "postgres")]

mod cli_support;
mod support;

use cli_support::{assert_one_line_error, bin, keygen, run_device, tempdir, Logged};
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use support::postgres::{Postgres, PASSWORD};

/// `secchan server` on a free loopback port writing into `pg`, with `extra` arguments.
fn start_server(dir: &Path, pg: &Postgres, extra: &[&str], log: &str) -> (Logged, String) {
    pg.password_file(&dir.join("pg.password"));
    let mut c = bin();
    c.args(["server", "--listen", "127.0.0.1:0", "--key"])
        .arg(dir.join("server.key"))
        .args(["--sink", &pg.url(), "--sink-password-file"])
        .arg(dir.join("pg.password"))
        .args(extra)
        .stdout(Stdio::null());
    let mut server = Logged::spawn(c, &dir.join(log));
    let addr = server.listening();
    (server, addr)
}

#[test]
fn each_message_is_a_row_with_json_as_jsonb_and_the_rest_as_bytes() {
    let dir = tempdir("pg-columns");
    let pg = Postgres::start();
    let server_fp = keygen(&dir.join("server.key"));
    let device_fp = keygen(&dir.join("device.key"));
    let (server, addr) = start_server(&dir, &pg, &["--allow-any-device"], "server.log");
    let key = dir.join("device.key");
    let with_key = [
        "--connect",
        &addr,
        "--server-key",
        &server_fp,
        "--key",
        key.to_str().unwrap(),
    ];
    // JSON, text, JSON that jsonb refuses (\u0000), and bytes that are not UTF-8.
    let input = b"{\"t\":21.5}\nplain text\n{\"nul\":\"\\u0000\"}\n\xff\xfe\n".as_slice();
    let out = run_device(&dir, &with_key, input);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let anonymous = ["--connect", &addr, "--server-key", &server_fp];
    let out = run_device(&dir, &anonymous, "{\"anonymous\":true}\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let rows = pg.query(
        "SELECT seq, payload::text, encode(payload_bytes, 'hex'), suite, octet_length(stream) \
         FROM secchan_messages WHERE fingerprint <> '' ORDER BY seq",
    );
    let rows: Vec<&str> = rows.lines().collect();
    assert_eq!(
        rows,
        [
            "0|{\"t\": 21.5}||X25519MLKEM768|8",
            &format!("1||{}|X25519MLKEM768|8", hex(b"plain text")),
            &format!("2||{}|X25519MLKEM768|8", hex(b"{\"nul\":\"\\u0000\"}")),
            "3||fffe|X25519MLKEM768|8",
        ]
    );
    assert_eq!(
        pg.query("SELECT DISTINCT fingerprint FROM secchan_messages WHERE fingerprint <> ''"),
        device_fp
    );
    assert_eq!(
        pg.query("SELECT fingerprint, seq, payload->>'anonymous' FROM secchan_messages WHERE fingerprint = ''"),
        "|0|true",
        "an anonymous device's key is '' beside its stream"
    );
    assert_eq!(
        server.count("the database refused a JSON message as jsonb"),
        1,
        "{}",
        server.text()
    );
    assert!(
        !server.text().contains(PASSWORD),
        "the password is never logged"
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn a_database_stopped_mid_stream_loses_nothing_and_writes_nothing_twice() {
    let dir = tempdir("pg-outage");
    let pg = Postgres::start();
    let server_fp = keygen(&dir.join("server.key"));
    let device_fp = keygen(&dir.join("device.key"));
    std::fs::write(dir.join("devices.txt"), format!("{device_fp} pump-7\n")).unwrap();
    let devices = dir.join("devices.txt");
    let (server, addr) = start_server(
        &dir,
        &pg,
        &["--authorized-devices", devices.to_str().unwrap()],
        "server.log",
    );
    let mut c = bin();
    c.current_dir(&dir)
        .args([
            "device",
            "--connect",
            &addr,
            "--server-key",
            &server_fp,
            "--key",
        ])
        .arg(dir.join("device.key"))
        .args(["--ack-timeout", "2", "--give-up-after", "120"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    let mut device = Logged::spawn(c, &dir.join("device.log"));
    let mut input = device.child.stdin.take().unwrap();
    send(&mut input, 0..100);
    wait_until(|| pg.query("SELECT count(*) FROM secchan_messages") != "0");
    pg.kill();
    send(&mut input, 100..200);
    // Long enough for the server to try again several times, and the device to reconnect.
    std::thread::sleep(Duration::from_secs(3));
    pg.spawn();
    send(&mut input, 200..300);
    drop(input);
    let status = device.child.wait().unwrap();
    assert!(
        status.success(),
        "device: {}\nserver: {}",
        device.text(),
        server.text()
    );

    assert_eq!(
        pg.query(
            "SELECT count(*), count(DISTINCT seq), min(seq), max(seq), \
             count(*) FILTER (WHERE (payload->>'n')::bigint = seq), min(device) \
             FROM secchan_messages"
        ),
        "300|300|0|299|300|pump-7"
    );
    assert_eq!(server.count("output unavailable"), 1, "{}", server.text());
    assert_eq!(
        server.count("output available again"),
        1,
        "{}",
        server.text()
    );
}

/// Writes the lines `{"n":N}` for N in `range`, a few milliseconds apart.
fn send(input: &mut impl Write, range: std::ops::Range<u32>) {
    for n in range {
        writeln!(input, "{{\"n\":{n}}}").unwrap();
        input.flush().unwrap();
        std::thread::sleep(Duration::from_millis(3));
    }
}

fn wait_until(mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(30), "timed out");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn init_sink_creates_the_schema_once_and_reports_a_newer_one() {
    let dir = tempdir("pg-init");
    let pg = Postgres::start();
    pg.password_file(&dir.join("pg.password"));
    let init = || {
        bin()
            .args([
                "server",
                "--init-sink",
                "--sink",
                &pg.url(),
                "--sink-password-file",
            ])
            .arg(dir.join("pg.password"))
            .output()
            .unwrap()
    };
    for run in 0..2 {
        let out = init();
        assert!(
            out.status.success(),
            "run {run}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        pg.query("SELECT version FROM secchan_schema"),
        "1",
        "one migration, recorded once"
    );
    assert_eq!(pg.query("SELECT count(*) FROM secchan_messages"), "0");
    pg.query("INSERT INTO secchan_schema (version, description) VALUES (99, 'from the future')");
    assert_one_line_error(&init(), &["version 99", "newer than this secchan"]);
}

#[test]
fn credentials_never_come_from_the_url_and_a_wrong_one_stops_the_start() {
    let dir = tempdir("pg-credentials");
    let out = bin()
        .args([
            "server",
            "--init-sink",
            "--sink",
            "postgres://secchan:hunter2@127.0.0.1:1/postgres",
        ])
        .output()
        .unwrap();
    assert_one_line_error(&out, &["--sink", "password", "--sink-password-file"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("hunter2"));
    assert_eq!(out.status.code(), Some(2), "a usage error");

    let pg = Postgres::start();
    std::fs::write(dir.join("wrong"), "not-the-password\n").unwrap();
    keygen(&dir.join("server.key"));
    let out = bin()
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--allow-any-device",
            "--key",
        ])
        .arg(dir.join("server.key"))
        .args(["--sink", &pg.url(), "--sink-password-file"])
        .arg(dir.join("wrong"))
        .output()
        .unwrap();
    assert_one_line_error(
        &out,
        &["password authentication failed", "secchan@127.0.0.1"],
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("not-the-password"));
    // The same through the environment: PGPASSWORD, as psql reads it.
    let out = bin()
        .args(["server", "--init-sink", "--sink", &pg.url()])
        .env("PGPASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
