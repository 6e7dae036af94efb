//! The registry log: every kind of tampering is detected, names the first bad entry, and
//! keeps a server from starting; crashes are reported, never silently absorbed; concurrent
//! writers do not corrupt it.

use secchan::crypto::identity::IdentityKey;
use secchan::handshake::Authorizer;
use secchan::msgs::AlertCode;
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

/// Like [`assert_refused`], for a head file that fails for `reason`; the error names the file.
fn assert_head_refused(path: &Path, reason: &str) {
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

fn issue_token(path: &Path, token: &IdentityKey, group: &str, expires: u64) {
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

fn revoke(path: &Path, n: u8) {
    file::append(path, &server_key(), T0 + 9, |_| {
        Ok(Op::Revoke {
            device: device(n).public().fingerprint(),
        })
    })
    .unwrap();
}

/// Both files as they are now, to put back later.
fn copy(path: &Path) -> (Vec<u8>, Vec<u8>) {
    (
        std::fs::read(path).unwrap(),
        std::fs::read(head_path(path)).unwrap(),
    )
}

fn restore(path: &Path, (log, head): &(Vec<u8>, Vec<u8>)) {
    std::fs::write(path, log).unwrap();
    std::fs::write(head_path(path), head).unwrap();
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
    assert_head_refused(&path, "missing");
    let path = five_entries("forged-head");
    let mut l = lines(&path);
    l.truncate(3);
    write_lines(&path, &l);
    let forged = secchan::registry::verify::Head {
        count: 3,
        hash: secchan::registry::entry::line_hash(l[2].as_bytes()),
    };
    std::fs::write(head_path(&path), forged.sign(&device(9))).unwrap();
    assert_head_refused(&path, "not signed by the server key");
}

#[test]
fn an_old_head_over_a_cut_log_is_refused() {
    // The head of entry 2 was kept; entries 3 to 5 exist. Put back over a log cut to four
    // entries (the revocation removed), it leaves two entries unrecorded, which no writer
    // does: tampering, not an interrupted append.
    let path = tempdir("stale-head").join("fleet.reg");
    file::init(&path, &server_key(), T0).unwrap();
    enroll(&path, 1, "sensor-1", "greenhouse");
    let (_, old_head) = copy(&path);
    enroll(&path, 2, "sensor-2", "greenhouse");
    enroll(&path, 3, "patch-7", "ward");
    revoke(&path, 2);
    let all = lines(&path);
    write_lines(&path, &all[..4]);
    std::fs::write(head_path(&path), &old_head).unwrap();
    assert_refused(
        &path,
        VerifyError::StaleHead {
            entry: 3,
            recorded: 2,
            present: 4,
        },
    );
    // A torn tail behind such a head is the same tampering; `repair` does not remove it.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut f, &all[4].as_bytes()[..30]).unwrap();
    drop(f);
    let err = file::repair(&path, &server_key()).unwrap_err();
    assert!(
        matches!(err, RegistryError::Verify(VerifyError::StaleHead { .. })),
        "{err:?}"
    );
}

#[test]
fn an_anchor_kept_by_the_server_detects_a_rollback_across_restarts() {
    let path = tempdir("anchor").join("fleet.reg");
    let anchor = tempdir("anchor-state").join("fleet.anchor");
    file::init(&path, &server_key(), T0).unwrap();
    enroll(&path, 1, "sensor-1", "greenhouse");
    let before_revoke = copy(&path);
    revoke(&path, 1);
    let open = || {
        RegistryAuthorizer::open(&path, server_key(), Groups::all())
            .and_then(|r| r.anchored(&anchor))
    };
    // The first start records the anchor; a later start on the same registry is accepted.
    drop(open().unwrap());
    let server = open().unwrap();
    // A state the running server accepts is recorded too.
    enroll(&path, 2, "sensor-2", "greenhouse");
    assert!(server.reload().unwrap());
    drop(server);
    let recorded = file::load_head_file(&anchor, &server_key().public())
        .unwrap()
        .unwrap();
    assert_eq!(recorded.count, 4);

    // Both files put back as they were before the revocation: consistent on their own...
    restore(&path, &before_revoke);
    file::load(&path, Some(&server_key().public())).unwrap();
    // ...but the server will not start on them.
    let err = open().unwrap_err();
    assert!(
        matches!(&err, RegistryError::BehindAnchor { had: 4, now: 2, .. }),
        "{err:?}"
    );

    // The log cut part-way through its last entry with the head before it looks like an
    // interrupted append, and `repair` removes it; the anchor still refuses the result.
    let path = tempdir("anchor-torn").join("fleet.reg");
    let anchor = tempdir("anchor-torn-state").join("fleet.anchor");
    file::init(&path, &server_key(), T0).unwrap();
    enroll(&path, 1, "sensor-1", "greenhouse");
    let (short_log, head_of_two) = copy(&path);
    revoke(&path, 1);
    drop(
        RegistryAuthorizer::open(&path, server_key(), Groups::all())
            .and_then(|r| r.anchored(&anchor))
            .unwrap(),
    );
    let log = std::fs::read(&path).unwrap();
    std::fs::write(&path, &log[..short_log.len() + 20]).unwrap();
    std::fs::write(head_path(&path), head_of_two).unwrap();
    assert_refused(
        &path,
        VerifyError::Torn {
            entry: 3,
            bytes: 20,
        },
    );
    assert_eq!(file::repair(&path, &server_key()).unwrap(), Some((3, 20)));
    let err = RegistryAuthorizer::open(&path, server_key(), Groups::all())
        .and_then(|r| r.anchored(&anchor))
        .unwrap_err();
    assert!(
        matches!(&err, RegistryError::BehindAnchor { had: 3, now: 2, .. }),
        "{err:?}"
    );
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
    // line break) changed in turn: always detected as an edit of entry 2 (malformed or badly
    // signed), never as a deleted, reordered or injected entry. Signature checks are slow in
    // debug builds, so one entry stands for all.
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
        assert!(
            matches!(
                err,
                VerifyError::Malformed { entry: 2, .. } | VerifyError::BadSignature { entry: 2 }
            ),
            "byte {i}: {err:?}"
        );
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

#[test]
fn a_running_server_does_not_enroll_onto_a_rolled_back_registry() {
    // Device 1 joined by token A and was revoked; token B is issued and unused.
    let path = tempdir("enroll-rollback").join("fleet.reg");
    let (token_a, token_b) = (device(0xa0), device(0xb0));
    file::init(&path, &server_key(), T0).unwrap();
    issue_token(&path, &token_a, "greenhouse", u64::MAX);
    issue_token(&path, &token_b, "greenhouse", u64::MAX);
    let before_use = copy(&path);
    let server = RegistryAuthorizer::open(&path, server_key(), Groups::all()).unwrap();
    assert_eq!(
        server.enroll(&device(1).public(), &token_a.public()),
        Ok("by-token".into())
    );
    let before_revoke = copy(&path);
    revoke(&path, 1);
    assert!(server.reload().unwrap());

    // The revocation is rolled back; a legitimate enrollment with token B follows. Signing
    // it onto the rolled-back history would undo the revocation for good.
    restore(&path, &before_revoke);
    assert_eq!(
        server.enroll(&device(2).public(), &token_b.public()),
        Err(AlertCode::InternalError)
    );
    assert_eq!(copy(&path), before_revoke, "something was appended");
    assert_eq!(server.check(&device(1).public()), Err(AlertCode::Revoked));

    // Rolled back to before token A was used: A is still used as far as the server knows.
    restore(&path, &before_use);
    assert_eq!(
        server.enroll(&device(3).public(), &token_a.public()),
        Err(AlertCode::TokenUsed)
    );
    assert_eq!(copy(&path), before_use, "something was appended");
    assert_eq!(server.len(), 5);
}

#[test]
fn tokens_the_server_already_refuses_never_reach_the_file() {
    // Refusals decided on the state in memory: with the registry file gone, a file access
    // would fail with internal_error instead of naming the reason.
    let path = tempdir("token-precheck").join("fleet.reg");
    let (used, expired, ward, stranger) = (device(0xa1), device(0xa2), device(0xa3), device(0xa4));
    file::init(&path, &server_key(), T0).unwrap();
    issue_token(&path, &used, "greenhouse", u64::MAX);
    issue_token(&path, &expired, "greenhouse", T0);
    issue_token(&path, &ward, "ward", u64::MAX);
    let server =
        RegistryAuthorizer::open(&path, server_key(), Groups::only(["greenhouse".into()])).unwrap();
    server.enroll(&device(1).public(), &used.public()).unwrap();
    std::fs::remove_file(&path).unwrap();
    for (token, code) in [
        (&stranger, AlertCode::EnrollmentRefused),
        (&used, AlertCode::TokenUsed),
        (&expired, AlertCode::TokenExpired),
        (&ward, AlertCode::WrongGroup),
    ] {
        assert_eq!(
            server.enroll(&device(2).public(), &token.public()),
            Err(code)
        );
    }
}

#[test]
fn a_writer_records_an_unrecorded_entry_before_appending() {
    // The head cannot be replaced (here: a directory where its temporary file goes), so an
    // append leaves its entry unrecorded; a second append must not add a second one.
    let path = five_entries("head-fails");
    let tmp = PathBuf::from(format!("{}.tmp", head_path(&path).display()));
    std::fs::create_dir(&tmp).unwrap();
    let failed = |n: u8| {
        file::append(&path, &server_key(), T0 + 20, |_| {
            Ok(Op::Enroll {
                device: device(n).public().fingerprint(),
                name: format!("d{n}"),
                group: "ward".into(),
                token: None,
            })
        })
        .unwrap_err()
    };
    assert!(matches!(failed(6), RegistryError::Io { .. }));
    assert!(matches!(failed(7), RegistryError::Io { .. }));
    std::fs::remove_dir(&tmp).unwrap();
    let v = file::load(&path, Some(&server_key().public())).unwrap();
    assert_eq!((v.entries.len(), v.head_count), (6, 5));
    assert!(v.fleet.device(&device(7).public().fingerprint()).is_none());
    enroll(&path, 8, "d8", "ward");
    let v = file::load(&path, Some(&server_key().public())).unwrap();
    assert_eq!((v.entries.len(), v.head_count), (7, 7));
}

#[test]
fn hostile_files_are_refused_without_exhausting_memory() {
    // As many empty lines as the size limit allows: one line is looked at, not 82 million.
    let newlines = vec![b'\n'; secchan::registry::verify::MAX_LOG_LEN as usize];
    let key = server_key().public();
    assert!(matches!(
        secchan::registry::verify::verify(&newlines, None, Some(&key)),
        Err(VerifyError::Malformed { entry: 1, .. })
    ));
    // A head, or the log, that never ends, and a FIFO that would block the reader.
    let path = five_entries("endless");
    std::fs::remove_file(head_path(&path)).unwrap();
    std::os::unix::fs::symlink("/dev/zero", head_path(&path)).unwrap();
    let err = file::load(&path, Some(&key)).unwrap_err();
    assert!(matches!(err, RegistryError::NotRegular(_)), "{err:?}");
    let path = five_entries("endless-log");
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
    let err = file::load(&path, Some(&key)).unwrap_err();
    assert!(matches!(err, RegistryError::NotRegular(_)), "{err:?}");
    let path = five_entries("fifo");
    std::fs::remove_file(&path).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .unwrap();
    assert!(made.success());
    let err = file::load(&path, Some(&key)).unwrap_err();
    assert!(matches!(err, RegistryError::NotRegular(_)), "{err:?}");
    // An oversized head is read only up to its limit, then refused as malformed.
    let path = five_entries("big-head");
    std::fs::write(head_path(&path), vec![b'x'; 1 << 20]).unwrap();
    assert_head_refused(&path, "malformed");
}

#[test]
fn the_head_is_never_written_through_a_planted_symlink() {
    let path = five_entries("tmp-symlink");
    let victim = path.with_file_name("server.key");
    std::fs::write(&victim, "secret key\n").unwrap();
    let tmp = PathBuf::from(format!("{}.tmp", head_path(&path).display()));
    std::os::unix::fs::symlink(&victim, &tmp).unwrap();
    enroll(&path, 6, "d6", "ward");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "secret key\n");
    let head = std::fs::symlink_metadata(head_path(&path)).unwrap();
    assert!(head.file_type().is_file());
    assert_eq!(file::load(&path, None).unwrap().head_count, 6);
}

#[test]
fn an_edited_sequence_number_is_an_edit() {
    let path = five_entries("edit-seq");
    for (from, to) in [("3 ", "4 "), ("3 ", "2 ")] {
        let mut l = lines(&path);
        let original = l[2].clone();
        l[2] = l[2].replacen(from, to, 1);
        write_lines(&path, &l);
        assert_refused(&path, VerifyError::BadSignature { entry: 3 });
        l[2] = original;
        write_lines(&path, &l);
    }
}

#[test]
fn a_torn_last_line_that_ends_in_a_newline_is_torn() {
    // Page writeback out of order: the end of entry 6 and its newline reached the disk, its
    // start did not (zeros).
    let path = five_entries("torn-newline");
    let before = std::fs::read(&path).unwrap();
    let mut torn = vec![0u8; 150];
    torn.extend_from_slice(b" sig=AAAA\n");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut f, &torn).unwrap();
    drop(f);
    assert_refused(
        &path,
        VerifyError::Torn {
            entry: 6,
            bytes: 160,
        },
    );
    assert_eq!(file::repair(&path, &server_key()).unwrap(), Some((6, 160)));
    assert_eq!(std::fs::read(&path).unwrap(), before);
    // The same damage to an entry the head records is an edit.
    let mut l = lines(&path);
    l[4] = "x\n".into();
    write_lines(&path, &l);
    assert!(matches!(
        file::load(&path, Some(&server_key().public())).unwrap_err(),
        RegistryError::Verify(VerifyError::Malformed { entry: 5, .. })
    ));
}

#[test]
fn an_interrupted_init_is_completed_by_running_it_again() {
    // The log was written, the head never was.
    let path = tempdir("init-again").join("fleet.reg");
    file::init(&path, &server_key(), T0).unwrap();
    let log = std::fs::read(&path).unwrap();
    std::fs::remove_file(head_path(&path)).unwrap();
    assert_head_refused(&path, "missing");
    file::init(&path, &server_key(), T0 + 99).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), log);
    file::load(&path, Some(&server_key().public())).unwrap();
    // The log was created, nothing written yet.
    std::fs::write(&path, b"").unwrap();
    std::fs::remove_file(head_path(&path)).unwrap();
    file::init(&path, &server_key(), T0).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), log);
    // Anything more is never overwritten.
    let path = five_entries("init-refused");
    std::fs::remove_file(head_path(&path)).unwrap();
    assert!(matches!(
        file::init(&path, &server_key(), T0),
        Err(RegistryError::Exists(_))
    ));
    let path = five_entries("init-other-key");
    let other = tempdir("init-other-key-2").join("fleet.reg");
    file::init(&other, &device(9), T0).unwrap();
    std::fs::remove_file(head_path(&other)).unwrap();
    assert!(matches!(
        file::init(&other, &server_key(), T0),
        Err(RegistryError::Exists(_))
    ));
    assert!(matches!(
        file::init(&path, &server_key(), T0),
        Err(RegistryError::Exists(_))
    ));
}

#[test]
fn served_groups_must_be_valid_names() {
    let path = five_entries("bad-group");
    let err =
        RegistryAuthorizer::open(&path, server_key(), Groups::only(["a=b".into()])).unwrap_err();
    assert!(
        matches!(err, RegistryError::Label { what: "group", .. }),
        "{err:?}"
    );
}
