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
    let ward: serde_json::Value = serde_json::from_str(&ok(cmd(
        &dir,
        "registry list --json --group ward fleet.reg",
    )))
    .unwrap();
    assert_eq!(ward.as_array().unwrap().len(), 1);
    assert_eq!(ward[0]["name"], "sensor-A");
    let table = ok(cmd(&dir, "registry list --group ward fleet.reg"));
    assert_eq!(table.lines().count(), 2, "{table}");
    assert!(
        table.lines().nth(1).unwrap().starts_with("sensor-A"),
        "{table}"
    );
    let table = ok(cmd(&dir, "registry list --group greenhouse fleet.reg"));
    assert_eq!(table.lines().count(), 1, "{table}");
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

/// Enrolls two more devices by fingerprint: the registry of `setup` then holds four entries.
fn four_entries(dir: &Path) {
    for n in 2..=3 {
        let fp = ok(cmd(dir, &format!("keygen --out dev{n}.key")));
        ok(cmd(
            dir,
            &format!(
                "registry enroll --key server.key fleet.reg --device {} --name sensor-{n} --group greenhouse",
                fp.trim()
            ),
        ));
    }
}

#[test]
fn every_kind_of_tampering_keeps_the_server_from_starting() {
    let (dir, _) = setup("tamper-kinds");
    four_entries(&dir);
    let path = dir.join("fleet.reg");
    let original = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<String> = original.split_inclusive('\n').map(String::from).collect();
    let with = |f: &dyn Fn(&mut Vec<String>)| {
        let mut l = lines.clone();
        f(&mut l);
        l.concat()
    };
    let cases: [(&str, String, &str); 6] = [
        (
            "edit",
            original.replacen("sensor-1", "sensor-X", 1),
            "entry 2 does not carry a valid signature",
        ),
        (
            "delete",
            with(&|l| drop(l.remove(2))),
            "entry 3 is missing: it was deleted",
        ),
        (
            "reorder",
            with(&|l| l.swap(2, 3)),
            "entry 3 is out of order",
        ),
        (
            "inject",
            with(&|l| l.insert(3, l[1].clone())),
            "line 4 does not belong here",
        ),
        (
            "truncate",
            with(&|l| l.truncate(3)),
            "entry 4 is missing: the log was truncated",
        ),
        (
            "torn",
            format!("{original}5 1790000000 ab"),
            "entry 5 is torn",
        ),
    ];
    for (kind, text, named) in cases {
        std::fs::write(&path, text).unwrap();
        let out = cmd(&dir, "registry verify fleet.reg");
        assert_one_line_error(&out, &[named]);
        let out = server(&dir).output().unwrap();
        let mut needles = vec![
            named,
            "no server starts on it",
            "inspect it with `secchan registry verify fleet.reg`",
        ];
        if kind == "torn" {
            needles.push("secchan registry repair --key SERVER_KEY fleet.reg");
        }
        assert_one_line_error(&out, &needles);
        // Appending is refused too.
        let out = cmd(
            &dir,
            "registry revoke --key server.key fleet.reg dev.key.pub",
        );
        assert_one_line_error(&out, &[named]);
    }
}

#[test]
fn verify_prints_an_anchor_that_later_detects_a_rollback() {
    let (dir, _) = setup("anchor");
    let path = dir.join("fleet.reg");
    let out = ok(cmd(&dir, "registry verify fleet.reg"));
    let anchor = out
        .lines()
        .find_map(|l| l.strip_prefix("anchor: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no anchor in {out}"))
        .to_string();
    let head = std::fs::read_to_string(dir.join("fleet.reg.head")).unwrap();
    let (count, hash) = anchor.split_once(':').unwrap();
    assert_eq!(count, "2");
    assert!(head.contains(&format!(" 2 {hash} ")), "{head}");
    let old = (std::fs::read(&path).unwrap(), head);
    // A later registry that extends it passes.
    ok(cmd(
        &dir,
        "registry revoke --key server.key fleet.reg sensor-1",
    ));
    let out = ok(cmd(
        &dir,
        &format!("registry verify --expect {anchor} fleet.reg"),
    ));
    assert!(out.contains(&format!("extends {anchor}")), "{out}");
    let newer = ok(cmd(&dir, "registry verify fleet.reg"));
    let newer = newer
        .lines()
        .find_map(|l| l.strip_prefix("anchor: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    // The older copy put back: consistent on its own, refused against the newer anchor.
    std::fs::write(&path, &old.0).unwrap();
    std::fs::write(dir.join("fleet.reg.head"), &old.1).unwrap();
    ok(cmd(&dir, "registry verify fleet.reg"));
    let out = cmd(&dir, &format!("registry verify --expect {newer} fleet.reg"));
    assert_one_line_error(&out, &["rolled back", "entry 3"]);
    let out = cmd(&dir, "registry verify --expect 3:abc fleet.reg");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("COUNT:HASH"));
}

#[test]
fn a_server_with_an_anchor_will_not_start_on_a_rolled_back_registry() {
    let (dir, _) = setup("server-anchor");
    let state = tempdir("registry-cli-server-anchor-state");
    let anchor = state.join("fleet.anchor");
    let anchor_arg = ["--registry-anchor", anchor.to_str().unwrap()];
    let path = dir.join("fleet.reg");
    let old = (
        std::fs::read(&path).unwrap(),
        std::fs::read(dir.join("fleet.reg.head")).unwrap(),
    );
    ok(cmd(
        &dir,
        "registry revoke --key server.key fleet.reg sensor-1",
    ));
    drop(start_server(&dir, &anchor_arg));
    assert!(anchor.exists());
    std::fs::write(&path, &old.0).unwrap();
    std::fs::write(dir.join("fleet.reg.head"), &old.1).unwrap();
    let out = server(&dir).args(anchor_arg).output().unwrap();
    assert_one_line_error(
        &out,
        &[
            "rolled back",
            "fleet.anchor",
            "secchan registry verify fleet.reg",
            "delete",
        ],
    );
    // Without the anchor the same server starts: the files alone cannot show a rollback.
    drop(start_server(&dir, &[]));
}

#[test]
fn served_groups_are_checked() {
    let (dir, _) = setup("groups");
    let out = server(&dir).args(["--group", "a=b"]).output().unwrap();
    assert_one_line_error(&out, &["invalid group \"a=b\""]);
    // A group nobody is in starts, with a warning naming it.
    let mut child = server(&dir)
        .args(["--group", "greenhose"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut warned = false;
    for line in std::io::BufRead::lines(stderr) {
        let line = line.unwrap();
        warned |= line.contains("WARN") && line.contains("greenhose") && line.contains("--group");
        if line.contains("listening") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(warned, "no warning for a group nobody is in");
}

#[test]
fn commands_and_token_enrollments_while_the_server_runs_do_not_corrupt_the_registry() {
    let (dir, _) = setup("concurrent");
    let tokens: Vec<String> = (0..4)
        .map(|n| {
            ok(cmd(&dir, &format!("keygen --out tok{n}.key")));
            ok(cmd(
                &dir,
                "registry token --key server.key fleet.reg --group greenhouse",
            ))
            .trim()
            .to_string()
        })
        .collect();
    let fingerprints: Vec<String> = (0..4)
        .map(|n| {
            ok(cmd(&dir, &format!("keygen --out cli{n}.key")))
                .trim()
                .to_string()
        })
        .collect();
    let server = start_server(&dir, &[]);
    std::thread::scope(|s| {
        let mut runs = Vec::new();
        for (n, token) in tokens.iter().enumerate() {
            let (dir, addr) = (&dir, &server.addr);
            runs.push(s.spawn(move || {
                let key = format!("tok{n}.key");
                let args = ["--connect", addr, "--key", &key, "--enroll-token", token];
                device(dir, &args, "reading\n")
            }));
        }
        for (n, fp) in fingerprints.iter().enumerate() {
            let dir = &dir;
            runs.push(s.spawn(move || {
                cmd(
                    dir,
                    &format!("registry enroll --key server.key fleet.reg --device {fp} --name cli-{n} --group ward"),
                )
            }));
        }
        for run in runs {
            let out = run.join().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    });
    let out = ok(cmd(&dir, "registry verify fleet.reg"));
    assert!(out.contains("14 entries verified"), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(cmd(&dir, "registry list --json fleet.reg"))).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 9);
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
    // The token from a file, kept out of the process list. No --server-key: the device pins
    // the server key carried in the token.
    std::fs::write(dir.join("token.txt"), format!("{token}\n")).unwrap();
    let out = device(
        &dir,
        &[
            "--connect",
            &server.addr,
            "--key",
            "new.key",
            "--enroll-token-file",
            "token.txt",
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
    let out = device(
        &dir,
        &[
            "--connect",
            &server.addr,
            "--key",
            "other.key",
            "--enroll-token-file",
            "missing.txt",
        ],
        "",
    );
    assert_one_line_error(&out, &["cannot read missing.txt"]);
}

#[test]
fn a_server_on_a_registry_signed_by_an_offline_authority_accepts_its_devices_and_refuses_tokens() {
    let dir = tempdir("registry-cli-authority");
    let server_fp = ok(cmd(&dir, "keygen --out server.key")).trim().to_string();
    for key in ["authority", "dev", "new"] {
        ok(cmd(&dir, &format!("keygen --out {key}.key")));
    }
    ok(cmd(
        &dir,
        "registry init --authority-key authority.key fleet.reg",
    ));
    ok(cmd(&dir, "registry enroll --authority-key authority.key fleet.reg --device dev.key.pub --name sensor-1 --group greenhouse"));
    let token = ok(cmd(
        &dir,
        "registry token --authority-key authority.key fleet.reg --group greenhouse --expires 10m",
    ));
    // Without --registry-authority the server expects its own key to sign the registry.
    let out = cmd(
        &dir,
        "server --listen 127.0.0.1:0 --key server.key --registry fleet.reg",
    );
    assert_one_line_error(&out, &["the log belongs to server", "not to"]);
    let server = start_server(&dir, &["--registry-authority", "authority.key.pub"]);
    let connect = ["--connect", &server.addr, "--server-key", &server_fp];
    let out = device(
        &dir,
        &[&connect[..], &["--key", "dev.key"]].concat(),
        "reading\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let by_token = ["--key", "new.key", "--enroll-token", token.trim()];
    let out = device(&dir, &[&connect[..], &by_token].concat(), "x\n");
    assert_eq!(out.status.code(), Some(4));
    assert_one_line_error(&out, &["server refused the session", "offline authority"]);
    // Nothing was appended: the server cannot sign into the authority's registry.
    let out = ok(cmd(&dir, "registry verify fleet.reg"));
    assert!(out.contains("3 entries"), "{out}");
}
