//! Downlink and device-to-device sessions over a real Mosquitto: the real `secchan server
//! --mqtt` and `secchan device --mqtt` drive the same hub and device end as over TCP
//! (docs/relay.md, "Over MQTT").
#![cfg(feature = "mqtt")]

mod cli_support;
mod support;

use cli_support::relay::{
    assert_groups_decide, assert_relayed, fingerprint, fleet, registry_groups, Proc, ERR, OUT,
};
use cli_support::run_device;
use std::path::Path;
use support::mosquitto::Mosquitto;

/// `secchan server --mqtt` with the authorized devices a, b, c; returns once it serves.
fn server(m: &Mosquitto, dir: &Path, extra: &[&str]) -> Proc {
    let mut args = vec!["--authorized-devices", "devices"];
    args.extend_from_slice(extra);
    server_with(m, dir, &args)
}

/// `secchan server --mqtt` with `args` (the device list among them).
fn server_with(m: &Mosquitto, dir: &Path, args: &[&str]) -> Proc {
    let url = m.url();
    let args = [&["server", "--mqtt", &url, "--key", "server.key"], args].concat();
    let mut p = Proc::spawn(dir, &args);
    p.wait_for(ERR, "serving through the MQTT broker");
    p
}

/// Device `name` over MQTT that stays connected, pinning the keys of `pins`; returns once
/// the server attached its session to the hub.
fn listener(m: &Mosquitto, dir: &Path, server: &mut Proc, name: &str, pins: &[&str]) -> Proc {
    listener_with(m, dir, server, (name, pins), &[])
}

/// [`listener`] with more options.
fn listener_with(
    m: &Mosquitto,
    dir: &Path,
    server: &mut Proc,
    (name, pins): (&str, &[&str]),
    extra: &[&str],
) -> Proc {
    let mut args = vec![
        "device".to_string(),
        "--mqtt".into(),
        m.url(),
        "--server-key".into(),
        fingerprint(dir, "server.key"),
        "--key".into(),
        format!("{name}.key"),
        "--listen".into(),
    ];
    for p in pins {
        args.push("--peer-key".into());
        args.push(format!("{p}={}", fingerprint(dir, &format!("{p}.key"))));
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = Proc::spawn(dir, &args);
    server.wait_for(
        ERR,
        &format!("session attached: downlink and relayed frames go to it device={name}"),
    );
    p
}

/// `secchan device --mqtt --key FROM.key --to TO --peer-key TO=PIN.key`, fed `input`.
fn send_to(
    m: &Mosquitto,
    dir: &Path,
    (from, to, pin): (&str, &str, &str),
    input: &str,
) -> std::process::Output {
    let server_fp = fingerprint(dir, "server.key");
    let pin = format!("{to}={}", fingerprint(dir, &format!("{pin}.key")));
    let key = format!("{from}.key");
    let url = m.url();
    let args = [
        "--mqtt",
        &url,
        "--server-key",
        &server_fp,
        "--key",
        &key,
        "--to",
        to,
        "--peer-key",
        &pin,
    ];
    run_device(dir, &args, input)
}

#[test]
fn two_mqtt_devices_exchange_messages_end_to_end_and_neither_server_nor_broker_sees_plaintext() {
    let m = Mosquitto::start();
    let dir = fleet("relay-mqtt");
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Everything published on the broker, from the first handshake on.
    let (_spy, mut wire) = rt.block_on(support::mqtt::spy(&m, "spy", "#"));
    let mut server = server(&m, &dir, &["--relay", "any"]);
    let mut b = listener(&m, &dir, &mut server, "b", &["a"]);
    let out = send_to(&m, &dir, ("a", "b", "b"), "secret-one\nsecret-two\n");
    assert_relayed(&dir, &out, &mut b, &mut server);
    let mut bytes = 0;
    let mut publishes = 0;
    while let Ok((topic, payload)) = wire.try_recv() {
        publishes += 1;
        bytes += payload.len();
        assert!(
            !payload.windows(6).any(|w| w == b"secret"),
            "plaintext on {topic}"
        );
    }
    assert!(
        publishes > 10 && bytes > 5_000,
        "the spy saw the handshakes"
    );
}

#[test]
fn downlink_from_the_server_stdin_reaches_an_mqtt_device() {
    let m = Mosquitto::start();
    let dir = fleet("downlink-mqtt");
    let mut server = server(&m, &dir, &[]);
    let mut b = listener(&m, &dir, &mut server, "b", &[]);
    server.send(r#"{"to":"b","data":"led on"}"#);
    server.send(r#"{"to":"nobody","data":"x"}"#);
    let line = b.wait_for(OUT, "led on");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["from"], "server");
    assert_eq!(v["e2e"], false);
    assert_eq!(v["data"], "led on");
    assert_eq!(v["fingerprint"], fingerprint(&dir, "server.key"));
    server.wait_for(ERR, "downlink acknowledged device=b");
    let refused = server.wait_for(ERR, "downlink line 2 not delivered");
    assert!(refused.contains("\"nobody\" has a session"), "{refused}");
}

#[test]
fn a_server_without_relay_and_an_unknown_peer_end_the_mqtt_sender_with_exit_4() {
    let m = Mosquitto::start();
    let dir = fleet("refused-mqtt");
    let mut off = server(&m, &dir, &[]);
    let _b = listener(&m, &dir, &mut off, "b", &["a"]);
    let out = send_to(&m, &dir, ("a", "b", "b"), "hello\n");
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cli_support::assert_one_line_error(&out, &["does not relay to b", "(no_relay)"]);
    drop(off);
    let _any = server(&m, &dir, &["--relay", "any"]);
    let out = send_to(&m, &dir, ("a", "nobody", "b"), "hello\n");
    assert_eq!(out.status.code(), Some(4));
    cli_support::assert_one_line_error(&out, &["(unknown_peer)"]);
}

#[test]
fn chat_line_mode_works_over_mqtt() {
    let m = Mosquitto::start();
    let dir = fleet("chat-mqtt");
    let mut server = server(&m, &dir, &["--relay", "any"]);
    let mut b = listener(&m, &dir, &mut server, "b", &["a"]);
    let (url, server_fp) = (m.url(), fingerprint(&dir, "server.key"));
    let pin = format!("b={}", fingerprint(&dir, "b.key"));
    let mut chat = Proc::spawn(
        &dir,
        &[
            "chat",
            "--mqtt",
            &url,
            "--server-key",
            &server_fp,
            "--key",
            "a.key",
            "--peer-key",
            &pin,
        ],
    );
    chat.send("@b hi from the chat");
    let up = chat.wait_for(OUT, "* end-to-end session with b");
    assert!(up.contains("pinned fingerprint"), "{up}");
    let line: serde_json::Value =
        serde_json::from_str(&b.wait_for(OUT, "hi from the chat")).unwrap();
    assert_eq!(line["e2e"], true);
    chat.send("/crypto");
    let pane = chat.wait_for(OUT, "* b: open");
    assert!(pane.contains("via the server's relay"), "{pane}");
    drop(chat.stdin.take());
    assert!(chat.child.wait().unwrap().success());
}

#[test]
fn a_quiet_listening_mqtt_device_keeps_its_session_for_downlink() {
    let m = Mosquitto::start();
    let dir = fleet("keepalive-mqtt");
    let mut server = server(&m, &dir, &["--idle-timeout", "2"]);
    let mut b = listener_with(&m, &dir, &mut server, ("b", &[]), &["--keepalive", "1"]);
    // Well past the server's idle timeout, with nothing to send but keep-alives.
    std::thread::sleep(std::time::Duration::from_secs(5));
    server.send(r#"{"to":"b","data":"still there"}"#);
    b.wait_for(OUT, "still there");
    let seen = server.all();
    assert!(!seen.contains("session idle"), "{seen}");
}

#[test]
fn registry_groups_decide_who_may_reach_whom_over_mqtt() {
    let m = Mosquitto::start();
    let dir = fleet("groups-mqtt");
    registry_groups(&dir);
    let mut server = server_with(&m, &dir, &["--registry", "fleet.reg", "--relay", "group"]);
    let mut b = listener(&m, &dir, &mut server, "b", &["a", "c"]);
    assert_groups_decide(&mut b, |from, input| {
        send_to(&m, &dir, (from, "b", "b"), input)
    });
}
