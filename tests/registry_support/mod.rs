//! Fixtures shared by the registry log's tests: keys, a temporary registry, entries enrolled,
//! revoked and tokens issued, and the checks that a tampered file is refused.
#![allow(dead_code)]

pub use secchan::crypto::identity::IdentityKey;
pub use secchan::registry::entry::{Entry, Op};
pub use secchan::registry::file::{self, head_path};
pub use secchan::registry::{Groups, RegistryAuthorizer, RegistryError, VerifyError};
pub use std::path::{Path, PathBuf};
pub use std::sync::Arc;

pub const T0: u64 = 1_790_000_000;

pub fn server_key() -> Arc<IdentityKey> {
    Arc::new(IdentityKey::from_seed(&[0x51; 32]))
}

pub fn device(n: u8) -> IdentityKey {
    IdentityKey::from_seed(&[n; 32])
}

pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("secchan-registry-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn enroll(path: &Path, n: u8, name: &str, group: &str) {
    file::append(path, &server_key(), T0 + u64::from(n), |_| {
        Ok(Op::Enroll {
            device: device(n).public().fingerprint(),
            name: name.into(),
            group: group.into(),
            token: None,
        })
    })
    .unwrap();
}

/// A registry of five entries: init, three enrollments, one revocation.
pub fn five_entries(name: &str) -> PathBuf {
    let path = tempdir(name).join("fleet.reg");
    file::init(&path, &server_key(), T0).unwrap();
    enroll(&path, 1, "sensor-1", "greenhouse");
    enroll(&path, 2, "sensor-2", "greenhouse");
    enroll(&path, 3, "patch-7", "ward");
    file::append(&path, &server_key(), T0 + 9, |_| {
        Ok(Op::Revoke {
            device: device(2).public().fingerprint(),
        })
    })
    .unwrap();
    path
}

pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .split_inclusive('\n')
        .map(str::to_string)
        .collect()
}

pub fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.concat()).unwrap();
}

/// Verification fails with `expected`, and a server refuses to start on the registry with
/// the same error naming the same entry.
pub fn assert_refused(path: &Path, expected: VerifyError) {
    let err = file::load(path, Some(&server_key().public())).unwrap_err();
    match &err {
        RegistryError::Verify(v) => assert_eq!(*v, expected),
        other => panic!("expected {expected:?}, got {other:?}"),
    }
    assert_eq!(err.entry(), expected.entry());
    let server = RegistryAuthorizer::open(path, server_key(), Groups::all()).unwrap_err();
    assert!(
        matches!(&server, RegistryError::Verify(v) if *v == expected),
        "{server:?}"
    );
}

/// Like [`assert_refused`], for a head file that fails for `reason`; the error names the file.
pub fn assert_head_refused(path: &Path, reason: &str) {
    for err in [
        file::load(path, Some(&server_key().public())).unwrap_err(),
        RegistryAuthorizer::open(path, server_key(), Groups::all()).unwrap_err(),
    ] {
        assert!(
            matches!(&err, RegistryError::Head { path: p, reason: r } if *p == head_path(path) && *r == reason),
            "{err:?}"
        );
        assert!(err.to_string().contains("fleet.reg.head"), "{err}");
    }
}

pub fn issue_token(path: &Path, token: &IdentityKey, group: &str, expires: u64) {
    file::append(path, &server_key(), T0 + 5, |_| {
        Ok(Op::Token {
            id: token.public(),
            group: group.into(),
            name: "by-token".into(),
            expires,
        })
    })
    .unwrap();
}

pub fn revoke(path: &Path, n: u8) {
    file::append(path, &server_key(), T0 + 9, |_| {
        Ok(Op::Revoke {
            device: device(n).public().fingerprint(),
        })
    })
    .unwrap();
}

/// Both files as they are now, to put back later.
pub fn copy(path: &Path) -> (Vec<u8>, Vec<u8>) {
    (
        std::fs::read(path).unwrap(),
        std::fs::read(head_path(path)).unwrap(),
    )
}

pub fn restore(path: &Path, (log, head): &(Vec<u8>, Vec<u8>)) {
    std::fs::write(path, log).unwrap();
    std::fs::write(head_path(path), head).unwrap();
}
