//! What strangers make `secchan server` log (protocol.md §2.3): the binary, its stderr, a
//! flood of malformed hellos and refused devices. Each event is counted; the log gets at most
//! one warning per kind per 10 s, and the totals when the server stops.

mod cli_support;
mod common;

use cli_support::{bin, keygen, tempdir};
use common::{device_config, read_frame, write_frame};
use secchan::crypto::aead::AeadId;
use secchan::crypto::identity::IdentityKey;
use secchan::crypto::kem::X25519_ONLY;
use secchan::crypto::random::OsRandom;
use secchan::transport::{tcp, Timeouts, TransportError};
use secchan::trust::Pinned;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn a_flood_of_failed_handshakes_is_counted_not_logged_line_by_line() {
    let dir = tempdir("admission-log");
    let server_fp = keygen(&dir.join("server.key"));
    let known_fp = keygen(&dir.join("known.key"));
    std::fs::write(dir.join("devices"), format!("{known_fp} known\n")).unwrap();
    let mut child = bin()
        .args(["server", "--listen", "127.0.0.1:0", "--mode", "classical"])
        .arg("--key")
        .arg(dir.join("server.key"))
        .arg("--authorized-devices")
        .arg(dir.join("devices"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let reader = {
        let (lines, stderr) = (lines.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("addr=").nth(1) {
                    let _ = addr_tx.send(rest.split_whitespace().next().unwrap().to_string());
                }
                lines.lock().unwrap().push(line);
            }
        })
    };
    let addr: std::net::SocketAddr = addr_rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap()
        .parse()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // 200 malformed hellos, each answered with decode_error.
        for _ in 0..200 {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            write_frame(&mut s, b"\x01\x02GARBAGE").await.unwrap();
            assert!(read_frame(&mut s).await.is_some());
        }
        // 40 devices the server does not know, each refused.
        let pin = Pinned(server_fp.clone());
        for _ in 0..40 {
            let mut cfg = device_config(&X25519_ONLY, AeadId::ChaCha20Poly1305);
            cfg.identity = Some(Arc::new(IdentityKey::generate(&mut OsRandom).unwrap()));
            let mut conn = tcp::connect(addr, &cfg, &pin, Timeouts::default())
                .await
                .unwrap();
            let refused = conn.recv().await.unwrap_err();
            assert!(matches!(refused, TransportError::Refused(_)), "{refused:?}");
        }
    });
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success());
    reader.join().unwrap();
    let lines = lines.lock().unwrap();
    let refused = lines
        .iter()
        .filter(|l| l.contains("device refused"))
        .count();
    assert!(
        (1..=2).contains(&refused),
        "{refused} lines for 40 refusals:\n{}",
        lines.join("\n")
    );
    assert!(!lines.iter().any(|l| l.contains("handshake failed")));
    let totals = lines
        .iter()
        .find(|l| l.contains("connections served"))
        .expect("the totals at shutdown");
    for count in [
        "accepted=240",
        "handshake_failures=200",
        "devices_refused=40",
    ] {
        assert!(totals.contains(count), "{count} in {totals}");
    }
    assert!(
        lines.len() < 20,
        "{} lines:\n{}",
        lines.len(),
        lines.join("\n")
    );
}
