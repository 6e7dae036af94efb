//! `secchan registry` and `secchan server --registry` as operators run them: the output, the
//! one-line errors, a server refusing a tampered registry, and zero-touch enrollment of a
//! device process with a token.

mod cli_support;

use cli_support::{assert_one_line_error, bin, run_device, tempdir, Server};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn run(dir: &Path, args: &[&str]) -> Output {
    bin().current_dir(dir).args(args).output().unwrap()
}

/// Runs `secchan` with whitespace-separated arguments.
fn cmd(dir: &Path, args: &str) -> Output {
    run(dir, &args.split_whitespace().collect::<Vec<_>>())
}

/// A directory with server and device keys and a registry with one enrolled device.
fn setup(name: &str) -> (PathBuf, String) {
    let dir = tempdir(&format!("registry-cli-{name}"));
    let server_fp = ok(cmd(&dir, "keygen --out server.key")).trim().to_string();
    ok(cmd(&dir, "keygen --out dev.key"));
    let out = ok(cmd(&dir, "registry init --key server.key fleet.reg"));
    assert!(out.contains(&server_fp), "{out}");
    let out = ok(cmd(&dir, "registry enroll --key server.key fleet.reg --device dev.key.pub --name sensor-1 --group greenhouse"));
    assert!(
        out.contains("enrolled SHA256:") && out.contains("sensor-1"),
        "{out}"
    );
    (dir, server_fp)
}

/// `secchan server` on a free loopback port with the registry of `setup`.
fn server(dir: &Path) -> Command {
    let mut c = bin();
    c.current_dir(dir).args(
        "server --listen 127.0.0.1:0 --key server.key --registry fleet.reg".split_whitespace(),
    );
    c
}

fn start_server(dir: &Path, extra: &[&str]) -> Server {
    let mut c = server(dir);
    c.args(extra);
    Server::start(c)
}

fn device(dir: &Path, args: &[&str], stdin: &str) -> Output {
    run_device(dir, args, stdin)
}

#[test]
fn list_verify_and_changes_print_what_they_did() {
    let (dir, server_fp) = setup("list");
    let table = ok(cmd(&dir, "registry list fleet.reg"));
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("sensor-1") && table.contains("greenhouse") && table.contains("active"));
    let out = ok(cmd(
        &dir,
        "registry rename --key server.key fleet.reg sensor-1 sensor-A",
    ));
    assert!(out.contains("sensor-A"), "{out}");
    ok(cmd(
        &dir,
        "registry regroup --key server.key fleet.reg sensor-A ward",
    ));
    ok(cmd(
        &dir,
        "registry revoke --key server.key fleet.reg sensor-A",
    ));
    let json: serde_json::Value =
        serde_json::from_str(&ok(cmd(&dir, "registry list --json fleet.reg"))).unwrap();
    assert_eq!(json[0]["name"], "sensor-A");
    assert_eq!(json[0]["group"], "ward");
    assert_eq!(json[0]["status"], "revoked");
    let filtered = ok(cmd(
        &dir,
        "registry list --json --group greenhouse fleet.reg",
    ));
    assert_eq!(filtered.trim(), "[]");
    let out = ok(run(
        &dir,
        &[
            "registry",
            "verify",
            "--server-key",
            &server_fp,
            "fleet.reg",
        ],
    ));
    assert!(out.contains("5 entries verified"), "{out}");
    // A second revocation, an unknown device, a bad name: one clear line each.
    let again = cmd(&dir, "registry revoke --key server.key fleet.reg sensor-A");
    assert_one_line_error(&again, &["is revoked", "new key"]);
    let unknown = cmd(&dir, "registry revoke --key server.key fleet.reg nobody");
    assert_one_line_error(&unknown, &["no device nobody"]);
    let bad = run(
        &dir,
        &[
            "registry",
            "enroll",
            "--key",
            "server.key",
            "fleet.reg",
            "--device",
            "dev.key.pub",
            "--name",
            "a b",
            "--group",
            "g",
        ],
    );
    assert_one_line_error(&bad, &["invalid name"]);
    let exists = cmd(&dir, "registry init --key server.key fleet.reg");
    assert_one_line_error(&exists, &["already exists"]);
    let missing = cmd(&dir, "registry verify nothing.reg");
    assert_one_line_error(&missing, &["cannot open nothing.reg"]);
}

#[test]
fn tampered_registry_fails_verify_and_the_server_will_not_start() {
    let (dir, _) = setup("tamper");
    let path = dir.join("fleet.reg");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("sensor-1", "sensor-X")).unwrap();
    let out = cmd(&dir, "registry verify fleet.reg");
    assert_one_line_error(&out, &["entry 2", "restore it from a backup"]);
    let out = server(&dir).output().unwrap();
    assert_one_line_error(
        &out,
        &[
            "entry 2",
            "no server starts on it",
            "secchan registry verify fleet.reg",
        ],
    );
    // Appending is refused too.
    let out = cmd(&dir, "registry revoke --key server.key fleet.reg sensor-1");
    assert_one_line_error(&out, &["entry 2"]);
}

#[test]
fn torn_write_is_reported_and_repaired() {
    let (dir, _) = setup("torn");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("fleet.reg"))
        .unwrap();
    f.write_all(b"3 1790000000 ab").unwrap();
    drop(f);
    let out = cmd(&dir, "registry verify fleet.reg");
    assert_one_line_error(&out, &["entry 3 is torn", "secchan registry repair"]);
    let out = ok(cmd(&dir, "registry repair --key server.key fleet.reg"));
    assert!(out.contains("removed torn entry 3"), "{out}");
    ok(cmd(&dir, "registry verify fleet.reg"));
}

#[test]
fn zero_touch_enrollment_with_a_token_then_reuse_is_refused() {
    let (dir, _) = setup("token");
    ok(cmd(&dir, "keygen --out new.key"));
    ok(cmd(&dir, "keygen --out other.key"));
    let token = ok(cmd(&dir, "registry token --key server.key fleet.reg --group greenhouse --expires 10m --name sensor-9"));
    let token = token.trim();
    assert!(token.starts_with("secchan-token-v1."), "{token}");
    // The token is never stored: the registry holds only its public key.
    assert!(!std::fs::read_to_string(dir.join("fleet.reg"))
        .unwrap()
        .contains(&token[17..40]));
    let server = start_server(&dir, &[]);
    // No --server-key: the device pins the server key carried in the token.
    let out = device(
        &dir,
        &[
            "--connect",
            &server.addr,
            "--key",
            "new.key",
            "--enroll-token",
            token,
        ],
        "first reading\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(cmd(&dir, "registry list --json fleet.reg"))).unwrap();
    let enrolled = json
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "sensor-9")
        .unwrap();
    assert_eq!(enrolled["by_token"], true);
    assert_eq!(enrolled["group"], "greenhouse");
    let tokens: serde_json::Value =
        serde_json::from_str(&ok(cmd(&dir, "registry list --tokens --json fleet.reg"))).unwrap();
    assert_eq!(tokens[0]["status"], "used");
    assert_eq!(tokens[0]["used_by"], enrolled["fingerprint"]);
    let enroll = |key: &str, token: &str| {
        let args = [
            "--connect",
            &server.addr,
            "--key",
            key,
            "--enroll-token",
            token,
        ];
        device(&dir, &args, "x\n")
    };
    let out = enroll("other.key", token);
    assert_one_line_error(
        &out,
        &["already used", "ask the server's operator for a new one"],
    );
    let out = device(
        &dir,
        &["--connect", &server.addr, "--enroll-token", token],
        "",
    );
    assert_one_line_error(&out, &["--enroll-token needs a device identity"]);
    let out = enroll("other.key", "nonsense");
    assert_one_line_error(&out, &["invalid enrollment token"]);
}
