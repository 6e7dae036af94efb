//! The advice in error messages, as a new user meets it: each test gives the command a
//! mistake and asserts the one line it prints says what is wrong and what to do, and never
//! advises something harmful or beside the point.

mod cli_support;

use cli_support::{assert_one_line_error, bin, run_device, tempdir};
use std::path::Path;
use std::process::Output;

fn run(dir: &Path, args: &[&str]) -> Output {
    bin().current_dir(dir).args(args).output().unwrap()
}

fn last_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_public_key_given_as_the_secret_key_is_named_not_chmodded() {
    let dir = tempdir("hints-pub");
    assert!(run(&dir, &["keygen", "--out", "server.key"])
        .status
        .success());
    let out = run(
        &dir,
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--allow-any-device",
            "--key",
            "server.key.pub",
        ],
    );
    assert_one_line_error(
        &out,
        &["it is a public key, not a secret key", "pass server.key"],
    );
    assert!(!last_line(&out).contains("chmod"), "{}", last_line(&out));
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn a_file_that_is_no_key_gets_no_chmod_and_is_not_overwritten() {
    let dir = tempdir("hints-passwd");
    let out = run(
        &dir,
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--allow-any-device",
            "--key",
            "/etc/passwd",
        ],
    );
    assert_one_line_error(&out, &["not a secchan secret key file"]);
    let line = last_line(&out);
    assert!(!line.contains("chmod"), "{line}");
    assert!(!line.contains("--out /etc/passwd"), "{line}");
}

#[test]
fn a_web_server_on_the_port_is_named() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let out = run_device(
        &std::env::temp_dir(),
        &[
            "--connect",
            &addr,
            "--server-key",
            "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ],
        "x\n",
    );
    assert_one_line_error(
        &out,
        &["answered as an HTTP server", "check the address and port"],
    );
    assert!(
        !last_line(&out).contains("truncated"),
        "{}",
        last_line(&out)
    );
}

#[test]
fn a_bare_port_gets_an_example_address() {
    let dir = tempdir("hints-listen");
    assert!(run(&dir, &["keygen", "--out", "server.key"])
        .status
        .success());
    let out = run(
        &dir,
        &[
            "server",
            "--listen",
            "4434",
            "--allow-any-device",
            "--key",
            "server.key",
        ],
    );
    assert_one_line_error(
        &out,
        &["cannot listen on 4434", "e.g. --listen 0.0.0.0:4434"],
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_missing_list_file_is_named_without_a_line_zero() {
    let dir = tempdir("hints-nofile");
    assert!(run(&dir, &["keygen", "--out", "server.key"])
        .status
        .success());
    let out = run(
        &dir,
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--key",
            "server.key",
            "--authorized-devices",
            "nofile.txt",
        ],
    );
    assert_one_line_error(&out, &["authorized-devices file nofile.txt: "]);
    assert!(
        !last_line(&out).contains("nofile.txt:0"),
        "{}",
        last_line(&out)
    );
}

#[test]
fn a_mistyped_option_keeps_clap_s_suggestion() {
    let out = run(&std::env::temp_dir(), &["device", "--conect", "h:1"]);
    assert_one_line_error(&out, &["similar argument exists: '--connect'"]);
}

#[test]
fn keys_are_never_written_to_stdout() {
    let dir = tempdir("hints-keygen-stdout");
    let out = run(&dir, &["keygen", "--out", "-"]);
    assert_one_line_error(&out, &["never to stdout"]);
    assert!(!dir.join("-").exists() && !dir.join("-.pub").exists());
}

#[test]
fn rates_per_minute_and_hour_are_understood() {
    let out = run_device(
        &std::env::temp_dir(),
        &[
            "--connect",
            "127.0.0.1:9",
            "--server-key",
            "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "--rate",
            "2/min",
            "--no-reconnect",
        ],
        "",
    );
    // It gets past the option (and fails to connect, as nothing listens on port 9).
    assert_one_line_error(&out, &["cannot connect to 127.0.0.1:9"]);
}

#[cfg(unix)]
#[test]
fn a_long_token_says_how_long_and_a_token_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir("hints-token");
    assert!(run(&dir, &["keygen", "--out", "server.key"])
        .status
        .success());
    assert!(run(
        &dir,
        &["registry", "init", "--key", "server.key", "fleet.reg"]
    )
    .status
    .success());
    let out = run(
        &dir,
        &[
            "registry",
            "token",
            "--key",
            "server.key",
            "fleet.reg",
            "--group",
            "g",
            "--expires",
            "1y",
            "--out",
            "token.txt",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("valid for 1year"), "{stderr}");
    assert!(stderr.contains("prefer hours to weeks"), "{stderr}");
    assert!(out.stdout.is_empty(), "the token went to the file only");
    let mode = std::fs::metadata(dir.join("token.txt"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let again = run(
        &dir,
        &[
            "registry",
            "token",
            "--key",
            "server.key",
            "fleet.reg",
            "--group",
            "g",
            "--out",
            "token.txt",
        ],
    );
    assert_one_line_error(&again, &["token.txt already exists"]);
}
