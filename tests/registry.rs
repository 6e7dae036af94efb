//! The registry log: every kind of tampering is detected, names the first bad entry, and
//! keeps a server from starting; crashes are reported, never silently absorbed; concurrent
//! writers do not corrupt it.

use secchan::crypto::identity::IdentityKey;
use secchan::registry::entry::{Entry, Op};
use secchan::registry::file::{self, head_path};
use secchan::registry::{Groups, RegistryAuthorizer, RegistryError, VerifyError};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const T0: u64 = 1_790_000_000;

fn server_key() -> Arc<IdentityKey> {
    Arc::new(IdentityKey::from_seed(&[0x51; 32]))
}

fn device(n: u8) -> IdentityKey {
    IdentityKey::from_seed(&[n; 32])
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("secchan-registry-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn enroll(path: &Path, n: u8, name: &str, group: &str) {
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
fn five_entries(name: &str) -> PathBuf {
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

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .split_inclusive('\n')
        .map(str::to_string)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.concat()).unwrap();
}

/// Verification fails with `expected`, and a server refuses to start on the registry with
/// the same error naming the same entry.
fn assert_refused(path: &Path, expected: VerifyError) {
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

#[test]
fn untouched_registry_verifies() {
    let path = five_entries("ok");
    let v = file::load(&path, Some(&server_key().public())).unwrap();
    assert_eq!(v.entries.len(), 5);
    assert_eq!(v.head_count, 5);
    let revoked = v.fleet.device(&device(2).public().fingerprint()).unwrap();
    assert_eq!(revoked.revoked_entry, Some(5));
    RegistryAuthorizer::open(&path, server_key(), Groups::all()).unwrap();
}

#[test]
fn edited_entry_is_named() {
    let path = five_entries("edit");
    let mut l = lines(&path);
    l[2] = l[2].replace("group=greenhouse", "group=ward");
    write_lines(&path, &l);
    assert_refused(&path, VerifyError::BadSignature { entry: 3 });
}

#[test]
fn deleted_entry_is_named() {
    let path = five_entries("delete");
    let mut l = lines(&path);
    l.remove(2);
    write_lines(&path, &l);
    assert_refused(&path, VerifyError::Deleted { entry: 3, found: 4 });
}

#[test]
fn reordered_entries_are_named() {
    let path = five_entries("reorder");
    let mut l = lines(&path);
    l.swap(2, 3);
    write_lines(&path, &l);
    assert_refused(&path, VerifyError::Reordered { entry: 3, found: 4 });
}

#[test]
fn injected_entries_are_named() {
    // A copy of a genuine entry slipped in.
    let path = five_entries("inject-copy");
    let mut l = lines(&path);
    l.insert(3, l[1].clone());
    write_lines(&path, &l);
    assert_refused(&path, VerifyError::Injected { entry: 4, found: 2 });

    // A new entry that chains correctly but is signed by another key (an attacker enrolling
    // its own device).
    let path = five_entries("inject-forged");
    let mut l = lines(&path);
    let forged = Entry {
        seq: 6,
        time: T0 + 20,
        prev: secchan::registry::entry::line_hash(l[4].as_bytes()),
        op: Op::Enroll {
            device: device(9).public().fingerprint(),
            name: "intruder".into(),
            group: "ward".into(),
            token: None,
        },
    };
    l.push(forged.sign(&device(9)));
    write_lines(&path, &l);
    assert_refused(&path, VerifyError::BadSignature { entry: 6 });

    // A genuine entry of another registry of the same server, put in this one's place.
    let other = tempdir("inject-other").join("fleet.reg");
    file::init(&other, &server_key(), T0 + 100).unwrap();
    for n in 4..9 {
        enroll(&other, n, "other", "ward");
    }
    let mut l = lines(&path);
    l.truncate(5);
    l.push(lines(&other)[5].clone());
    write_lines(&path, &l);
    std::fs::copy(head_path(&other), head_path(&path)).unwrap();
    assert_refused(&path, VerifyError::ChainBroken { entry: 6 });
}

#[test]
fn truncated_tail_is_named() {
    let path = five_entries("truncate");
    let mut l = lines(&path);
    l.truncate(3);
    write_lines(&path, &l);
    assert_refused(
        &path,
        VerifyError::Truncated {
            entry: 4,
            recorded: 5,
        },
    );
    // Cut inside a line: still truncation, since the head records the cut entry.
    let path = five_entries("truncate-mid");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 30]).unwrap();
    assert_refused(
        &path,
        VerifyError::Truncated {
            entry: 5,
            recorded: 5,
        },
    );
    // Without the head, truncation cannot be ruled out; a head rewritten to match the cut
    // log needs the server key.
    let path = five_entries("no-head");
    std::fs::remove_file(head_path(&path)).unwrap();
    assert_refused(&path, VerifyError::Head("missing"));
    let path = five_entries("forged-head");
    let mut l = lines(&path);
    l.truncate(3);
    write_lines(&path, &l);
    let forged = secchan::registry::verify::Head {
        count: 3,
        hash: secchan::registry::entry::line_hash(l[2].as_bytes()),
    };
    std::fs::write(head_path(&path), forged.sign(&device(9))).unwrap();
    assert_refused(&path, VerifyError::Head("not signed by the server key"));
}

#[test]
fn torn_write_is_reported_then_repaired_without_losing_an_entry() {
    let path = five_entries("torn");
    // A crash during the append of entry 6: part of its line reached the disk, the head still
    // records five entries.
    let v = file::load(&path, None).unwrap();
    let entry = Entry {
        seq: 6,
        time: T0 + 30,
        prev: v.last_hash(),
        op: Op::Revoke {
            device: device(1).public().fingerprint(),
        },
    };
    let line = entry.sign(&server_key());
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut f, &line.as_bytes()[..40]).unwrap();
    drop(f);
    assert_refused(
        &path,
        VerifyError::Torn {
            entry: 6,
            bytes: 40,
        },
    );
    // Appending is refused too: nothing is written after a torn line.
    let err = file::append(&path, &server_key(), T0 + 31, |_| {
        Ok(Op::Revoke {
            device: device(1).public().fingerprint(),
        })
    })
    .unwrap_err();
    assert!(matches!(
        err,
        RegistryError::Verify(VerifyError::Torn { entry: 6, .. })
    ));
    assert_eq!(file::repair(&path, &server_key()).unwrap(), Some((6, 40)));
    let v = file::load(&path, Some(&server_key().public())).unwrap();
    assert_eq!(v.entries.len(), 5);
    assert_eq!(file::repair(&path, &server_key()).unwrap(), None);
}

#[test]
fn repair_refuses_to_hide_tampering() {
    let path = five_entries("repair-tamper");
    let mut l = lines(&path);
    l.remove(4);
    write_lines(&path, &l);
    let err = file::repair(&path, &server_key()).unwrap_err();
    assert!(matches!(
        err,
        RegistryError::Verify(VerifyError::Truncated { entry: 5, .. })
    ));
}

#[test]
fn complete_entry_not_yet_in_the_head_is_kept() {
    // A crash after the entry's fsync but before the head was replaced.
    let path = five_entries("head-lag");
    let head = std::fs::read(head_path(&path)).unwrap();
    enroll(&path, 4, "late", "ward");
    std::fs::write(head_path(&path), head).unwrap();
    let v = file::load(&path, Some(&server_key().public())).unwrap();
    assert_eq!((v.entries.len(), v.head_count), (6, 5));
    assert!(v.fleet.device(&device(4).public().fingerprint()).is_some());
    // The next append records everything in the head again.
    enroll(&path, 5, "next", "ward");
    assert_eq!(file::load(&path, None).unwrap().head_count, 7);
}

#[test]
fn head_of_another_history_is_a_mismatch() {
    // Entry 5 was replaced by a genuine, correctly chained entry 5 of another history (the
    // same server's registry, rebuilt): the head still records the original.
    let path = five_entries("head-swap");
    let mut l = lines(&path);
    l.truncate(4);
    let other5 = Entry {
        seq: 5,
        time: T0 + 50,
        prev: secchan::registry::entry::line_hash(l[3].as_bytes()),
        op: Op::Revoke {
            device: device(1).public().fingerprint(),
        },
    };
    l.push(other5.sign(&server_key()));
    write_lines(&path, &l);
    assert_refused(&path, VerifyError::HeadMismatch { entry: 5 });
}

#[test]
fn registry_of_another_server_is_refused() {
    let path = five_entries("wrong-server");
    let err = RegistryAuthorizer::open(
        &path,
        Arc::new(IdentityKey::from_seed(&[0x99; 32])),
        Groups::all(),
    )
    .unwrap_err();
    assert!(matches!(
        err,
        RegistryError::Verify(VerifyError::WrongServer { .. })
    ));
}

#[test]
fn a_running_server_notices_a_rollback() {
    let path = five_entries("rollback");
    let old_log = std::fs::read(&path).unwrap();
    let old_head = std::fs::read(head_path(&path)).unwrap();
    enroll(&path, 4, "new", "ward");
    let server = RegistryAuthorizer::open(&path, server_key(), Groups::all()).unwrap();
    // Both files restored from an older, self-consistent copy: verification alone passes...
    std::fs::write(&path, old_log).unwrap();
    std::fs::write(head_path(&path), old_head).unwrap();
    file::load(&path, None).unwrap();
    // ...but the server knows it had seen six entries.
    assert!(matches!(
        server.reload().unwrap_err(),
        RegistryError::RolledBack { had: 6, now: 5 }
    ));
    assert_eq!(server.len(), 6);
}

#[test]
fn a_running_server_rechecks_what_changed_and_keeps_its_verified_state() {
    let path = five_entries("reload");
    let server = RegistryAuthorizer::open(&path, server_key(), Groups::all()).unwrap();
    let original = lines(&path);
    // A new genuine entry is picked up.
    enroll(&path, 4, "new", "ward");
    assert!(server.reload().unwrap());
    assert_eq!(server.len(), 6);
    // An entry the server already verified is edited: the whole log is verified again.
    let mut l = lines(&path);
    l[2] = l[2].replace("sensor-2", "sensor-Z");
    write_lines(&path, &l);
    assert!(matches!(
        server.reload().unwrap_err(),
        RegistryError::Verify(VerifyError::BadSignature { entry: 3 })
    ));
    // A forged entry after the verified ones is caught by its own signature.
    let mut l = lines(&path);
    l[2].clone_from(&original[2]);
    let forged = Entry {
        seq: 7,
        time: T0 + 70,
        prev: secchan::registry::entry::line_hash(l[5].as_bytes()),
        op: Op::Revoke {
            device: device(1).public().fingerprint(),
        },
    };
    l.push(forged.sign(&device(9)));
    write_lines(&path, &l);
    assert!(matches!(
        server.reload().unwrap_err(),
        RegistryError::Verify(VerifyError::BadSignature { entry: 7 })
    ));
    // Meanwhile the server enforces the last verified state.
    assert_eq!(server.len(), 6);
    assert_eq!(server.check(&device(1).public()).unwrap(), "sensor-1");
}

#[test]
fn every_byte_of_an_entry_and_its_head_is_protected() {
    // Every byte of entry 2 (sequence number, time, chain hash, operation, fields, signature,
    // line break) changed in turn: always detected, always naming entry 2 (or entry 3 when
    // the changed line break merges it with entry 3). Signature checks are slow in debug builds, so one
    // entry stands for all.
    let path = five_entries("every-byte");
    let log = std::fs::read(&path).unwrap();
    let head = std::fs::read(head_path(&path)).unwrap();
    let key = server_key().public();
    let start = log.iter().position(|&b| b == b'\n').unwrap() + 1;
    let end = start + log[start..].iter().position(|&b| b == b'\n').unwrap();
    for i in start..=end {
        let mut bad = log.clone();
        bad[i] ^= 0x01;
        let err = secchan::registry::verify::verify(&bad, Some(&head), Some(&key))
            .expect_err("a changed byte went unnoticed");
        let named = err.entry();
        let ok = named == Some(2) || (i == end && named == Some(3));
        assert!(ok, "byte {i}: {err:?}");
    }
    for i in (0..head.len()).step_by(3) {
        let mut bad = head.clone();
        bad[i] ^= 0x01;
        let err = secchan::registry::verify::verify(&log, Some(&bad), Some(&key));
        assert!(
            matches!(
                err,
                Err(VerifyError::Head(_)
                    | VerifyError::Truncated { .. }
                    | VerifyError::HeadMismatch { .. })
            ),
            "head byte {i}: {err:?}"
        );
    }
}

#[test]
fn concurrent_writers_do_not_corrupt_the_log() {
    let path = tempdir("concurrent").join("fleet.reg");
    file::init(&path, &server_key(), T0).unwrap();
    let threads: Vec<_> = (10..26u8)
        .map(|n| {
            let path = path.clone();
            std::thread::spawn(move || enroll(&path, n, &format!("d{n}"), "g"))
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let v = file::load(&path, Some(&server_key().public())).unwrap();
    assert_eq!(v.entries.len(), 17);
    assert_eq!(v.fleet.devices().count(), 16);
}

#[test]
fn rule_breaking_appends_are_refused_before_writing() {
    let path = five_entries("rules");
    let before = std::fs::read(&path).unwrap();
    for op in [
        Op::Revoke {
            device: device(2).public().fingerprint(),
        },
        Op::Rename {
            device: device(8).public().fingerprint(),
            name: "x".into(),
        },
        Op::Init {
            server: server_key().public(),
        },
    ] {
        let err = file::append(&path, &server_key(), T0, |_| Ok(op.clone())).unwrap_err();
        assert!(
            matches!(
                err,
                RegistryError::Verify(VerifyError::Invalid { entry: 6, .. })
            ),
            "{err:?}"
        );
    }
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

/// The worked example of docs/registry.md §2.4, rebuilt from its inputs: the document and
/// the code cannot drift apart.
#[test]
fn worked_example_in_the_docs_matches() {
    let path = tempdir("example").join("fleet.reg");
    let server = server_key();
    file::init(&path, &server, T0).unwrap();
    let append = |time: u64, op: Op| file::append(&path, &server, time, |_| Ok(op)).unwrap();
    append(
        T0 + 60,
        Op::Enroll {
            device: device(1).public().fingerprint(),
            name: "sensor-1".into(),
            group: "greenhouse".into(),
            token: None,
        },
    );
    let token = device(3).public();
    append(
        T0 + 120,
        Op::Token {
            id: token,
            group: "greenhouse".into(),
            name: "sensor-2".into(),
            expires: T0 + 3720,
        },
    );
    append(
        T0 + 180,
        Op::Enroll {
            device: device(2).public().fingerprint(),
            name: "sensor-2".into(),
            group: "greenhouse".into(),
            token: Some(token),
        },
    );
    append(
        T0 + 240,
        Op::Revoke {
            device: device(1).public().fingerprint(),
        },
    );
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/registry.md")).unwrap();
    let block = |name: &str| {
        let start = format!("<!-- {name} -->\n```\n");
        let from = doc
            .find(&start)
            .unwrap_or_else(|| panic!("{name} block missing"))
            + start.len();
        doc[from..].split("```").next().unwrap().to_string()
    };
    let log = std::fs::read_to_string(&path).unwrap();
    let head = std::fs::read_to_string(head_path(&path)).unwrap();
    if std::env::var_os("SECCHAN_PRINT_EXAMPLE").is_some() {
        println!("{log}---\n{head}");
    }
    assert_eq!(block("example-log"), log);
    assert_eq!(block("example-head"), head);
}
