//! The real `secchan server` and `secchan device` over loopback: downlink from the server's
//! stdin to a device's stdout, and device-to-device sessions relayed by the server
//! (protocol.md §11.6–§11.8, docs/relay.md).

mod cli_support;

use cli_support::relay::{
    assert_groups_decide, assert_relayed, connected, enroll_fleet, fingerprint, fleet, listener,
    listener_trusting, pin_args, registry_groups, server, session_args, ERR, OUT,
};
use cli_support::{bin, run_device};
use std::io::Write;
use std::path::Path;

/// `secchan device --key FROM.key --to TO` with `--peer-key TO=PIN.key`, fed `input`.
fn send_to(
    dir: &Path,
    addr: &str,
    from: &str,
    to: &str,
    pin: &str,
    input: &str,
) -> std::process::Output {
    send_trusting(dir, addr, (from, to), &pin_args(dir, &[(to, pin)]), input)
}

/// `secchan device --key FROM.key --to TO` trusting its peer through `trust`, fed `input`.
fn send_trusting(
    dir: &Path,
    addr: &str,
    (from, to): (&str, &str),
    trust: &[String],
    input: &str,
) -> std::process::Output {
    let mut args = session_args(dir, addr, from);
    args.extend(["--to", to, "--give-up-after", "20"].map(String::from));
    args.extend_from_slice(trust);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_device(dir, &args, input)
}

/// The sender exited 3 (trust) with one last line naming every needle.
fn assert_trust_refused(out: &std::process::Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let last = stderr.lines().last().unwrap();
    assert!(last.starts_with("secchan: "), "{last}");
    for needle in needles {
        assert!(last.contains(needle), "{needle:?} not in {last}");
    }
}

#[test]
fn downlink_reaches_the_device_which_prints_and_acknowledges_it() {
    let dir = fleet("downlink");
    let (mut server, addr) = server(&dir, &["--authorized-devices", "devices"]);
    let mut b = listener(&dir, &addr, "b", &[]);
    server.wait_for(ERR, "session established device=b");
    server.send(r#"{"to":"b","data":"led on"}"#);
    server.send(r#"{"to":"nobody","data":"x"}"#);
    server.send("not json");
    let line = b.wait_for(OUT, "led on");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["from"], "server");
    assert_eq!(v["e2e"], false);
    assert_eq!(v["data"], "led on");
    assert_eq!(v["fingerprint"], fingerprint(&dir, "server.key"));
    server.wait_for(ERR, "downlink acknowledged device=b");
    let refused = server.wait_for(ERR, "downlink line 2 not delivered");
    assert!(refused.contains("\"nobody\" has a session") && refused.contains("not stored"));
    server.wait_for(ERR, "downlink line 3 not delivered: not a JSON object");
}

/// A TCP proxy to `to` that records every byte both ways; returns its address and the record.
fn capture(to: &str) -> (String, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    use std::net::{TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (to, record) = (to.to_string(), seen.clone());
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let server = TcpStream::connect(&to).unwrap();
            for (mut from, mut into) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                let record = record.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = std::io::Read::read(&mut from, &mut buf) {
                        if n == 0 || into.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        record.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    let _ = into.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    (addr, seen)
}

#[test]
fn two_devices_exchange_messages_end_to_end_and_the_server_sees_no_plaintext() {
    let dir = fleet("relay");
    let (mut server, addr) = server(&dir, &["--authorized-devices", "devices", "--relay", "any"]);
    let mut b = listener(&dir, &addr, "b", &["a"]);
    server.wait_for(ERR, "session established device=b");
    let (proxy, wire) = capture(&addr);
    let out = send_to(&dir, &proxy, "a", "b", "b", "secret-one\nsecret-two\n");
    assert_relayed(&dir, &out, &mut b, &mut server);
    let wire = wire.lock().unwrap();
    assert!(wire.len() > 2_500, "the capture holds the handshakes");
    assert!(
        !wire.windows(6).any(|w| w == b"secret"),
        "plaintext on a's socket"
    );
}

#[test]
fn a_peer_key_other_than_the_pinned_one_is_refused() {
    let dir = fleet("substituted");
    let (mut server, addr) = server(&dir, &["--authorized-devices", "devices", "--relay", "any"]);
    let _b = listener(&dir, &addr, "b", &["a"]);
    server.wait_for(ERR, "session established device=b");
    // a expects c's key under the name b.
    let out = send_to(&dir, &addr, "a", "b", "c", "hello\n");
    assert_trust_refused(&out, &["substituted"]);
}

#[test]
fn unknown_peers_and_a_server_without_relay_are_refused_with_a_reason() {
    let dir = fleet("unknown");
    let (_server, addr) = server(&dir, &["--authorized-devices", "devices", "--relay", "any"]);
    let out = send_to(&dir, &addr, "a", "nobody", "b", "hello\n");
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("(unknown_peer)"));
    let (mut server, addr) = server(&dir, &["--authorized-devices", "devices"]);
    let _b = listener(&dir, &addr, "b", &["a"]);
    server.wait_for(ERR, "session established device=b");
    let out = send_to(&dir, &addr, "a", "b", "b", "hello\n");
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("(no_relay)"));
}

#[test]
fn registry_groups_decide_who_may_reach_whom() {
    let dir = fleet("groups");
    registry_groups(&dir);
    let (mut server, addr) = server(&dir, &["--registry", "fleet.reg", "--relay", "group"]);
    let mut b = listener(&dir, &addr, "b", &["a", "c"]);
    server.wait_for(ERR, "session established device=b");
    assert_groups_decide(&mut b, |from, input| {
        send_to(&dir, &addr, from, "b", "b", input)
    });
}

#[test]
fn chat_line_mode_addresses_peers_and_shows_the_cryptography() {
    let dir = fleet("chat");
    let (mut server, addr) = server(&dir, &["--authorized-devices", "devices", "--relay", "any"]);
    let mut b = listener(&dir, &addr, "b", &["a"]);
    server.wait_for(ERR, "session established device=b");
    let mut chat = connected(&dir, &addr, "chat", "a", &pin_args(&dir, &[("b", "b")]));
    chat.send("hello?");
    chat.wait_for(OUT, "type @NAME MESSAGE");
    chat.send("@b hi from the chat");
    let up = chat.wait_for(OUT, "* end-to-end session with b");
    assert!(up.contains("pinned fingerprint"), "{up}");
    b.wait_for(OUT, "hi from the chat");
    chat.send("/crypto");
    let pane = chat.wait_for(OUT, "* b: open");
    for needle in [
        "suite X25519MLKEM768",
        "AEAD ",
        &fingerprint(&dir, "b.key"),
        &fingerprint(&dir, "a.key"),
        "via the server's relay",
        "records rejected 0",
        "handshake ",
    ] {
        assert!(pane.contains(needle), "{needle:?} not in {pane}");
    }
    chat.send("@nobody x");
    chat.wait_for(OUT, "(unknown_peer)");
    drop(chat.stdin.take());
    assert!(chat.child.wait().unwrap().success());
}

/// A fleet whose registry is signed by the offline key `authority.key`, enrolling a and b.
fn authority_fleet(name: &str) -> std::path::PathBuf {
    let dir = fleet(name);
    cli_support::keygen(&dir.join("authority.key"));
    let fleet = [("a", "greenhouse"), ("b", "greenhouse")];
    enroll_fleet(&dir, "authority.key", &fleet);
    dir
}

#[test]
fn devices_vouched_for_by_an_offline_registry_authority_talk_end_to_end_without_pins() {
    let dir = authority_fleet("authority");
    let registry = [
        "--registry",
        "fleet.reg",
        "--registry-authority",
        "authority.key.pub",
        "--relay",
        "any",
    ];
    let (mut server, addr) = server(&dir, &registry);
    let trust = [
        "--peer-authority".to_string(),
        "authority.key.pub".to_string(),
    ];
    let mut b = connected(&dir, &addr, "chat", "b", &trust);
    server.wait_for(ERR, "session established device=b");
    let mut a = connected(&dir, &addr, "chat", "a", &trust);
    server.wait_for(ERR, "session established device=a");
    a.send("@b hello, vouched for");
    let up = a.wait_for(OUT, "* end-to-end session with b");
    assert!(
        up.contains(&fingerprint(&dir, "b.key"))
            && up.contains("registry authority (group greenhouse)"),
        "{up}"
    );
    b.wait_for(OUT, "<a> hello, vouched for");
    let up = b.wait_for(OUT, "* end-to-end session with a");
    assert!(up.contains("registry authority (group greenhouse)"), "{up}");
    b.send("@a hello back");
    a.wait_for(OUT, "<b> hello back");
    for p in [&mut a, &mut b] {
        drop(p.stdin.take());
        assert!(p.child.wait().unwrap().success());
    }
    let seen = server.all();
    assert!(
        !seen.contains("hello"),
        "the server printed plaintext: {seen}"
    );
}

#[test]
fn entries_not_signed_by_the_pinned_authority_are_refused() {
    let dir = fleet("not-authority");
    cli_support::keygen(&dir.join("authority.key"));
    // Today's registry, signed by the server's own online key.
    enroll_fleet(&dir, "server.key", &[("a", "g"), ("b", "g")]);
    let out = bin()
        .current_dir(&dir)
        .args(["server", "--listen", "127.0.0.1:0", "--key", "server.key"])
        .args([
            "--registry",
            "fleet.reg",
            "--registry-authority",
            "authority.key.pub",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    cli_support::assert_one_line_error(&out, &["the log belongs to server", "not to"]);
    let (mut server, addr) = server(&dir, &["--registry", "fleet.reg", "--relay", "any"]);
    let trust = [
        "--peer-authority".to_string(),
        "authority.key.pub".to_string(),
    ];
    let _b = listener_trusting(&dir, &addr, "b", &trust);
    server.wait_for(ERR, "session established device=b");
    let out = send_trusting(&dir, &addr, ("a", "b"), &trust, "hello\n");
    assert_trust_refused(
        &out,
        &[
            "the registry entries the server gave for peer b do not vouch for key",
            "signed by another key than the pinned registry authority",
        ],
    );
    // Pinning the server's own key as the authority is refused before anything is sent.
    let server_as_authority = ["--peer-authority".to_string(), "server.key.pub".to_string()];
    let out = send_trusting(&dir, &addr, ("a", "b"), &server_as_authority, "hello\n");
    assert_trust_refused(&out, &["--peer-authority names the server's own key"]);
}

#[test]
fn a_server_killed_and_restarted_mid_conversation_loses_no_line_end_to_end() {
    use cli_support::relay::Proc;
    let dir = fleet("relay-restart");
    let addr = format!("127.0.0.1:{}", cli_support::free_port());
    let start = || {
        let args = ["server", "--listen", &addr, "--key", "server.key"];
        let policy = ["--authorized-devices", "devices", "--relay", "any"];
        let mut server = Proc::spawn(&dir, &[&args[..], &policy[..]].concat());
        server.wait_for(ERR, "listening");
        server
    };
    let mut server = start();
    let mut b = listener(&dir, &addr, "b", &["a"]);
    server.wait_for(ERR, "session established device=b");
    let mut extra = vec![
        "--to".to_string(),
        "b".into(),
        "--give-up-after".into(),
        "60".into(),
    ];
    extra.extend(pin_args(&dir, &[("b", "b")]));
    let mut a = connected(&dir, &addr, "device", "a", &extra);
    a.send("line-0");
    b.wait_for(OUT, "line-0");
    // The server dies with both devices connected; a takes a line while it is gone.
    drop(server);
    a.send("line-1");
    // a waits (stopped) until the restarted server has b back, so that its resend does
    // not meet a server that has not seen b yet (`unknown_peer` ends a sender).
    cli_support::signal(&a.child, "-STOP");
    let mut server = start();
    server.wait_for(ERR, "session established device=b");
    cli_support::signal(&a.child, "-CONT");
    a.send("line-2");
    a.stdin = None;
    let status = cli_support::wait_exit(&mut a.child);
    let printed = b.all();
    assert!(status.success(), "a: {}", a.all());
    for line in ["line-0", "line-1", "line-2"] {
        let n = printed
            .lines()
            .filter(|l| l.contains(&format!("\"data\":\"{line}\"")))
            .count();
        assert_eq!(n, 1, "b printed {line} {n} times: {printed}");
    }
    assert!(!server.all().contains("line-"), "the server saw plaintext");
}
