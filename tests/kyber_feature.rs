//! The pre-standard X25519Kyber768R3 suite (protocol.md §3.1, wire code 0x02) is built only
//! with the `kyber-r3` cargo feature. Every build keeps the code reserved; one without the
//! feature refuses a device offering it with `suite_refused`, and its CLI names the feature
//! when asked for the suite. With the feature, tests/tcp.rs and the handshake unit tests run
//! the suite end to end; `bash scripts/test.sh` runs both builds.

mod cli_support;
mod common;

use secchan::crypto::kem::{Suite, SuiteId, ALL_SUITES};

#[test]
fn wire_code_0x02_is_reserved_in_every_build_and_built_only_with_the_feature() {
    assert_eq!(SuiteId::from_u8(0x02), Some(SuiteId::X25519Kyber768R3));
    assert_eq!(
        SuiteId::from_name("x25519kyber768r3"),
        Some(SuiteId::X25519Kyber768R3)
    );
    assert_eq!(SuiteId::X25519Kyber768R3.feature(), Some("kyber-r3"));
    let built = cfg!(feature = "kyber-r3");
    assert_eq!(Suite::from_id(0x02).is_some(), built);
    assert_eq!(Suite::from_name("X25519Kyber768R3").is_some(), built);
    assert_eq!(
        ALL_SUITES
            .iter()
            .map(|s| s.id)
            .filter(|id| *id == SuiteId::X25519Kyber768R3)
            .count(),
        usize::from(built)
    );
    for id in [SuiteId::X25519MlKem768, SuiteId::X25519] {
        assert_eq!(id.feature(), None);
        assert_eq!(id.suite().map(|s| s.name), Some(id.name()));
    }
}

#[cfg(feature = "kyber-r3")]
#[test]
fn the_cli_takes_the_suite_when_it_is_built() {
    let out = cli_support::bin()
        .args(["bench", "--ops", "handshake", "--suite", "X25519Kyber768R3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("X25519Kyber768R3"));
}

#[cfg(not(feature = "kyber-r3"))]
mod without_the_feature {
    use super::cli_support::{assert_one_line_error, bin, run_device, tempdir};
    use super::common::{read_frame, server_config, start_server, write_frame};
    use secchan::crypto::kem::{SuiteId, X25519Ephemeral, MLKEM768_EK_LEN};
    use secchan::crypto::random::OsRandom;
    use secchan::handshake::{server, HandshakeError, Mode};
    use secchan::msgs::{encode_alert, AlertCode, VERSION};
    use secchan::transport::TransportError;
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    /// A well-formed DeviceHello (protocol.md §4.1) offering suite 0x02 with AES-256-GCM.
    fn kyber_hello() -> Vec<u8> {
        let x25519 = X25519Ephemeral::generate(&mut OsRandom).unwrap();
        let mut hello = vec![0x01, VERSION, SuiteId::X25519Kyber768R3 as u8, 1, 0x01];
        hello.extend_from_slice(x25519.public());
        // Kyber768 round 3 and ML-KEM-768 keys have the same length (protocol.md §3.1).
        hello.extend_from_slice(&[0x11; MLKEM768_EK_LEN]);
        hello
    }

    #[test]
    fn a_server_in_every_mode_refuses_the_suite_with_suite_refused() {
        for mode in [Mode::Any, Mode::Hybrid, Mode::Classical] {
            let err = server::accept_hello(&server_config(mode), &kyber_hello(), &mut OsRandom)
                .err()
                .unwrap();
            assert_eq!(
                err,
                HandshakeError::SuiteNotBuilt(SuiteId::X25519Kyber768R3)
            );
            assert_eq!(err.alert(), Some(AlertCode::SuiteRefused));
            assert!(err.to_string().contains("kyber-r3"), "{err}");
        }
        // A code protocol.md does not define stays a decode error.
        let mut unknown = kyber_hello();
        unknown[2] = 0x7f;
        let err = server::accept_hello(&server_config(Mode::Any), &unknown, &mut OsRandom)
            .err()
            .unwrap();
        assert_eq!(err.alert(), Some(AlertCode::DecodeError));
    }

    #[tokio::test]
    async fn over_tcp_the_device_reads_the_suite_refused_alert() {
        let (addr, mut rx) = start_server(server_config(Mode::Any)).await;
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        write_frame(&mut tcp, &kyber_hello()).await.unwrap();
        assert_eq!(
            read_frame(&mut tcp).await,
            Some(encode_alert(AlertCode::SuiteRefused))
        );
        let end = rx.recv().await.unwrap().end;
        assert!(
            matches!(
                end,
                Err(TransportError::Handshake(HandshakeError::SuiteNotBuilt(
                    SuiteId::X25519Kyber768R3
                )))
            ),
            "{end:?}"
        );
    }

    #[test]
    fn device_and_bench_name_the_feature_in_one_line() {
        let out = run_device(
            &std::env::temp_dir(),
            &[
                "--connect",
                "127.0.0.1:9",
                "--server-key",
                "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                "--suite",
                "X25519Kyber768R3",
            ],
            "",
        );
        assert_one_line_error(&out, &["X25519Kyber768R3", "--features kyber-r3"]);
        let out = bin()
            .args(["bench", "--ops", "handshake", "--suite", "X25519Kyber768R3"])
            .output()
            .unwrap();
        assert_one_line_error(&out, &["X25519Kyber768R3", "--features kyber-r3"]);
    }

    #[test]
    fn a_server_in_any_mode_says_the_suite_is_not_built() {
        let dir = tempdir("kyber-any");
        let key = dir.join("server.key");
        let keygen = bin().arg("keygen").arg("--out").arg(&key).output().unwrap();
        assert!(keygen.status.success());
        let mut child = bin()
            .args(["server", "--listen", "127.0.0.1:0", "--allow-any-device"])
            .args(["--mode", "any", "--key"])
            .arg(&key)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut warned = false;
        for line in BufReader::new(child.stderr.take().unwrap()).lines() {
            let line = line.unwrap();
            warned |= line.contains("X25519Kyber768R3") && line.contains("kyber-r3");
            if line.contains("listening") {
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(warned, "no warning that X25519Kyber768R3 is not built");
    }
}
