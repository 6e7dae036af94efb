//! The `secchan` binary as users run it: keygen, server and device in two processes over
//! loopback, the errors they print, and the demo.

mod cli_support;

use cli_support::{assert_one_line_error, bin, keygen, run_device, tempdir, Server};
use std::io::{BufRead, BufReader};
use std::path::Path;

/// `secchan server` on a free loopback port with `dir/server.key`.
fn start_server(dir: &Path, extra: &[&str]) -> Server {
    let mut c = bin();
    c.args(["server", "--listen", "127.0.0.1:0", "--key"])
        .arg(dir.join("server.key"))
        .args(extra);
    Server::start(c)
}

#[test]
fn keygen_writes_private_key_0600_and_refuses_to_overwrite() {
    let dir = tempdir("cli-keygen");
    let key = dir.join("id.key");
    let fp = keygen(&key);
    assert!(fp.starts_with("SHA256:") && fp.len() == 50, "{fp}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let pubtext = std::fs::read_to_string(dir.join("id.key.pub")).unwrap();
    assert!(pubtext.starts_with("secchan-ed25519-public-v1 "));
    let out = bin()
        .arg("fingerprint")
        .arg(dir.join("id.key.pub"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), fp);
    let out = bin().arg("keygen").arg("--out").arg(&key).output().unwrap();
    assert_one_line_error(&out, &["already exists"]);
}

#[cfg(unix)]
#[test]
fn world_readable_secret_key_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir("cli-perm");
    keygen(&dir.join("server.key"));
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = bin()
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--allow-any-device",
            "--key",
        ])
        .arg(dir.join("server.key"))
        .output()
        .unwrap();
    assert_one_line_error(&out, &["chmod 600"]);
    assert_eq!(out.status.code(), Some(3), "a key problem");
}

#[cfg(unix)]
#[test]
fn group_readable_ticket_key_file_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir("cli-ticket-keys");
    keygen(&dir.join("server.key"));
    let tickets = dir.join("tickets.keys");
    std::fs::write(&tickets, "secchan-ticket-keys-v1\n").unwrap();
    std::fs::set_permissions(&tickets, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = bin()
        .args(["server", "--listen", "127.0.0.1:0", "--allow-any-device"])
        .arg("--key")
        .arg(dir.join("server.key"))
        .arg("--ticket-key-file")
        .arg(&tickets)
        .output()
        .unwrap();
    assert_one_line_error(
        &out,
        &["session resumption", "chmod 600", "--ticket-lifetime 0"],
    );
}

/// `secchan fingerprint` (like keygen, registry and `bench --ops`) runs on the main thread and
/// starts no async runtime: while it waits for its key file, a FIFO it has opened, every thread
/// it has carries the process's own name, none a runtime worker's (tokio names its workers).
/// Threads are told apart by name, not counted, because under qemu-user the process also has
/// QEMU's own helper thread.
#[cfg(target_os = "linux")]
#[test]
fn fingerprint_starts_no_runtime_worker_threads() {
    use std::io::Write;
    let dir = tempdir("cli-one-thread");
    let fp = keygen(&dir.join("id.key"));
    let fifo = dir.join("fifo.pub");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.unwrap().success(), "mkfifo failed");
    let mut child = bin()
        .arg("fingerprint")
        .arg(&fifo)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Opening the FIFO for writing returns once the command has opened it for reading, that
    // is once it is past start-up and waiting for the key.
    let (opened, open) = std::sync::mpsc::channel();
    let path = fifo.clone();
    std::thread::spawn(move || {
        let _ = opened.send(std::fs::OpenOptions::new().write(true).open(path));
    });
    let mut writer = loop {
        if let Ok(writer) = open.recv_timeout(std::time::Duration::from_millis(50)) {
            break writer.unwrap();
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("fingerprint ended ({status}) before opening its key file");
        }
    };
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", child.id()))
        .unwrap()
        .map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).unwrap())
        .map(|name| name.trim().to_string())
        .collect();
    assert!(
        threads.iter().all(|name| name == "secchan"),
        "threads of `secchan fingerprint`: {threads:?}"
    );
    writer
        .write_all(&std::fs::read(dir.join("id.key.pub")).unwrap())
        .unwrap();
    drop(writer);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), fp);
}

#[test]
fn server_without_device_policy_refuses_to_start() {
    let dir = tempdir("cli-policy");
    keygen(&dir.join("server.key"));
    let out = bin()
        .args(["server", "--listen", "127.0.0.1:0", "--key"])
        .arg(dir.join("server.key"))
        .output()
        .unwrap();
    assert_one_line_error(&out, &["--authorized-devices"]);
    assert_eq!(out.status.code(), Some(2), "a configuration error");
}

#[test]
fn device_lines_reach_server_as_json_and_device_exits_zero() {
    let dir = tempdir("cli-e2e");
    let server_fp = keygen(&dir.join("server.key"));
    let device_fp = keygen(&dir.join("device.key"));
    std::fs::write(
        dir.join("devices"),
        format!("# fleet\n{device_fp} greenhouse-1\n"),
    )
    .unwrap();
    let devices = dir.join("devices");
    let mut server = start_server(&dir, &["--authorized-devices", devices.to_str().unwrap()]);
    let key = dir.join("device.key");
    for mode in ["hybrid", "classical"] {
        let out = run_device(
            &dir,
            &[
                "--connect",
                &server.addr,
                "--server-key",
                &server_fp,
                "--key",
                key.to_str().unwrap(),
                "--mode",
                mode,
            ],
            "temp=21.5\n\u{e9}t\u{e9}\n",
        );
        if mode == "hybrid" {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            // The server runs in hybrid mode: a classical device is refused with advice.
            assert_one_line_error(&out, &["--mode"]);
        }
    }
    let stdout = server.child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    for expected in ["temp=21.5", "\u{e9}t\u{e9}"] {
        let line = lines.next().unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["device"], "greenhouse-1");
        assert_eq!(v["fingerprint"], device_fp.as_str());
        assert_eq!(v["suite"], "X25519MLKEM768");
        assert_eq!(v["data"], expected);
    }
}

#[test]
fn lines_that_are_not_utf8_arrive_as_data_base64() {
    let dir = tempdir("cli-binary");
    let server_fp = keygen(&dir.join("server.key"));
    let mut server = start_server(&dir, &["--allow-any-device"]);
    let out = run_device(
        &dir,
        &["--connect", &server.addr, "--server-key", &server_fp],
        b"temp=21.5\r\n\xff\xfe\x00raw\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = BufReader::new(server.child.stdout.take().unwrap()).lines();
    let text: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(text["data"], "temp=21.5");
    assert!(text.get("data_base64").is_none(), "{text}");
    let binary: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert!(binary.get("data").is_none(), "{binary}");
    assert_eq!(binary["data_base64"], "//4AcmF3");
    assert_eq!(binary["device"], "anonymous");
}

/// Runs a device whose key is not on the server's list, `runs` times, with `input` on stdin,
/// and asserts each run ends with the one-line refusal.
fn assert_stranger_refused(name: &str, input: &str, runs: usize) {
    let dir = tempdir(name);
    let server_fp = keygen(&dir.join("server.key"));
    let known = keygen(&dir.join("known.key"));
    keygen(&dir.join("stranger.key"));
    std::fs::write(dir.join("devices"), format!("{known}\n")).unwrap();
    let devices = dir.join("devices");
    let server = start_server(&dir, &["--authorized-devices", devices.to_str().unwrap()]);
    let stranger = dir.join("stranger.key");
    for _ in 0..runs {
        let out = run_device(
            &dir,
            &[
                "--connect",
                &server.addr,
                "--server-key",
                &server_fp,
                "--key",
                stranger.to_str().unwrap(),
            ],
            input,
        );
        assert_one_line_error(&out, &["authorized list"]);
        assert_eq!(out.status.code(), Some(4), "refused by the server");
    }
}

#[test]
fn unknown_device_gets_one_clear_line() {
    assert_stranger_refused("cli-unknown", "hello\n", 1);
}

#[test]
fn unknown_device_streaming_many_lines_still_reads_the_refusal() {
    // The device sends lines right behind its DeviceFinish; the server must not reset the
    // connection under the refusal it sent.
    let input: String = (0..20_000).map(|i| format!("reading {i}\n")).collect();
    assert_stranger_refused("cli-unknown-many", &input, 3);
}

#[test]
fn tofu_records_server_then_rejects_a_changed_key() {
    let dir = tempdir("cli-tofu");
    keygen(&dir.join("server.key"));
    let known = dir.join("known_servers");
    let server = start_server(&dir, &["--allow-any-device"]);
    let addr = server.addr.clone();
    let args = [
        "--connect",
        &addr,
        "--known-servers",
        known.to_str().unwrap(),
    ];
    let out = run_device(&dir, &args, "first\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read_to_string(&known).unwrap().contains(&addr));
    drop(server);
    // A different key at the same address.
    std::fs::remove_file(dir.join("server.key")).unwrap();
    std::fs::remove_file(dir.join("server.key.pub")).unwrap();
    keygen(&dir.join("server.key"));
    let mut c = bin();
    c.args(["server", "--allow-any-device", "--listen", &addr, "--key"])
        .arg(dir.join("server.key"));
    let server2 = Server::start(c);
    let out = run_device(
        &dir,
        &[
            "--connect",
            &addr,
            "--known-servers",
            known.to_str().unwrap(),
        ],
        "x\n",
    );
    drop(server2);
    assert_one_line_error(&out, &[&format!("{}:1", known.display())]);
    assert_eq!(out.status.code(), Some(3), "a trust failure");
}

#[test]
fn device_cannot_reach_server() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let out = run_device(
        &std::env::temp_dir(),
        &[
            "--connect",
            &addr,
            "--server-key",
            ANY_FINGERPRINT,
            "--no-reconnect",
        ],
        "reading\n",
    );
    assert_one_line_error(&out, &["cannot connect"]);
    assert_eq!(out.status.code(), Some(5), "network gave up");
    // By default the device keeps trying, and gives up only after --give-up-after.
    let out = run_device(
        &std::env::temp_dir(),
        &[
            "--connect",
            &addr,
            "--server-key",
            ANY_FINGERPRINT,
            "--give-up-after",
            "1",
        ],
        "reading\n",
    );
    assert_one_line_error(
        &out,
        &[
            "no progress with the server for 1 s",
            "1 messages remain unacknowledged",
        ],
    );
    assert_eq!(out.status.code(), Some(5));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("reconnecting"), "{stderr}");
}

/// A well-formed fingerprint no key has.
const ANY_FINGERPRINT: &str = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

#[test]
fn malformed_fingerprints_are_named_not_taken_for_a_changed_key() {
    let dir = tempdir("cli-fingerprints");
    keygen(&dir.join("server.key"));
    // A typo in --server-key is reported before connecting, as a typo.
    for typo in ["SHA256:x", &ANY_FINGERPRINT[..49]] {
        let out = run_device(
            &dir,
            &["--connect", "127.0.0.1:9", "--server-key", typo],
            "",
        );
        assert_one_line_error(&out, &[&format!("--server-key {typo}: not a fingerprint")]);
    }
    // A typo in the authorized list stops the server at that line.
    let devices = dir.join("devices");
    std::fs::write(
        &devices,
        format!("{ANY_FINGERPRINT} ok\nSHA256:typo sensor-2\n"),
    )
    .unwrap();
    let out = bin()
        .args(["server", "--listen", "127.0.0.1:0", "--key"])
        .arg(dir.join("server.key"))
        .arg("--authorized-devices")
        .arg(&devices)
        .output()
        .unwrap();
    assert_one_line_error(
        &out,
        &[
            &format!("{}:2", devices.display()),
            "SHA256:typo is not a fingerprint",
        ],
    );
}

#[test]
fn usage_errors_are_one_line() {
    let dir = tempdir("cli-usage");
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
        .args(["--max-sessions", "0"])
        .output()
        .unwrap();
    assert_one_line_error(&out, &["--max-sessions", "--help"]);
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}

#[test]
fn keepalive_keeps_a_quiet_device_past_the_server_idle_timeout() {
    use std::io::Write;
    let dir = tempdir("cli-keepalive");
    let server_fp = keygen(&dir.join("server.key"));
    let mut server = start_server(&dir, &["--allow-any-device", "--idle-timeout", "2"]);
    let mut device = bin()
        .args([
            "device",
            "--connect",
            &server.addr,
            "--server-key",
            &server_fp,
        ])
        .args(["--keepalive", "1"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = device.stdin.take().unwrap();
    input.write_all(b"before the pause\n").unwrap();
    input.flush().unwrap();
    let mut lines = BufReader::new(server.child.stdout.take().unwrap()).lines();
    assert!(lines.next().unwrap().unwrap().contains("before the pause"));
    // Silent for longer than the server's idle timeout: only keep-alives flow.
    std::thread::sleep(std::time::Duration::from_secs(4));
    input.write_all(b"after the pause\n").unwrap();
    drop(input);
    let out = device.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(lines.next().unwrap().unwrap().contains("after the pause"));
}

#[test]
fn a_device_never_exits_zero_without_acknowledgements() {
    use secchan::crypto::identity::IdentityKey;
    use secchan::handshake::server::ServerConfig;
    use secchan::handshake::AllowAnyDevice;
    use secchan::transport::{tcp::Listener, Timeouts};
    use std::sync::Arc;
    // A server that completes handshakes and then never reads (nor acknowledges) anything.
    let key = Arc::new(IdentityKey::from_seed(&[0x3c; 32]));
    let fingerprint = key.public().fingerprint();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(Listener::bind(
            "127.0.0.1:0",
            Arc::new(ServerConfig::new(key, Arc::new(AllowAnyDevice))),
            Timeouts::default(),
        ))
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    runtime.spawn(async move {
        let mut held = Vec::new();
        loop {
            let incoming = listener.accept().await.unwrap();
            if let Ok((conn, _)) = incoming.handshake().await {
                held.push(conn);
            }
        }
    });
    let out = run_device(
        &std::env::temp_dir(),
        &[
            "--connect",
            &addr,
            "--server-key",
            &fingerprint,
            "--ack-timeout",
            "1",
            "--give-up-after",
            "2",
        ],
        "reading\n",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the server acknowledged nothing for 1s"),
        "a new session after the ack timeout: {stderr}"
    );
    assert_one_line_error(&out, &["1 messages remain unacknowledged"]);
    assert_eq!(out.status.code(), Some(5));
}

#[test]
fn demo_runs_and_reports() {
    let out = bin().arg("demo").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("X25519MLKEM768"));
    assert!(text.contains("2578 total"));
    assert!(text.contains("21 bytes overhead per record"));
    assert!(text.contains("ack 4"));
}

#[cfg(unix)]
#[test]
fn server_shutdown_closes_live_sessions_with_an_authenticated_close() {
    use std::io::{Read, Write};
    let dir = tempdir("cli-shutdown");
    let server_fp = keygen(&dir.join("server.key"));
    let mut server = start_server(&dir, &["--allow-any-device"]);
    let mut device = bin()
        .args([
            "device",
            "--connect",
            &server.addr,
            "--server-key",
            &server_fp,
            "--give-up-after",
            "1",
        ])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Keep the device's input open: it is mid-stream when the server stops.
    let mut input = device.stdin.take().unwrap();
    input.write_all(b"reading 1\n").unwrap();
    input.flush().unwrap();
    let mut lines = BufReader::new(server.child.stdout.take().unwrap()).lines();
    assert!(lines.next().unwrap().unwrap().contains("reading 1"));
    let status = std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        server.child.wait().unwrap().success(),
        "server exits 0 after SIGTERM"
    );
    let device_status = device.wait().unwrap();
    let mut stderr = String::new();
    device
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    drop(input);
    // The server went away (authenticated going_away) with the device's input still open:
    // the device looks for a new session, and gives up when none comes.
    assert_eq!(device_status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("server going away"), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("no progress with the server for 1 s"),
        "{stderr}"
    );
}

#[test]
fn completions_and_man_pages_come_from_the_options() {
    let out = bin().args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    let script = String::from_utf8(out.stdout).unwrap();
    assert!(
        script.contains("--state-dir") && script.contains("--spool"),
        "every option"
    );
    let dir = tempdir("cli-man");
    let out = bin().args(["man", "--out-dir"]).arg(&dir).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for page in ["secchan.1", "secchan-server.1", "secchan-device.1"] {
        let text = std::fs::read_to_string(dir.join(page)).unwrap();
        assert!(text.contains(".TH"), "{page} is a man page");
    }
    let server = std::fs::read_to_string(dir.join("secchan-server.1")).unwrap();
    assert!(
        server.contains("drain\\-timeout"),
        "the server's options are on its page"
    );
}

#[test]
fn a_config_file_sets_options_the_command_line_overrides_and_print_config_shows() {
    let dir = tempdir("cli-config");
    let config = dir.join("server.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:4500\"\nallow-any-device = true\nmax-sessions = 50\ngroup = []\n",
    )
    .unwrap();
    let print = |extra: &[&str]| {
        let out = bin()
            .args(["server", "--key", "server.key", "--config"])
            .arg(&config)
            .args(extra)
            .arg("--print-config")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let shown = print(&[]);
    for line in [
        "listen = \"127.0.0.1:4500\"",
        "allow-any-device = true",
        "max-sessions = 50",
        "drain-timeout = 10",
    ] {
        assert!(shown.lines().any(|l| l == line), "{line:?} in:\n{shown}");
    }
    assert!(print(&["--max-sessions", "7"]).contains("max-sessions = 7\n"));
    // What --print-config prints is itself a configuration file giving the same options.
    let again = dir.join("again.toml");
    std::fs::write(&again, &shown).unwrap();
    let out = bin()
        .args(["server", "--config"])
        .arg(&again)
        .arg("--print-config")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), shown);
    std::fs::write(&config, "max-sesions = 5\n").unwrap();
    let out = bin()
        .args(["server", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_one_line_error(
        &out,
        &[
            "server.toml",
            "`max-sesions` is not an option of `secchan server`",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
}
