//! `secchan chat`'s full-screen terminal UI, driven in tmux as a person would: typing with Tab
//! completion, reading the other device's message and the cryptography pane off the screen,
//! and quitting, against a real `secchan server --relay any` over loopback TCP and through a
//! real Mosquitto.

mod cli_support;
mod support;

use cli_support::relay::{fingerprint, fleet, server, Proc, ERR, OUT};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmux server of this test's own, killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .env("TERM", "xterm-256color")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .unwrap()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "chat"];
        args.extend_from_slice(keys);
        assert!(self.cmd(&args).status.success());
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "chat"]).stdout)
            .into_owned()
    }

    /// The screen once it shows every one of `needles` (a failure guard of 60 s).
    fn wait_for(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let screen = self.screen();
            if needles.iter().all(|n| screen.contains(n)) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the screen never showed {needles:?}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

/// `secchan chat ARGS` in `dir`, in a 120x40 tmux window; when it ends, its exit code goes
/// to `dir`/code and the window stays a minute, for its last screen to be read.
fn chat(dir: &Path, args: &str) -> Tmux {
    let script = format!(
        "'{bin}' chat {args}\necho $? > code\nsleep 60\n",
        bin = env!("CARGO_BIN_EXE_secchan"),
    );
    std::fs::write(dir.join("chat.sh"), script).unwrap();
    let tmux = Tmux {
        socket: format!(
            "secchan-test-{}-{}",
            std::process::id(),
            dir.file_name().unwrap().to_string_lossy()
        ),
    };
    let started = tmux.cmd(&[
        "new-session",
        "-d",
        "-x",
        "120",
        "-y",
        "40",
        "-s",
        "chat",
        "-c",
        dir.to_str().unwrap(),
        "sh chat.sh",
    ]);
    assert!(started.status.success(), "{started:?}");
    tmux
}

fn tmux_installed() -> bool {
    Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The exit code the chat wrote to `dir`/code when it ended (a failure guard of 60 s).
fn exit_code(dir: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(code) = std::fs::read_to_string(dir.join("code")) {
            if code.ends_with('\n') {
                return code.trim().to_string();
            }
        }
        assert!(Instant::now() < deadline, "the chat did not end");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Device b answering a: `secchan device TRANSPORT... --key b.key --to a --listen`, pinning a.
fn answering_b(dir: &Path, transport: &[&str]) -> Proc {
    let server_fp = fingerprint(dir, "server.key");
    let pin = format!("a={}", fingerprint(dir, "a.key"));
    let tail = [
        "--server-key",
        &server_fp,
        "--key",
        "b.key",
        "--to",
        "a",
        "--peer-key",
        &pin,
        "--listen",
    ];
    Proc::spawn(dir, &[&["device"], transport, &tail].concat())
}

/// The chat of device a (`secchan chat TRANSPORT --key a.key`, pinning b) in tmux, with b
/// answering: `@` and Tab complete b's name, the message reaches b, b's reply and the
/// cryptography pane are on screen, and `/quit` exits 0.
fn converse(dir: &Path, transport: &str, b: &mut Proc) {
    let server_fp = fingerprint(dir, "server.key");
    let a_fp = fingerprint(dir, "a.key");
    let b_fp = fingerprint(dir, "b.key");
    let tmux = chat(
        dir,
        &format!("{transport} --server-key {server_fp} --key a.key --peer-key b={b_fp}"),
    );
    tmux.wait_for(&[
        "secchan chat",
        "* connected to the server",
        "No end-to-end session yet.",
    ]);
    // `@` and Tab: the only name known, b's (pinned), is completed.
    tmux.keys(&["@", "Tab"]);
    tmux.wait_for(&["@b "]);
    tmux.keys(&["hi from the screen", "Enter"]);
    b.wait_for(OUT, "hi from the screen");
    b.send("hello back from b");
    let screen = tmux.wait_for(&[
        "-> b: hi from the screen",
        "<b> hello back from b",
        "cryptography: b",
        "X25519MLKEM768",
        "open (we started it)",
        "pinned fingerprint",
    ]);
    for key in [&b_fp, &a_fp] {
        assert!(
            screen.contains(key.as_str()),
            "{key} not on screen:\n{screen}"
        );
    }
    tmux.keys(&["C-u", "/quit", "Enter"]);
    assert_eq!(exit_code(dir), "0", "the chat's exit code");
}

#[test]
fn the_terminal_ui_sends_with_tab_completion_shows_the_reply_and_the_cryptography() {
    if !tmux_installed() {
        eprintln!("SKIPPED: tmux is not installed (bash scripts/test.sh installs it)");
        return;
    }
    let dir = fleet("chat-tui");
    let (mut server, addr) = server(&dir, &["--authorized-devices", "devices", "--relay", "any"]);
    let mut b = answering_b(&dir, &["--connect", &addr]);
    server.wait_for(ERR, "session established device=b");
    converse(&dir, &format!("--connect {addr}"), &mut b);
}

#[cfg(feature = "mqtt")]
#[test]
fn the_terminal_ui_works_the_same_through_an_mqtt_broker() {
    if !tmux_installed() {
        eprintln!("SKIPPED: tmux is not installed (bash scripts/test.sh installs it)");
        return;
    }
    let m = support::mosquitto::Mosquitto::start();
    let dir = fleet("chat-tui-mqtt");
    let url = m.url();
    let mut server = Proc::spawn(
        &dir,
        &[
            "server",
            "--mqtt",
            &url,
            "--key",
            "server.key",
            "--authorized-devices",
            "devices",
            "--relay",
            "any",
        ],
    );
    server.wait_for(ERR, "serving through the MQTT broker");
    let mut b = answering_b(&dir, &["--mqtt", &url]);
    server.wait_for(
        ERR,
        "session attached: downlink and relayed frames go to it device=b",
    );
    converse(&dir, &format!("--mqtt {url}"), &mut b);
}

#[test]
fn a_failing_chat_restores_the_terminal_and_exits_with_line_modes_code() {
    if !tmux_installed() {
        eprintln!("SKIPPED: tmux is not installed (bash scripts/test.sh installs it)");
        return;
    }
    let dir = fleet("chat-tui-fail");
    let (_server, addr) = server(&dir, &["--authorized-devices", "devices", "--relay", "any"]);
    // Device a's key pinned as the server's: the server's key is refused.
    let wrong = fingerprint(&dir, "a.key");
    let tmux = chat(
        &dir,
        &format!("--connect {addr} --server-key {wrong} --key a.key"),
    );
    // 3: the server's key is not the pinned one, as in line mode.
    assert_eq!(exit_code(&dir), "3", "the chat's exit code");
    // The terminal is back from the UI's screen, with the error line on it.
    let screen = tmux.wait_for(&["secchan: "]);
    assert!(!screen.contains("cryptography"), "{screen}");
}

#[test]
fn tab_completes_the_names_of_a_registry_copy_but_not_this_device_or_a_revoked_one() {
    if !tmux_installed() {
        eprintln!("SKIPPED: tmux is not installed (bash scripts/test.sh installs it)");
        return;
    }
    let dir = fleet("chat-tui-registry");
    let groups = [("a", "g"), ("b", "g"), ("c", "g")];
    cli_support::relay::enroll_fleet(&dir, "server.key", &groups);
    cli_support::relay::registry(&dir, &["revoke", "--key", "server.key", "fleet.reg", "c"]);
    let (_server, addr) = server(&dir, &["--registry", "fleet.reg", "--relay", "any"]);
    let server_fp = fingerprint(&dir, "server.key");
    // No --peer-key: the only name to complete comes from the registry copy. Were a (this
    // device) or c (revoked) offered too, `@` and Tab would complete no further than `@`.
    let tmux = chat(
        &dir,
        &format!("--connect {addr} --server-key {server_fp} --key a.key --registry fleet.reg"),
    );
    tmux.wait_for(&["* connected to the server"]);
    tmux.keys(&["@", "Tab"]);
    tmux.wait_for(&["@b "]);
    tmux.keys(&["C-u", "/quit", "Enter"]);
    assert_eq!(exit_code(&dir), "0", "the chat's exit code");
}
