//! The systemd units in dist/systemd: they pass `systemd-analyze verify`, their hardening
//! scores as exposed as `systemd-analyze security` allows ("OK" or better), the options in
//! their ExecStart lines are secchan's own, and the server tells systemd when it is ready.

mod cli_support;

use cli_support::{bin, keygen, tempdir};
use std::path::{Path, PathBuf};
use std::process::Command;

const UNITS: [&str; 2] = ["secchan-server.service", "secchan-device.service"];

fn systemd_analyze() -> Command {
    let found = Command::new("systemd-analyze").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "systemd-analyze not found: install Debian's systemd package (bash scripts/test.sh does)"
    );
    Command::new("systemd-analyze")
}

/// The units with ExecStart pointing at the binary under test.
fn units(dir: &Path) -> Vec<PathBuf> {
    UNITS
        .iter()
        .map(|u| {
            let text = std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("dist/systemd")
                    .join(u),
            )
            .unwrap();
            let path = dir.join(u);
            std::fs::write(
                &path,
                text.replace("/usr/local/bin/secchan", env!("CARGO_BIN_EXE_secchan")),
            )
            .unwrap();
            path
        })
        .collect()
}

#[test]
fn units_verify_and_are_hardened() {
    let dir = tempdir("systemd-units");
    for unit in units(&dir) {
        let out = systemd_analyze()
            .args(["verify", "--man=no"])
            .arg(&unit)
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{}: {}",
            unit.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let out = systemd_analyze()
            .args(["security", "--offline=yes", "--threshold=20"])
            .arg(&unit)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let level: f64 = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|l| l.split(": ").nth(1))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level: {text}"));
        assert!(level <= 2.0, "{}: exposure {level}", unit.display());
    }
}

#[test]
fn exec_start_lines_use_secchan_s_own_options() {
    let dir = tempdir("systemd-exec");
    for unit in units(&dir) {
        let text = std::fs::read_to_string(&unit).unwrap().replace("\\\n", " ");
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap();
        let args: Vec<String> = line
            .split_whitespace()
            .skip(1)
            .map(|a| a.replace("%d", dir.to_str().unwrap()))
            .collect();
        // Every option parses: what fails is the missing key file (exit 3), not usage (2).
        let out = bin().args(&args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(3),
            "{}: {}",
            unit.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[cfg(target_os = "linux")]
#[test]
fn the_server_tells_systemd_it_is_ready() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempdir("systemd-notify");
    keygen(&dir.join("server.key"));
    let socket = dir.join("notify.sock");
    let listener = UnixDatagram::bind(&socket).unwrap();
    listener
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut server = bin()
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--allow-any-device",
            "--key",
        ])
        .arg(dir.join("server.key"))
        .env("NOTIFY_SOCKET", &socket)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = listener
        .recv(&mut buf)
        .expect("a notification from the server");
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(String::from_utf8_lossy(&buf[..n]).trim(), "READY=1");
}
