//! The registry as a running server sees it: rollbacks noticed, changes re-checked with the
//! verified state kept, every byte protected, concurrent writers, appends that break a rule,
//! the documented example, hostile files and planted symlinks.

mod registry_support;

use registry_support::*;
use secchan::handshake::Authorizer;
use secchan::msgs::AlertCode;

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
